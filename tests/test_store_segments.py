"""Segments (``store/segment.py``): a pair's index folded into mapped sorted columns.

Real processes fill caches (their writers seal their pairs at exit, and write segments), fresh
readers open them through the segments; every answer is compared with a plain dict model.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import textwrap
import time
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exca_lite.store import MapStore
from exca_lite.store import encoding as enc
from exca_lite.store import mapstore as mapstore_module
from exca_lite.store import segment as sg
from exca_lite.store import writer as writer_module

ENV = {**os.environ, "EXCA_LITE_SEGMENT_MIN": "1"}

FILL = textwrap.dedent(
    """
    import sys, json
    import numpy as np
    from exca_lite.store import MapStore
    folder, spec = sys.argv[1], json.loads(sys.argv[2])
    store = MapStore(folder)
    with store.writer() as w:
        for uid, value in spec:
            w.write(uid, np.full(3, value, dtype=np.float64) if value >= 0 else {"v": value})
    """
)


def fill_process(folder: Path, spec: list[tuple[str, float]], **env: str) -> None:
    """A process writing ``spec`` (uid, value) and exiting: its pair is sealed, with a segment."""
    import json

    subprocess.run(
        [sys.executable, "-c", FILL, str(folder), json.dumps(spec)],
        check=True,
        env={**ENV, **env},
        timeout=60,
    )


def value(store: MapStore, uid: str) -> float:
    got = store.load(uid)
    return float(got[0]) if isinstance(got, np.ndarray) else float(got["v"])


def _collide_every_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every uid the hash 0, through each way a uid gets hashed: arrays of uids, one uid,
    code point columns (uids without NUL) and numbers' digits (``DecimalUids``)."""
    constant = lambda arr: np.zeros(len(arr), dtype=np.uint64)  # noqa: E731
    monkeypatch.setattr(sg, "hash_array", constant)
    monkeypatch.setattr(sg, "hash_one", lambda uid: 0)
    monkeypatch.setattr(sg, "hash_codes", lambda codes, starts, ends, width: constant(starts))
    real = sg.decimal_codes
    monkeypatch.setattr(sg, "decimal_codes", lambda values: (constant(values), real(values)[1]))


def check_all(store: MapStore, model: dict[str, float], absent: tp.Sequence[str] = ()) -> None:
    """Every way of reading the store agrees with ``model``."""
    uids = list(model)
    assert len(store) == len(model)
    assert sorted(store.item_uids()) == sorted(model)
    for uid, expected in model.items():
        assert value(store, uid) == expected, uid
        assert uid in store
    for asked in (uids, uids[::-1] * 2):  # in order, and another order with duplicates
        for served in (store.load_many(asked), store.load_all(asked)):
            assert served is not None
            got = [float(v[0]) if isinstance(v, np.ndarray) else float(v["v"]) for v in served]
            assert got == [model[u] for u in asked]
    assert store.missing([*uids, *absent, *uids]) == list(dict.fromkeys(absent))
    assert store.stores_all(uids) and store.stores_all(uids * 20)  # a few, and a batch
    for uid in absent:
        assert not store.stores_all([*uids, uid]) and not store.stores_all([*uids * 20, uid])
        assert store.load_all([*uids, uid]) is None and store.load_all([uid, *uids]) is None
        assert uid not in store
        with pytest.raises(KeyError):
            store.load(uid)
    arrays = [u for u in uids if model[u] >= 0]
    if arrays:
        stacked = store.stack(arrays)
        assert stacked[:, 0].tolist() == [model[u] for u in arrays]


def segment_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.six"))


@pytest.mark.timeout(120)
def test_a_cache_sealed_by_its_process_is_read_through_its_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = {f"item-{i}": float(i) for i in rng.permutation(3000).tolist()}
    model.update({f"odd-{i}": -float(i) - 1 for i in range(20)})  # not arrays: pickled/msgpack
    fill_process(tmp_path, list(model.items()))
    assert len(segment_files(tmp_path)) == 1
    store = MapStore(tmp_path)
    assert len(store._ix.segs) == 1 and not store._ix.rows  # nothing decoded into the dict
    check_all(store, model, absent=["item-3000", "", "nope"])
    assert store.verify() == []
    assert store.stats()["items"] == len(model)


@pytest.mark.timeout(120)
def test_duplicates_across_pairs_the_newest_wins_and_compaction_keeps_it(tmp_path: Path) -> None:
    model: dict[str, float] = {}
    for k, (lo, hi) in enumerate([(0, 400), (200, 600), (100, 300)]):
        spec = [(f"u{i}", float(1000 * k + i)) for i in range(lo, hi)]
        fill_process(tmp_path, spec)
        model.update(spec)
    assert len(segment_files(tmp_path)) == 3
    store = MapStore(tmp_path)
    assert len(store._ix.segs) == 3
    check_all(store, model, absent=["u600"])
    assert store.verify() == []
    report = store.compact()
    assert report["items"] == len(model)
    files = segment_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith("c-")  # the sources' segments went
    fresh = MapStore(tmp_path)
    assert len(fresh._ix.segs) == 1 and not fresh._ix.rows
    check_all(fresh, model, absent=["u600"])
    assert fresh.verify() == []
    check_all(store, model)  # the store that compacted reloads its view


@pytest.mark.timeout(120)
def test_segments_and_live_writer_pairs_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer pair of this process (unsealed: read into the dict) holds copies older than a
    sealed pair's segment for some uids, newer for others: every reader serves the newest."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    store = MapStore(tmp_path)
    with store.writer() as w:  # older than what the process below writes
        for i in range(50):
            w.write(f"u{i}", np.full(3, float(i)))
    fill_process(tmp_path, [(f"u{i}", 100.0 + i) for i in range(25, 80)])
    with store.writer() as w:  # the same parked pair goes on: newer than the segment
        for i in range(70, 90):
            w.write(f"u{i}", np.full(3, 200.0 + i))
    model = {f"u{i}": float(i) for i in range(25)}
    model.update({f"u{i}": 100.0 + i for i in range(25, 70)})
    model.update({f"u{i}": 200.0 + i for i in range(70, 90)})
    store.refresh()  # its view had not listed the other process's pair yet
    for reader in (MapStore(tmp_path), store):
        check_all(reader, model, absent=["u90"])
    fresh = MapStore(tmp_path)
    assert len(fresh._ix.segs) == 1 and fresh._ix.rows  # both kinds in one view
    # a segment added to a view that has rows already: a reader that read the writer pair first
    late = MapStore(tmp_path)
    fill_process(tmp_path, [(f"u{i}", 300.0 + i) for i in range(0, 10)])
    model.update({f"u{i}": 300.0 + i for i in range(10)})
    late.refresh()
    check_all(late, model, absent=["u90"])
    store.close()  # seals this process's pair: it gets a segment too
    final = MapStore(tmp_path)
    assert len(final._ix.segs) == 3
    check_all(final, model, absent=["u90"])
    assert final.verify() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("column", ["blob", "fixed"])
def test_a_forced_hash_collision_never_serves_another_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str
) -> None:
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    _collide_every_hash(monkeypatch)
    model = {f"k{i}": float(i) for i in range(300)}
    absent = ["k300", "k1\x00\x00", "x" * 39, "x" * 41, "k", "k1000", "k10\x00", "", "j1"]
    if column == "blob":  # uids the fixed-width column cannot hold: stored as utf-8
        model["k1\x00"] = 7777.0  # differs from "k1" only by a NUL (numpy's <U drops those)
        model["x" * 40] = 8888.0  # longer than the fixed-width column
    else:  # lookups compare code point columns: prefixes and extensions of stored uids
        model["x" * 32] = 8888.0
        absent += ["k1\x00", "x" * 31, "x" * 33, "x" * 40]
    store = MapStore(tmp_path)
    with store.writer() as w:
        for uid, v in model.items():
            w.write(uid, np.full(3, v))
    store.close()
    reader = MapStore(tmp_path)
    assert len(reader._ix.segs) == 1
    assert int(reader._ix.segs[0].hashes.max()) == 0  # every entry collides
    assert (reader._ix.segs[0].fixed is not None) == (column == "fixed")
    check_all(reader, model, absent=absent)
    # a batch without NUL compares code point columns (one NUL sends a batch one by one)
    clean = [u for u in absent if "\x00" not in u]
    assert reader.missing([*model, *clean]) == clean
    narrow = [u for u in model if len(u) < 32]  # a batch narrower than the stored column
    assert reader.missing([*narrow, "x" * 31, "k"]) == ["x" * 31, "k"]
    assert reader.verify() == []
    # the real hash again: that segment's hashes are now wrong for every uid: misses, never a
    # wrong item (verify says the segment is damaged)
    monkeypatch.undo()
    other = MapStore(tmp_path)
    found = [u for u in model if u in other]
    for uid in found:
        assert value(other, uid) == model[uid]
    assert any("differ" in p for p in other.verify())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("column", ["blob", "fixed"])
def test_a_forced_hash_collision_never_serves_another_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str
) -> None:
    """Uids looked up from their numbers (``DecimalUids``), every hash colliding: only a stored
    uid that is exactly ``str(n)`` counts (not a prefix, an extension, a sign or a zero more)."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    _collide_every_hash(monkeypatch)
    stored = ["1", "12", "-1", "-07", "+5", "8 ", "-0", "00", "1234567890123456789", "99"]
    if column == "blob":
        stored.append("9" * 40)  # longer than the fixed-width column: every uid is utf-8
    store = MapStore(tmp_path)
    with store.writer() as w:
        for k, uid in enumerate(stored):
            w.write(uid, np.full(1, float(k)))
    store.close()
    reader = MapStore(tmp_path)
    assert len(reader._ix.segs) == 1 and not reader._ix.rows
    assert (reader._ix.segs[0].fixed is not None) == (column == "fixed")
    present = [1, 12, -1, 99, 1234567890123456789] * 5  # past the few looked up one by one
    assert reader.stores_all(sg.DecimalUids(np.array(present)))
    served = reader.load_all(sg.DecimalUids(np.array(present)))
    assert served is not None  # each number's own item
    expected = [float(stored.index(str(n))) for n in present]
    assert [float(v[0]) for v in served] == expected
    assert reader.stack(sg.DecimalUids(np.array(present)))[:, 0].tolist() == expected
    for number in [0, 2, 5, 7, -7, 8, 120, -12, 9, 999, 123456789012345678, -(2**63)]:
        assert not reader.stores_all(sg.DecimalUids(np.array([*present, number]))), number
        assert reader.missing(sg.DecimalUids(np.array([*present, number]))) == [str(number)]
        assert reader.load_all(sg.DecimalUids(np.array([*present, number]))) is None
        with pytest.raises(KeyError):
            reader.stack(sg.DecimalUids(np.array([*present, number])))


@pytest.mark.timeout(120)
def test_numbers_are_found_as_their_text_in_segments_rows_and_voids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stores_all`` of ``DecimalUids`` answers as ``missing`` of their texts: items in a
    segment, in a live pair's rows, taken back by void entries (in rows, then in a segment)."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(-100, 300):
            w.write(str(i), np.full(3, float(i)))
    store.close()  # a segment
    with store.writer() as w:  # rows: new items, and voids over some in the segment
        for i in range(300, 350):
            w.write(str(i), np.full(3, float(i)))
        w.retract([str(i) for i in range(10, 20)])
    batches = [range(-100, 350), range(-100, 10), range(20, 350), range(-100, 351), range(5, 15)]
    for reader in (store, MapStore(tmp_path)):  # both kinds in one view
        for batch in batches:
            numbers = sg.DecimalUids(np.array(batch))
            expected = not reader.missing([str(i) for i in batch])
            assert reader.stores_all(numbers) == expected, batch
    writer_module.release_parked(store)  # the voids go to a segment too
    for reader in (store, MapStore(tmp_path)):
        for batch in batches:
            numbers = sg.DecimalUids(np.array(batch))
            expected = not reader.missing([str(i) for i in batch])
            assert reader.stores_all(numbers) == expected, batch
            assert reader.missing(numbers) == reader.missing([str(i) for i in batch])
            served = reader.load_all(numbers)
            assert (served is not None) == expected, batch
            if served is not None:  # each number's own item, in order
                assert [float(v[0]) for v in served] == [float(i) for i in batch]
                assert reader.stack(numbers)[:, 0].tolist() == [float(i) for i in batch]


def _model_runs(uids: tp.Iterable[str]) -> list[list[int]]:
    """The runs of consecutive numbers ``v`` (``|v| < 10**18``) whose ``str(v)`` is a uid."""
    numbers = sorted(
        int(u)
        for u in uids
        if re.fullmatch(r"-?(0|[1-9][0-9]*)", u) and u != "-0" and abs(int(u)) < 10**18
    )
    runs: list[list[int]] = []
    for v in numbers:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return runs


_NOT_CANONICAL = ["01", "-0", "+5", " 5", "5 ", "1e3", "-", "--1", "1-", "0x1", "\u0661", "\uff11"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    numbers=st.sets(
        st.one_of(
            st.integers(-30, 30),
            st.integers(-(10**19), 10**19),
            st.sampled_from([10**18 - 1, 10**18, -(10**18) + 1, -(10**18), 2**63 - 1]),
        ),
        max_size=60,
    ),
    others=st.sets(
        st.one_of(st.sampled_from(_NOT_CANONICAL), st.text(min_size=1, max_size=6)), max_size=10
    ),
)
def test_decimal_runs_match_a_model(numbers: set[int], others: set[str]) -> None:
    """A segment's runs are exactly the runs of the numbers whose canonical text is a uid:
    non-canonical texts (leading zeros, signs, spaces, other digits) and numbers of 19 digits
    or more are not in them."""
    uids = sorted({str(v) for v in numbers} | {u for u in others if "\x00" not in u})
    column = np.array(uids, dtype=str)
    if not uids:
        column = np.zeros(0, dtype="<U1")
    runs = sg.decimal_runs(column)
    assert runs is not None
    assert runs.tolist() == _model_runs(uids)


def test_decimal_runs_give_up_past_max_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sg, "MAX_RUNS", 3)
    assert sg.decimal_runs(np.array(["1", "3", "5"])) is not None
    assert sg.decimal_runs(np.array(["1", "3", "5", "7"])) is None


@pytest.mark.timeout(120)
def test_numbers_are_found_by_runs_beside_segments_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stores_all``/``missing`` of ``DecimalUids`` agree with the texts' answers whatever mix
    of segments holds them: one recording its runs (with gaps, non-canonical uids, numbers past
    what runs hold), one without runs (too many of them, or an older writer's), live rows."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    big = [10**18, 10**18 + 5, -(10**18), 2**63 - 1]
    first = [*map(str, [*range(-20, 40), *range(100, 150), *big]), "007", "-0", "x"]
    with MapStore(tmp_path).writer() as w:
        for uid in first:
            w.write(uid, np.zeros(2))
    writer_module.release_parked(MapStore(tmp_path))
    monkeypatch.setattr(sg, "MAX_RUNS", 0)  # the next segment records no runs
    with MapStore(tmp_path).writer() as w:
        for i in range(200, 260, 2):
            w.write(str(i), np.zeros(2))
    writer_module.release_parked(MapStore(tmp_path))
    store = MapStore(tmp_path)
    with store.writer() as w:  # live rows, no segment
        w.write("300", np.zeros(2))
    segs = MapStore(tmp_path)._ix.segs
    assert sorted(g.runs is None for g in segs) == [False, True]
    rng = np.random.default_rng(1)
    pool = np.array([*range(-30, 320), *big, 10**18 - 1, 7, -(2**63)], dtype=np.int64)
    for reader in (store, MapStore(tmp_path)):
        for size in (1, 5, 40, 300):
            for _ in range(10):
                values = rng.choice(pool, size=size)
                texts = [str(v) for v in values.tolist()]
                numbers = sg.DecimalUids(values)
                assert reader.missing(numbers) == reader.missing(texts)
                assert reader.stores_all(numbers) == (not reader.missing(texts))
    held = {"300", *(str(i) for i in range(200, 260, 2)), *first}
    everything = sg.DecimalUids(pool)
    assert MapStore(tmp_path).missing(everything) == [str(v) for v in pool if str(v) not in held]


def test_decimal_uids_are_hashed_and_matched_as_their_text() -> None:
    """``DecimalUids`` give the hashes and code point rows of the texts ``str(n)``: in any order,
    negative, at the bounds of int64, of every length."""
    rng = np.random.default_rng(0)
    cases = [
        np.arange(-1000, 1000),
        rng.permutation(np.arange(-50, 10**5, 7)),
        np.array([0, -1, 9, 10, -10, 99, 100, 2**32 - 1, 2**32, -(2**32), 2**63 - 1, -(2**63)]),
        rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64),
        10 ** rng.integers(0, 19, 500, dtype=np.int64) - rng.integers(0, 2, 500),
        np.array([5, 5, 5]),
        np.zeros(0, dtype=np.int64),
    ]
    for values in cases:
        texts = [str(v) for v in values.tolist()]
        uids = sg.DecimalUids(values)
        assert list(uids) == texts and [uids[i] for i in range(len(uids))] == texts
        assert list(uids[3:9]) == texts[3:9] and uids.texts() == texts
        assert uids.pick([2, 0, 2][: len(texts)]) == [texts[i] for i in [2, 0, 2][: len(texts)]]
        by_text, by_number = sg.Query(texts), sg.Query(uids)
        assert np.array_equal(by_number.hashes, by_text.hashes)
        assert np.array_equal(by_number.hashes, sg.uid_hashes(texts))
        if len(values):
            assert np.array_equal(tp.cast(np.ndarray, by_number.matrix), by_text.matrix)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["truncated", "other_pair", "garbage_meta", "empty"])
def test_a_damaged_segment_is_ignored_and_the_pair_read_the_old_way(
    tmp_path: Path, damage: str
) -> None:
    model = {f"u{i}": float(i) for i in range(500)}
    fill_process(tmp_path, list(model.items()))
    (path,) = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "other_pair":
        data[8:24] = bytes(16)
    elif damage == "garbage_meta":
        data[70:80] = b"\xff" * 10
    else:
        data = bytearray()
    path.unlink()
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignored segment is no warning
        store = MapStore(tmp_path)
        assert not store._ix.segs and len(store._ix.rows) == len(model)
        check_all(store, model, absent=["u500"])
    assert any(str(path) in p for p in store.verify())
    store.compact()  # folds the pair, its segment goes with it
    assert not path.exists()
    fresh = MapStore(tmp_path)
    assert fresh._ix.segs
    check_all(fresh, model)
    assert fresh.verify() == []


PARKED = textwrap.dedent(
    """
    import sys
    import numpy as np
    from exca_lite.store import MapStore
    store = MapStore(sys.argv[1])
    for step in range(3):
        with store.writer() as w:
            for i in range(100 * step, 100 * step + 150):
                w.write(f"u{i}", np.full(3, 1000.0 * step + i))
        print("parked", flush=True)
        sys.stdin.readline()
    """
)


def _writer_process(script: str, folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A process running ``script`` on ``folder`` that keeps its writer parked between steps:
    it prints "parked" after each and goes on when a line comes on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _go_on(proc: subprocess.Popen[str]) -> None:
    """Let a ``_writer_process`` take its next step."""
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


IDLE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from exca_lite.store import MapStore
    store = MapStore(sys.argv[1])
    with store.writer() as w:
        for i in range(1500):
            w.write(str(i), np.full(3, float(i)))
    print("parked", flush=True)
    sys.stdin.readline()
    with store.writer() as w:  # taken back: goes on in the same pair, past its segment
        for i in range(1500, 1600):
            w.write(str(i), np.full(3, float(i)))
    print("parked", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.timeout(120)
def test_an_idle_parked_pair_gets_a_segment_in_the_background(tmp_path: Path) -> None:
    """A live process's writer left idle folds its pair into a segment by itself (a pair below
    the size that gets one when the call ends): other processes opening the cache then map it."""
    env = {
        **os.environ,
        "EXCA_LITE_IDLE_SEGMENT_S": "0.2",
        "EXCA_LITE_SEGMENT_MIN": "1000",
        "EXCA_LITE_SEGMENT_PARK_MIN": "100000",
    }
    proc = _writer_process(IDLE, tmp_path, env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "parked"
        deadline = time.monotonic() + 60  # a generous bound: the build takes milliseconds
        while not list(tmp_path.glob("*.six")) and time.monotonic() < deadline:
            time.sleep(0.05)
        store = MapStore(tmp_path)
        assert len(store._ix.segs) == 1 and not store._ix.segs[0].sealed
        assert not store._ix.rows  # nothing decoded: all of it came from the segment
        model = {str(i): float(i) for i in range(1500)}
        check_all(store, model, absent=["1500"])
        _go_on(proc)
        assert proc.stdout.readline().strip() == "parked"
        store = MapStore(tmp_path)  # the segment, then the records past it
        assert len(store._ix.segs) == 1 and len(store._ix.rows) == 100
        check_all(store, {str(i): float(i) for i in range(1600)})
        assert store.verify() == []
        _go_on(proc)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.timeout(120)
def test_a_big_parked_pair_gets_a_segment_while_its_writer_lives(tmp_path: Path) -> None:
    """A process keeping its writer (a notebook) writes a segment when a big pair goes idle;
    later records of the same pair are read past it."""
    env = {**ENV, "EXCA_LITE_SEGMENT_PARK_MIN": "100"}
    proc = _writer_process(PARKED, tmp_path, env)
    assert proc.stdin is not None and proc.stdout is not None
    model: dict[str, float] = {}
    try:
        for step in range(3):
            assert proc.stdout.readline().strip() == "parked"
            model.update({f"u{i}": 1000.0 * step + i for i in range(100 * step, 100 * step + 150)})
            store = MapStore(tmp_path)
            # a segment at 150 entries, rebuilt at 300 (doubled), kept at 450: its tail is read
            assert len(store._ix.segs) == 1, step
            assert not store._ix.segs[0].sealed
            check_all(store, model, absent=["u999"])
            assert store.verify() == []
            _go_on(proc)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    store = MapStore(tmp_path)
    assert store._ix.segs and store._ix.pairs[0].sealed
    check_all(store, model)


@pytest.mark.timeout(120)
def test_a_writer_past_rotate_entries_seals_its_pair_and_its_store_maps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process writing a huge cache keeps a bounded view: every ROTATE_ENTRIES entries its
    writer seals its pair (into a segment) and goes on in a new one, and its store maps the
    segment instead of holding the pair's entries as rows. Items written again later win."""
    monkeypatch.setattr(writer_module, "ROTATE_ENTRIES", 2500)
    # such pairs are mapped already: automatic folds leave them alone (a fold of many would
    # hold all their uids in memory)
    monkeypatch.setattr(mapstore_module, "AUTO_FOLD_PAIRS", 1)
    monkeypatch.setattr(mapstore_module, "AUTO_FOLD_MAX_ENTRIES", 2000)
    store = MapStore(tmp_path)
    model: dict[str, float] = {}
    most_rows = 0
    with store.writer() as w:
        for i in range(9000):
            uid = f"u{i % 7000}"  # the last 2000 write again items of the first pairs
            w.write(uid, np.full(3, float(i)))
            model[uid] = float(i)
            if i % 250 == 0:
                most_rows = max(most_rows, len(store._ix.rows))
        w.flush()
        check_all(store, model, absent=["u7000"])
    assert most_rows <= 2500 + writer_module.FLUSH_MAX_ITEMS, most_rows
    assert len(store._ix.rows) <= 2500 + writer_module.FLUSH_MAX_ITEMS
    assert len(store._ix.segs) == 2  # pairs of 3000 (records of 1000): 2 sealed, the 3rd open
    store.close()
    fresh = MapStore(tmp_path)
    assert len(fresh._ix.segs) == 3 and not fresh._ix.rows
    assert all(pair.name.is_writer for pair in fresh._ix.pairs)  # none folded
    check_all(fresh, model, absent=["u7000"])
    assert fresh.verify() == []


@pytest.mark.timeout(60)
def test_clear_removes_segments(tmp_path: Path) -> None:
    fill_process(tmp_path, [(f"u{i}", float(i)) for i in range(10)])
    assert segment_files(tmp_path)
    store = MapStore(tmp_path)
    store.clear()
    assert not segment_files(tmp_path) and len(MapStore(tmp_path)) == 0


uid_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=40
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(uid_text, st.sampled_from(["array", "plain", "void"])),
                min_size=1,
                max_size=30,
            ),
            st.sampled_from(["seal", "park", "compact"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_lookups_match_a_dict_model(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[tuple[list[tuple[str, str]], str]],
) -> None:
    """Random uids (unicode, NUL, empty, long), overwrites across pairs, void entries (taking
    an item back), sealed pairs (segments), a parked one (rows), folding in between: every
    reader agrees with a dict."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    folder = tmp_path_factory.mktemp("model")
    model: dict[str, float] = {}
    voided: set[str] = set()
    counter = 0
    store = MapStore(folder)
    for items, then in batches:
        with store.writer() as w:
            for uid, kind in items:
                counter += 1
                if kind == "void":
                    w.write(uid, enc.VOID_VALUE)
                    model.pop(uid, None)
                    voided.add(uid)
                    continue
                w.write(uid, np.full(3, float(counter)) if kind == "array" else {"v": -counter})
                model[uid] = float(counter) if kind == "array" else -float(counter)
        if then == "seal":
            store.close()
        elif then == "compact":
            store.compact()
        absent = ["\x00absent", *sorted(voided - set(model))]
        check_all(MapStore(folder), model, absent=absent)
        check_all(store, model, absent=absent)
    writer_module.release_parked(store)
    fresh = MapStore(folder)
    check_all(fresh, model, absent=absent)
    assert fresh.verify() == []
    store.clear()


def test_lookups_hash_uids_as_segments_do() -> None:
    """``Query`` hashes uids from a column of code points; segments were written with
    ``hash_array`` of a ``<U`` array: both must agree on every uid (surrogates, astral
    characters, empty and long uids), and a uid with a NUL falls back to ``hash_array``."""
    rng = random.Random(0)
    alphabet = "ab\u00e9\u4e2d\U0001f600\ud800x9"
    for trial in range(200):
        longest = 300 if trial % 4 == 0 else 20
        uids = [
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(longest)))
            for _ in range(rng.randrange(1, 60))
        ]
        if trial % 10 == 0:
            uids.append(uids[0] + "\x00")
        query = sg.Query(uids)
        assert (query.matrix is None) == any("\x00" in u for u in uids)
        assert np.array_equal(query.hashes, sg.uid_hashes(uids)), uids
        assert [sg.hash_one(u) for u in uids] == query.hashes.tolist()
    assert len(sg.Query([]).hashes) == 0


def test_verify_checks_a_segment_its_writer_rewrote_since_the_index_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify() reads a pair's index, then its segment: a writer that went on and parked in
    between wrote a segment covering more than that read. Not damage: it is checked against the
    index as it is now."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    monkeypatch.setattr(sg, "PARK_MIN_ENTRIES", 1)  # a parked writer writes its segment
    store = MapStore(tmp_path)
    with store.writer() as w:
        for i in range(5):
            w.write(f"u{i}", np.full(3, float(i)))
    (name,) = [p.name for p in store._ix.pairs]
    index = store.paths.index(name.stem)
    read = index.read_bytes()  # what verify read first
    file_id = mapstore_module.sh.parse_header(read, mapstore_module.sh.INDEX_MAGIC)
    assert file_id is not None and store.paths.segment(name.stem).exists()
    with store.writer() as w:  # the parked writer goes on in the same pair, parks again
        for i in range(5, 20):  # doubled: the segment is rebuilt
            w.write(f"u{i}", np.full(3, float(i)))
    shard_size = store.paths.shard(name.stem).stat().st_size
    assert index.stat().st_size > len(read)
    assert store._verify_segment(name, file_id, len(read), shard_size) == []
    assert store.verify() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["dense", "sparse", "sparse_colliding"])
def test_numbers_read_again_and_again_from_rows_go_through_an_index_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A view's rows looked up by numbers in bulk, again and again, get an in-memory index
    (``_RowsIndex``: by number for dense numbers, else hashed as a segment): it answers as the
    dict does (segments under the rows, voids, newer copies, texts that are not a number's own
    ``str``, numbers of 19 digits, every hash colliding), follows the rows as they change, and is
    never built for uids it cannot hold."""
    monkeypatch.setattr(sg, "MIN_ENTRIES", 1)
    monkeypatch.setattr(mapstore_module, "ROWS_INDEX_MIN", 64)
    if kind == "sparse_colliding":
        _collide_every_hash(monkeypatch)
    spread = 1 if kind == "dense" else 1000
    big = int("1" * 19)  # a number's text of 19 digits: past what the index by number holds
    model: dict[str, float] = {}
    store = MapStore(tmp_path)
    with store.writer() as w:  # a segment under the rows: 0..99
        for i in range(100):
            w.write(str(i * spread), np.full(3, float(i)))
            model[str(i * spread)] = float(i)
    store.close()
    with store.writer() as w:  # rows (a parked pair): newer copies of 50..99, 100..299, voids
        for i in range(50, 300):
            w.write(str(i * spread), np.full(3, 1000.0 + i))
            model[str(i * spread)] = 1000.0 + i
        w.retract([str(i * spread) for i in range(90, 110)])
        # texts that are not the str of the numbers they read as (7, 5, 0 are in the segment)
        for k, text in enumerate(["0" + str(7 * spread), "+" + str(5 * spread), "-0", str(big)]):
            w.write(text, np.full(3, -1.0 - k))
            model[text] = -1.0 - k
    for i in range(90, 110):
        model.pop(str(i * spread))
    reader = MapStore(tmp_path)  # maps the sealed pair's segment, decodes the parked one
    ix = reader._ix
    assert ix.segs and len(ix.rows) >= 64

    def check(numbers: list[int]) -> None:
        asked = sg.DecimalUids(np.array(numbers, dtype=np.int64))
        texts = [str(i) for i in numbers]
        served = reader.load_all(asked)  # (refreshes: sees what the writer added)
        assert (served is not None) == all(t in model for t in texts)
        if served is not None:
            assert [float(v[0]) for v in served] == [model[t] for t in texts]
            assert reader.stack(asked)[:, 0].tolist() == [model[t] for t in texts]
        else:
            with pytest.raises(KeyError):
                reader.stack(asked)

    batches = [
        [*range(0, 90), *range(110, 300)],
        list(range(299, 109, -1)) * 2,
        [*range(40, 60), 5, 7, 0],
        [*range(110, 300), 95],
        [*range(110, 300), 300],
        [*range(110, 300), -110, 1100, 11],
    ]
    batches = [[i * spread for i in batch] for batch in batches]
    batches += [[*batches[0], big], [*batches[0], big + 1], [*batches[0], -(2**63), 2**63 - 1]]
    for _ in range(3):  # the dict, then the index (once it has served twice the rows)
        for batch in batches:
            check(batch)
    state = ix.rows_index
    assert state is not None and state.built
    assert (state.dense is not None) == (kind == "dense")
    with store.writer() as w:  # the rows change: a new index, after the dict served again
        for i in range(100, 120):
            w.write(str(i * spread), np.full(3, 2000.0 + i))
            model[str(i * spread)] = 2000.0 + i
    for _ in range(3):
        for batch in batches:
            check(batch)
    assert ix.rows_index is not state and ix.rows_index is not None
    assert ix.rows_index.built
    with store.writer() as w:  # a uid with a NUL: these rows get no index, the dict serves
        w.write("7\x00", np.full(3, -1.0))
    for _ in range(3):
        for batch in batches:
            check(batch)
    assert ix.rows_index is not None and ix.rows_index.looked == -1
