"""Files on disk (no torch): atomic writes, file hashing, output folders that can be written.

One place for:

- :func:`atomic_open` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: a temporary file
  next to the target, ``os.replace`` on success, so the target only ever holds a complete file;
  new files get the permissions of a normal ``open`` under the umask (``tempfile.mkstemp`` alone
  would give 0600: an export made as root could not be read by the runtime's user);
- :func:`sha256_file`: hex SHA-256 of a file (export manifests, demo checkpoint checks);
- :func:`prepare_out_dir`: create an output folder or raise :class:`OutputError` with one line
  (the path exists as a file, is read-only, or cannot be created);
- :func:`load_yaml`: a YAML file read safely, :class:`InputFileError` with one line.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import yaml

from ..errors import error_line


class OutputError(OSError):
    """An output that cannot be written (folder is a file, read-only, disk full); names the path."""


class InputFileError(ValueError):
    """An input file that cannot be read or parsed; one line starting with its path."""


def load_yaml(path):
    """The content of a YAML file (``yaml.safe_load``). :class:`InputFileError`
    ``"<path>: cannot read (...)"`` / ``"<path>: not valid YAML (...)"``."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise InputFileError(f"{path}: not valid YAML ({error_line(e)})") from None


def file_mode() -> int:
    """Permissions of a new file under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """Open a temporary file next to ``path``; on success it replaces ``path`` (``os.replace``).

    On an exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path``
    is left untouched. The new file is flushed and fsynced before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w", encoding="utf8") as f:
        f.write(text)


def atomic_copy(src, dst) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically, with normal (umask) permissions."""
    with open(src, "rb") as fi, atomic_open(dst, "wb") as fo:
        for block in iter(lambda: fi.read(1 << 22), b""):
            fo.write(block)


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def prepare_out_dir(path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and parents) and check it can be written.

    Raises :class:`OutputError` with one line naming ``option`` and the path when it is a file,
    cannot be created, or is not writable."""
    p = Path(os.fspath(path))
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {p}: exists and is not a folder")
    blocking = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{option} {p}: cannot create the folder ({blocking} is a file, not a folder)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{option} {p}: cannot create the folder ({e.strerror or type(e).__name__})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {p}: folder is not writable")
    try:  # os.access does not see read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{option} {p}: folder is not writable ({e.strerror or type(e).__name__})") from None
    return p


def check_out_file(path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (its folder is created): :class:`OutputError`
    with one line when ``path`` is a folder or its folder cannot be written."""
    p = Path(os.fspath(path))
    if p.is_dir():
        raise OutputError(f"{option} {p}: is a folder, expected a file")
    prepare_out_dir(p.parent, option=f"{option} {p}: folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{option} {p}: file is not writable")
    return p
