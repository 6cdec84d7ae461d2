"""Fresh-process measurements: ``python -m benchmarks.fresh TASK '{json kwargs}'``.

Each task imports what it needs, then times only what the scenario names (after imports), and
prints one JSON line ``{"seconds": ...}``. Only the standard library is imported at module level, so
the process holds exactly the library under test.
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
    else:
        raise ValueError(lib)
    return {"seconds": time.perf_counter() - start}


TASKS: dict[str, tp.Callable[..., dict[str, float]]] = {
    "task_first_hit": task_first_hit,
    "map_hit_iter": map_hit_iter,
    "map_open": map_open,
}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    task, kwargs = sys.argv[1], json.loads(sys.argv[2])
    report = TASKS[task](**kwargs)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
