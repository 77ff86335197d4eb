"""``poses.jsonl`` (no torch): one strict-JSON object per line and frame, written by ``mrcnet-run``.

Each line is a record ``{"frame": int, "name": str, "objects": [pose dicts], "skipped": [...],
"timings_ms": {...}}`` (or ``{"frame", "name", "error"}`` for a frame that was not processed);
the keys are documented in ``runtime/runner.py``. Numbers are always finite: the writer refuses NaN /
inf (``allow_nan=False``), so every line parses with a strict JSON parser.

Writer: one ``os.write`` per line, flushed (optionally fsynced) per frame; a failed write (disk
full) is undone by truncating the file back to its last complete line, so the file never ends
in a torn line. Reader: strict; a torn last line (a killed process) is dropped, and
``read_poses_jsonl(..., repair=True)`` truncates it away so the file can be appended to.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .files import OutputError, file_mode


class PosesFormatError(ValueError):
    """A ``poses.jsonl`` line that is not strict JSON (other than a torn last line); names file:line."""


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON number {name}")


def loads_strict(line: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""
    return json.loads(line, parse_constant=_reject_constant)


def dumps_record(record: dict) -> str:
    """One compact JSON line (no newline); ValueError when a number is NaN or inf."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


class PosesJsonlWriter:
    """Append records to ``path`` one line at a time.

    append: continue an existing file (resume) instead of starting it afresh. fsync: fsync after
    every line (slower; survives a power cut). A record with a non-finite number raises
    ValueError (nothing is written); a failed write raises :class:`OutputError` naming the file
    after truncating the partial line away.
    """

    def __init__(self, path, append: bool = False, fsync: bool = False):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self.fd = os.open(self.path, flags, file_mode())
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write ({e.strerror or e})") from None
        self.fsync = fsync
        self.lines = 0

    def write(self, record: dict) -> None:
        data = (dumps_record(record) + "\n").encode("utf8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise OutputError(f"{self.path}: write failed ({e.strerror or e}); "
                              f"{self.lines} complete line(s) kept") from None
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PosesJsonlStream:
    """The records of :class:`PosesJsonlWriter` as lines on a text stream (``mrcnet-run --out -``:
    stdout, for another program to read), flushed per line. A failed write raises
    :class:`OutputError` (e.g. the reading program has gone: a broken pipe)."""

    def __init__(self, stream, name: str = "stdout"):
        self.stream, self.name, self.lines = stream, name, 0

    def write(self, record: dict) -> None:
        line = dumps_record(record) + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError) as e:  # ValueError: a closed stream
            raise OutputError(f"{self.name}: cannot write poses ({getattr(e, 'strerror', None) or e})") from None
        self.lines += 1

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def read_poses_jsonl(path, repair: bool = False) -> list[dict]:
    """Every complete record of a ``poses.jsonl``. A torn last line (without its newline: the
    writer writes a line and its newline at once) is dropped (``repair``: and truncated away in the
    file); any other line that is not a strict-JSON object raises :class:`PosesFormatError`
    naming ``file:line``."""
    path = Path(path)
    data = path.read_bytes()
    out, pos = [], 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if last and not raw:
            break
        try:
            if last:
                raise ValueError("no newline")  # an unfinished line
            rec = loads_strict(raw.decode("utf8"))
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            if last:  # no newline: a line cut short by a killed process
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                break
            raise PosesFormatError(f"{path}:{i + 1}: not a JSON record ({e})") from None
        out.append(rec)
        pos += len(raw) + 1
    return out
