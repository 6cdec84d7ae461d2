"""Run every scenario side by side with its peers: ``python benchmarks/run.py [--quick] [--only A,B]``.

Prints one line per scenario (``name: exca_lite=... peer=... ratio=peer/exca_lite``) and writes all
figures to ``benchmarks/results/latest.json`` (``--out`` elsewhere); ``benchmarks/table.py`` turns
that file into the README table. Map scenarios are skipped, with a note, while ``exca_lite.mapping``
is missing or broken; any other failure is printed and makes the exit status 1. ``--scale`` adds
the opt-in 100M-item scenario. The Hugging Face ``datasets`` peer runs when the ``bench`` extra is
installed, and is reported absent (a note per scenario) otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import typing as tp
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, ROOT, Scenario, Sizes, tempdir, write_results


def _scenarios() -> dict[str, tp.Callable[[Sizes, Path], Scenario]]:
    from benchmarks import bench_map, bench_task, bench_view

    return {**bench_task.SCENARIOS, **bench_map.SCENARIOS, **bench_view.SCENARIOS}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run, < 2 min)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default: results/latest.json; results/quick.json with --quick, so a "
        "smoke run never overwrites the committed full results)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also run the opt-in scale scenarios (a 100M-item cache: ~10-15 min, ~8 GB of disk)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenario names and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # submitit jobs and pool workers unpickle benchmark configs: they must import ``benchmarks``
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars cost time and clutter the lines
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the HF peer never needs the hub
    logging.getLogger("exca").setLevel(logging.WARNING)
    scenarios = _scenarios()
    from benchmarks import bench_map

    if args.list:
        print(
            "\n".join(f"{n} (opt-in: --scale)" if n in bench_map.OPT_IN else n for n in scenarios)
        )
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [
        n for n in scenarios if args.scale or n not in bench_map.OPT_IN
    ]
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose among {list(scenarios)}", file=sys.stderr)
        return 2
    sizes = Sizes.make(args.quick)
    out: Path = args.out or RESULTS_DIR / ("quick.json" if args.quick else "latest.json")
    map_names = any(n in bench_map.SCENARIOS for n in names)
    map_problem = bench_map.unavailable() if map_names else None
    if map_problem:
        print(f"map scenarios skipped: exca_lite.MapInfra not available yet ({map_problem})")
    elif map_names and bench_map.hf_problem():
        print(f"# note: peer hf absent from the map scenarios: {bench_map.hf_problem()}")
    started = time.perf_counter()
    results: list[Scenario] = []
    try:
        failed = _run_all(names, scenarios, sizes, map_problem, results)
    finally:
        bench_map.cleanup()
    elapsed = time.perf_counter() - started
    write_results(out, results, sizes, elapsed, merge=bool(args.only))
    loads = [load for r in results if r.status == "ok" for load in r.load_avg]
    cores = os.cpu_count() or 1
    if loads and max(loads) > cores:
        print(
            f"# note: load average reached {max(loads):.1f} on {cores} cores during the run "
            "(other processes): absolute figures are inflated, ratios less so"
        )
    print(f"# {len(results)} scenarios in {elapsed:.0f} s -> {out}")
    return 1 if failed else 0


def _run_all(
    names: list[str],
    scenarios: dict[str, tp.Callable[[Sizes, Path], Scenario]],
    sizes: Sizes,
    map_problem: str | None,
    results: list[Scenario],
) -> bool:
    """Run ``names`` in order, appending to ``results``; whether any failed."""
    from benchmarks import bench_map

    failed = False
    for name in names:
        if map_problem and name in bench_map.SCENARIOS:
            scenario = Scenario(name, "", status="skipped", notes=["exca_lite.mapping unavailable"])
            results.append(scenario)
            print(scenario.line(), flush=True)
            continue
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        try:
            with tempdir(name) as tmp:
                scenario = scenarios[name](sizes, tmp)
        except Exception as e:
            failed = True
            traceback.print_exc()
            scenario = Scenario(name, "", status="failed", notes=[f"{type(e).__name__}: {e}"])
        scenario.seconds = time.perf_counter() - t0
        scenario.load_avg = (round(load0, 2), round(os.getloadavg()[0], 2))
        results.append(scenario)
        print(scenario.line(), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
