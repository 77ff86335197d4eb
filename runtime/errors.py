"""Errors that name a parameter of a library function (no torch).

Library code names its parameters (``object_ids``), never a console script's flags; a CLI
translates the name to its flag (``--object-ids``) with :func:`mrcnet.runtime.cliopts.cli_message`.
"""
from __future__ import annotations


class ParameterError(ValueError):
    """A bad value of the library parameter ``param``: ``str(e)`` is ``"<param>: <detail>"``.

    Domain errors (``ExportError``, ``InferError``, ...) derive from it as well as from their own
    base, so callers keep catching those.
    """

    def __init__(self, param: str, detail: str):
        self.param = str(param)
        self.detail = str(detail)
        super().__init__(f"{self.param}: {self.detail}")

    def __reduce__(self):  # picklable across processes (DataLoader workers, multiprocessing)
        return (type(self), (self.param, self.detail))
