"""The map store on real shared and hostile filesystems (issue 9; SPEC §5).

Two FUSE mounts of one folder whose locks do not reach each other stand for two cluster hosts; a
FUSE filesystem refusing locks, a read-only bind mount, a tiny tmpfs and files manipulated by hand
stand for the rest (fixtures in ``tests/fsmounts.py``). Real processes, real files, no mocks. None
of these tests may skip under ``CI=true``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
from fsmounts import Mount, TwoHosts

pytestmark = pytest.mark.timeout(120)


# # # the fixtures: what the tests below rely on # # #


def test_two_hosts_share_files_but_not_locks(two_hosts: TwoHosts) -> None:
    # (the fixture already asserted that locks are not shared; here: files are)
    (two_hosts.a / "f").write_bytes(b"from a")
    assert (two_hosts.b / "f").read_bytes() == b"from a"
    assert (two_hosts.backing / "f").read_bytes() == b"from a"
    # exclusive creation holds across the mounts: the second O_EXCL and link() fail
    fd = os.open(two_hosts.a / "excl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(two_hosts.b / "excl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    (two_hosts.b / "tmp").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        os.link(two_hosts.b / "tmp", two_hosts.b / "f")
    assert (two_hosts.a / "f").read_bytes() == b"from a"


def test_two_hosts_page_cache_is_close_to_open(two_hosts: TwoHosts) -> None:
    """Bytes a mount already read stay cached until the file is opened again through it, or a size
    change is noticed: the late visibility a reader on another host must live with."""
    path_a, path_b = two_hosts.a / "f", two_hosts.b / "f"
    with open(path_a, "wb") as f:
        f.write(bytes(8192))
    fd_a = os.open(path_a, os.O_WRONLY)
    fd_b = os.open(path_b, os.O_RDONLY)
    try:
        assert os.pread(fd_b, 4, 100) == bytes(4)
        os.pwrite(fd_a, b"data", 100)  # same size: b's cached page is not invalidated
        stale = os.pread(fd_b, 4, 100)
        os.close(os.open(path_b, os.O_RDONLY))  # an open through b drops its cached pages
        assert os.pread(fd_b, 4, 100) == b"data"
        assert stale in (bytes(4), b"data")  # (zeros here today; a kernel may do better)
    finally:
        os.close(fd_a)
        os.close(fd_b)


def test_nolock_fs_refuses_locks_but_stores_files(nolock_fs: Mount) -> None:
    path = nolock_fs.path / "f"
    path.write_bytes(b"hello")
    assert nolock_fs.source is not None and (nolock_fs.source / "f").read_bytes() == b"hello"
    with open(path, "rb+") as f:
        with pytest.raises(OSError) as info:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert info.value.errno == errno.ENOLCK
        with pytest.raises(OSError) as info:
            fcntl.lockf(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert info.value.errno == errno.ENOLCK


def test_readonly_mount_shows_the_source_read_only(readonly_mount: Mount) -> None:
    assert readonly_mount.source is not None
    (readonly_mount.source / "f").write_bytes(b"x")
    assert (readonly_mount.path / "f").read_bytes() == b"x"
    with pytest.raises(OSError) as info:
        (readonly_mount.path / "f").write_bytes(b"y")
    assert info.value.errno == errno.EROFS


def test_small_tmpfs_fills_up(small_tmpfs: Mount) -> None:
    with pytest.raises(OSError) as info, open(small_tmpfs.path / "big", "wb", buffering=0) as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert info.value.errno == errno.ENOSPC
    Path(small_tmpfs.path / "big").unlink()
