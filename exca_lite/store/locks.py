"""File locks of the map store: writer slots, and probing whether someone else holds a lock.

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

from .format import StorePaths

_registry_lock = threading.Lock()
_fd_locks: weakref.WeakSet[FdLock] = weakref.WeakSet()
_held_slots: set[tuple[str, int]] = set()
live_tokens: set[str] = set()
"""Claim owner tokens alive in this process (their lock is held by this process)."""


def _forget_after_fork() -> None:
    # a forked child holds none of its parent's locks (filelock detaches the inherited
    # descriptors in the child): it must probe them like any other process does
    global _registry_lock
    _registry_lock = threading.Lock()
    _held_slots.clear()
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
    """Whether some descriptor holds ``path``'s lock now: True, False, or None if there is no file.

    Never creates the file (a probe must not leave lock files behind for finished owners), and
    releases at once the lock it may win.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):  # contention on some filesystems
                return True
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _folder_key(paths: StorePaths) -> str:
    key = paths.real
    if key is None:  # realpath costs tens of microseconds: once per StorePaths
        key = paths.real = os.path.realpath(paths.folder)
    return key


def acquire_slot(paths: StorePaths) -> tuple[int, FdLock]:
    """Take the first free writer slot: its number and the held lock (release it when done)."""
    key = _folder_key(paths)
    paths.locks.mkdir(parents=True, exist_ok=True)
    slot = -1
    with _registry_lock:
        while True:
            slot += 1
            if (key, slot) in _held_slots:
                continue
            lock = FdLock(paths.slot_lock(slot))
            if not lock.acquire(blocking=False):
                continue
            _held_slots.add((key, slot))
            return slot, lock


def try_slot(paths: StorePaths, slot: int) -> FdLock | None:
    """Take slot ``slot`` if it is free (compaction and clear take idle slots only)."""
    key = _folder_key(paths)
    with _registry_lock:
        if (key, slot) in _held_slots:
            return None
        lock = FdLock(paths.slot_lock(slot))
        if not lock.acquire(blocking=False):
            return None
        _held_slots.add((key, slot))
        return lock


def release_slot(paths: StorePaths, slot: int, lock: FdLock) -> None:
    key = _folder_key(paths)
    with _registry_lock:
        lock.release()
        _held_slots.discard((key, slot))


def held_slots_here(paths: StorePaths) -> set[int]:
    key = _folder_key(paths)
    with _registry_lock:
        return {slot for folder, slot in _held_slots if folder == key}


__all__ = [
    "FdLock",
    "acquire_slot",
    "held_slots_here",
    "live_tokens",
    "new_lock",
    "probe_lock",
    "release_slot",
    "try_slot",
]
