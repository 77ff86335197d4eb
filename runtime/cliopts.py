"""The console scripts' shared option vocabulary (click; no torch).

One meaning per option name across ``mrcnet-run``, ``-export``, ``-train``, ``-infer``, ``-eval``,
``-eval-clip`` and ``-synth`` (``tests/test_cli_vocabulary.py`` checks every command):

- ``--object-ids``: BOP object ids (comma-separated); ``--count`` / ``-n``: how many of what a
  command makes; ``-q`` / ``--quiet``: no progress bars; ``--device``: the torch device the network
  runs on (``--render-device``: the renderer's EGL device); ``--out``: the output folder.
- Old spellings stay as hidden options that say they are deprecated (:func:`deprecated_alias`).
- Library errors name parameters (:class:`mrcnet.runtime.errors.ParameterError`);
  :func:`cli_message` writes them with the command's flag.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import click
from click.core import ParameterSource

from .errors import ParameterError
from .geometry import TTA_AGREE_DEG, TTA_SELECT_MODES

#: option name -> its one meaning (the vocabulary test reads this table)
VOCABULARY = {
    "--object-ids": "BOP object ids, comma-separated",
    "--count": "how many items the command makes (short form -n)",
    "--quiet": "no progress bars (short form -q)",
    "--device": "torch device of the network (cpu, cuda:0, ...)",
    "--render-device": "renderer device (EGL index, cuda:K, cpu)",
    "--out": "output folder",
    "--tta-select": "how the rotation of a detection's TTA group is picked (score | agreement)",
}
#: spellings that must not be visible options any more (the hidden deprecated aliases may keep them)
RETIRED = {"--objects": "--object-ids or --count", "--no-progress": "--quiet", "--images": "--count",
           "--frames": "--count"}


def flag(param: str, flags: Optional[Mapping[str, str]] = None) -> str:
    """The CLI flag of a library parameter: ``flags[param]`` or ``--`` + the name with dashes."""
    if flags and param in flags:
        return flags[param]
    return "--" + param.replace("_", "-")


def cli_message(error: BaseException, flags: Optional[Mapping[str, str]] = None) -> str:
    """One line for the user: a :class:`ParameterError` as ``"--flag[ value]: detail"``, anything
    else as is."""
    if isinstance(error, ParameterError):
        return error.render(lambda name: flag(name, flags))
    return str(error)


def object_ids(ctx, param, value) -> Optional[list]:
    """click callback of ``--object-ids``: ``"1,2,3"`` -> ``[1, 2, 3]`` (None stays None); not
    integers, none, or repeated ids -> a usage error naming the option."""
    if value is None:
        return None
    try:
        ids = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated object ids, got {value!r}") from None
    if not ids or len(set(ids)) != len(ids):
        raise click.BadParameter(f"expected distinct object ids, got {value!r}")
    return ids


def deprecated_alias(old: str, new: str, dest: str, callback: Optional[Callable] = None, **kw):
    """A hidden option ``old`` kept for existing scripts: its value goes to ``dest`` (the parameter of
    the option ``new``) after ``callback(ctx, param, value)`` if given, with a one-line warning on
    stderr; ``new`` given on the command line wins."""

    def _apply(ctx, param, value):
        if value is None or value is False or value == () or ctx.resilient_parsing:
            return None
        click.echo(f"warning: {old} is deprecated; use {new}", err=True)
        if callback is not None:
            value = callback(ctx, param, value)
        if ctx.get_parameter_source(dest) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            ctx.params[dest] = value
            ctx.set_parameter_source(dest, ParameterSource.COMMANDLINE)
        return None

    kw.setdefault("default", None)
    return click.option(old, f"deprecated_{dest}", hidden=True, expose_value=False, callback=_apply, **kw)


def tta_select_option(f: Callable) -> Callable:
    """``--tta-select`` (``mrcnet-run``, ``mrcnet-infer``): :data:`mrcnet.runtime.geometry.TTA_SELECT_MODES`."""
    return click.option("--tta-select", type=click.Choice(TTA_SELECT_MODES), default="score", show_default=True,
                        help="Rotation of each detection's TTA group: score (the official rule: the most confident "
                             f"crop) or agreement (the crop most other crops agree with within {TTA_AGREE_DEG:g} deg, "
                             "ties by score; this project's option, not the official code's).")(f)
