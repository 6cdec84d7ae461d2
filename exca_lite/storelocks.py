"""File locks of the map store: writer slots, and probing whether someone else holds a lock.

A lock here is a filelock ``FileLock`` held for as long as its holder lives: the OS drops it when the
process dies, so a crashed writer or claim owner never blocks anyone, and "is this owner alive?"
is answered by trying the lock.

Threads of one process must exclude each other as well. ``flock`` on separate descriptors does so on
a local disk, but on NFS (where Linux emulates ``flock`` with POSIX record locks, which are per
process) it does not, so a process-wide registry of what this process holds backs every decision.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import filelock

from .shards import StorePaths

_registry_lock = threading.Lock()
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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def new_lock(path: Path) -> filelock.FileLock:
    """A non-singleton, process-wide lock object: each one opens its own descriptor, so two of them
    conflict even inside one process (``thread_local=False``: a claim may be released by another
    thread than the one that took it)."""
    return filelock.FileLock(path, thread_local=False, is_singleton=False)


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
            if exc.errno in (11, 13):  # EAGAIN / EACCES: contention on some filesystems
                return True
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _folder_key(paths: StorePaths) -> str:
    return os.path.realpath(paths.folder)


def acquire_slot(paths: StorePaths) -> tuple[int, filelock.FileLock]:
    """Take the first free writer slot: its number and the held lock (release it when done)."""
    key = _folder_key(paths)
    paths.locks.mkdir(parents=True, exist_ok=True)
    slot = -1
    with _registry_lock:
        while True:
            slot += 1
            if (key, slot) in _held_slots:
                continue
            lock = new_lock(paths.slot_lock(slot))
            try:
                lock.acquire(blocking=False)
            except filelock.Timeout:
                continue
            _held_slots.add((key, slot))
            return slot, lock


def try_slot(paths: StorePaths, slot: int) -> filelock.FileLock | None:
    """Take slot ``slot`` if it is free (compaction and clear take idle slots only)."""
    key = _folder_key(paths)
    with _registry_lock:
        if (key, slot) in _held_slots:
            return None
        lock = new_lock(paths.slot_lock(slot))
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return None
        _held_slots.add((key, slot))
        return lock


def release_slot(paths: StorePaths, slot: int, lock: filelock.FileLock) -> None:
    key = _folder_key(paths)
    with _registry_lock:
        lock.release()
        _held_slots.discard((key, slot))


def held_slots_here(paths: StorePaths) -> set[int]:
    key = _folder_key(paths)
    with _registry_lock:
        return {slot for folder, slot in _held_slots if folder == key}


__all__ = [
    "acquire_slot",
    "held_slots_here",
    "live_tokens",
    "new_lock",
    "probe_lock",
    "release_slot",
    "try_slot",
]
