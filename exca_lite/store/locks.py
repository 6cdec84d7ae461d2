"""File locks of the map store: claim owners, writers' liveness, and probing whether someone holds one.

Locks here only ever save work (who computes which item, whether a writer's files may be folded
now); no data is kept apart by them, since cluster filesystems often do not carry locks across
hosts, or refuse them.

A lock here is an exclusive ``flock`` (``FdLock``) held for as long as its holder lives: the OS
drops it when the process dies, so a crashed writer or claim owner never blocks anyone, and "is this owner alive?"
is answered by trying the lock.

Threads of one process must exclude each other as well. ``flock`` on separate descriptors does so on
a local disk, but on NFS (where Linux emulates ``flock`` with POSIX record locks, which are per
process) it does not, so a process-wide registry of what this process holds backs every decision.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import weakref
from pathlib import Path

import filelock

from .fs import NO_LOCK_ERRNOS

_registry_lock = threading.Lock()
_fd_locks: weakref.WeakSet[FdLock] = weakref.WeakSet()
live_tokens: set[str] = set()
"""Claim owner tokens alive in this process (their lock is held by this process)."""


def _forget_after_fork() -> None:
    # a forked child holds none of its parent's locks (filelock detaches the inherited
    # descriptors in the child): it must probe them like any other process does
    global _registry_lock
    _registry_lock = threading.Lock()
    live_tokens.clear()
    for lock in list(_fd_locks):
        # close the child's copy only: an unlock (LOCK_UN) would free the parent's lock too, and
        # a copy left open would keep it held after the parent let go of it
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def new_lock(path: Path) -> filelock.FileLock:
    """A non-singleton, process-wide lock object: each one opens its own descriptor, so two of them
    conflict even inside one process (``thread_local=False``: a claim may be released by another
    thread than the one that took it)."""
    return filelock.FileLock(path, thread_local=False, is_singleton=False)


class FdLock:
    """An exclusive ``flock`` on a descriptor of its own: a few system calls, where a filelock
    ``FileLock`` costs tens of microseconds of Python. Each acquisition opens its own descriptor,
    so it conflicts with every other holder, threads of this process included (on a local disk;
    the callers back it with a process-wide registry for NFS, where flock is per process)."""

    __slots__ = ("__weakref__", "fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        _fd_locks.add(self)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (creating the file); False if ``blocking=False`` and it is held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                # the holder we waited for may have removed the file (owners do, while holding
                # it): a lock on a removed file locks nothing, so take the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except (BlockingIOError, FileNotFoundError) as exc:
                os.close(fd)
                if isinstance(exc, FileNotFoundError):
                    continue
                return False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # closing the only descriptor of the open file drops its flock

    def __enter__(self) -> FdLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def probe_lock(path: Path) -> bool | None:
    """Whether some descriptor holds ``path``'s lock now: True, False, or None if there is no file
    or this filesystem has no locks (unknown).

    Never creates the file (a probe must not leave lock files behind for finished owners), opens it
    read-only (a probe works on a read-only mount), and releases at once the lock it may win.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        taken = try_lock_fd(fd)
        if taken is None:
            return None
        if taken:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return not taken
    finally:
        os.close(fd)


def try_lock_fd(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on ``fd`` without blocking: True if taken, False if someone
    holds it, None if this filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in NO_LOCK_ERRNOS:
            return None
        raise
    return True


__all__ = ["FdLock", "live_tokens", "new_lock", "probe_lock", "try_lock_fd"]
