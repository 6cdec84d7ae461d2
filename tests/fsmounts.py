"""Real filesystems for the store tests: FUSE mounts without shared locks, a FUSE filesystem that
refuses locks, a read-only bind mount and a tiny tmpfs (registered as fixtures by conftest).

- ``two_hosts``: one backing folder seen through two ``bindfs`` mounts whose locks do not reach
  each other (bindfs does not forward locks unless asked to), as two hosts see a cluster
  filesystem mounted ``nolock``/``localflock``. Attribute and entry caches are off (timeouts 0),
  so one mount sees the other's appends at once; pages a mount already read stay cached until the
  file is opened again through it, or it notices a size change (close-to-open, as on NFS).
- ``nolock_fs``: a passthrough FUSE filesystem (``tests/fuse_nolock.c``, compiled here against
  libfuse3) where ``flock`` and ``fcntl`` locks fail with ``ENOLCK``.
- ``readonly_mount``: a read-only bind mount of a folder the test fills through ``source``.
- ``small_tmpfs``: a tmpfs of ``SMALL_TMPFS_BYTES``, to fill the disk.

Each checks its own property before the test runs (and fails loudly if it does not hold), and
unmounts on teardown, lazily if something still holds the mount. Without root, ``/dev/fuse`` or a
tool, the fixture skips, except under ``CI=true`` where that is a failure: CI must run them all.
``tests/run.sh`` installs the tools (Debian: bindfs fuse3 libfuse3-dev pkg-config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import hashlib
import os
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import pytest

NOLOCK_SOURCE = Path(__file__).with_name("fuse_nolock.c")
SMALL_TMPFS_BYTES = 4 * 1024 * 1024
MOUNT_TIMEOUT_S = 20.0
CACHE_OPTIONS = "attr_timeout=0,entry_timeout=0,negative_timeout=0"
"""FUSE options of every FUSE mount here: no attribute/entry caching hides another mount's writes."""


@dataclasses.dataclass(frozen=True)
class TwoHosts:
    """One folder (``backing``) seen through two mounts ``a`` and ``b`` that share no locks."""

    backing: Path
    a: Path
    b: Path


@dataclasses.dataclass(frozen=True)
class Mount:
    """A mounted filesystem at ``path``; ``source`` is the folder behind it (None for a tmpfs).

    For ``readonly_mount``, write through ``source`` (a writable folder) and read through ``path``.
    """

    path: Path
    source: Path | None = None


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> tp.NoReturn:
    """Skip the test, or fail it under CI=true (where every filesystem test must run)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run; tests/run.sh installs what it needs)")
    pytest.skip(reason)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root (mount)")


def require_fuse(what: str, *tools: str) -> None:
    require_root(what)
    if not os.path.exists("/dev/fuse"):
        unavailable(f"{what} needs /dev/fuse (FUSE kernel support)")
    for tool in ("fusermount3", *tools):
        if shutil.which(tool) is None:
            unavailable(
                f"{what} needs {tool!r} (Debian: apt-get install bindfs fuse3 libfuse3-dev "
                "pkg-config; tests/run.sh does it as root)"
            )


def run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a mount-related command; a failure fails the test with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"{what}: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (also a bind mount within one filesystem, which
    ``os.path.ismount`` does not see)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # field 5 is the mount point, with spaces, tabs, newlines and backslashes escaped
            point = line.split(" ")[4]
            for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n")):
                point = point.replace(code, char)
            if point.replace("\\134", "\\") == target:
                return True
    return False


def wait_mounted(path: Path, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            _, stderr = proc.communicate()
            pytest.fail(f"{what}: exited {proc.returncode} before mounting: {stderr.strip()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {path} not mounted after {MOUNT_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def unmount(path: Path, fuse: bool) -> None:
    """Unmount ``path``. Busy (objects of the finished test still hold files or maps there, in
    reference cycles): collect garbage and retry, then detach it lazily. Never raises."""
    commands = [["fusermount3", "-u", str(path)]] if fuse else [["umount", str(path)]]
    lazy = [["fusermount3", "-uz", str(path)]] if fuse else []
    for attempt, cmd in enumerate([*commands, *commands, *lazy, ["umount", "-l", str(path)]]):
        if not is_mounted(path):
            return
        if attempt == 1:
            gc.collect()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, capture_output=True, timeout=MOUNT_TIMEOUT_S)
    if is_mounted(path):
        sys.stderr.write(f"fsmounts: could not unmount {path}\n")


# # # lock probes (also used by the tests) # # #


def flock_free(path: Path) -> bool:
    """Whether an exclusive non-blocking ``flock`` on ``path`` succeeds right now (then released)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the lock if taken
    return True


_LOCKF_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(1)
sys.exit(0)
"""


def lockf_free_elsewhere(path: Path) -> bool:
    """Whether another process can take a POSIX (``fcntl``) lock on ``path`` right now."""
    proc = subprocess.run([sys.executable, "-c", _LOCKF_PROBE, str(path)], timeout=30)
    return proc.returncode == 0


def assert_locks_not_shared(hosts: TwoHosts) -> None:
    """The property the two mounts exist for: a lock taken through ``a`` is invisible through
    ``b`` (flock and fcntl), while it does hold through ``a`` itself (locks work, per mount)."""
    probe = hosts.a / ".lock-probe"
    probe.write_bytes(b"")
    fd = os.open(probe, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        problems = []
        if not flock_free(hosts.b / probe.name):
            problems.append("flock taken through mount a also blocks mount b (forwarded)")
        if flock_free(probe):
            problems.append("flock taken through mount a does not block a second open of a")
        fcntl.flock(fd, fcntl.LOCK_UN)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        if not lockf_free_elsewhere(hosts.b / probe.name):
            problems.append("fcntl lock taken through mount a also blocks mount b (forwarded)")
        if lockf_free_elsewhere(probe):
            problems.append("fcntl lock taken through mount a does not block another process on a")
    finally:
        os.close(fd)
        probe.unlink()
    assert not problems, f"two_hosts mounts {hosts}: " + "; ".join(problems)


def assert_sizes_visible(hosts: TwoHosts) -> None:
    """Attribute caching is off: bytes appended through one mount are seen through the other."""
    probe = hosts.a / ".size-probe"
    with open(probe, "wb") as f:
        f.write(b"x" * 10)
        f.flush()
        with open(hosts.b / probe.name, "rb") as other:
            f.write(b"y" * 10)
            f.flush()
            size = os.fstat(other.fileno()).st_size
            data = other.read()
    probe.unlink()
    assert size == 20 and data == b"x" * 10 + b"y" * 10, (
        f"two_hosts: mount b sees {size} bytes / {data!r} after mount a appended: attribute "
        f"caching is on ({CACHE_OPTIONS} not honoured?)"
    )


# # # fixtures # # #


def mount_bindfs(source: Path, mountpoint: Path) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    # bindfs forwards no lock by default; say it explicitly (its man page warns the default may
    # change). Single-threaded (the default) is fine without lock forwarding.
    run(
        ["bindfs", "--disable-lock-forwarding", "-o", CACHE_OPTIONS, str(source), str(mountpoint)],
        "bindfs",
    )
    wait_mounted(mountpoint, "bindfs")


@pytest.fixture
def two_hosts(tmp_path: Path) -> tp.Iterator[TwoHosts]:
    """A folder and two bindfs mounts of it that share no locks (see the module docstring)."""
    require_fuse("two_hosts", "bindfs")
    hosts = TwoHosts(backing=tmp_path / "backing", a=tmp_path / "host-a", b=tmp_path / "host-b")
    hosts.backing.mkdir()
    try:
        mount_bindfs(hosts.backing, hosts.a)
        mount_bindfs(hosts.backing, hosts.b)
        assert_locks_not_shared(hosts)
        assert_sizes_visible(hosts)
        yield hosts
    finally:
        unmount(hosts.a, fuse=True)
        unmount(hosts.b, fuse=True)


@pytest.fixture(scope="session")
def nolock_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/fuse_nolock.c`` compiled against libfuse3 (once per session)."""
    require_fuse("nolock_fs", "gcc", "pkg-config")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        unavailable("nolock_fs needs libfuse3's headers (Debian: libfuse3-dev)")
    digest = hashlib.sha256(NOLOCK_SOURCE.read_bytes()).hexdigest()[:12]
    binary = tmp_path_factory.mktemp("fuse_nolock") / f"fuse_nolock-{digest}"
    run(
        [
            "gcc",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-o",
            str(binary),
            str(NOLOCK_SOURCE),
            *flags.stdout.split(),
        ],
        "compiling fuse_nolock.c",
    )
    return binary


def assert_no_locks(folder: Path) -> None:
    """``flock`` and ``fcntl`` locks in ``folder`` fail with ENOLCK (the kernel forwards them)."""
    probe = folder / ".lock-probe"
    probe.write_bytes(b"")
    fd = os.open(probe, os.O_RDWR)
    try:
        for name, take in [
            ("flock", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
            ("blocking flock", lambda: fcntl.flock(fd, fcntl.LOCK_SH)),
            ("lockf", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
            ("blocking lockf", lambda: fcntl.lockf(fd, fcntl.LOCK_EX)),
        ]:
            with pytest.raises(OSError) as info:
                take()
            assert info.value.errno == errno.ENOLCK, f"nolock_fs: {name} raised {info.value!r}"
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def nolock_fs(tmp_path: Path, nolock_binary: Path) -> tp.Iterator[Mount]:
    """A passthrough FUSE mount of a fresh folder where every flock/fcntl lock fails (ENOLCK)."""
    mount = Mount(path=tmp_path / "nolock", source=tmp_path / "nolock-source")
    assert mount.source is not None
    mount.source.mkdir()
    mount.path.mkdir()
    # in the foreground (-f), as our own child: teardown unmounts, then waits for it to exit
    proc = subprocess.Popen(
        [str(nolock_binary), str(mount.source), str(mount.path), "-f", "-o", CACHE_OPTIONS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_mounted(mount.path, "fuse_nolock", proc)
        assert_no_locks(mount.path)
        yield mount
    finally:
        unmount(mount.path, fuse=True)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # detached lazily and still in use: stop serving (leftover descriptors get ENOTCONN)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def readonly_mount(tmp_path: Path) -> tp.Iterator[Mount]:
    """``path``: a read-only bind mount of ``source`` (a writable folder: fill it there first)."""
    require_root("readonly_mount")
    mount = Mount(path=tmp_path / "readonly", source=tmp_path / "readonly-source")
    assert mount.source is not None
    mount.source.mkdir()
    mount.path.mkdir()
    try:
        run(["mount", "--bind", str(mount.source), str(mount.path)], "bind mount")
        run(["mount", "-o", "remount,ro,bind", str(mount.path)], "remount read-only")
        assert is_mounted(mount.path), f"readonly_mount: {mount.path} is not a mount point"
        with pytest.raises(OSError) as info:
            (mount.path / ".write-probe").write_bytes(b"")
        assert info.value.errno == errno.EROFS, f"readonly_mount: writing raised {info.value!r}"
        yield mount
    finally:
        unmount(mount.path, fuse=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> tp.Iterator[Mount]:
    """A tmpfs of ``SMALL_TMPFS_BYTES`` (4 MiB) at ``path``, to fill up."""
    require_root("small_tmpfs")
    mount = Mount(path=tmp_path / "tmpfs")
    mount.path.mkdir()
    try:
        run(
            ["mount", "-t", "tmpfs", "-o", f"size={SMALL_TMPFS_BYTES}", "tmpfs", str(mount.path)],
            "tmpfs",
        )
        assert is_mounted(mount.path), f"small_tmpfs: {mount.path} is not a mount point"
        total = os.statvfs(mount.path)
        assert total.f_blocks * total.f_frsize <= 2 * SMALL_TMPFS_BYTES, "small_tmpfs: too big"
        yield mount
    finally:
        unmount(mount.path, fuse=False)
