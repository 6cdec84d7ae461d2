"""Config class and worker functions of the view tests (importable by name in spawned workers)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import typing as tp

import numpy as np

import exca_lite as xl

DIM = 4


def expected(item: int | str) -> np.ndarray:
    """What ``Vectors.embed`` yields for ``item`` (a str: as its length)."""
    value = item if isinstance(item, int) else len(item)
    return np.arange(DIM, dtype=np.float32) + np.float32(value) * DIM


@dataclasses.dataclass(frozen=True)
class Vectors:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int | str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield expected(item)


@dataclasses.dataclass(frozen=True)
class Ragged:
    """Outputs of several shapes (``item`` values), or not arrays (negative items)."""

    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[tp.Any]:
        for item in items:
            yield np.arange(item, dtype=np.float32) if item >= 0 else {"item": item}


def permuted(n: int) -> list[int]:
    """The items of the pool test: a permutation of ``0..n-1`` (positions differ from items),
    computable in a worker without sending the list."""
    return [(k * 7919) % n for k in range(n)]


def private_bytes() -> int:
    """This process's own memory: Private_Dirty of smaps_rollup (its heap, and pages of a fork's
    parent it wrote to). Not Private_Clean: that counts the cache's file pages that only this
    process happens to map (page cache, shared as soon as another process maps them, dropped
    under pressure), which swings with the random items each worker read."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                total += int(line.split()[1]) * 1024
    return total


_VIEW: tp.Any = None
_BEFORE = 0


def init_worker(view: tp.Any) -> None:
    """Pool initializer: ``view`` arrives inherited (fork) or unpickled (spawn)."""
    global _VIEW, _BEFORE
    _VIEW = view
    _BEFORE = private_bytes()


def read_batches(seed: int, batches: int, batch: int) -> dict[str, int]:
    """Read random batches (index arrays and slices) and single items; check every value."""
    view = _VIEW
    n = len(view)
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        positions = rng.integers(-n, n, batch)
        items = [(int(p) % n * 7919) % n for p in positions]
        got = view[positions]
        want = np.stack([expected(i) for i in items])
        if not np.array_equal(got, want):
            raise AssertionError(f"worker {os.getpid()}: wrong batch for positions {positions[:5]}")
        start = int(rng.integers(0, n - batch))
        last = expected(permuted_at(start + batch - 1, n))
        if not np.array_equal(view[start : start + batch][-1], last):
            raise AssertionError(f"worker {os.getpid()}: wrong slice at {start}")
        k = int(positions[0])
        if not np.array_equal(view[k], expected(items[0])):
            raise AssertionError(f"worker {os.getpid()}: wrong item at {k}")
    return {"pid": os.getpid(), "before": _BEFORE, "after": private_bytes()}


def permuted_at(position: int, n: int) -> int:
    return (position * 7919) % n


def run_worker(view: tp.Any, seed: int, batches: int, batch: int, results: tp.Any) -> None:
    """A worker process: ``view`` arrives inherited (fork) or unpickled (spawn); puts its report
    (or its traceback) on ``results``."""
    try:
        init_worker(view)
        results.put(read_batches(seed, batches, batch))
    except BaseException:
        import traceback

        results.put({"error": traceback.format_exc()})


def compute_more(folder: str, items: list[int], recompute: list[int]) -> None:
    """Another process: compute more items, recompute some (mode="force"), compact the store."""
    Vectors(infra=xl.MapInfra(folder=folder)).embed.compute(items)
    forced = Vectors(infra=xl.MapInfra(folder=folder, mode="force"))
    forced.embed.compute(recompute)
    store_folder = forced.embed.folder()
    from exca_lite.store import MapStore

    MapStore(str(store_folder)).compact()


def serve_in_child(path: str) -> None:
    """``python view_defs.py PATH``: unpickle the view in PATH, print its outputs' first values."""
    with open(path, "rb") as f:
        view = pickle.load(f)
    print(" ".join(str(int(row[0])) for row in view[:]))


if __name__ == "__main__":
    serve_in_child(sys.argv[1])
