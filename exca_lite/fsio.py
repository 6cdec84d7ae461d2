"""Filesystem primitives: write once then publish, and inter-process locks.

Every file a reader may open is written to a temporary name in the same folder and published with
``os.replace`` (atomic on POSIX), so a reader sees the old file or the whole new one, never a torn one.
Remove-then-rename is rejected: a crash between the two would lose the file.
"""

from __future__ import annotations

import os
import typing as tp
import uuid
from pathlib import Path

if tp.TYPE_CHECKING:
    from filelock import BaseFileLock


def atomic_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    With ``fsync`` the bytes and then the folder entry are synced, so the file survives power loss
    whole or not at all. A failed write leaves no temp file behind.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a create/rename in ``folder`` survive power loss (the entry lives in the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_writer(path: Path) -> tuple[Path, tp.Callable[[], None]]:
    """A temp path to write to and the function that publishes it at ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")

    def publish() -> None:
        os.replace(tmp, path)

    return tmp, publish


def file_lock(path: Path, timeout_s: float = -1) -> BaseFileLock:
    """An inter-process lock (released by the OS if its holder dies), also exclusive between threads.

    Each call gives a new lock object: two threads of one process hold separate file descriptors,
    so they exclude each other like two processes do.
    """
    from filelock import FileLock

    return FileLock(path, timeout=timeout_s, thread_local=False, is_singleton=False)


__all__ = ["atomic_write", "atomic_writer", "file_lock", "fsync_dir"]
