"""What the store needs to know about the filesystem under a cache folder, and the few file
operations whose exact system calls matter for safety there.

- ``create_new``: a file appears complete under its final name, and never replaces one that
  exists (``os.link`` of a finished temp file; ``os.replace`` would silently replace another
  process's file on a name collision).
- ``is_network_fs``: cluster filesystems (NFS, Lustre, GPFS, BeeGFS, CIFS, Ceph, FUSE) make another
  host see an index record before the shard bytes it names unless the bytes were made durable
  first: writers there ``fdatasync`` the shard before publishing.
- ``store_error``: every filesystem failure reaches the user as a ``StoreError`` naming the path,
  the cause and, where one helps, what to do.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import sys
import typing as tp
from pathlib import Path

from ..errors import StoreError
from .format import write_all

NO_LOCK_ERRNOS = frozenset(
    {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
)
"""What ``flock`` raises on a filesystem that refuses locks (NFSv3 without lockd, Lustre without
``-o flock``)."""

NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "fuse.cephfs",
        "glusterfs",
        "fuse.glusterfs",
        "9p",
        "afs",
        "panfs",
        "wekafs",
        "ocfs2",
        "gfs2",
    }
)

_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or point `folder` elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free space, or point `folder` elsewhere",
    errno.EROFS: "the filesystem is read-only: reading works, computing needs a writable folder",
    errno.EACCES: "no permission: reading works, computing needs a folder you may write to",
    errno.ENOENT: "the cache folder was removed meanwhile: run again to recompute what is missing",
}


def store_error(action: str, path: str | os.PathLike[str], exc: OSError) -> StoreError:
    """A StoreError for a failed ``action`` on ``path`` (say "writing to", "creating"), with its
    cause and a hint; raise it ``from exc``."""
    cause = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0)
    if exc.errno in NO_LOCK_ERRNOS:
        hint = "this filesystem has no file locks (items may then be computed twice)"
    text = f"{action} {path} failed: {cause} (errno {exc.errno})"
    return StoreError(f"{text}; {hint}" if hint else text)


def create_new(path: Path, content: bytes, *, fsync: bool) -> None:
    """Create ``path`` holding ``content``, complete from its first appearance; FileExistsError if
    something has that name (it is never replaced)."""
    # a temp name of its own per call: two threads creating the same file never share one
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, content)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # no hard links here (some FUSE and SMB mounts): an exclusive rename is not portable,
            # so fall back to an exclusive create; readers treat a short header as not yet there
            _create_exclusive(path, content, fsync=fsync)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if fsync:
        fsync_folder(path.parent)


def _create_exclusive(path: Path, content: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, content)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory: nothing more to do there
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=256)
def _fs_type_of_real(real: str) -> str:
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, right.split()[0] if right.split() else ""
    return fstype


def fs_type(folder: str | os.PathLike[str]) -> str:
    """The filesystem type of the mount holding ``folder`` (e.g. "ext4", "nfs4", "fuse.bindfs");
    "" if unknown. The folder need not exist (its nearest existing parent decides)."""
    path = os.path.realpath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return _fs_type_of_real(path)


_LOCAL_MAGICS = frozenset(
    {
        0xEF53,  # ext2/3/4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0x858458F6,  # ramfs
        0x794C7630,  # overlayfs (containers)
        0x2FC12FC1,  # zfs
        0xF2F52010,  # f2fs
    }
)
"""``statfs`` magic numbers of filesystems that only this host writes (linux/magic.h)."""


@functools.lru_cache(maxsize=1)
def _statfs() -> tp.Any:
    import ctypes  # numpy imports it already

    statfs = ctypes.CDLL(None, use_errno=True).statfs
    statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    return statfs


def _known_local(folder: str | os.PathLike[str]) -> bool:
    """Whether Linux ``statfs`` names the filesystem of ``folder`` (or of its nearest existing
    parent) as a local one: one system call, where reading /proc/self/mountinfo costs ~0.25 ms
    in a fresh process. False when unsure (other systems, other types: mountinfo decides)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    path = os.fspath(folder)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type, a native long, comes first
    try:
        statfs = _statfs()
        while statfs(os.fsencode(path), buf) != 0:
            parent = os.path.dirname(path)
            if ctypes.get_errno() != errno.ENOENT or parent == path or not parent:
                return False
            path = parent
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF in _LOCAL_MAGICS


def is_network_fs(folder: str | os.PathLike[str]) -> bool:
    """Whether other hosts may share ``folder`` with late visibility (network or FUSE mounts)."""
    if _known_local(folder):
        return False
    kind = fs_type(folder)
    return kind in NETWORK_FS_TYPES or kind.startswith("fuse")


__all__ = [
    "NETWORK_FS_TYPES",
    "NO_LOCK_ERRNOS",
    "create_new",
    "fs_type",
    "fsync_folder",
    "is_network_fs",
    "store_error",
]
