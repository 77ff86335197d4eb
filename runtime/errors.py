"""Errors that name a parameter of a library function (no torch).

Library code names its parameters (``object_ids``), never a console script's flags; a CLI
translates the name to its flag (``--object-ids``) with :func:`mrcnet.runtime.cliopts.cli_message`.
"""
from __future__ import annotations

import re
from typing import Callable


_UNSET = object()
#: ``{parameter}`` in a detail: another parameter the message mentions (rendered like ``param``)
_MENTION = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class ParameterError(ValueError):
    """A bad value of the library parameter ``param``: ``str(e)`` is ``"<param>: <detail>"``, or
    ``"<param> <value>: <detail>"`` when the value is worth repeating (a path, a precision). The
    detail names other parameters as ``{name}`` (``"needs {backend} tensorrt"``).

    Domain errors derive from it as well as from their own base (``ExportParameterError`` is an
    ``ExportError``), so callers keep catching those.
    """

    def __init__(self, param: str, detail: str, value=_UNSET):
        self.param = str(param)
        self.detail = str(detail)
        self.value = value
        super().__init__(self.render())

    def render(self, namer: Callable[[str], str] = str) -> str:
        """The message with each parameter written as ``namer(name)`` (a CLI passes its flags)."""
        value = "" if self.value is _UNSET else f" {self.value}"
        detail = _MENTION.sub(lambda m: namer(m.group(1)), self.detail)
        return f"{namer(self.param)}{value}: {detail}"

    def __reduce__(self):  # picklable across processes (DataLoader workers, multiprocessing)
        return (type(self), (self.param, self.detail, self.value))


def error_line(error: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """One line for a user from ``error``: the first non-empty line of its message, cut to ``limit``
    characters; its type name when the message is empty (``str(e)`` of many library errors is).
    ``with_type``: ``"TypeName: line"``."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    line = lines[0][:limit]
    return f"{type(error).__name__}: {line}" if with_type else line
