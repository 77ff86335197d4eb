"""Shared checks of the bad-input suite (imported by its test modules, one per CLI): each module
feeds its CLI bad inputs (issue classes 1-8) and asserts the exit status, a one-line message naming
the input, no traceback, and that results finished before (an earlier run, an export, a dataset)
survive."""
from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner


def invoke(command, args):
    """Run a click command in-process with string arguments; returns the click Result."""
    return CliRunner().invoke(command, [str(a) for a in args])


def assert_one_line_error(r, code: int, *needles: str) -> str:
    """Exit status ``code``, no traceback (only SystemExit escaped), exactly one error line, which
    contains every one of ``needles`` (e.g. the input's path and what was wrong). Returns the line."""
    assert r.exit_code == code, f"exit {r.exit_code}, expected {code}:\n{r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:") or ": error:" in ln]
    assert len(errors) == 1, r.output
    for n in needles:
        assert str(n) in errors[0], f"{n!r} not in {errors[0]!r}"
    return errors[0]


def assert_ok(r) -> None:
    assert r.exit_code == 0, r.output
    assert r.exception is None, repr(r.exception)
    assert "Traceback" not in r.output


def tree_digest(root) -> dict:
    """{relative path: sha256} of every file under ``root`` (to prove it was left untouched)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
