"""The map store: formats, incremental reads, concurrent writers, damage, compaction, read-only use.

Real processes (``tests/store_worker.py``), real files, no mocks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import subprocess
import sys
import threading
import time
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pytest
from store_worker import value_of

import exca_lite as xl
from exca_lite.errors import CorruptCacheWarning, StoreError
from exca_lite.store import MapStore
from exca_lite.store import mapstore as mapstore_module
from exca_lite.store import writer as writer_module
from exca_lite.store.mapstore import AUTO_FOLD_PAIRS

WORKER = str(Path(__file__).with_name("store_worker.py"))


def run_worker(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 50) -> list[str]:
    stdout, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, stderr[-2000:]
    return stdout.splitlines()


def fill(folder: Path, uids: tp.Iterable[str], **kwargs: tp.Any) -> MapStore:
    store = MapStore(folder, **kwargs)
    with store.writer() as w:
        for uid in uids:
            w.write(uid, value_of(uid))
    return store


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage tests: bytes that do not match are damage at once, not a late-visibility lag that
    readers wait out for a minute first (here and in the subprocesses the test starts)."""
    monkeypatch.setattr(mapstore_module, "LAG_WARN_S", 0.0)
    monkeypatch.setenv("EXCA_LITE_LAG_WARN_S", "0")


@pytest.fixture
def abandoned_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed writer's unsealed pair counts as abandoned at once (not after an hour)."""
    monkeypatch.setattr(writer_module, "STALE_WRITER_S", 0.0)
    monkeypatch.setenv("EXCA_LITE_STALE_WRITER_S", "0")


def same(a: tp.Any, b: tp.Any) -> bool:
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and bool(a == b)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.timeout(60)
def test_missing_folder_is_an_empty_store_and_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "nope" / "cache"
    store = MapStore(folder)
    assert len(store) == 0 and "x" not in store and store.item_uids() == []
    assert store.missing(["a", "b", "a"]) == ["a", "b"]
    assert store.verify() == []
    with pytest.raises(KeyError):
        store.load("a")
    assert not (tmp_path / "nope").exists()


@pytest.mark.timeout(60)
def test_reading_never_writes(tmp_path: Path) -> None:
    uids = [f"item-{i}" for i in range(50)]
    fill(tmp_path / "c", uids)
    before = snapshot(tmp_path)
    time.sleep(0.01)
    store = MapStore(tmp_path / "c")
    assert store.missing([*uids, "item-999"]) == ["item-999"]
    for uid in uids:
        assert same(store.load(uid), value_of(uid))
    store.stack(["item-0", "item-20", "item-30"])
    assert store.verify() == []
    store.stats()
    assert snapshot(tmp_path) == before


@pytest.mark.timeout(60)
def test_read_only_folder(tmp_path: Path) -> None:
    uids = [f"item-{i}" for i in range(20)]
    fill(tmp_path / "c", uids)
    for path in [tmp_path / "c", *(tmp_path / "c").rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        store = MapStore(tmp_path / "c")
        assert store.missing(uids) == []
        assert all(same(store.load(u), value_of(u)) for u in uids)
    finally:
        for path in [tmp_path / "c", *(tmp_path / "c").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.timeout(60)
def test_arrays_are_read_only_views_and_formats_come_back(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    values: dict[str, tp.Any] = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "be": np.arange(5, dtype=">f4"),
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "strided": np.arange(20).reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "dates": np.array(["2020-01-01", "2021-02-03"], dtype="M8[D]"),
        "struct": np.zeros(2, dtype=[("a", "<i4"), ("b", ">f8", (2,))]),
        "tuple": (1, "a"),
        "np_scalar": np.float32(2.5),
        "dict_of_arrays": {"a": np.ones(3)},
        "plain": {"a": [1, 2.5, None, True, "s", b"b"]},
        "big_int": 1 << 70,
        "object_array": np.array([1, "a"], dtype=object),
        "masked": np.ma.masked_array([1, 2], mask=[0, 1]),
        "large": np.random.default_rng(0).random(300_000),
    }
    with store.writer() as w:
        for uid, value in values.items():
            w.write(uid, value)
    fresh = MapStore(tmp_path)
    for uid, value in values.items():
        got = fresh.load(uid)
        assert type(got) is type(value), uid
        if isinstance(value, np.ndarray) and value.dtype != object:
            assert got.dtype == value.dtype and got.shape == value.shape, uid
            np.testing.assert_array_equal(got, value)
            if type(value) is np.ndarray:
                assert not got.flags.writeable, uid
                with pytest.raises(ValueError):
                    got[...] = 0
    assert fresh.load("plain") == values["plain"]
    assert fresh.load("tuple") == (1, "a")
    assert fresh.load("big_int") == 1 << 70
    assert np.ma.getmask(fresh.load("masked")).tolist() == [False, True]


@pytest.mark.timeout(60)
def test_cache_type_forces_a_format_or_says_why_not(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.writer("pickle") as w:
        w.write("a", np.arange(3))
        w.write("b", [1, 2])
    assert type(store.load("a")) is np.ndarray and store.load("a").flags.writeable
    with store.writer("msgpack") as w:
        w.write("c", {"x": [1]})
        with pytest.raises(StoreError, match="msgpack"):
            w.write("d", (1, 2))
    with store.writer("array") as w, pytest.raises(StoreError, match="array"):
        w.write("e", [1, 2])
    assert store.load("c") == {"x": [1]}
    with pytest.raises(ValueError, match="cache_type"):
        store.writer("npy")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_stack(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(300):
            w.write(f"a{i}", np.full((2, 3), i, dtype=">i2"))
        w.write("other", np.zeros(6, dtype=">i2"))
        w.write("obj", {"x": 1})
    with store.writer() as w:  # a second shard: the gather spans files
        for i in range(300, 400):
            w.write(f"a{i}", np.full((2, 3), i, dtype=">i2"))
    uids = [f"a{i}" for i in range(399, -1, -3)] + ["a0", "a0"]
    out = store.stack(uids)
    assert out.shape == (len(uids), 2, 3) and out.dtype == np.dtype(">i2")
    assert out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out[:, 0, 0], [int(u[1:]) for u in uids])
    # items at one stride in the order asked (one strided copy), and the orders that are not
    for order in [range(300), range(0, 300, 7), range(5, 6), range(299, -1, -1), range(250, 400)]:
        for reader in (store, MapStore(tmp_path)):
            got = reader.stack([f"a{i}" for i in order])
            assert got.shape == (len(order), 2, 3) and got.flags.c_contiguous
            np.testing.assert_array_equal(got, [np.full((2, 3), i) for i in order])
    with pytest.raises(StoreError, match="'other'"):
        store.stack(["a1", "other"])
    with pytest.raises(StoreError, match="'obj'"):
        store.stack(["a1", "obj"])
    with pytest.raises(KeyError):
        store.stack(["a1", "nope"])
    empty = MapStore(tmp_path / "e")
    with empty.writer() as w:
        w.write("z0", np.zeros((0, 2)))
        w.write("z1", np.zeros((0, 2)))
        w.write("s0", np.array(1.5))
    assert empty.stack(["z0", "z1"]).shape == (2, 0, 2)
    assert empty.stack(["s0", "s0"]).tolist() == [1.5, 1.5]


@pytest.mark.timeout(60)
def test_reader_picks_up_new_items_incrementally(tmp_path: Path) -> None:
    reader = MapStore(tmp_path)
    writer_store = MapStore(tmp_path)
    with writer_store.writer() as w:
        w.write("item-1", value_of("item-1"))
        w.flush()
        assert "item-1" not in reader  # no refresh on `in`
        assert reader.missing(["item-1", "item-2"]) == ["item-2"]
        w.write("item-2", value_of("item-2"))
        w.flush()
        assert reader.missing(["item-2"]) == []
    positions = {p.name.stem: p.pos for p in reader._ix.pairs}
    reader.refresh()
    assert {p.name.stem: p.pos for p in reader._ix.pairs} == positions
    # own writes are visible at once, and checking one new uid does not re-read anything
    own = MapStore(tmp_path / "own")
    with own.writer() as w:
        for i in range(20_000):
            w.write(f"x{i}", np.zeros(4, dtype=np.float32))
    own.missing(["new"])
    view = own._ix
    at_end = {p.name.stem: p.pos for p in view.pairs}
    assert at_end == {stem: own.paths.index(stem).stat().st_size for stem in at_end}
    for _ in range(3):
        assert own.missing(["new"]) == ["new"]
    # the same view, nothing read again (each entry ingested once)
    assert own._ix is view and {p.name.stem: p.pos for p in view.pairs} == at_end
    assert view.count == 20_000


@pytest.mark.timeout(60)
def test_threads_get_their_own_pairs(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    slots = []
    all_open = threading.Barrier(4, timeout=30)  # the four writers are open at once

    def work(k: int) -> None:
        with store.writer() as w:
            slots.append(w.stem)
            all_open.wait()
            for i in range(200):
                w.write(f"t{k}-{i}", np.full(8, k * 1000 + i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(slots)) == 4  # four writers at once: four pairs, never shared
    assert {p.stem for p in tmp_path.glob("*.bin")} == set(slots)
    fresh = MapStore(tmp_path)
    assert len(fresh) == 800
    assert fresh.load("t3-199")[0] == 3199
    assert fresh.verify() == []


@pytest.mark.timeout(60)
def test_threads_reading_one_store_while_it_reloads_never_miss_an_item(tmp_path: Path) -> None:
    # each compaction replaces the files, so the store rebuilds its whole view: threads reading it
    # meanwhile (without the lock) must see the old view or the new one, never a half-built one
    uids = [f"item-{i}" for i in range(300)]
    fill(tmp_path, uids)
    store = MapStore(tmp_path)
    other = MapStore(tmp_path)
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set() and not problems:
            for uid in uids:
                if uid not in store:
                    problems.append(f"{uid} not in the store")
                try:
                    store.load(uid)
                except KeyError as exc:
                    problems.append(repr(exc))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(6):
        other.compact()
        store.refresh()
    stop.set()
    for t in threads:
        t.join()
    assert problems == []


@pytest.mark.timeout(60)
def test_four_processes_write_at_once(tmp_path: Path) -> None:
    procs = [run_worker("write", tmp_path, k * 500, (k + 1) * 500, 100, 0.0) for k in range(4)]
    outputs = [finish(p) for p in procs]
    store = MapStore(tmp_path)
    uids = [f"item-{i}" for i in range(2000)]
    assert store.missing(uids) == []
    for uid in uids:
        assert same(store.load(uid), value_of(uid))
    shards = {p.stem for p in tmp_path.glob("*.bin")}
    pairs = {line.split()[1] for out in outputs for line in out if line.startswith("pair")}
    assert shards == pairs and len(pairs) == 4  # one pair per writer, never shared
    assert store.verify() == []
    # every process that ends seals its pair; once the folder holds many, a new writer folds
    # the sealed ones: the file count stays bounded whatever the history
    for k in range(20):
        finish(run_worker("write", tmp_path, 2000 + k * 10, 2010 + k * 10, 5, 0.0))
    assert len(list(tmp_path.glob("*.bin"))) <= AUTO_FOLD_PAIRS + 1
    fresh = MapStore(tmp_path)
    assert fresh.missing([f"item-{i}" for i in range(2200)]) == []
    assert fresh.verify() == []


@pytest.mark.timeout(60)
def test_corrupt_index_record_warns_once_and_skips_it(tmp_path: Path, settled: None) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(30):
            w.write(f"item-{i}", value_of(f"item-{i}"))
            if i % 10 == 9:
                w.flush()  # three records of ten items
    (idx,) = tmp_path.glob("*.idx")
    data = bytearray(idx.read_bytes())
    second = data.find(b"XLR1", data.find(b"XLR1") + 1)
    data[second + 40 : second + 48] = b"\xff" * 8  # inside the second record's payload
    idx.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning) as caught:
        fresh = MapStore(tmp_path)
        fresh.missing(["item-0"])
        for uid in fresh.item_uids():
            assert same(fresh.load(uid), value_of(uid))
        fresh.refresh()
    assert len(caught) == 1
    assert sorted(fresh.item_uids()) == sorted(
        [f"item-{i}" for i in range(10)] + [f"item-{i}" for i in range(20, 30)]
    )
    assert any("damaged index record" in p for p in fresh.verify())
    # the items are recomputed and served again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptCacheWarning)
        store2 = MapStore(tmp_path)
        with store2.writer() as w:
            for uid in store2.missing([f"item-{i}" for i in range(30)]):
                w.write(uid, value_of(uid))
        assert MapStore(tmp_path).missing([f"item-{i}" for i in range(30)]) == []


@pytest.mark.timeout(60)
def test_corrupt_shard_bytes_are_reported(tmp_path: Path, settled: None) -> None:
    store = MapStore(tmp_path)
    with store.writer("pickle") as w:
        for i in range(10):
            w.write(f"p-{i}", {"i": i, "pad": "x" * 100})
    with store.writer("array") as w:
        for i in range(10):
            w.write(f"a-{i}", np.full(100, i, dtype=np.int32))
    (shard,) = tmp_path.glob("*.bin")
    data = bytearray(shard.read_bytes())
    for pattern in (pickle.dumps({"i": 1, "pad": "x" * 100}, protocol=5), b"\x01\0\0\0" * 100):
        at = data.find(pattern)
        assert at > 0
        data[at + 20 : at + 24] = b"\x00\xff\x00\xff"
    shard.write_bytes(bytes(data))
    problems = MapStore(tmp_path, load_index=False).verify()
    assert any("'p-1'" in p for p in problems) and any("'a-1'" in p for p in problems), problems
    assert not any("'p-2'" in p for p in problems), problems  # arrays: per flush span
    with pytest.warns(CorruptCacheWarning) as caught:
        fresh = MapStore(tmp_path)  # the arrays of the damaged span: ignored
        for i in range(10):
            if i == 1:
                with pytest.raises(KeyError):
                    fresh.load("p-1")
            else:
                assert fresh.load(f"p-{i}") == {"i": i, "pad": "x" * 100}
        with pytest.raises(KeyError):
            fresh.load("p-1")
    assert len(caught) == 1  # once per file and reader
    assert fresh.missing(["p-1", "p-2", "a-2"]) == ["p-1", "a-2"]  # missing: recomputed


@pytest.mark.timeout(60)
def test_entries_pointing_past_the_shard_are_rejected(tmp_path: Path, settled: None) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(10):
            w.write(f"item-{i}", np.full(100, i, dtype=np.int64))
    (shard,) = tmp_path.glob("*.bin")
    os.truncate(shard, shard.stat().st_size - 1000)
    with pytest.warns(CorruptCacheWarning, match="outside"):
        fresh = MapStore(tmp_path)
    assert 0 < len(fresh) < 10
    for uid in fresh.item_uids():
        assert fresh.load(uid)[0] == int(uid.split("-")[1])
    assert fresh.verify()


@pytest.mark.timeout(60)
def test_compact_drops_duplicates_and_keeps_values(tmp_path: Path) -> None:
    uids = [f"item-{i}" for i in range(300)]
    fill(tmp_path, uids)
    fill(tmp_path, uids[:200])  # duplicates
    store = MapStore(tmp_path)
    before = store.stats()
    assert before["dead_bytes"] > 0
    report = store.compact()
    assert report["items"] == 300 and report["bytes_after"] < report["bytes_before"]
    assert [p.name[:9] for p in tmp_path.glob("*.bin")] == ["c-000001-"]
    fresh = MapStore(tmp_path)
    for uid in uids:
        assert same(fresh.load(uid), value_of(uid))
    assert fresh.stats()["dead_bytes"] == 0 and fresh.verify() == []
    # writing after a compaction and compacting again
    fill(tmp_path, [f"item-{i}" for i in range(300, 320)])
    assert MapStore(tmp_path).compact()["items"] == 320
    assert len(list(tmp_path.glob("*.bin"))) == 1
    assert MapStore(tmp_path).missing(uids) == []


@pytest.mark.timeout(60)
def test_compact_while_others_read_and_write(tmp_path: Path) -> None:
    uids = [f"item-{i}" for i in range(600)]
    fill(tmp_path, uids[:300])
    fill(tmp_path, uids[:100])  # dead bytes
    old_view = MapStore(tmp_path)
    kept = old_view.load("item-0")
    reader = run_worker("read", tmp_path, 3.0)
    writer = run_worker("write", tmp_path, 300, 600, 10, 0.005)
    store = MapStore(tmp_path)
    reports = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        reports.append(store.compact())
        time.sleep(0.1)
    finish(writer)
    assert finish(reader)[-1].startswith("done")
    assert reports[0]["bytes_after"] < reports[0]["bytes_before"]
    final = MapStore(tmp_path)
    assert final.missing(uids) == []
    for uid in uids:
        assert same(final.load(uid), value_of(uid))
    np.testing.assert_array_equal(kept, value_of("item-0"))  # old maps stay valid
    assert same(old_view.load("item-5"), value_of("item-5"))  # an old reader reloads
    assert final.verify() == []


@pytest.mark.timeout(60)
def test_clear_and_stats(tmp_path: Path) -> None:
    store = fill(tmp_path / "c", [f"item-{i}" for i in range(50)])
    stats = store.stats()
    assert stats["items"] == 50 and stats["writers"] == 0 and stats["bytes"] > 0
    assert stats["last_write"] > time.time() - 60 and len(stats["shards"]) == 1
    with store.writer():
        assert store.stats()["writers"] == 1
    other = MapStore(tmp_path / "c")
    # temp files: a killed compaction's shard (removed), and the atomic_write temp of another
    # process's config.json being written right now, which clear() must not pull from under it
    compaction_temp = tmp_path / "c" / ".c-000004-0123abcd.bin.4242.new"  # a killed compaction's
    compaction_temp.write_bytes(b"x")
    in_flight = [tmp_path / "c" / n for n in (".config.json.0123abcd.tmp",)]
    for path in in_flight:
        path.write_bytes(b"{}")
    store.clear()
    assert len(store) == 0 and not list((tmp_path / "c").glob("*.bin"))
    assert not compaction_temp.exists()
    assert all(path.read_bytes() == b"{}" for path in in_flight)
    assert other.missing(["item-1"]) == ["item-1"]
    fill(tmp_path / "c", ["item-1"])
    other.refresh()
    assert same(other.load("item-1"), value_of("item-1"))
    assert other.missing(["item-2"]) == ["item-2"]


@pytest.mark.timeout(60)
def test_fsync_durability_and_bad_values(tmp_path: Path) -> None:
    store = fill(tmp_path, [f"item-{i}" for i in range(20)], durability="fsync")
    assert MapStore(tmp_path).missing([f"item-{i}" for i in range(20)]) == []
    with pytest.raises(ValueError, match="durability"):
        MapStore(tmp_path, durability="sometimes")  # type: ignore[arg-type]
    with store.writer() as w, pytest.raises(StoreError, match="pickle"):
        w.write("lambda", lambda: 1)


@pytest.mark.timeout(60)
def test_a_torn_tail_is_waited_on_never_damage_and_folded_away(
    tmp_path: Path, abandoned_at_once: None
) -> None:
    store = fill(tmp_path, [f"item-{i}" for i in range(10)])
    (idx,) = tmp_path.glob("*.idx")
    data = idx.read_bytes()
    first = data.find(b"XLR1")
    with open(idx, "ab") as f:
        f.write(data[first : first + 30])  # a record cut short, as by a kill inside its write
    store.close()  # its writer sees its index touched: it leaves it unsealed, as a killed one
    reader = MapStore(tmp_path)  # no warning: a torn tail is not damage
    assert reader.missing([f"item-{i}" for i in range(10)]) == []
    assert reader.verify() == []
    torn = idx.stat().st_size
    with reader.writer() as w:  # a new writer never touches that pair: it writes its own
        w.write("item-10", value_of("item-10"))
    assert idx.stat().st_size == torn and len(list(tmp_path.glob("*.idx"))) == 2
    assert reader.missing(["item-10"]) == []
    assert reader.compact()["items"] == 11  # the abandoned pair is folded, its tail dropped
    assert not idx.exists()
    assert MapStore(tmp_path).verify() == []
    assert MapStore(tmp_path).missing([f"item-{i}" for i in range(11)]) == []


@pytest.mark.timeout(60)
def test_a_cleared_and_rewritten_store_is_never_mixed_with_the_old_one(tmp_path: Path) -> None:
    fill(tmp_path, [f"item-{i}" for i in range(0, 40, 2)])
    reader = MapStore(tmp_path)
    assert same(reader.load("item-2"), value_of("item-2"))
    MapStore(tmp_path).clear()
    fill(tmp_path, [f"item-{i}" for i in range(1, 41, 2)])  # same file names, new contents
    reader.refresh()
    assert "item-2" not in reader
    for i in range(1, 41, 2):
        assert same(reader.load(f"item-{i}"), value_of(f"item-{i}"))


@pytest.mark.timeout(60)
def test_a_write_only_store_never_reads_the_index(tmp_path: Path) -> None:
    fill(tmp_path, [f"item-{i}" for i in range(100)])
    (idx,) = tmp_path.glob("*.idx")
    MapStore(tmp_path).close()
    size = idx.stat().st_size
    worker = MapStore(tmp_path, load_index=False)
    with worker.writer() as w:
        for i in range(100, 150):
            w.write(f"item-{i}", value_of(f"item-{i}"))
    assert idx.stat().st_size == size  # someone else's pair: never written to
    assert not worker._loaded and not worker._ix.rows
    assert "item-120" in worker  # the first query reads the index
    assert MapStore(tmp_path).missing([f"item-{i}" for i in range(150)]) == []
    assert MapStore(tmp_path).verify() == []


@pytest.mark.timeout(60)
def test_a_reader_that_missed_a_compaction_reloads(tmp_path: Path) -> None:
    uids = [f"item-{i}" for i in range(100)]
    fill(tmp_path, uids)
    fill(tmp_path, uids[:50])
    unmapped = MapStore(tmp_path)  # knows every row, has mapped no shard yet
    assert unmapped.missing(uids) == []
    assert MapStore(tmp_path).compact()["items"] == 100
    assert not list(tmp_path.glob("w-*.bin"))
    for uid in uids:  # its shard is gone: it reloads the compacted generation and serves from it
        assert same(unmapped.load(uid), value_of(uid))
    assert same(unmapped.stack(["item-0", "item-20"])[1], value_of("item-20"))


@pytest.mark.timeout(60)
def test_verify_finds_damage_in_a_large_array(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    big = np.arange(100_000, dtype=np.float64)  # 800 kB: written straight from its memory
    with store.writer() as w:
        w.write("small", np.ones(3))
        w.write("big", big)
        w.write("after", np.zeros(3))
    assert store.verify() == []
    (shard,) = tmp_path.glob("*.bin")
    data = bytearray(shard.read_bytes())
    at = data.find(big[50_000:50_004].tobytes())
    data[at + 3] ^= 0x10  # one flipped bit
    shard.write_bytes(bytes(data))
    problems = MapStore(tmp_path).verify()
    assert len(problems) == 1 and "'big'" in problems[0], problems


@pytest.mark.timeout(60)
def test_items_of_a_stalled_producer_are_published_without_a_flush(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    reader = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(3):  # a quick burst, then the producer computes its next batch
            w.write(f"item-{i}", value_of(f"item-{i}"))
        # no flush, no close, no further write: the writer publishes them by itself
        hang_guard = time.monotonic() + 30
        while reader.missing(["item-0", "item-1", "item-2"]) and time.monotonic() < hang_guard:
            time.sleep(0.05)
        assert reader.missing(["item-0", "item-1", "item-2"]) == []


def all_served_values_are_right(folder: Path, uids: list[str]) -> list[str]:
    """Load every item from a fresh store: each must be right or missing; returns the missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptCacheWarning)  # the damage is reported, once
        fresh = MapStore(folder)
        gone = []
        for uid in uids:
            try:
                value = fresh.load(uid)
            except KeyError:
                gone.append(uid)
                continue
            assert same(value, value_of(uid)), (uid, value)
    return gone


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lazy", ["eager", "lazy"])
def test_a_truncated_shard_never_serves_a_wrong_array(
    tmp_path: Path, lazy: str, settled: None
) -> None:
    finish(run_worker("write", tmp_path, 0, 40, 1000, 0, "eager"))
    (shard,) = tmp_path.glob("*.bin")
    cut = shard.stat().st_size - 64  # external damage: item-39 (the last one) loses its end
    os.truncate(shard, cut)
    # new items, from another process: they go to its own pair, never near item-39's bytes
    finish(run_worker("write", tmp_path, 40, 80, 1000, 0, lazy))
    assert shard.stat().st_size == cut
    uids = [f"item-{i}" for i in range(80)]
    assert all_served_values_are_right(tmp_path, uids) == ["item-39"]
    with pytest.warns(CorruptCacheWarning, match="outside"):
        store = MapStore(tmp_path)
    with store.writer() as w:
        for uid in uids[30:40]:  # recomputed (mode="force"), the damaged one included
            w.write(uid, value_of(uid))
    assert shard.stat().st_size == cut
    assert all_served_values_are_right(tmp_path, uids) == []
    assert finish(run_worker("read", tmp_path, 0.2))[-1].startswith("done")  # checks each item
    # compaction folds the damaged pair in (dropping the arrays its cut span checksum can no
    # longer vouch for: they are recomputed)
    with pytest.warns(CorruptCacheWarning) as caught:  # opening (the cut entry), compacting
        report = MapStore(tmp_path).compact()
    assert any("dropped" in str(w.message) for w in caught)
    assert MapStore(tmp_path).verify() == []
    gone = all_served_values_are_right(tmp_path, uids)
    assert 0 < len(gone) == report["dropped"] and set(gone) < set(uids[:30])
    fill(tmp_path, gone + [f"item-{i}" for i in range(80, 90)])
    assert all_served_values_are_right(tmp_path, uids + [f"item-{i}" for i in range(80, 90)]) == []
    assert MapStore(tmp_path).verify() == []


@pytest.mark.timeout(60)
def test_two_stores_of_one_process_write_their_own_pairs(tmp_path: Path) -> None:
    # no file is written by two writers: two writers open at once (two stores of one folder)
    # create two pairs, and neither ever grows the other's files
    one, two = MapStore(tmp_path), MapStore(tmp_path)
    with one.writer() as w1, two.writer() as w2:
        w1.write("a", np.full(8, 1.0))
        w1.flush()
        sizes = {p: p.stat().st_size for p in tmp_path.glob(f"{w1.stem}.*")}
        w2.write("b", np.full(8, 2.0))
        w2.flush()
        assert w1.stem != w2.stem
        assert {p: p.stat().st_size for p in tmp_path.glob(f"{w1.stem}.*")} == sizes
    for reader in (one, two, MapStore(tmp_path)):
        reader.refresh()
        assert reader.load("a")[0] == 1 and reader.load("b")[0] == 2


@dataclasses.dataclass(frozen=True)
class Distinct:
    """Every item's value is distinct, so a wrong array cannot pass for the right one."""

    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.full(16, int(item), dtype=np.float32)


@pytest.mark.timeout(120)
def test_map_infra_after_a_truncated_shard_never_serves_a_wrong_array(
    tmp_path: Path, settled: None
) -> None:
    items = [str(i) for i in range(20)]
    feat = Distinct(infra=xl.MapInfra(folder=tmp_path))
    assert feat.embed.compute(items) == 20
    folder = feat.embed.folder()
    assert folder is not None
    (shard,) = folder.glob("*.bin")
    os.truncate(shard, shard.stat().st_size - 64)  # item "19" loses its end
    with pytest.warns(CorruptCacheWarning):
        forced = Distinct(infra=xl.MapInfra(folder=tmp_path, mode="force"))
        assert [int(a[0]) for a in forced.embed(["3", "4"])] == [3, 4]
        new = Distinct(infra=xl.MapInfra(folder=tmp_path))
        assert [int(a[0]) for a in new.embed(["20", "21"])] == [20, 21]
        again = Distinct(infra=xl.MapInfra(folder=tmp_path))
        everything = [*items, "20", "21"]
        for item, value in zip(everything, again.embed(everything), strict=True):
            assert value.shape == (16,) and (value == int(item)).all(), item


@pytest.mark.timeout(120)
def test_compact_drops_damaged_items_instead_of_laundering_them(
    tmp_path: Path, settled: None
) -> None:
    finish(run_worker("write", tmp_path, 0, 60, 10, 0, "eager"))  # a record every 10 items
    uids = [f"item-{i}" for i in range(60)]
    store = MapStore(tmp_path)
    (shard,) = tmp_path.glob("*.bin")
    data = bytearray(shard.read_bytes())
    for uid in ("item-14", "item-10", "item-49"):  # a small array, a pickle, a large array
        offset = int(store._ix.table[store._ix.rows[uid], 1])
        data[offset + 8] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert len(store.verify()) == 3
    # the small arrays flushed with item-14 share its span checksum: any of them may be the bad one
    span = [f"item-{i}" for i in range(10, 20) if type(value_of(f"item-{i}")) is np.ndarray]
    damaged = {*span, "item-10", "item-49"}
    # a reader checks the bytes of young records when it opens them (so the damaged arrays are
    # never in its view), compaction checks the rest (the pickle): together, all 8 are dropped
    with pytest.warns(CorruptCacheWarning) as caught:
        report = MapStore(tmp_path).compact()
    assert any("dropped 1 damaged" in str(w.message) for w in caught)
    assert len(damaged) == 8 and report["items"] == 60 - 8
    assert MapStore(tmp_path).verify() == []  # healthy now: the damage is gone, not hidden
    assert MapStore(tmp_path).missing(uids) == [u for u in uids if u in damaged]
    assert all_served_values_are_right(tmp_path, uids) == [u for u in uids if u in damaged]
    # recomputed, they come back; a clean compaction drops nothing
    fill(tmp_path, sorted(damaged))
    assert MapStore(tmp_path).compact()["dropped"] == 0
    assert all_served_values_are_right(tmp_path, uids) == []


_WRITE_ONE = """
import sys
import numpy as np
from exca_lite.store import MapStore
folder, uid, value, how = sys.argv[1:]
with MapStore(folder, load_index=how == "eager").writer() as w:
    w.write(uid, np.full(8, float(value)))
    print(w.stem)
"""
_READ_ONE = """
import sys
from exca_lite.store import MapStore
print(float(MapStore(sys.argv[1]).load(sys.argv[2])[0]))
"""


def python(code: str, *args: object) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.timeout(120)
def test_the_newest_published_copy_wins_for_every_reader(tmp_path: Path) -> None:
    # copies of one item in several pairs, read in any order: every reader serves the newest
    holder = MapStore(tmp_path).writer()
    holder.open()
    python(_WRITE_ONE, tmp_path, "x", 1, "eager")
    old_reader = MapStore(tmp_path)
    assert old_reader.load("x")[0] == 1
    holder.close()
    python(_WRITE_ONE, tmp_path, "x", 2, "lazy")  # a worker: it never read copy 1
    assert python(_READ_ONE, tmp_path, "x") == "2.0"
    assert MapStore(tmp_path).load("x")[0] == 2
    old_reader.refresh()
    assert old_reader.load("x")[0] == 2
    # more copies, from another process and from this one
    python(_WRITE_ONE, tmp_path, "x", 3, "eager")
    assert python(_READ_ONE, tmp_path, "x") == "3.0"
    with old_reader.writer() as w:
        w.write("x", np.full(8, 4.0))
    for reader in (old_reader, MapStore(tmp_path)):
        reader.refresh()
        assert reader.load("x")[0] == 4
    assert python(_READ_ONE, tmp_path, "x") == "4.0"
    # compaction keeps the newest; copies written after it still win over it
    assert MapStore(tmp_path).compact()["items"] == 1
    assert python(_READ_ONE, tmp_path, "x") == "4.0"
    python(_WRITE_ONE, tmp_path, "x", 5, "lazy")
    assert python(_READ_ONE, tmp_path, "x") == "5.0"
    old_reader.refresh()
    assert old_reader.load("x")[0] == 5


@pytest.mark.timeout(120)
def test_an_idle_writer_goes_on_with_its_own_pair_until_it_is_removed(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(10):
            w.write(f"item-{i}", value_of(f"item-{i}"))
    with store.writer() as w2:
        assert w2 is w  # kept: no file, listing, index read or thread to redo
        w.write("item-10", value_of("item-10"))
    assert len(list(tmp_path.glob("*.idx"))) == 1
    # another process writes meanwhile: into a pair of its own, sealed when it ends
    finish(run_worker("write", tmp_path, 40, 60, 7, 0, "eager"))
    assert len(list(tmp_path.glob("*.idx"))) == 2
    with store.writer() as w3:
        assert w3 is w
        for i in range(11, 20):
            w.write(f"item-{i}", value_of(f"item-{i}"))
    uids = [f"item-{i}" for i in [*range(20), *range(40, 60)]]
    assert all_served_values_are_right(tmp_path, uids) == []
    assert MapStore(tmp_path).verify() == []
    # another process compacts: the idle writer's pair is alive (its lock is held), so only the
    # sealed one is folded
    python(
        "import sys; from exca_lite.store import MapStore; MapStore(sys.argv[1]).compact()",
        tmp_path,
    )
    names = sorted(p.name[:2] for p in tmp_path.glob("*.idx"))
    assert names == ["c-", "w-"] and (tmp_path / f"{w.stem}.idx").exists()
    with store.writer() as w4:
        assert w4 is w
        for i in range(20, 30):
            w.write(f"item-{i}", value_of(f"item-{i}"))
    uids += [f"item-{i}" for i in range(20, 30)]
    assert all_served_values_are_right(tmp_path, uids) == []
    store.refresh()
    assert store.missing(uids) == [] and MapStore(tmp_path).verify() == []
    store.clear()  # closes the idle writer too: nothing is left behind
    assert MapStore(tmp_path).missing(uids) == uids
    assert list(tmp_path.glob("*.idx")) == []
    with store.writer() as w5:  # its pair was removed: a new one
        assert w5.stem != w.stem
        w5.write("again", value_of("item-1"))
    assert MapStore(tmp_path).missing(["again"]) == []


@pytest.mark.timeout(60)
def test_a_writer_killed_leaves_its_pair_to_be_folded_once_abandoned(
    tmp_path: Path, abandoned_at_once: None
) -> None:
    proc = run_worker("write", tmp_path, 0, 50, 10, 0.002)
    lines = []
    while not any(line.startswith("published 29") for line in lines):
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, "the writer ended early"
        lines.append(line)
    proc.kill()
    proc.communicate()
    store = MapStore(tmp_path)
    published = [f"item-{i}" for i in range(30)]
    assert store.missing(published) == []
    assert store.compact()["items"] >= 30  # unsealed, its lock free, idle: folded
    assert [p.name[:2] for p in tmp_path.glob("*.idx")] == ["c-"]
    assert MapStore(tmp_path).missing(published) == [] and MapStore(tmp_path).verify() == []


def test_runs_of_same_shape_arrays_mixed_with_other_items_keep_every_entry(tmp_path: Path) -> None:
    # the writer records a run of same-dtype, same-shape arrays by its first entry; anything else
    # (another shape, a non-contiguous array of the same shape, an empty array, a dict, a large
    # array written in place) must end the run with every offset and size right
    big = np.arange(100_000, dtype=np.float64)  # 800 kB: written straight to the shard
    expected: dict[str, tp.Any] = {}
    rng = np.random.default_rng(0)
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(2_500):
            kind = i % 11
            if kind == 3:
                value: tp.Any = np.full((6, 3), i, dtype=np.int16)[:, ::2]  # (6, 2), strided
            elif kind == 5:
                value = np.zeros((0, 2), dtype=np.int16)
            elif kind == 7:
                value = {"i": i}
            elif i % 500 == 9:
                value = big + i
            else:
                value = rng.integers(0, 1000, size=(6, 2)).astype(np.int16)
            w.write(f"u{i}", value)
            expected[f"u{i}"] = value
    _check_read_back(store, tmp_path, expected)
    runs = [
        u for u in expected if isinstance(expected[u], np.ndarray) and expected[u].shape == (6, 2)
    ]
    np.testing.assert_array_equal(store.stack(runs), np.stack([expected[u] for u in runs]))


def _check_read_back(store: MapStore, folder: Path, expected: dict[str, tp.Any]) -> None:
    """The writing store and a fresh one serve every item as written; the store is healthy."""
    for reader in (store, MapStore(folder)):
        for uid, value in expected.items():
            got = reader.load(uid)
            if isinstance(value, dict):
                assert got == value
            else:
                assert got.dtype == value.dtype and got.shape == value.shape, uid
                np.testing.assert_array_equal(got, value)
    assert MapStore(folder).verify() == []


def test_write_many_keeps_every_entry_as_write_does(tmp_path: Path) -> None:
    # write_many (a map's compute loop) runs write's hot path with the run's state in locals: runs
    # that span calls, alternate with write(), or are broken by other items keep every entry
    big = np.arange(100_000, dtype=np.float64)
    rng = np.random.default_rng(1)
    expected: dict[str, tp.Any] = {}
    for i in range(3_000):
        kind = i % 13
        if kind == 3:
            value: tp.Any = np.full((6, 3), i, dtype=np.int16)[:, ::2]  # same shape, strided
        elif kind == 5:
            value = np.zeros((0, 2), dtype=np.int16)
        elif kind == 7:
            value = {"i": i}
        elif i % 700 == 9:
            value = big + i
        elif i % 1000 > 600:
            value = rng.random(5).astype(np.float32)  # another run, of 20 bytes: padded
        else:
            value = rng.integers(0, 1000, size=(6, 2)).astype(np.int16)
        expected[f"u{i}"] = value
    pairs = iter(expected.items())
    store = MapStore(tmp_path)
    one_by_one = 0
    with store.writer() as w:
        for step in itertools.cycle([1, 700, 3, 1024, 0, 57]):
            if step == 3:  # write() in between: the run goes on
                for uid, value in itertools.islice(pairs, step):
                    w.write(uid, value)
                    one_by_one += 1
            elif w.write_many(itertools.islice(pairs, step)) < step:
                break
        assert w.written + one_by_one == len(expected)
    _check_read_back(store, tmp_path, expected)


def test_write_many_lets_the_io_thread_publish_a_stalled_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # items buffered before the producer stalls (a model computing the next one) are published by
    # the I/O thread meanwhile; the run write_many holds in locals then starts afresh
    monkeypatch.setattr(writer_module, "FLUSH_MAX_AGE_S", 0.2)
    seen_while_stalled: list[bool] = []

    def items() -> tp.Iterator[tuple[str, np.ndarray]]:
        for i in range(60):
            if i == 30:  # the first 30 were buffered (fast producer): wait for the I/O thread
                deadline = time.monotonic() + 20
                while "a29" not in MapStore(tmp_path) and time.monotonic() < deadline:
                    time.sleep(0.05)
                seen_while_stalled.append("a29" in MapStore(tmp_path))
            yield f"a{i}", np.full(4, i, dtype=np.float32)

    store = MapStore(tmp_path)
    with store.writer() as w:
        with pytest.raises(RuntimeError, match="stop"):
            w.write_many(itertools.chain(items(), _raise_stop()))
        assert w.written == 60  # the items before the iterator raised
    assert seen_while_stalled == [True]
    for reader in (store, MapStore(tmp_path)):
        np.testing.assert_array_equal(reader.stack([f"a{i}" for i in range(60)])[:, 0], range(60))
    assert MapStore(tmp_path).verify() == []


def _raise_stop() -> tp.Iterator[tuple[str, np.ndarray]]:
    raise RuntimeError("stop")
    yield  # a generator


@pytest.mark.filterwarnings("ignore::exca_lite.CacheFormatWarning")
def test_a_cache_of_another_format_version_is_named_as_such(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        w.write("a", np.ones(3))
    store.close()
    (index,) = tmp_path.glob("*.idx")
    data = bytearray(index.read_bytes())
    data[6:8] = (1).to_bytes(2, "little")  # what format 1 wrote
    index.write_bytes(bytes(data))
    assert MapStore(tmp_path, load_index=False).verify() == []  # another format: not damage
    with pytest.warns(xl.CacheFormatWarning, match="cache format 1") as caught:
        reader = MapStore(tmp_path)
        assert "a" not in reader
        reader.refresh()
    assert len(caught) == 1
    with reader.writer() as w:  # computing works around it
        w.write("a", np.ones(3))
    assert "a" in MapStore(tmp_path)


def test_stack_of_large_items_reads_them_from_every_shard_in_any_order(
    tmp_path: Path, settled: None
) -> None:
    # items of 64 KiB and more are read with preadv straight into the output
    shape = (130, 129)  # 134,160 bytes of float64: not a multiple of 64 (padding between items)
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(6):
            w.write(f"a{i}", np.full(shape, i, dtype=np.float64))
    with store.writer() as w1, store.writer() as w2:  # two more shards
        for i in range(6, 12):
            (w1 if i % 2 else w2).write(f"a{i}", np.full(shape, i, dtype=np.float64))
    assert len(list(tmp_path.glob("*.bin"))) >= 2
    uids = [f"a{i}" for i in (11, 0, 5, 5, 7, 2, 10, 8, 1)]
    for reader in (store, MapStore(tmp_path)):
        out = reader.stack(uids)
        assert out.shape == (len(uids), *shape) and out.flags.writeable
        for row, uid in zip(out, uids, strict=True):
            assert (row == int(uid[1:])).all(), uid
    (shard, *_) = sorted(tmp_path.glob("*.bin"))
    with open(shard, "r+b") as f:  # cut: the index now points past the shard's end
        f.truncate(os.path.getsize(shard) - 1000)
    with pytest.raises(StoreError, match="shorter than its index"):
        store.stack(uids)  # a reader that loaded the entries before the cut
    with pytest.warns(CorruptCacheWarning, match="point outside"), pytest.raises(KeyError):
        MapStore(tmp_path).stack(uids)  # a new reader rejects those entries: they are missing


def test_an_index_larger_than_the_read_window_with_damage_and_a_torn_tail(tmp_path: Path) -> None:
    # the index is read in windows of 64 KiB: records longer than a window, damage whose next
    # valid record lies windows away, and a torn tail must read as in one piece
    pad = "u" * 120
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(4000):  # four records of 1000 items, ~130 KB each
            w.write(f"{pad}{i}", np.array([i], dtype=np.int32))
    (idx,) = tmp_path.glob("*.idx")
    data = bytearray(idx.read_bytes())
    starts = [at for at in range(len(data)) if data[at : at + 4] == b"XLR1"]
    assert len(starts) == 4 and starts[2] - starts[1] > 2 * (64 << 10)
    # damage the second record's payload near its start, and leave half a record at the end
    data[starts[1] + 100 : starts[1] + 108] = b"\xff" * 8
    data += data[starts[3] : starts[3] + 5000]
    idx.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match="damaged index records") as caught:
        fresh = MapStore(tmp_path)
        present = set(fresh.item_uids())
    assert len(caught) == 1
    assert present == {f"{pad}{i}" for i in range(4000) if not 1000 <= i < 2000}
    assert int(fresh.load(f"{pad}3999")[0]) == 3999
    assert fresh._ix.pairs[0].pos == starts[3] + (starts[3] - starts[2])  # stopped at the tail


def test_a_record_with_an_older_stamp_later_in_a_file_loses_for_every_reader(
    tmp_path: Path,
) -> None:
    # a clock stepped back between two flushes of one writer: the copy with the greater stamp
    # wins, whether a reader takes the records in one by one or all at once
    writing = MapStore(tmp_path)
    stamps = iter([2 * 10**18, 10**18])
    writing._next_stamp = lambda: next(stamps)  # type: ignore[method-assign]
    incremental = MapStore(tmp_path)
    with writing.writer() as w:
        w.write("a", np.array([1.0]))
        w.write("b", np.array([0.0]))
        w.flush()
        incremental.refresh()
        w.write("a", np.array([2.0]))
        w.flush()
    incremental.refresh()
    assert float(incremental.load("a")[0]) == 1.0
    assert float(MapStore(tmp_path).load("a")[0]) == 1.0


def test_large_items_start_at_a_page_and_are_checksummed_as_written(tmp_path: Path) -> None:
    # written in place from the caller's memory; the I/O thread checksums them from the shard,
    # in pieces of 8 MiB for the biggest (its word sums must add up to the whole one's)
    big = np.random.default_rng(0).integers(0, 255, 9 << 20, dtype=np.uint8)
    store = MapStore(tmp_path)
    with store.writer() as w:
        w.write("small", np.ones(3))
        for i in range(3):
            w.write(f"big{i}", np.full(300_000 + i, i, dtype=np.uint8))
        w.write("huge", big)
        big[:] = 0  # the caller may reuse its memory once write() returns
    for reader in (store, MapStore(tmp_path)):
        for i in range(3):
            view = reader.load(f"big{i}")
            assert view.ctypes.data % 4096 == 0 and int(view[-1]) == i
    assert MapStore(tmp_path).verify() == []
    (shard,) = tmp_path.glob("*.bin")
    with open(shard, "r+b") as f:  # damage the second 8 MiB piece of the huge item
        at = int(store._ix.table[store._ix.rows["huge"], 1]) + (8 << 20) + 5
        f.seek(at)
        flipped = bytes(255 - b for b in f.read(2))
        f.seek(at)
        f.write(flipped)
    assert any("'huge'" in problem for problem in MapStore(tmp_path).verify())


def test_own_writes_are_read_in_order_with_other_writers_whenever_taken_in(tmp_path: Path) -> None:
    # a store lists the records its own writers publish and takes them in when queried: entries
    # another writer published in between (read by a refresh first) are still ordered by stamp
    store = MapStore(tmp_path)
    other = MapStore(tmp_path, load_index=False)  # another process, as far as files go
    with store.writer() as mine:
        mine.write_many((f"u{i}", np.full(4, 1.0)) for i in range(3000))
        mine.flush()
        with other.writer() as theirs:  # newer copies of some, published after mine
            theirs.write_many((f"u{i}", np.full(4, 2.0)) for i in range(0, 3000, 2))
        store.refresh()  # reads theirs before mine are taken in
        mine.write_many((f"u{i}", np.full(4, 3.0)) for i in range(0, 3000, 3))
        mine.flush()
    expected = [3.0 if i % 3 == 0 else 2.0 if i % 2 == 0 else 1.0 for i in range(3000)]
    uids = [f"u{i}" for i in range(3000)]
    for reader in (store, MapStore(tmp_path)):
        assert reader.stack(uids)[:, 0].tolist() == expected
        assert len(reader) == 3000 and reader.missing(uids) == []


def test_the_view_state_counts_own_writes_before_they_are_taken_in(tmp_path: Path) -> None:
    # a compute loop trusts "nothing but my own flushes came in" without a lookup per piece
    store = MapStore(tmp_path)
    state = store.view_state()
    with store.writer() as w:
        w.write_many((f"v{i}", np.full(4, i)) for i in range(2500))
        w.flush()
        grown = store.view_state_grown(state, 2500)
        assert store.view_state() == grown
        store.refresh()  # nothing new from others: still equal
        assert store.view_state() == grown
        assert "v2499" in store  # taken in: the same count
        assert store.view_state() == grown
        w.write("v0", np.full(4, -1))  # a copy more (it replaces v0): one entry more
        w.flush()
        assert store.view_state() == store.view_state_grown(grown, 1)
    assert store.load("v0")[0] == -1


def test_threads_find_each_flushed_item_of_a_writer_of_their_store(tmp_path: Path) -> None:
    # items a writer of this store flushed are found by every thread right after the flush,
    # whichever thread takes the listed records in
    store = MapStore(tmp_path)
    flushed = [0]
    done = threading.Event()
    errors: list[str] = []

    def read() -> None:
        while not done.is_set():
            upto = flushed[0]
            if upto and f"w{upto - 1}" not in store:
                errors.append(f"w{upto - 1} not found after its flush")
            if upto and store.load(f"w{upto // 2}")[0] != upto // 2:
                errors.append(f"w{upto // 2}: wrong value")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        with store.writer() as w:
            for step in range(40):
                w.write_many((f"w{i}", np.full(4, i)) for i in range(step * 700, (step + 1) * 700))
                w.flush()
                flushed[0] = (step + 1) * 700
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert errors == []
    assert len(store) == 28000


def test_a_writer_whose_index_was_removed_fails_the_write_that_publishes(tmp_path: Path) -> None:
    # the producer publishes full batches itself (no fsync): an error there is a StoreError to
    # the caller, at that write or at the flush, never a silent loss
    store = MapStore(tmp_path)
    w = store.writer()
    w.open()
    w.write("first", np.zeros(4))
    w.flush()
    os.unlink(store.paths.index(w.stem))
    with pytest.raises(StoreError, match="removed while being written"):
        w.write_many((f"x{i}", np.zeros(4)) for i in range(5000))
        w.flush()
    with pytest.raises(StoreError):
        w.close()


@pytest.mark.parametrize("full_at", ["items", "bytes"])
def test_a_run_longer_than_a_batch_goes_on_in_the_next_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_at: str
) -> None:
    # write_many hands each full batch over itself and goes on with the same run in the next
    # record (its meta listed anew there): every entry stays right, across runs of other
    # arrays and the pair's rotations
    if full_at == "items":
        monkeypatch.setattr(writer_module, "FLUSH_MAX_ITEMS", 7)
    else:
        monkeypatch.setattr(writer_module, "FLUSH_MAX_BYTES", 200)  # 4 items of 64 bytes
    monkeypatch.setattr(writer_module, "ROTATE_ENTRIES", 50)
    expected: dict[str, tp.Any] = {}
    for i in range(300):
        if i % 97 in (50, 51):
            expected[f"r{i}"] = np.full(3, i, dtype=np.int64)
        else:
            expected[f"r{i}"] = np.full(5, i, dtype=np.float32)  # 20 bytes, padded to 64
    store = MapStore(tmp_path)
    with store.writer() as w:
        assert w.write_many(iter(expected.items())) == 300
    assert len(list(tmp_path.glob("*.idx"))) > 1  # rotated
    _check_read_back(store, tmp_path, expected)


def test_write_many_publishes_each_item_of_a_slow_producer_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # write_many reads the clock every CLOCK_EVERY items of a fast producer; once it turns slow
    # (pauses over SLOW_PRODUCER_S, here 20 ms against 50 ms pauses), every item, each published
    # as soon as it is written
    monkeypatch.setattr(writer_module, "SLOW_PRODUCER_S", 0.02)
    seen: list[bool] = []
    fast = 100
    slow = writer_module.CLOCK_EVERY + 4

    def items() -> tp.Iterator[tuple[str, np.ndarray]]:
        for i in range(fast + slow):
            if i >= fast:
                time.sleep(0.05)  # a model computing the next item
                seen.append(f"s{i - 1}" in MapStore(tmp_path))
            yield f"s{i}", np.full(4, i, dtype=np.float32)

    store = MapStore(tmp_path)
    with store.writer() as w:
        assert w.write_many(items()) == fast + slow
    assert seen[writer_module.CLOCK_EVERY + 1 :] == [True] * 3  # seen slow by then
    np.testing.assert_array_equal(
        store.stack([f"s{i}" for i in range(fast + slow)])[:, 0], range(fast + slow)
    )
