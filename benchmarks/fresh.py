"""Fresh-process measurements: ``python -m benchmarks.fresh TASK '{json kwargs}'``.

Each task imports what it needs, then times only what the scenario names (after imports), and
prints one JSON line ``{"seconds": ...}``. Only the standard library is imported at module level, so
the process holds exactly the library under test. ``lib="hf"`` is Hugging Face ``datasets`` on the
Arrow file its map wrote (``hf_peer``).
"""

from __future__ import annotations

import json
import sys
import time
import typing as tp
from pathlib import Path


def task_first_hit(lib: str, folder: str, seed: int) -> dict[str, float]:
    """Build a fresh object and call it once; its result is on disk already."""
    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.configs import make_experiment

        start = time.perf_counter()
        obj = make_experiment(seed, xl.TaskInfra(folder=folder))
        built = time.perf_counter()
        obj.process()
    elif lib == "exca":
        from benchmarks.configs import experiment_kwargs
        from benchmarks.exca_configs import ExcaExperiment, task_infra

        start = time.perf_counter()
        eobj = ExcaExperiment(**experiment_kwargs(seed), infra=task_infra(folder=folder))
        built = time.perf_counter()
        eobj.process()
    elif lib == "joblib":
        import joblib

        from benchmarks.configs import experiment_kwargs, run_experiment

        start = time.perf_counter()
        cached = joblib.Memory(folder, verbose=0).cache(run_experiment)
        built = time.perf_counter()
        cached(**experiment_kwargs(seed))
    else:
        raise ValueError(lib)
    end = time.perf_counter()
    return {"seconds": end - start, "call_seconds": end - built}


def map_hit_iter(lib: str, folder: str, n: int, dim: int) -> dict[str, float]:
    """Open the cache and iterate over ``n`` cached items (open included in the time)."""
    items = list(range(n))
    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer

        start = time.perf_counter()
        feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder))
        for _ in feat.embed(items):
            pass
    elif lib == "exca":
        from benchmarks.exca_configs import ExcaFeaturizer, map_infra

        start = time.perf_counter()
        efeat = ExcaFeaturizer(dim=dim, infra=map_infra(folder=folder))
        for _ in efeat.embed(items):
            pass
    elif lib == "joblib":
        import joblib

        from benchmarks.items import make_item

        start = time.perf_counter()
        cached = joblib.Memory(folder, verbose=0).cache(make_item)
        for item in items:
            cached(item, dim)
    elif lib == "hf":  # batches of 1000 rows as one (1000, dim) array, then its rows one by one
        from benchmarks import hf_peer

        hf_peer.quiet()
        count = 0
        start = time.perf_counter()
        ds = hf_peer.open_numpy(folder)  # folder: the Arrow cache file
        for batch in ds.iter(batch_size=hf_peer.BATCH):
            for _ in batch["feat"]:
                count += 1
        if count != n:
            raise RuntimeError(f"map_hit_iter: HF iterated {count} rows, expected {n}")
    elif lib == "npy_files":
        import numpy as np

        start = time.perf_counter()
        for item in items:
            np.load(f"{folder}/{item}.npy")
    else:
        raise ValueError(lib)
    return {"seconds": time.perf_counter() - start}


def map_open(lib: str, folder: str, n: int, dim: int, how: str = "compute") -> dict[str, float]:
    """Open a cache and find which of ``n`` items are cached (all are): nothing is loaded."""
    items = list(range(n))
    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer

        start = time.perf_counter()
        feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder))
        if how == "compute":
            computed = feat.embed.compute(items)
            if computed:
                raise RuntimeError(f"map_open: {computed} items computed, expected none")
        else:  # the item uids present, then the membership test a user would write
            present = set(feat.embed.cached_uids())
            missing = [item for item in items if str(item) not in present]
            if missing:
                raise RuntimeError(f"map_open: {len(missing)} items missing")
    elif lib == "exca":
        from benchmarks.exca_configs import ExcaFeaturizer, map_infra

        start = time.perf_counter()
        efeat = ExcaFeaturizer(dim=dim, infra=map_infra(folder=folder))
        efeat.embed(items)  # finds the missing items (none), loads nothing until iterated
    elif lib == "hf":  # no per-item check: opening the file the map's fingerprint names
        from datasets import Dataset

        start = time.perf_counter()
        ds = Dataset.from_file(folder)  # folder: the Arrow cache file
        if len(ds) != n:
            raise RuntimeError(f"map_open: HF file holds {len(ds)} rows, expected {n}")
    else:
        raise ValueError(lib)
    return {"seconds": time.perf_counter() - start}


def _memory_kib() -> dict[str, int]:
    """This process's memory counters (kiB) from /proc/self/smaps_rollup (empty if unreadable).

    Private_Clean + Private_Dirty is the memory no other process shares (heap, and file pages
    mapped by this process alone); RSS also counts page-cache pages shared with others.
    """
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if len(fields) == 2 and fields[1] == "kB":
                    out[key] = int(fields[0])
    except OSError:
        return {}
    return out


def _memory_added(before: dict[str, int]) -> dict[str, float]:
    """MiB added since ``before``: private dirty, private clean + dirty, anonymous, RSS.

    Private_Dirty is what the process alone holds and the kernel cannot drop (heap, written pages):
    the cost of each process, a DataLoader worker's included. Private_Clean adds the file pages
    that only this process maps so far: page cache, shared as soon as another process maps the
    same file, dropped under memory pressure (a memory-mapped file read through shows up there).
    """
    after = _memory_kib()
    if not before or not after:
        return {}

    def delta(*keys: str) -> float:
        return sum(after.get(k, 0) - before.get(k, 0) for k in keys) / 1024

    return {
        "private_dirty_mib": delta("Private_Dirty"),
        "private_mib": delta("Private_Clean", "Private_Dirty"),
        "anonymous_mib": delta("Anonymous"),
        "rss_mib": delta("Rss"),
    }


def map_open_one(lib: str, folder: str, n: int, dim: int, item: int) -> dict[str, tp.Any]:
    """Open a cache of ``n`` items and read one (``item``); time and private memory added."""
    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer

        before = _memory_kib()
        start = time.perf_counter()
        feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder))
        out = next(iter(feat.embed([item])))
        value = float(out[0])
    elif lib == "hf":
        from benchmarks import hf_peer

        hf_peer.quiet()
        before = _memory_kib()
        start = time.perf_counter()
        ds = hf_peer.open_numpy(folder)  # folder: the Arrow cache file
        out = ds[item]["feat"]
        value = float(out[0])
    else:
        raise ValueError(lib)
    seconds = time.perf_counter() - start
    memory = _memory_added(before)
    # make_item(item) holds float32(item): beyond 2**24 that is not item itself
    if out.shape != (dim,) or value != float(out.dtype.type(item)):
        raise RuntimeError(f"map_open_one: {lib} read {out!r} for item {item}")
    return {"seconds": seconds, **memory}


def map_check(lib: str, folder: str, n: int, dim: int, how: str = "compute") -> dict[str, float]:
    """Which of ``n`` items are cached (all are), in a fresh process, nothing loaded.

    exca_lite: ``embed.compute(items)`` (names the items, opens the cache, checks each: 0 to
    compute), or with ``how="store"`` the store's ``missing()`` on item uids named beforehand
    (untimed). HF: a re-run of the map, which finds its whole output by fingerprint.
    """
    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer

        items = list(range(n))
        if how == "store":
            from exca_lite.store import MapStore

            path = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder)).embed.folder()
            uids = [str(item) for item in items]
            start = time.perf_counter()
            missing = MapStore(tp.cast(Path, path)).missing(uids)
        else:
            start = time.perf_counter()
            feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder))
            missing = [None] * feat.embed.compute(items)
        if missing:
            raise RuntimeError(f"map_check: {len(missing)} of {n} items missing")
    elif lib == "hf":
        from benchmarks import hf_peer

        hf_peer.quiet()
        expected = str(hf_peer.cache_file(Path(folder)))
        start = time.perf_counter()
        out = hf_peer.run_map(hf_peer.load_source(Path(folder)), dim)
        if len(out) != n or out.cache_files[0]["filename"] != expected:
            raise RuntimeError(f"map_check: HF re-run of map missed its cache: {out.cache_files}")
    else:
        raise ValueError(lib)
    return {"seconds": time.perf_counter() - start}


def scale_fill(lib: str, folder: str, n: int, dim: int) -> dict[str, float]:
    """Fill a cache of ``n`` small items (the opt-in 100M scenario), in its own process.

    exca_lite: the first item through ``MapInfra`` (it writes the cache's config files), the rest
    through the store's writer (``MapStore(folder).writer()``): the map's own fill path keeps every
    uid it checks in memory, which a 100M-item call cannot afford on this machine.
    HF: the batched map over a saved source of ``n`` rows.
    """
    import numpy as np

    from benchmarks.items import make_item

    if lib == "exca_lite":
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer
        from exca_lite.store import MapStore

        start = time.perf_counter()
        feat = Featurizer(dim=dim, infra=xl.MapInfra(folder=folder))
        feat.embed.compute([0])
        with MapStore(tp.cast(Path, feat.embed.folder())).writer() as writer:
            write = writer.write
            for item in range(1, n):
                write(str(item), make_item(item, dim))
        seconds = time.perf_counter() - start
    elif lib == "hf":
        from benchmarks import hf_peer

        hf_peer.quiet()
        seconds = hf_peer.fill(Path(folder), n, dim)
        path = hf_peer.cache_file(Path(folder))
        out = hf_peer.open_numpy(path)[n - 1]["feat"]
        if not np.array_equal(out, make_item(n - 1, dim)):
            raise RuntimeError(f"scale_fill: HF item {n - 1} reads {out!r}")
    else:
        raise ValueError(lib)
    return {"seconds": seconds}


TASKS: dict[str, tp.Callable[..., dict[str, tp.Any]]] = {
    "task_first_hit": task_first_hit,
    "map_hit_iter": map_hit_iter,
    "map_open": map_open,
    "map_open_one": map_open_one,
    "map_check": map_check,
    "scale_fill": scale_fill,
}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    task, kwargs = sys.argv[1], json.loads(sys.argv[2])
    report = TASKS[task](**kwargs)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
