"""Task-side scenarios: import, uid, task_hit_ram, task_hit_disk, task_first_hit, submitit_local.

exca_lite's ``Experiment`` and exca's ``ExcaExperiment`` are the same ten-field config (nested encoder
included) with non-default values everywhere, and joblib caches ``run_experiment`` called with the
same values: all three hash and load the same thing.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
import typing as tp
from pathlib import Path

from benchmarks.common import Scenario, Sizes, run_fresh, timed, wall_of_command
from benchmarks.configs import Embedding, experiment_kwargs, make_experiment, run_experiment

US = 1e6
MS = 1e3
_seeds = itertools.count(1000)


def bench_import(sizes: Sizes, tmp: Path) -> Scenario:
    scenario = Scenario(
        "import", "ms", target="numpy + < 20 ms", notes=["python -c 'import X' wall time"]
    )
    statements = {
        "exca_lite": "import exca_lite",
        "exca": "import exca",
        "joblib": "import joblib",
        "numpy": "import numpy",
        "python": "pass",
    }
    samples: dict[str, list[float]] = {name: [] for name in statements}
    for round_index in range(sizes.fresh_repeat + 1):  # round 0 warms the .pyc and page caches
        for name, statement in statements.items():  # interleaved: drift hits all alike
            wall = wall_of_command([sys.executable, "-c", statement])
            if round_index:
                samples[name].append(wall)
    for name in statements:
        if name != "python":
            scenario.add(name, samples[name], MS)
    python = scenario.add("python", samples["python"], MS)
    del scenario.peers["python"]
    lite = tp.cast(float, scenario.exca_lite)
    scenario.extra["exca_lite-numpy"] = lite - scenario.peers["numpy"]
    scenario.extra["bare_python"] = python
    return scenario


def bench_uid(sizes: Sizes, tmp: Path) -> Scenario:
    import exca_lite as xl
    from benchmarks.exca_configs import ExcaExperiment, task_infra

    scenario = Scenario(
        "uid",
        "µs",
        target="< 20 µs",
        notes=["10 fields + nested config, uid of a fresh object (construction timed apart)"],
    )
    count = max(200, sizes.micro_number // 100)
    lite_build: list[float] = []
    exca_build: list[float] = []
    lite: list[float] = []
    exca: list[float] = []
    infra = xl.TaskInfra(folder=tmp / "uid")
    for _ in range(sizes.repeat):
        seeds = [next(_seeds) for _ in range(count)]
        start = time.perf_counter()
        objs = [make_experiment(seed, infra) for seed in seeds]
        lite_build.append((time.perf_counter() - start) / count)
        start = time.perf_counter()
        for obj in objs:
            obj.process.uid()
        lite.append((time.perf_counter() - start) / count)

        start = time.perf_counter()
        eobjs = [
            ExcaExperiment(**experiment_kwargs(seed), infra=task_infra(folder=tmp / "uid"))
            for seed in seeds
        ]
        exca_build.append((time.perf_counter() - start) / count)
        start = time.perf_counter()
        for eobj in eobjs:
            eobj.infra.uid()
        exca.append((time.perf_counter() - start) / count)
    scenario.add("exca_lite", lite, US)
    scenario.add("exca", exca, US)
    scenario.extra["exca_lite_construct_us"] = sorted(lite_build)[len(lite_build) // 2] * US
    scenario.extra["exca_construct_us"] = sorted(exca_build)[len(exca_build) // 2] * US
    return scenario


def _loop(fn: tp.Callable[[], object], number: int) -> float:
    """Seconds per call of ``fn`` looped ``number`` times (a plain for loop, no lambda)."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def bench_task_hit_ram(sizes: Sizes, tmp: Path) -> Scenario:
    import exca_lite as xl
    from benchmarks.common import gc_paused
    from benchmarks.exca_configs import ExcaExperiment, task_infra

    scenario = Scenario(
        "task_hit_ram",
        "µs",
        target="< 0.3 µs",
        notes=["obj.process() on one object, keep_in_ram=True, result also on disk"],
    )
    seed = next(_seeds)
    obj = make_experiment(seed, xl.TaskInfra(folder=tmp / "lite", keep_in_ram=True))
    eobj = ExcaExperiment(
        **experiment_kwargs(seed), infra=task_infra(folder=tmp / "exca", keep_in_ram=True)
    )
    if obj.process() != eobj.process():
        raise RuntimeError("exca_lite and exca disagree on the task result")
    number = sizes.micro_number
    lite: list[float] = []
    exca: list[float] = []
    with gc_paused():
        for _ in range(sizes.repeat):
            # the attribute lookup is part of the call, as in user code: no bound-method shortcut
            start = time.perf_counter()
            for _ in range(number):
                obj.process()
            lite.append((time.perf_counter() - start) / number)
            start = time.perf_counter()
            for _ in range(number):
                eobj.process()
            exca.append((time.perf_counter() - start) / number)
    scenario.add("exca_lite", lite, US)
    scenario.add("exca", exca, US)
    return scenario


def bench_task_hit_disk(sizes: Sizes, tmp: Path) -> Scenario:
    import joblib

    import exca_lite as xl
    from benchmarks.exca_configs import ExcaExperiment, task_infra

    scenario = Scenario(
        "task_hit_disk",
        "µs",
        target="< 10 µs",
        notes=[
            "obj.process() on one object, keep_in_ram=False: each call reads the result file; "
            "a float result (headline), and exca_lite_array: a (256,) float32 array result "
            "(result.npy)"
        ],
    )
    seed = next(_seeds)
    obj = make_experiment(seed, xl.TaskInfra(folder=tmp / "lite", keep_in_ram=False))
    emb = Embedding(seed=seed, infra=xl.TaskInfra(folder=tmp / "lite", keep_in_ram=False))
    emb.process()
    eobj = ExcaExperiment(
        **experiment_kwargs(seed), infra=task_infra(folder=tmp / "exca", keep_in_ram=False)
    )
    kwargs = experiment_kwargs(seed)
    cached = joblib.Memory(tmp / "joblib", verbose=0).cache(run_experiment)
    results = {obj.process(), eobj.process(), cached(**kwargs)}
    if len(results) != 1:
        raise RuntimeError(f"task results disagree: {results}")
    number = max(1000, sizes.micro_number // 40)
    lite, exca, jl, arrays = [], [], [], []
    for _ in range(sizes.repeat):
        lite.append(_loop(obj.process, number))  # a BoundTask: the same object every call
        arrays.append(_loop(emb.process, number))
        exca.append(_loop(lambda: eobj.process(), number))  # a property: re-resolved per call
        jl.append(_loop(lambda: cached(**kwargs), number // 4))
    scenario.add("exca_lite", lite, US)
    scenario.add("exca", exca, US)
    scenario.add("joblib", jl, US)
    scenario.extra["exca_lite_array"] = statistics.median(arrays) * US
    return scenario


def bench_task_first_hit(sizes: Sizes, tmp: Path) -> Scenario:
    import joblib

    import exca_lite as xl
    from benchmarks.exca_configs import ExcaExperiment, task_infra

    scenario = Scenario(
        "task_first_hit",
        "ms",
        target="< 0.5 ms",
        notes=["fresh process, timed after imports: build the object + first call, result on disk"],
    )
    seed = next(_seeds)
    folders = {name: tmp / name for name in ("exca_lite", "exca", "joblib")}
    make_experiment(seed, xl.TaskInfra(folder=folders["exca_lite"])).process()
    ExcaExperiment(**experiment_kwargs(seed), infra=task_infra(folder=folders["exca"])).process()
    joblib.Memory(folders["joblib"], verbose=0).cache(run_experiment)(**experiment_kwargs(seed))
    samples: dict[str, list[float]] = {name: [] for name in folders}
    calls: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(sizes.fresh_repeat):
        for name, folder in folders.items():
            report = run_fresh("task_first_hit", lib=name, folder=str(folder), seed=seed)
            samples[name].append(report["seconds"])
            calls[name].append(report["call_seconds"])
    for name in folders:
        scenario.add(name, samples[name], MS)
    for name in ("exca_lite", "exca"):
        scenario.extra[f"{name}_call_only_ms"] = sorted(calls[name])[len(calls[name]) // 2] * MS
    return scenario


def bench_submitit_local(sizes: Sizes, tmp: Path) -> Scenario:
    import submitit

    import exca_lite as xl
    from benchmarks.configs import bare_job
    from benchmarks.exca_configs import ExcaExperiment, task_infra

    scenario = Scenario(
        "submitit_local",
        "ms",
        target="<= bare submitit + 50 ms",
        notes=[
            "new uid each call: submit + wait + load; bare = LocalExecutor(...).submit(f).result() "
            "(submitit polls once per second), bare_fastpoll = the same polling job.done() every 2 ms"
        ],
    )
    lite: list[float] = []
    bare: list[float] = []
    fast: list[float] = []
    exca: list[float] = []

    def bare_round_trip(poll_s: float | None) -> None:
        executor = submitit.LocalExecutor(folder=tmp / "bare" / "%j")
        job = executor.submit(bare_job)
        if poll_s is not None:  # submitit's own wait() checks once per second
            while not job.done():
                time.sleep(poll_s)
        if job.result() != bare_job():
            raise RuntimeError("bare submitit job returned a wrong result")

    for _ in range(sizes.submitit_repeat):
        seed = next(_seeds)
        obj = make_experiment(seed, xl.TaskInfra(folder=tmp / "lite", cluster="local"))
        lite.append(timed(obj.process))
        bare.append(timed(lambda: bare_round_trip(None)))
        fast.append(timed(lambda: bare_round_trip(0.002)))
        eobj = ExcaExperiment(
            **experiment_kwargs(seed), infra=task_infra(folder=tmp / "exca", cluster="local")
        )
        exca.append(timed(eobj.process))
    scenario.add("exca_lite", lite, MS)
    scenario.add("bare_submitit", bare, MS)
    scenario.add("bare_fastpoll", fast, MS)
    scenario.add("exca", exca, MS)
    lite_ms = tp.cast(float, scenario.exca_lite)
    scenario.extra["exca_lite-bare_ms"] = lite_ms - scenario.peers["bare_submitit"]
    scenario.extra["exca_lite-bare_fastpoll_ms"] = lite_ms - scenario.peers["bare_fastpoll"]
    return scenario


SCENARIOS: dict[str, tp.Callable[[Sizes, Path], Scenario]] = {
    "import": bench_import,
    "uid": bench_uid,
    "task_hit_ram": bench_task_hit_ram,
    "task_hit_disk": bench_task_hit_disk,
    "task_first_hit": bench_task_first_hit,
    "submitit_local": bench_submitit_local,
}

__all__ = ["SCENARIOS"]
