"""View scenario: random training batches read through ``feat.embed.view(items)``.

The cache is ``bench_map``'s shared one (items ``0..n-1``, ``map_dim`` float32 each); the view is
pickled and unpickled first, as a DataLoader worker receives it (its uids then come from the mapped
view file, its store is opened by itself). Peers read the same batches: ``stack`` =
``feat.embed.stack`` of the batch's items (what a hand-written Dataset around ``stack`` does), ``hf``
= ``ds[index_list]`` on the numpy-formatted Arrow file of Hugging Face ``datasets``.
"""

from __future__ import annotations

import pickle
import statistics
import time
import typing as tp
from pathlib import Path

import numpy as np

from benchmarks import bench_map, hf_peer
from benchmarks.common import Scenario, Sizes, gc_paused
from benchmarks.items import make_item

US = 1e6
BATCH = 256
BATCHES = 200  # per sample


def bench_view_batches(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim = sizes.map_items, sizes.map_dim
    scenario = Scenario(
        "view_batches",
        "µs/batch",
        notes=[
            f"{BATCHES} random batches of {BATCH} (index arrays) from {n} cached items of {dim} "
            "float32: view[index_array] on an unpickled view (as a DataLoader worker has it); "
            "stack = embed.stack(the batch's items); hf = ds[index_list]['feat'], numpy format"
        ],
    )
    problem = bench_map.unavailable()
    if problem:
        scenario.status = "skipped"
        scenario.notes.append(f"exca_lite.MapInfra not available ({problem})")
        return scenario
    items = list(range(n))
    feat = bench_map._featurizer(bench_map._filled("exca_lite", n, dim), dim)
    start = time.perf_counter()
    made = feat.embed.view(items)
    scenario.extra["view_create_ms"] = (time.perf_counter() - start) * 1e3
    pickled = pickle.dumps(made)
    scenario.extra["pickled_bytes"] = str(len(pickled))
    view = pickle.loads(pickled)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, BATCH) for _ in range(BATCHES)]
    lists = [b.tolist() for b in batches]
    want = np.stack([make_item(i, dim) for i in lists[0]])
    if not (np.array_equal(view[batches[0]], want) and np.array_equal(made[batches[0]], want)):
        raise RuntimeError("view[index_array] differs from the arrays it cached")
    reads: dict[str, tp.Callable[[int], object]] = {
        "exca_lite": lambda k: view[batches[k]],
        "creator_view": lambda k: made[batches[k]],  # the process that made it: uids in a list
        "stack": lambda k: feat.embed.stack([items[i] for i in lists[k]]),
    }
    if bench_map._hf_libs(scenario, "hf"):
        ds = hf_peer.open_numpy(hf_peer.cache_file(bench_map._filled("hf", n, dim)))
        if not np.array_equal(ds[lists[0]]["feat"], want):
            raise RuntimeError("HF gather differs from the arrays it cached")
        reads["hf"] = lambda k: ds[lists[k]]["feat"]
    samples: dict[str, list[float]] = {name: [] for name in reads}
    for read in reads.values():  # warm-up: every page of every cache read once
        for k in range(BATCHES):
            read(k)
    for _ in range(sizes.repeat):  # interleaved: a busy machine slows every library alike
        for name, read in reads.items():
            with gc_paused():
                t0 = time.perf_counter()
                for k in range(BATCHES):
                    read(k)
                samples[name].append((time.perf_counter() - t0) / BATCHES)
    creator = samples.pop("creator_view")
    for name, values in samples.items():
        scenario.add(name, values, US)
    scenario.extra["creator_view_us"] = statistics.median(creator) * US
    return scenario


SCENARIOS: dict[str, tp.Callable[[Sizes, Path], Scenario]] = {
    "view_batches": bench_view_batches,
}

__all__ = ["SCENARIOS"]
