"""Atomic writes: a file or a whole folder appears complete or not at all.

Files and folders get the permissions a plain ``open``/``mkdir`` gives them (0666 and 0777
less the process umask: 0644 and 0755 under umask 022); pass ``mode=`` (e.g. 0o600) for a
secret, which is then never readable by others, not even while it is being written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir"]

_ATTEMPTS = 100


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` no one else uses (as tempfile names them)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temp_file(path: Path, mode: int | None) -> tuple[int, Path]:
    """Open a new temporary sibling of ``path`` for writing: ``mode`` exactly, or 0o666 less
    the umask (what ``open`` gives a new file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = _temp_name(path)
        try:
            # a secret starts at 0o600 at most, so no one can open it before the chmod
            fd = os.open(tmp, flags, 0o666 if mode is None else mode & 0o600)
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode) if hasattr(os, "fchmod") else os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")  # pragma: no cover


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    ``mode``: the file's permission bits, e.g. 0o600 for a secret; default: 0o666 less the
    umask, as for any new file (0o644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_file(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    """Write UTF-8 ``text`` atomically (``mode`` as for :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | Path, obj: Any, *, mode: int | None = None) -> None:
    """Write ``obj`` as indented JSON atomically (``mode`` as for :func:`atomic_write_bytes`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", mode=mode)


def _create_temp_dir(path: Path, mode: int | None) -> Path:
    for _ in range(_ATTEMPTS):
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777 if mode is None else mode & 0o700)
        except FileExistsError:  # pragma: no cover
            continue
        if mode is not None:
            try:
                os.chmod(tmp, mode)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")  # pragma: no cover


@contextmanager
def atomic_dir(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    The old folder (if any) is moved aside first and removed after the swap, so a reader
    sees either the old complete folder or the new complete folder. ``mode``: the folder's
    permission bits (e.g. 0o700); default: 0o777 less the umask, as for any new folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_dir(path, mode)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
