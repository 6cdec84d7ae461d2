"""``feat.embed.view(items)``: random access against a plain list, worker processes (fork and
spawn) reading one pickled view, views outliving later computations, and the errors."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from view_defs import Ragged, Vectors, compute_more, expected, permuted, run_worker

import exca_lite as xl
from exca_lite.mapping.view import VIEWS_DIR, MapView

N_SMALL = 23
N_POOL = 100_000
MIB = 1 << 20


def _vectors(folder: Path, **infra: tp.Any) -> Vectors:
    return Vectors(infra=xl.MapInfra(folder=folder, **infra))


# # # random access against a plain list # # #


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[MapView[np.ndarray], list[np.ndarray]]:
    items = permuted(N_SMALL)
    view = _vectors(tmp_path_factory.mktemp("small")).embed.view(items)
    return view, [expected(item) for item in items]


def _reference(outputs: list[np.ndarray], index: tp.Any) -> tp.Any:
    """What indexing a plain list of the outputs gives (an IndexError type if it raises)."""
    n = len(outputs)
    if isinstance(index, int):
        return outputs[index] if -n <= index < n else IndexError
    if isinstance(index, slice):
        picked = outputs[index]
    else:
        positions = list(index)
        if any(not -n <= p < n for p in positions):
            return IndexError
        picked = [outputs[p] for p in positions]
    return np.stack(picked) if picked else np.empty((0, *outputs[0].shape), outputs[0].dtype)


_indices = st.one_of(
    st.integers(-2 * N_SMALL, 2 * N_SMALL),
    st.slices(N_SMALL + 3),
    st.lists(st.integers(-N_SMALL - 2, N_SMALL + 1), max_size=40),
    st.lists(st.integers(-N_SMALL, N_SMALL - 1), min_size=1, max_size=40).map(np.array),
)


@pytest.mark.parametrize("where", ["creator", "unpickled"])
@settings(max_examples=300, deadline=None)
@given(index=_indices)
def test_view_indexes_like_a_list(
    small: tuple[MapView[np.ndarray], list[np.ndarray]], where: str, index: tp.Any
) -> None:
    view, outputs = small
    if where == "unpickled":  # the uids come from the mapped view file, not a list
        view = pickle.loads(pickle.dumps(view))
    assert len(view) == len(outputs)
    want = _reference(outputs, index.tolist() if isinstance(index, np.ndarray) else index)
    if want is IndexError:
        with pytest.raises(IndexError, match="out of range"):
            view[index]
        return
    got = view[index]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_view_items_are_zero_copy_and_batches_are_new_arrays(
    small: tuple[MapView[np.ndarray], list[np.ndarray]],
) -> None:
    view, outputs = small
    one = view[3]
    assert not one.flags.writeable and not one.flags.owndata  # a view on the shard's map
    batch = view[[3, 3, -1]]
    assert batch.flags.writeable and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, np.stack([outputs[3], outputs[3], outputs[-1]]))
    np.testing.assert_array_equal(view[np.int64(-2)], outputs[-2])
    mask = np.arange(N_SMALL) % 3 == 0
    np.testing.assert_array_equal(view[mask], np.stack(outputs[::3]))
    assert [row.tolist() for row in view.__getitems__([1, 0])] == [
        outputs[1].tolist(),
        outputs[0].tolist(),
    ]
    assert [x.tolist() for x in view] == [x.tolist() for x in outputs]
    for bad in (1.5, np.zeros((2, 2), dtype=int), mask[:-1]):
        with pytest.raises(IndexError):
            view[bad]
    assert repr(view).startswith("MapView('view_defs.Vectors.embed,1/")


# # # worker processes reading one pickled view # # #


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> MapView[np.ndarray]:
    feat = _vectors(tmp_path_factory.mktemp("big"))
    return feat.embed.view(permuted(N_POOL))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_read_random_batches_from_one_pickled_view(
    big: MapView[np.ndarray], method: str
) -> None:
    view = big
    pickled = pickle.dumps(view)
    print(f"\npickled view of {len(view)} items: {len(pickled)} bytes")
    assert len(pickled) < 4096  # a reference to the cache: no outputs, no uids
    np.testing.assert_array_equal(view[:2], np.stack([expected(i) for i in permuted(N_POOL)[:2]]))
    ctx = multiprocessing.get_context(method)
    results = ctx.Queue()
    # fork: the workers inherit this process's opened view (they must reopen, not share its
    # store); spawn: they unpickle it
    workers = [
        ctx.Process(target=run_worker, args=(view, seed, 40, 256, results)) for seed in range(4)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    errors = [r["error"] for r in reports if "error" in r]
    assert not errors, errors[0]
    assert len({r["pid"] for r in reports}) == 4
    for r in reports:
        print(
            f"{method} worker {r['pid']}: private memory {r['after'] / MIB:.1f} MiB after 40 "
            f"batches of 256 ({(r['after'] - r['before']) / MIB:.1f} MiB grown from the start)"
        )
    # at 100k items, most of it is the index of the worker's own store (a fork's child also
    # copies pages of its parent's heap it writes to)
    most = max(r["after"] for r in reports)
    assert most < 64 * MIB, f"a worker holds {most / MIB:.1f} MiB of private memory"


# # # a view is a fixed set of items # # #


def test_view_keeps_its_items_while_another_process_computes_more(tmp_path: Path) -> None:
    feat = _vectors(tmp_path)
    items = list(range(100))
    view = feat.embed.view(items)
    want = np.stack([expected(i) for i in items])
    np.testing.assert_array_equal(view[:], want)  # read before: its store is opened
    # another process computes new items, recomputes some of the view's, and compacts the store
    ctx = multiprocessing.get_context("spawn")
    other = ctx.Process(target=compute_more, args=(str(tmp_path), list(range(50, 300)), items[:20]))
    other.start()
    other.join(timeout=120)
    assert other.exitcode == 0
    assert len(view) == 100
    np.testing.assert_array_equal(view[:], want)
    np.testing.assert_array_equal(view[7], want[7])
    copy = pickle.loads(pickle.dumps(view))
    assert len(copy) == 100
    np.testing.assert_array_equal(copy[::-1], want[::-1])
    # and in a fresh interpreter, opening the store after the other process
    path = tmp_path / "view.pkl"
    path.write_bytes(pickle.dumps(view))
    defs = Path(__file__).with_name("view_defs.py")
    out = subprocess.run(
        [sys.executable, str(defs), str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == [str(int(row[0])) for row in want]
    assert len(feat.embed.cached_uids()) == 300


def test_a_worker_store_opened_before_items_were_computed_reads_them(tmp_path: Path) -> None:
    feat = _vectors(tmp_path)
    first = pickle.loads(pickle.dumps(feat.embed.view([1, 2])))
    np.testing.assert_array_equal(first[0], expected(1))  # opens this process's view store
    later = [pickle.loads(pickle.dumps(feat.embed.view([3, 4, 5]))) for _ in range(2)]
    np.testing.assert_array_equal(later[0][-1], expected(5))  # the shared store is refreshed
    np.testing.assert_array_equal(later[1][1:], np.stack([expected(4), expected(5)]))


def test_view_files_are_named_by_their_content(tmp_path: Path) -> None:
    feat = _vectors(tmp_path)
    views = [feat.embed.view(items) for items in ([1, 2], [1, 2], (i for i in [1, 2]), [2, 1])]
    folder = feat.embed.folder()
    assert folder is not None
    files = sorted(os.listdir(folder / VIEWS_DIR))
    assert len(files) == 2 and all(name.endswith(".uids") for name in files)
    assert [len(v) for v in views] == [2, 2, 2, 2]
    nul = feat.embed.view(["a\0b", "c"])  # uids with a NUL are read one by one
    copy = pickle.loads(pickle.dumps(nul))
    np.testing.assert_array_equal(copy[[1, 0]], np.stack([expected("c"), expected("a\0b")]))
    np.testing.assert_array_equal(copy[0:2], np.stack([expected("a\0b"), expected("c")]))


def test_a_read_only_view_writes_nothing_into_the_cache(tmp_path: Path) -> None:
    """SPEC: read-only creates no file (a colleague's cache may not be writable): its uid file
    goes to this user's temp folder, unless the cache has the same one already."""
    _vectors(tmp_path).embed.compute([1, 2, 3])
    before = sorted(p for p in tmp_path.rglob("*"))
    reader = _vectors(tmp_path, mode="read-only")
    view = reader.embed.view([3, 1])
    assert sorted(p for p in tmp_path.rglob("*")) == before
    copy = pickle.loads(pickle.dumps(view))  # as a DataLoader worker gets it
    np.testing.assert_array_equal(copy[:], np.stack([expected(3), expected(1)]))
    shared = _vectors(tmp_path).embed.view([1, 2])  # written into the cache: reused as it is
    again = pickle.loads(pickle.dumps(reader.embed.view([1, 2])))
    assert sorted(p for p in tmp_path.rglob("*.uids")) != [] and len(again) == len(shared) == 2
    np.testing.assert_array_equal(again[1], expected(2))
    assert "/" not in again._name  # the cache's own file


def test_view_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder"):
        Vectors().embed.view([1])
    with pytest.raises(xl.CacheMissError, match="2 of 2 items are not cached"):
        _vectors(tmp_path, mode="read-only").embed.view([1, 2])
    feat = _vectors(tmp_path)
    view = feat.embed.view([1, 2, 3])
    copies = [pickle.loads(pickle.dumps(view)) for _ in range(2)]  # opened after the clear
    feat.embed.clear()
    assert not list(tmp_path.rglob("*.uids"))  # the uid lists of its views go with the items
    with pytest.raises(xl.CacheMissError, match="no longer in the cache"):
        view[0]
    with pytest.raises(xl.CacheMissError, match=r"3 item\(s\) of this view"):
        view[:]
    for copy, index in zip(copies, (0, slice(None)), strict=True):
        with pytest.raises(xl.CacheMissError, match="no longer in the cache"):
            copy[index]  # its uid file went with the items
    empty = feat.embed.view([])
    assert len(empty) == 0 and empty[:].shape == (0,)
    with pytest.raises(IndexError):
        empty[0]


def test_outputs_that_do_not_stack_are_served_one_by_one(tmp_path: Path) -> None:
    view = Ragged(infra=xl.MapInfra(folder=tmp_path)).embed.view([1, 3, -2])
    assert view[1].tolist() == [0.0, 1.0, 2.0] and view[-1] == {"item": -2}
    with pytest.raises(xl.StoreError, match="one shape and dtype"):
        view[:2]
    with pytest.raises(xl.StoreError, match="needs arrays"):
        view[[2, 0]]
    batch = pickle.loads(pickle.dumps(view)).__getitems__([1, 0, 2])  # a DataLoader's batch
    assert [x.tolist() if isinstance(x, np.ndarray) else x for x in batch] == [
        [0.0, 1.0, 2.0],
        [0.0],
        {"item": -2},
    ]
