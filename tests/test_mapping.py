"""MapInfra end to end: clusters, chunking, modes, errors, and real processes racing on one cache."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from map_defs import Featurizer, Miscounted, Numbered, Objects, PidFeaturizer, counts

import exca_lite as xl
from exca_lite.execution import chunk_sizes
from exca_lite.store import MapStore, release_all_parked, segment

pytestmark = pytest.mark.timeout(120)

ITEMS = [f"item{i:03d}" + "x" * (i % 5) for i in range(40)]


def expected(item: str, dim: int = 4) -> np.ndarray:
    return np.full(dim, len(item), dtype=np.float32) + np.arange(dim)


@pytest.mark.parametrize(
    "cluster", [None, "threadpool", "processpool", "debug", "local"], ids=lambda c: str(c)
)
def test_clusters_compute_once_and_match(tmp_path: Path, cluster: str | None) -> None:
    counter = str(tmp_path / "counter")
    feat = Featurizer(
        counter=counter, infra=xl.MapInfra(folder=tmp_path / "cache", cluster=cluster, max_jobs=3)
    )
    items = [*ITEMS, ITEMS[0], ITEMS[5]]  # duplicates are computed once, yielded twice
    outputs = list(feat.embed(items))
    assert len(outputs) == len(items)
    for item, out in zip(items, outputs, strict=True):
        np.testing.assert_array_equal(out, expected(item))
    assert counts(counter) == {item: 1 for item in ITEMS}
    # a second object, same config: everything from the cache, nothing recomputed
    again = Featurizer(
        counter=counter, infra=xl.MapInfra(folder=tmp_path / "cache", cluster=cluster)
    )
    stacked = again.embed.stack(items)
    assert stacked.shape == (len(items), 4)
    np.testing.assert_array_equal(stacked, np.stack([expected(i) for i in items]))
    assert counts(counter) == {item: 1 for item in ITEMS}
    assert sorted(again.embed.cached_uids()) == sorted(ITEMS)


def test_cached_arrays_are_readonly_views(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path))
    out = next(feat.embed(["abc"]))
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1


def test_no_folder_computes_in_ram(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    feat = Featurizer(counter=counter)
    assert feat.embed.folder() is None
    assert len(list(feat.embed(ITEMS[:5]))) == 5
    assert len(list(feat.embed(ITEMS[:6]))) == 6
    assert sum(counts(counter).values()) == 6


def test_partial_cache_computes_only_missing(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    feat = Featurizer(counter=counter, infra=xl.MapInfra(folder=tmp_path))
    assert feat.embed.compute(ITEMS[:10]) == 10
    assert feat.embed.compute(ITEMS[:20]) == 10
    assert feat.embed.compute(ITEMS[:20]) == 0
    assert counts(counter) == {item: 1 for item in ITEMS[:20]}


def test_int_items_are_checked_from_their_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compute() of int items named by ``str`` looks them up from their numbers (no ``str`` per
    item): the answers of the general path, from the dict of a live pair as from a segment, and
    bools, floats and int subclasses (other texts) are never taken for the ints they equal."""
    monkeypatch.setattr(segment, "MIN_ENTRIES", 1)
    counter = str(tmp_path / "counter")
    infra = xl.MapInfra(folder=tmp_path / "cache")
    numbers = [*range(-150, 150, 3), 10**15, -(2**63), 2**63 - 1, 0]
    assert Numbered(counter=counter, infra=infra).embed.compute(numbers) == len(numbers) - 1
    for sealed in (False, True):  # the writer's pair parked (read as rows), then sealed
        if sealed:
            release_all_parked()
        feat = Numbered(counter=counter, infra=infra)
        assert feat.embed.compute(numbers[::-1]) == 0
        assert bool(feat.embed._store._ix.segs) == sealed
        assert feat.embed.compute(np.array(numbers[:90], dtype=np.int64)) == 0
        assert feat.embed.compute(np.arange(-150, 150, 3).astype(np.int16)) == 0
        assert feat.embed.compute(range(-150, 150, 3)) == 0
        assert feat.embed.compute(tuple(numbers)) == 0
        # calls serve each number's own output: in the order written (one strided run of the
        # shard), in others, with duplicates, from numbers or from their texts
        rng = np.random.default_rng(0)
        want_all = [float(n) for n in numbers]
        for asked in (numbers, numbers[::-1], [*numbers[5:], *numbers[:9]], numbers[::2] * 3):
            for given in (asked, np.array(asked), rng.permutation(asked).tolist()):
                want = [float(n) for n in given]
                assert [float(x[0]) for x in feat.embed(given)] == want
                np.testing.assert_array_equal(feat.embed.stack(given)[:, 0], want)
        assert [float(x[0]) for x in Numbered(infra=infra).embed(numbers)] == want_all
    assert counts(counter) == {str(n): 1 for n in numbers}
    feat = Numbered(counter=counter, infra=infra)
    assert feat.embed.compute([*numbers, 1, 2, 1]) == 2  # 2 new items, one of them twice
    others = [True, False, 3.0, -3.0, np.int64(6), Flag.ON, 2**64]  # texts: True, 3.0, ON, ...
    assert feat.embed.compute([*numbers, *others]) == len(others) - 1  # np.int64(6) is "6"
    assert feat.embed.compute(np.arange(2**63 - 100, 2**63, 7, dtype=np.uint64)) == 15
    assert counts(counter) == {
        **{str(n): 1 for n in [*numbers, 1, 2, *others]},
        **{str(n): 1 for n in range(2**63 - 100, 2**63, 7)},
    }
    read_only = Numbered(infra=xl.MapInfra(folder=tmp_path / "cache", mode="read-only"))
    assert read_only.embed.compute(numbers) == 0
    with pytest.raises(xl.CacheMissError, match="1 of 105 items"):
        read_only.embed.compute([*numbers, 4])
    forced = Numbered(counter=counter, infra=xl.MapInfra(folder=tmp_path / "cache", mode="force"))
    assert forced.embed.compute(numbers) == len(numbers) - 1
    np.testing.assert_array_equal(feat.embed.stack(numbers)[:, 0], np.array(numbers, float))


def test_int_items_repeated_on_a_first_fill_are_computed_once(tmp_path: Path) -> None:
    """Increasing ints are known distinct (no pass to deduplicate their uids); any other order
    of ints, repeats included, is deduplicated, on an empty cache as on a filled one."""
    counter = str(tmp_path / "counter")
    feat = Numbered(counter=counter, infra=xl.MapInfra(folder=tmp_path / "cache"))
    assert feat.embed.compute([*range(100), 5, 99]) == 100
    assert feat.embed.compute([*range(100, 170), 169, *range(170, 200)]) == 100
    assert feat.embed.compute(list(range(299, 199, -1))) == 100
    assert feat.embed.compute(range(300, 400)) == 100
    assert feat.embed.compute([*range(400, 480), 0, 480]) == 81
    assert counts(counter) == {str(n): 1 for n in range(481)}
    np.testing.assert_array_equal(feat.embed.stack(range(481))[:, 0], np.arange(481.0))


class Flag(enum.IntEnum):
    ON = 6

    def __str__(self) -> str:
        return self.name


@pytest.mark.parametrize(
    ("n", "max_jobs", "min_samples", "sizes"),
    [
        (10, 3, 1, [4, 3, 3]),
        (10, 128, 4, [4, 3, 3]),
        (2, 8, 1, [1, 1]),
        (7, 1, 1, [7]),
        (100, 8, 50, [50, 50]),
        (1, 4, 1, [1]),
        (0, 4, 1, []),
    ],
)
def test_chunk_sizes(n: int, max_jobs: int, min_samples: int, sizes: list[int]) -> None:
    got = chunk_sizes(n, max_jobs, min_samples)
    assert got == sizes
    assert sum(got) == n
    if got:
        assert max(got) - min(got) <= 1 and min(got) > 0


def test_processpool_uses_the_right_number_of_workers(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    feat = Featurizer(
        counter=counter,
        infra=xl.MapInfra(
            folder=tmp_path, cluster="processpool", max_jobs=2, min_samples_per_job=5
        ),
    )
    feat.embed.compute(ITEMS[:10])
    with open(counter) as f:
        lines = f.read().splitlines()
    assert sorted(lines) == sorted(ITEMS[:10])
    # chunks are contiguous: the first 5 items in one worker, the last 5 in one (the same or the
    # other: a worker done with its chunk may take the next before the second worker starts)
    pids = _pids_by_item(tmp_path, feat, ITEMS[:10])
    assert len(set(pids[:5])) == 1 and len(set(pids[5:])) == 1
    assert os.getpid() not in pids  # computed in the pool's processes


def _pids_by_item(tmp_path: Path, feat: Featurizer, items: list[str]) -> list[int]:
    """Which process computed each item, read back through a second cache recording pids."""
    folder = tmp_path / "pids"
    pid_feat = PidFeaturizer(
        infra=xl.MapInfra(folder=folder, cluster="processpool", max_jobs=2, min_samples_per_job=5)
    )
    return [int(x) for x in pid_feat.pid.stack(items)]


def test_count_mismatch_is_an_error_and_keeps_nothing(tmp_path: Path) -> None:
    fewer = Miscounted(extra=-1, infra=xl.MapInfra(folder=tmp_path / "fewer"))
    with pytest.raises(RuntimeError, match="yielded 2 outputs for 3 items") as info:
        fewer.embed.compute(["a", "b", "c"])
    assert "are not kept" in str(info.value)
    assert fewer.embed.cached_uids() == []  # which output belongs to which item is unknown
    more = Miscounted(extra=2, infra=xl.MapInfra(folder=tmp_path / "more"))
    with pytest.raises(RuntimeError, match=r"more than 3 outputs \(at least 4\)") as info:
        more.embed.compute(["a", "b", "c"])
    assert "may belong to other items" in str(info.value)
    assert more.embed.cached_uids() == []
    ram = Miscounted(extra=-1, infra=xl.MapInfra(keep_in_ram=True))
    with pytest.raises(RuntimeError, match="yielded 2 outputs for 3 items"):
        ram.embed.compute(["a", "b", "c"])
    assert ram.embed.cached_uids() == []


@pytest.mark.parametrize("cluster", [None, "threadpool", "processpool"], ids=str)
def test_outputs_of_a_method_that_skips_items_are_never_served(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method leaving out an item shifts every later output onto the wrong item: none of them
    is served, not even items stored correctly before by another call (force), not even after
    the store folds its files; the fixed method computes them all again, right."""
    from map_defs import Skipping

    items = ["apple", "banana", "cherry", "date", "elderberry", "fig"]
    right = {item: [float(len(item)), float(ord(item[0]))] for item in items}
    infra = {"folder": tmp_path, "cluster": cluster, "max_jobs": 2}
    Skipping(infra=xl.MapInfra(**infra)).embed.compute(items[:2])  # stored right
    buggy = Skipping(skip=("cherry",), infra=xl.MapInfra(**infra, mode="force"))
    error: type[BaseException] = RuntimeError if cluster is None else xl.JobError
    with pytest.raises(error, match="outputs for"):
        buggy.embed.compute(items)
    fixed = Skipping(infra=xl.MapInfra(**infra))
    # some items may be kept: a worker's chunk without "cherry" yields the right count
    kept = set(fixed.embed.cached_uids())
    assert {"cherry", "date", "elderberry", "fig"} - kept
    for item in kept:
        assert fixed.embed.stack([item])[0].tolist() == right[item], item
    script = (
        "import sys, exca_lite as xl; sys.path.insert(0, sys.argv[2]); from map_defs import "
        "Skipping; f = Skipping(infra=xl.MapInfra(folder=sys.argv[1])); "
        "print(sorted(f.embed.cached_uids()))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert fresh.stdout.strip() == str(sorted(kept))
    (store_folder,) = {p.parent for p in tmp_path.rglob("*.idx")}
    assert MapStore(store_folder).stats()["items"] == len(kept)  # what `exca-lite info` says
    MapStore(store_folder).compact()  # voids and the copies they void, folded together
    assert MapStore(store_folder).stats()["items"] == len(kept)
    assert fixed.embed.compute(items) == len(items) - len(kept)
    assert fixed.embed.stack(items).tolist() == [right[i] for i in items]


@pytest.mark.parametrize("cluster", [None, "processpool", "local"], ids=lambda c: str(c))
def test_failure_keeps_completed_items(tmp_path: Path, cluster: str | None) -> None:
    counter = str(tmp_path / "counter")
    items = [f"i{k}" for k in range(8)]
    feat = Featurizer(
        counter=counter,
        fail_on="i5",
        infra=xl.MapInfra(folder=tmp_path / "cache", cluster=cluster, max_jobs=2),
    )
    error: type[BaseException] = ValueError if cluster is None else xl.JobError
    with pytest.raises(error, match="cannot embed 'i5'") as info:
        feat.embed.compute(items)
    if cluster is not None:
        assert "Traceback" in str(info.value) and "map_defs.py" in str(info.value)
        assert "job" in str(info.value)
    done = set(feat.embed.cached_uids())
    assert {"i0", "i1", "i2", "i3", "i4"} <= done and "i5" not in done
    # fixed: only what is missing is computed
    fixed = Featurizer(
        counter=counter, infra=xl.MapInfra(folder=tmp_path / "cache", cluster=cluster)
    )
    assert fixed.embed.compute(items) == len(items) - len(done)
    assert all(n == 1 for n in counts(counter).values())


def test_modes(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    feat = Featurizer(counter=counter, infra=xl.MapInfra(folder=tmp_path / "c"))
    feat.embed.compute(ITEMS[:3])
    forced = Featurizer(counter=counter, infra=xl.MapInfra(folder=tmp_path / "c", mode="force"))
    assert forced.embed.compute(ITEMS[:3]) == 3
    assert forced.embed.compute(ITEMS[:3]) == 0  # once per object
    assert counts(counter) == {item: 2 for item in ITEMS[:3]}
    read_only = Featurizer(infra=xl.MapInfra(folder=tmp_path / "c", mode="read-only"))
    assert read_only.embed.stack(ITEMS[:3]).shape == (3, 4)
    with pytest.raises(xl.CacheMissError, match=r"3 of 4 items .*item004"):
        read_only.embed.compute(ITEMS[2:6])


def test_read_only_creates_nothing(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path / "none", mode="read-only"))
    with pytest.raises(xl.CacheMissError):
        list(feat.embed(["a"]))
    assert not (tmp_path / "none").exists()


def test_forbid_single_item_computation(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path, forbid_single_item_computation=True))
    with pytest.raises(RuntimeError, match="exactly one item is missing"):
        feat.embed.compute(["a"])
    assert feat.embed.compute(["a", "b"]) == 2
    assert feat.embed.compute(["a"]) == 0  # cached: nothing to compute, no error


def test_non_array_outputs_round_trip_with_their_type(tmp_path: Path) -> None:
    obj = Objects(infra=xl.MapInfra(folder=tmp_path))
    first = list(obj.describe(range(6)))
    again = list(Objects(infra=xl.MapInfra(folder=tmp_path)).describe(range(6)))
    for x, a, b in zip(range(6), first, again, strict=True):
        assert type(a) is type(b), (x, a, b)
        if x % 3 == 0:
            assert b == {"x": x, "name": f"n{x}", "values": [x, x / 2]}
        elif x % 3 == 1:
            assert b == (x, "tuple")
        else:
            assert isinstance(b, np.float32) and b == x


def test_long_item_uids_are_shortened(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path))
    long_items = ["x" * 300, "x" * 299 + "y"]
    out = feat.embed.stack(long_items)
    assert out.shape == (2, 4)
    uids = feat.embed.cached_uids()
    assert len(uids) == 2 and all(len(u) <= 128 for u in uids)


def test_uid_and_folder(tmp_path: Path) -> None:
    feat = Featurizer(dim=8, infra=xl.MapInfra(folder=tmp_path))
    assert feat.embed.uid().startswith("map_defs.Featurizer.embed,1/dim=8-")
    assert feat.embed.folder() == tmp_path / feat.embed.uid()
    assert feat.embed.config() == {"dim": 8}
    feat.embed.compute(["a", "b"])
    assert (tmp_path / feat.embed.uid() / "config.json").exists()
    feat.embed.clear()
    assert feat.embed.cached_uids() == []


WORKER = textwrap.dedent(
    """
    import sys
    import exca_lite as xl
    from map_defs import Featurizer
    folder, counter, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    items = [f"item{i:04d}" for i in range(start, stop)]
    feat = Featurizer(counter=counter, delay_s=0.002, infra=xl.MapInfra(folder=folder))
    out = feat.embed.stack(items)
    assert out.shape == (len(items), 4), out.shape
    print("ok", len(items))
    """
)


def test_four_processes_compute_each_item_once(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "cache"), counter, "0", "200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err
        assert out.strip() == "ok 200"
    assert counts(counter) == {f"item{i:04d}": 1 for i in range(200)}


def test_an_item_uid_that_is_not_valid_text_is_a_clear_error(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path))
    name = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # str() of a latin-1 file name
    with pytest.raises(ValueError, match=r"item #1.*not valid text.*fsencode"):
        feat.embed.stack(["ok", name])
    assert feat.embed.compute(["ok", "café.jpg"]) == 2  # real text, accents included


def test_stack_serves_what_others_published_since_it_last_looked(tmp_path: Path) -> None:
    from map_defs import Shifted

    items = ["a", "bb", "ccc"]
    reader = Shifted(infra=xl.MapInfra(folder=tmp_path))
    assert reader.embed.stack(items)[:, 0].tolist() == [1, 2, 3]
    # another object (as another process) overwrites them: the newest copy wins
    Shifted(shift=1000, infra=xl.MapInfra(folder=tmp_path, mode="force")).embed.compute(items)
    assert reader.embed.stack(items)[:, 0].tolist() == [1001, 1002, 1003]
    # and clears the cache: the reader computes them again, it serves nothing deleted
    Shifted(infra=xl.MapInfra(folder=tmp_path)).embed.clear()
    assert reader.embed.stack(items)[:, 0].tolist() == [1, 2, 3]


def test_a_session_reads_what_it_computes_after_another_process_compacted(tmp_path: Path) -> None:
    """The session's writer stays open (parked) across a compaction run from a shell: its pair is
    folded in part, and what it appends afterwards must still be readable here."""
    from map_defs import Shifted

    feat = Shifted(infra=xl.MapInfra(folder=tmp_path))
    feat.embed.compute(["a", "bb"])
    (store_folder,) = {p.parent for p in tmp_path.rglob("*.idx")}
    subprocess.run(
        [sys.executable, "-m", "exca_lite", "compact", str(store_folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert feat.embed.compute(["ccc", "dddd"]) == 2
    assert feat.embed.stack(["a", "bb", "ccc", "dddd"])[:, 0].tolist() == [1, 2, 3, 4]
    assert [float(x[0]) for x in feat.embed(["dddd", "a"])] == [4, 1]


def test_forced_items_taken_back_by_another_call_are_computed_again(
    tmp_path: Path,
) -> None:
    """mode="force": an object that forced its items reads them again after another call (a
    miscounting one, here in the same process) took them back: they are recomputed."""
    from map_defs import Skipping

    items = ["apple", "banana", "cherry", "date"]
    right = [[float(len(i)), float(ord(i[0]))] for i in items]
    forced = Skipping(infra=xl.MapInfra(folder=tmp_path, mode="force"))
    assert forced.embed.stack(items).tolist() == right
    buggy = Skipping(skip=("banana",), infra=xl.MapInfra(folder=tmp_path, mode="force"))
    with pytest.raises(RuntimeError, match="3 outputs for 4 items"):
        buggy.embed.compute(items)
    # the 3 outputs it gave went to apple, banana, cherry: taken back; date's copy is the old one
    assert forced.embed.cached_uids() == ["date"]  # (this refreshes its view of the store)
    assert forced.embed.stack(items).tolist() == right  # the 3 computed again
    assert [o.tolist() for o in forced.embed(items)] == right


def test_a_missing_item_met_while_reading_raises_the_readers_error(tmp_path: Path) -> None:
    """``load_many(gone=...)``: what a map call raises for an item that left the cache between
    its check and its read (CacheMissError), on the few-items and the batched paths."""
    store = MapStore(tmp_path)
    with store.writer() as writer:
        for k in range(40):
            writer.write(f"u{k}", np.full(3, float(k)))

    def gone(uid: str) -> Exception:
        return xl.CacheMissError(f"gone: {uid}")

    for uids in (["u1", "absent"], [f"u{k}" for k in range(30)] + ["absent"]):
        outputs = store.load_many(uids, gone)
        with pytest.raises(xl.CacheMissError, match="gone: absent"):
            list(outputs)
        with pytest.raises(KeyError):
            list(store.load_many(uids))
