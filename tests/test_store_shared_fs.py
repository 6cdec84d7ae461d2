"""The map store on real shared and hostile filesystems (issue 9; SPEC §5).

Two FUSE mounts of one folder whose locks do not reach each other stand for two cluster hosts; a
FUSE filesystem refusing locks, a read-only bind mount, a tiny tmpfs and files manipulated by hand
stand for the rest (fixtures in ``tests/fsmounts.py``). Real processes, real files, no mocks. None
of these tests may skip under ``CI=true``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import faulthandler
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pytest
from fsmounts import Mount, TwoHosts
from map_defs import Featurizer
from store_worker import value_of

import exca_lite as xl
from exca_lite.store import MapStore, fs, release_all_parked

WORKER = str(Path(__file__).with_name("store_worker.py"))

pytestmark = pytest.mark.timeout(120)


# # # the fixtures: what the tests below rely on # # #


def test_fuse_mounts_count_as_shared_and_local_folders_do_not(
    two_hosts: TwoHosts, tmp_path: Path
) -> None:
    """Writers on a FUSE mount make their bytes durable before publishing (another host may see
    the record first); the quick ``statfs`` answer never takes a FUSE mount for a local one."""
    for folder in (two_hosts.a, two_hosts.a / "not" / "there" / "yet"):
        assert not fs._known_local(folder)
        assert fs.is_network_fs(folder), folder
        assert MapStore(folder).network
    assert fs._known_local(two_hosts.backing) and not fs.is_network_fs(two_hosts.backing)
    assert not fs.is_network_fs(tmp_path / "missing" / "cache")


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


# # # helpers # # #


# Where the store keeps item bytes and what says where they are. ADAPT HERE when the on-disk
# names change: the tests below find data files only through these three.
DATA_SUFFIXES = (".bin", ".idx")
"""Suffixes of the store's data files: item bytes (shards) and what publishes them (indexes)."""
ITEM_BYTES_SUFFIX = ".bin"
"""The files holding item bytes: what a late-visibility lag shows truncated, zeroed or missing."""
VERSION_BYTES = slice(6, 8)
"""Where both data files' headers hold the format version (little-endian u16)."""


def data_files(folder: Path) -> list[Path]:
    """Every data file of the store in ``folder`` (no temp files, locks or claims)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(DATA_SUFFIXES) and not p.name.startswith(".")
    )


def item_byte_files(folder: Path) -> list[Path]:
    return [p for p in data_files(folder) if p.name.endswith(ITEM_BYTES_SUFFIX)]


def format_version(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8)[VERSION_BYTES], "little")


def set_format_version(path: Path, version: int) -> None:
    with open(path, "r+b") as f:
        f.seek(VERSION_BYTES.start)
        f.write(version.to_bytes(2, "little"))


def same(a: tp.Any, b: tp.Any) -> bool:
    if isinstance(b, np.ndarray):
        return type(a) is np.ndarray and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and bool(a == b)


def digest(paths: tp.Iterable[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@contextlib.contextmanager
def recorded_warnings() -> tp.Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside, kept instead of raised (the suite turns warnings into errors)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def warning_texts(caught: list[warnings.WarningMessage]) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in caught]


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[str]]) -> tp.Iterator[list[subprocess.Popen[str]]]:
    """Kill whatever is still running of ``procs`` on the way out (a failed test leaves no process
    holding a mount)."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def start_script(*args: object, log: Path | None = None) -> subprocess.Popen[str]:
    """This module as a script in a subprocess (see ``script``); its output in pipes, or in the
    files ``log.out``/``log.err`` (a chatty process must never block on a full pipe)."""
    code = "import test_store_shared_fs; test_store_shared_fs.script()"
    with contextlib.ExitStack() as files:
        if log is not None:
            stdout = files.enter_context(open(log.with_suffix(".out"), "w"))
            stderr = files.enter_context(open(log.with_suffix(".err"), "w"))
        return subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdout=subprocess.PIPE if log is None else stdout,
            stderr=subprocess.PIPE if log is None else stderr,
            text=True,
        )


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exca_lite", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def expected_feature(item: str, dim: int = 4) -> np.ndarray:
    """What ``map_defs.Featurizer`` computes for ``item``."""
    return np.full(dim, len(item), dtype=np.float32) + np.arange(dim)


# # # two writers on two hosts # # #

SMALL_ITEM = 64  # float32: 256 bytes
LARGE_ITEM = 81_920  # float32: 320 KiB
ROUNDS = 24
FLUSH_EVERY = 25
ROUND_DEADLINE_S = 15.0
"""A writer still in one round after this is stuck: it prints its stacks and exits."""
WRITER_DEADLINE_S = 90.0


def round_items(writer: int) -> list[str]:
    """The items ``writer`` (0 or 1) writes in each round: ``s*`` small, ``L*`` large; the first
    100 small and 4 large are written by both (overlapping), the rest by one writer only."""
    small = [*range(100), *range(100 + 100 * writer, 200 + 100 * writer)]
    large = [*range(4), *range(4 + 2 * writer, 6 + 2 * writer)]
    return [f"s{i:03d}" for i in small] + [f"L{i}" for i in large]


def writers_of(item: str) -> tuple[int, ...]:
    return tuple(w for w in (0, 1) if item in round_items(w))


def shared_value(writer: int, item: str, round_: int) -> np.ndarray:
    """Writer ``writer``'s output for ``item``: identifiable by writer, item and round (its first
    three numbers say which; the rest differ between items)."""
    number = int(item[1:])
    size = LARGE_ITEM if item[0] == "L" else SMALL_ITEM
    value = np.arange(size, dtype=np.float32) + np.float32(1000 * number)
    value[:3] = (writer + 1, number, round_)
    return value


def describe_value(value: tp.Any) -> str:
    """What a wrong value is: whose output its first numbers claim, and how much of it differs."""
    if type(value) is not np.ndarray or value.dtype != np.float32 or value.size < 3:
        return f"{type(value).__name__} {str(value)[:40]}"
    writer, number, round_ = (int(x) for x in value[:3])
    writer -= 1
    claimed = f"writer {writer}'s item {number} of round {round_}"
    if writer in (0, 1) and 0 <= number < 300 and 0 <= round_ < ROUNDS:
        for kind in "sL":
            exp = shared_value(writer, f"{kind}{number}", round_)
            if exp.shape == value.shape:
                differ = int((exp != value).sum())
                if differ == 0:
                    return f"another item's bytes: {claimed} ({kind}{number})"
                return f"torn: starts as {claimed}, {differ} of {value.size} numbers differ"
    return f"garbage ([{value[0]:g}, {value[1]:g}, {value[2]:g}, ...]: not a start of any value)"


def barrier(sync: Path, name: str, me: int, deadline_s: float = ROUND_DEADLINE_S + 5) -> None:
    """Wait for the other writer to reach ``name`` too (files in a local folder, not the mounts)."""
    (sync / f"{name}-{me}").touch()
    other = sync / f"{name}-{1 - me}"
    deadline = time.monotonic() + deadline_s
    while not other.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"writer {me}: the other writer never reached {name}")
        time.sleep(0.0005)


def shared_writer(root: str, sync: str, me: int, rounds: int) -> None:
    """Write every round's items into ``root/round-NN`` (in a random order, flushing every
    FLUSH_EVERY items), starting each round with the other writer. Prints ``published R items``
    after each flush returned, ``done R`` once the writer closed, ``error R ...`` if it raised."""
    from exca_lite.store import MapStore

    for round_ in range(rounds):
        # a writer stuck in the store: its threads' stacks on stderr, and it exits
        faulthandler.dump_traceback_later(ROUND_DEADLINE_S, exit=True)
        rng = random.Random(round_ * 2 + me)
        items = round_items(me)
        rng.shuffle(items)
        barrier(Path(sync), f"round-{round_}", me)
        published: list[str] = []
        try:
            store = MapStore(Path(root) / f"round-{round_:02d}")
            with store.writer() as w:
                for k, item in enumerate(items, 1):
                    w.write(item, shared_value(me, item, round_))
                    if k % FLUSH_EVERY == 0:
                        w.flush()
                        published = items[:k]
                        out(f"published {round_} {' '.join(published)}")
            out(f"done {round_}")
        except Exception as exc:
            out(f"error {round_} {type(exc).__name__}: {str(exc)[:300]!r}")
        faulthandler.cancel_dump_traceback_later()


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclasses.dataclass
class Tally:
    """What went wrong, counted over every round and view (printed in the assertion message)."""

    rounds: int = 0
    bad_rounds: set[int] = dataclasses.field(default_factory=set)
    wrong: int = 0
    lost: int = 0
    errors: int = 0
    warnings: int = 0
    verify_problems: int = 0
    writer_errors: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    wrong_kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def bad(self, round_: int, kind: str, count: int, example: str) -> None:
        setattr(self, kind, getattr(self, kind) + count)
        self.bad_rounds.add(round_)
        if sum(e.startswith(f"{kind} ") for e in self.examples) < 3:  # a few of each kind
            self.examples.append(f"{kind} in round {round_}: {example}")

    def __str__(self) -> str:
        return (
            f"{len(self.bad_rounds)} of {self.rounds} rounds bad: {self.wrong} wrong values "
            f"{dict(self.wrong_kinds)}, "
            f"{self.lost} lost items, {self.errors} read errors (load() failing on an item "
            f"missing() reported present), {self.warnings} warnings, "
            f"{self.verify_problems} verify problems, {self.writer_errors} writer errors "
            "(reads counted per view: mount a, mount b, backing folder); e.g.\n  "
            + "\n  ".join(self.examples)
        )


def check_round(
    tally: Tally, round_: int, views: dict[str, Path], published: dict[str, set[int]]
) -> None:
    """Every published item present through every view, and exactly one writer's output."""
    from exca_lite.store import MapStore

    uids = sorted(published)
    for view, folder in views.items():
        with recorded_warnings() as caught:
            store = MapStore(folder)
            missing = set(store.missing(uids))
            if missing:
                tally.bad(round_, "lost", len(missing), f"{view}: lost {sorted(missing)[:4]}")
            for uid in uids:
                if uid in missing:
                    continue
                try:
                    got = store.load(uid)
                except Exception as exc:
                    tally.bad(round_, "errors", 1, f"{view}: load({uid!r}) raised {exc!r:.200}")
                    continue
                allowed = writers_of(uid)
                if not any(same(got, shared_value(w, uid, round_)) for w in allowed):
                    what = describe_value(got)
                    tally.wrong_kinds[what.split(" ", 1)[0].strip(":")] += 1
                    tally.bad(
                        round_, "wrong", 1, f"{view}: {uid} (writers {allowed}) read back as {what}"
                    )
            if view == "mount a":
                problems = store.verify()
                if problems:
                    tally.bad(round_, "verify_problems", len(problems), f"verify: {problems[0]}")
            store.close()
        if caught:
            tally.bad(round_, "warnings", len(caught), f"{view}: {warning_texts(caught)[0]}")


@pytest.mark.timeout(180)
def test_two_hosts_concurrent_writers_never_mix_or_lose_items(
    two_hosts: TwoHosts, tmp_path: Path
) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    roots = [two_hosts.a, two_hosts.b]
    t0 = time.monotonic()
    outputs, crashes = [], []
    logs = [tmp_path / f"writer-{w}" for w in (0, 1)]
    writers = [
        start_script("shared-writer", roots[w], sync, w, ROUNDS, log=logs[w]) for w in (0, 1)
    ]
    with reaped(writers):
        deadline = time.monotonic() + WRITER_DEADLINE_S
        for w, proc in enumerate(writers):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                stderr = logs[w].with_suffix(".err").read_text()
                crashes.append(f"writer {w} exited {proc.returncode}: ...{stderr[-2500:]}")
            outputs.append(logs[w].with_suffix(".out").read_text().splitlines())
    write_s = time.monotonic() - t0
    tally = Tally(rounds=ROUNDS)
    for round_ in range(ROUNDS):
        # what each writer published: everything once it closed, else what its flushes returned
        published: dict[str, set[int]] = {}
        for w, lines in enumerate(outputs):
            items: list[str] = []
            for line in lines:
                kind, number, *rest = line.split(" ", 2)
                if int(number) != round_:
                    continue
                if kind == "published":
                    items = rest[0].split()
                elif kind == "done":
                    items = round_items(w)
                elif kind == "error":
                    tally.bad(round_, "writer_errors", 1, f"writer {w}: {rest[0]}")
            for item in items:
                published.setdefault(item, set()).add(w)
        name = f"round-{round_:02d}"
        views = {
            "mount a": two_hosts.a / name,
            "mount b": two_hosts.b / name,
            "backing": two_hosts.backing / name,
        }
        check_round(tally, round_, views, published)
    done = [sum(line.startswith("done ") for line in lines) for lines in outputs]
    print(f"two hosts: rounds done by each writer {done} in {write_s:.1f} s; {tally}")
    assert not tally.bad_rounds and not crashes, (
        f"rounds done by each writer: {done}; {tally}\n" + "\n".join(crashes)
    )


# # # compaction on one host while the other writes # # #

LIVE_WRITER = ["1000", "4000", "20", "0.0005"]
"""store_worker write: items 1000..3999, publishing every 20, 0.5 ms apart (a few seconds)."""


@pytest.mark.timeout(180)
def test_compact_on_one_host_while_the_other_writes_loses_nothing(two_hosts: TwoHosts) -> None:
    from exca_lite.store import MapStore

    report = []
    lost_total = wrong_total = compactions = folded = 0
    for round_ in range(3):
        name = f"cache-{round_}"
        first = subprocess.run(
            [sys.executable, WORKER, "write", str(two_hosts.b / name), "0", "300", "50", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 0, first.stderr[-3000:]
        # a writer through mount b, publishing every 20 items, while mount a compacts
        with reaped(
            [
                subprocess.Popen(
                    [sys.executable, WORKER, "write", str(two_hosts.b / name), *LIVE_WRITER],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            ]
        ) as (writer,):
            assert writer.stdout is not None
            # its store is open, then its first flush returned
            lines = [writer.stdout.readline(), writer.stdout.readline()]
            assert lines[-1].startswith("published"), lines
            compactor = MapStore(two_hosts.a / name)
            while writer.poll() is None:
                folded += compactor.compact()["items"]
                compactions += 1
                time.sleep(0.05)
            stdout, stderr = writer.communicate(timeout=60)
            assert writer.returncode == 0, stderr[-3000:]
            assert "done" in stdout.split("\n"), stdout[-500:]
        compactor.compact()  # and once more with nobody writing
        uids = [f"item-{i}" for i in [*range(300), *range(1000, 4000)]]
        for view in (two_hosts.a / name, two_hosts.b / name, two_hosts.backing / name):
            with recorded_warnings() as caught:
                store = MapStore(view)
                missing = store.missing(uids)
                wrong = [
                    u for u in uids if u not in missing and not same(store.load(u), value_of(u))
                ]
                problems = store.verify()
                store.close()
            lost_total += len(missing)
            wrong_total += len(wrong)
            if missing or wrong or problems or caught:
                report.append(
                    f"round {round_}, {view}: {len(missing)} lost (e.g. {missing[:3]}), "
                    f"{len(wrong)} wrong, verify {problems[:2]}, warnings {warning_texts(caught)[:2]}"
                )
    print(
        f"compact while writing: {compactions} compactions folded {folded} items; "
        f"{lost_total} lost, {wrong_total} wrong"
    )
    assert folded > 0, "no compaction folded anything while the writer wrote: this proved nothing"
    assert not report, (
        f"{compactions} compactions: {lost_total} items lost, {wrong_total} wrong:\n"
        + "\n".join(report)
    )


# # # late visibility, simulated on a plain folder # # #


LAG_FIRST = [f"item-{i}" for i in range(60)]  # arrays, a large one (item-49), msgpack, pickle
LAG_SECOND = [f"item-{i}" for i in range(100, 160)]


def two_batches(folder: str, go_file: str) -> None:
    """Write LAG_FIRST, publish it (prints ``flushed``), wait for ``go_file``, write LAG_SECOND."""
    store = MapStore(folder)
    with store.writer() as w:
        for uid in LAG_FIRST:
            w.write(uid, value_of(uid))
        w.flush()
        out("flushed")
        deadline = time.monotonic() + 60
        while not os.path.exists(go_file) and time.monotonic() < deadline:
            time.sleep(0.001)
        for uid in LAG_SECOND:
            w.write(uid, value_of(uid))
    out("done")


def lagging_cache(folder: Path) -> tuple[MapStore, dict[Path, int], dict[Path, bytes]]:
    """A cache written by another process in two published batches: a reader that saw (and
    mapped) the first batch only, the sizes of the item-bytes files after the first batch, and the
    bytes of those the second one changed."""
    go_file = folder.parent / "go"
    with reaped([start_script("two-batches", folder, go_file)]) as (writer,):
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "flushed"
        sizes = {p: p.stat().st_size for p in item_byte_files(folder)}
        early = MapStore(folder)
        assert early.missing(LAG_FIRST) == [], "the first batch is not published"
        assert wrong_values(early, LAG_FIRST) == ([], [], [])
        go_file.touch()
        stdout, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0 and stdout.split() == ["done"], stderr[-3000:]
    after = {p: p.read_bytes() for p in item_byte_files(folder)}
    changed = {p: b for p, b in after.items() if len(b) != sizes.get(p, 0)}
    return early, sizes, changed


def hide(situation: str, sizes: dict[Path, int], after: dict[Path, bytes], side: Path) -> None:
    """Make the second batch's bytes look not yet arrived, as another host may see them."""
    for path, data in after.items():
        start = sizes.get(path, 0)
        if situation == "shard_truncated":  # the index is ahead of its shard
            os.truncate(path, start)
        elif situation == "shard_zeroed":  # full size, but the bytes are not there yet
            with open(path, "r+b") as f:
                f.seek(start)
                f.write(bytes(len(data) - start))
        elif situation == "shard_empty":
            os.truncate(path, 0)
        elif situation == "shard_missing":
            path.rename(side / path.name)
        else:
            raise ValueError(situation)


def restore(situation: str, sizes: dict[Path, int], after: dict[Path, bytes], side: Path) -> None:
    """The bytes arrive (in place: same files, as on a network filesystem)."""
    for path, data in after.items():
        if situation == "shard_missing":
            (side / path.name).rename(path)
            continue
        start = 0 if situation == "shard_empty" else sizes.get(path, 0)
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(data[start:])
        assert path.read_bytes() == data


def wrong_values(store: MapStore, uids: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(uids served wrong, uids not served, errors) -- a KeyError is a miss, not an error."""
    wrong, absent, errors = [], [], []
    for uid in uids:
        try:
            got = store.load(uid)
        except KeyError:
            absent.append(uid)
            continue
        except Exception as exc:
            errors.append(f"{uid}: {exc!r:.200}")
            continue
        if not same(got, value_of(uid)):
            wrong.append(uid)
    return wrong, absent, errors


LAG_PICKUP_S = 5.0
"""How long a reader may take to serve items once their bytes are there (it may retry lagging
entries on a backoff rather than on every look)."""
LAGS = {
    "shard_truncated": "the index is ahead of its shard (the shard is shorter)",
    "shard_zeroed": "the shard has its full size, but zeros where the items are",
    "shard_empty": "the shard is empty",
    "shard_missing": "the shard is not there",
}


def late_visibility(folder: Path, situation: str) -> list[str]:
    """The scenario of ``test_late_visibility_is_not_damage``, run in a subprocess of it (a reader
    touching a mapped page past a file's end would kill the test session with SIGBUS)."""
    side = folder.parent / "side"
    side.mkdir()
    early, sizes, after = lagging_cache(folder)
    everything = LAG_FIRST + LAG_SECOND
    if not after:
        return ["the second batch changed no item-bytes file"]
    problems: list[str] = []
    with recorded_warnings() as caught:
        hide(situation, sizes, after, side)
        late = MapStore(folder)  # a reader that opens during the lag
        # a reader that saw bytes never sees their file shrink (its host has them): only a fresh
        # one meets an emptied or missing shard
        readers = {"reader opened during the lag": late}
        if situation in ("shard_truncated", "shard_zeroed"):
            readers["reader opened before the lag"] = early
        for name, store in readers.items():
            for _ in range(3):  # the lag lasts a few looks
                store.refresh()
                wrong, _, errors = wrong_values(store, everything)
                if wrong or errors:
                    problems.append(
                        f"during the lag, {name}: wrong {wrong[:5]}, errors {errors[:3]}"
                    )
        lag_warnings = warning_texts(caught)
        restore(situation, sizes, after, side)
        deadline = time.monotonic() + LAG_PICKUP_S
        while time.monotonic() < deadline and any(s.missing(everything) for s in readers.values()):
            time.sleep(0.05)
        for name, store in readers.items():
            missing = store.missing(everything)
            wrong, absent, errors = wrong_values(store, everything)
            if missing or wrong or absent or errors:
                problems.append(
                    f"once the bytes are back, {name}: {len(missing)} missing {missing[:4]}, "
                    f"wrong {wrong[:4]}, not served {absent[:4]}, errors {errors[:2]}"
                )
        early.close()
        late.close()
    if lag_warnings:
        problems.append(f"warnings during a short lag: {lag_warnings[:3]}")
    if len(caught) > len(lag_warnings):
        problems.append(f"warnings once restored: {warning_texts(caught)[len(lag_warnings) :][:3]}")
    return problems


@pytest.mark.parametrize("situation", list(LAGS))
def test_late_visibility_is_not_damage(tmp_path: Path, situation: str) -> None:
    """The bytes of a published batch arrive late (index ahead of its shard, shard full size but
    zeros, shard empty, shard missing): no wrong value, no damage warning, and the same reader
    objects serve the items once the bytes are there."""
    with reaped([start_script("late-visibility", tmp_path / "cache", situation)]) as (proc,):
        stdout, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 0, f"{situation}: exited {proc.returncode}: {stderr[-3000:]}"
    problems = json.loads(stdout.splitlines()[-1])
    assert not problems, f"{situation}:\n" + "\n".join(problems)


# # # a filesystem that refuses locks # # #

NO_LOCKS = re.compile(r"(?i)(file ?system|mount)\b.*\block|\block.*\b(file ?system|mount)")
"""A StoreError on a lockless filesystem says so: the filesystem (or mount) and locks, not only
the raw ``[Errno 37] No locks available``."""
ITEMS = [f"item{i:03d}" + "x" * (i % 5) for i in range(120)]


def check_cache(folder: Path, item_of: tp.Callable[[str], tp.Any]) -> list[str]:
    """Problems of the cache in ``folder``: values not ``item_of(uid)``, verify, warnings."""
    problems = []
    with recorded_warnings() as caught:
        store = MapStore(folder)
        for uid in store.item_uids():
            try:
                got = store.load(uid)
            except Exception as exc:
                problems.append(f"load({uid!r}) raised {exc!r:.200}")
                continue
            if not same(got, item_of(uid)):
                problems.append(f"{uid!r} read back wrong: {got!r:.80}")
        problems += [f"verify: {p}" for p in store.verify()]
        store.close()
    return problems + [f"warning: {w}" for w in warning_texts(caught)]


@pytest.mark.parametrize("cluster", [None, "processpool"])
def test_no_locks_computing_works_or_says_the_filesystem_has_no_locks(
    nolock_fs: Mount, cluster: str | None
) -> None:
    root = nolock_fs.path / "cache"
    feat = Featurizer(infra=xl.MapInfra(folder=root, cluster=cluster, max_jobs=2))  # type: ignore[arg-type]
    try:
        out = feat.embed.stack(ITEMS)
    except xl.StoreError as exc:
        assert NO_LOCKS.search(str(exc)), (
            f"the error does not say the filesystem has no locks: {exc}"
        )
    else:
        np.testing.assert_array_equal(out, np.stack([expected_feature(i) for i in ITEMS]))
        again = Featurizer(infra=xl.MapInfra(folder=root))
        assert again.embed.compute(ITEMS) == 0  # cached
    release_all_parked()
    folder = feat.embed.folder()
    assert folder is not None
    if folder.exists():  # never corruption: whatever is cached is right
        problems = check_cache(folder, lambda uid: expected_feature(uid))
        assert not problems, problems


def test_no_locks_healthy_cache_verifies_and_is_inspected(nolock_fs: Mount) -> None:
    assert nolock_fs.source is not None
    # written where locks work (the folder behind the mount), inspected through the mount
    feat = Featurizer(infra=xl.MapInfra(folder=nolock_fs.source / "cache"))
    feat.embed.compute(ITEMS)
    release_all_parked()
    folder = nolock_fs.path / "cache" / feat.embed.uid()
    store = MapStore(folder)
    assert store.missing(ITEMS) == []
    assert store.verify() == []
    assert store.stats()["items"] == len(ITEMS)
    for command in ("info", "verify"):
        proc = cli(command, folder)
        assert proc.returncode == 0, f"exca-lite {command}: {proc.stdout}{proc.stderr}"


# # # read-only mount # # #


def test_read_only_mount_reads_inspects_and_verifies(readonly_mount: Mount) -> None:
    assert readonly_mount.source is not None
    feat = Featurizer(infra=xl.MapInfra(folder=readonly_mount.source / "cache"))
    feat.embed.compute(ITEMS)
    release_all_parked()
    root = readonly_mount.path / "cache"
    folder = root / feat.embed.uid()
    expected = np.stack([expected_feature(i) for i in ITEMS])
    failures = []

    def attempt(what: str, call: tp.Callable[..., tp.Any], *args: tp.Any) -> tp.Any:
        try:
            return call(*args)
        except Exception as exc:
            failures.append(f"{what}: {exc!r:.300}")
            return None

    with recorded_warnings() as caught:
        store = MapStore(folder)
        assert store.missing(ITEMS) == []
        assert all(same(store.load(u), expected_feature(u)) for u in ITEMS)
        assert np.array_equal(store.stack(ITEMS), expected)
        stats = attempt("stats()", store.stats)
        if stats is not None and stats["items"] != len(ITEMS):
            failures.append(f"stats(): {stats}")
        problems = attempt("verify()", store.verify)
        if problems:
            failures.append(f"verify(): {problems}")
        for mode in ("cached", "read-only"):
            reader = Featurizer(infra=xl.MapInfra(folder=root, mode=mode))  # type: ignore[arg-type]
            out = attempt(f"MapInfra(mode={mode!r}).stack", reader.embed.stack, ITEMS)
            if out is not None and not np.array_equal(out, expected):
                failures.append(f"MapInfra(mode={mode!r}) read back wrong values")
        store.close()
    for command in ("info", "verify"):
        proc = cli(command, folder)
        if proc.returncode != 0:
            failures.append(f"exca-lite {command} exited {proc.returncode}: {proc.stderr[-300:]}")
    failures += [f"warning: {w}" for w in warning_texts(caught)]
    assert not failures, "\n".join(failures)


# # # disk full # # #


def fill_up(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte with a ballast file."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(chunk))
    return ballast


NO_SPACE = re.compile(r"(?i)no space|ENOSPC|disk (is )?full|filesystem (is )?full")


@pytest.mark.parametrize("when", ["full_before", "fills_while_writing"])
def test_disk_full_is_a_store_error_and_keeps_published_items(
    small_tmpfs: Mount, when: str
) -> None:
    root = small_tmpfs.path / "cache"
    dim = LARGE_ITEM  # 320 KiB items: a 4 MiB tmpfs holds about a dozen
    before, more = ITEMS[:4], ITEMS[4:40]
    feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=root))
    feat.embed.compute(before)
    release_all_parked()
    if when == "full_before":
        fill_up(small_tmpfs.path)
    try:
        with pytest.raises(xl.StoreError) as info:
            Featurizer(dim=dim, infra=xl.MapInfra(folder=root)).embed.compute(more)
        message = str(info.value)
        assert str(small_tmpfs.path) in message, f"the error names no path: {message}"
        assert NO_SPACE.search(message), f"the error does not say the disk is full: {message}"
    finally:
        release_all_parked()
    # the items published before the disk filled up are still served, right, without warnings
    with recorded_warnings() as caught:
        store = MapStore(root / feat.embed.uid())
        assert store.missing(before) == []
        for uid in before:
            assert same(store.load(uid), expected_feature(uid, dim)), uid
        assert np.array_equal(
            feat.embed.stack(before), np.stack([expected_feature(u, dim) for u in before])
        )
        store.close()
    assert not caught, warning_texts(caught)


# # # the cache folder removed while it is written # # #


@dataclasses.dataclass(frozen=True)
class Remover:
    """A map that removes its own cache root (``rm -rf``) when it reaches item ``remove_at``."""

    root: str = ""
    remove_at: str = ""
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("root", "remove_at"))
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            if item == self.remove_at and os.path.exists(self.root):
                shutil.rmtree(self.root)
            yield expected_feature(item)


def test_folder_removed_mid_write_is_a_store_error_and_the_next_run_recomputes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    items = [f"item{i:04d}" for i in range(3000)]
    feat = Remover(root=str(root), remove_at="item1500", infra=xl.MapInfra(folder=root))
    try:
        with pytest.raises(xl.StoreError) as info:
            feat.embed.compute(items)
        assert str(root) in str(info.value), f"the error names no path: {info.value}"
    finally:
        release_all_parked()
    with recorded_warnings() as caught:
        again = Remover(root=str(root), infra=xl.MapInfra(folder=root))
        out = again.embed.stack(items)
        np.testing.assert_array_equal(out, np.stack([expected_feature(i) for i in items]))
        assert again.embed.compute(items) == 0
        release_all_parked()
    assert not caught, warning_texts(caught)
    folder = again.embed.folder()
    assert folder is not None
    assert check_cache(folder, lambda uid: expected_feature(uid)) == []


# # # data of a newer format # # #


def test_newer_format_is_skipped_worked_around_and_never_deleted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    feat = Featurizer(infra=xl.MapInfra(folder=root))
    feat.embed.compute(ITEMS[:40])
    release_all_parked()
    folder = feat.embed.folder()
    assert folder is not None
    newer = data_files(folder)
    assert newer, f"no data file found in {folder}: {sorted(os.listdir(folder))}"
    for path in newer:
        set_format_version(path, format_version(path) + 1)
    kept = digest(newer)
    failures = []
    # a reader skips the pair, with one warning however often it looks
    with recorded_warnings() as caught:
        store = MapStore(folder)
        for _ in range(3):
            store.refresh()
            served = [u for u in ITEMS[:40] if u in store.item_uids()]
            wrong = [u for u in served if not same(store.load(u), expected_feature(u))]
            if wrong:
                failures.append(f"served wrong from the newer pair: {wrong[:4]}")
        store.close()
    # (one warning per reader; allow one per newer pair, should the store keep several)
    pairs = max(1, len([p for p in newer if p.name.endswith(ITEM_BYTES_SUFFIX)]))
    if not 1 <= len(caught) <= pairs:
        failures.append(f"a reader warned {len(caught)} times: {warning_texts(caught)[:3]}")
    # computing works around it (a reader: one warning at most)
    with recorded_warnings() as caught:
        try:
            again = Featurizer(infra=xl.MapInfra(folder=root))
            out = again.embed.stack(ITEMS)
            if not np.array_equal(out, np.stack([expected_feature(i) for i in ITEMS])):
                failures.append("computing around the newer pair gave wrong values")
        except Exception as exc:
            failures.append(f"computing around the newer pair raised {exc!r:.300}")
        finally:
            release_all_parked()
    if len(caught) > pairs:
        failures.append(f"computing warned {len(caught)} times: {warning_texts(caught)[:3]}")
    # compacting keeps it (a reader again: one warning at most)
    with recorded_warnings() as caught:
        try:
            MapStore(folder).compact()
        except Exception as exc:
            failures.append(f"compact() raised {exc!r:.300}")
    if len(caught) > pairs:
        failures.append(
            f"a store warned {len(caught)} times, opening and compacting: "
            f"{warning_texts(caught)[:3]}"
        )
    # never deleted, never rewritten
    now = {p.name: p for p in newer if p.exists()}
    if digest(now.values()) != kept:
        failures.append(f"newer-format files deleted or changed: {sorted(set(kept) - set(now))}")
    assert not failures, "\n".join(failures)


# # # the script side: subprocesses of the tests above # # #


def script() -> None:
    """``shared-writer ROOT SYNC WRITER ROUNDS`` | ``late-visibility FOLDER SITUATION`` |
    ``two-batches FOLDER GO_FILE``."""
    command, *args = sys.argv[1:]
    if command == "shared-writer":
        shared_writer(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "two-batches":
        two_batches(args[0], args[1])
    elif command == "late-visibility":
        print(json.dumps(late_visibility(Path(args[0]), args[1])))
    else:
        raise SystemExit(f"unknown command {command}")
