"""Timing, medians, fresh subprocesses, printing and the JSON results file.

Every scenario returns a ``Scenario``: the exca_lite figure, its peers' figures in the same unit, and
extras (sub-measurements, targets). ``ratio = peer / exca_lite``: above 1 means exca_lite is faster
(for throughputs, higher is better, so the ratio is still peer / exca_lite and below 1 is good).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size a scenario uses, so ``--quick`` shrinks them in one place."""

    quick: bool
    repeat: int  # samples per figure (medians are over these)
    fresh_repeat: int  # fresh subprocesses per figure
    micro_number: int  # calls per sample for sub-µs figures
    map_items: int  # map_fill / map_hit_iter / map_hit_stack
    map_dim: int
    slow_items: int  # joblib and npy files are ~100x slower per item: fewer items, same figure
    open_items: tuple[int, ...]  # map_open sizes
    exca_open_max: int  # exca is only opened up to this size
    one_new_cache: int  # map_one_new cache size
    bandwidth_bytes: int
    bandwidth_item_bytes: int
    parallel_items: int
    parallel_work: int  # loop iterations of the CPU-bound item function
    submitit_repeat: int
    scale_items: int  # the "1M" cache of the scale scenarios (map_open_one_1M, map_check_1M, ...)
    scale_dim: int
    huge_items: int  # the "100M" cache of the opt-in map_scale_100M (--scale)
    huge_dim: int
    huge_timeout_s: float  # one fill or fresh open of the huge cache is stopped after this
    huge_data_limit: int  # RLIMIT_DATA of a fresh process opening the huge cache (bytes)

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                quick=True,
                repeat=3,
                fresh_repeat=3,
                micro_number=20_000,
                map_items=5_000,
                map_dim=256,
                slow_items=500,
                open_items=(5_000,),
                exca_open_max=5_000,
                one_new_cache=2_000,
                bandwidth_bytes=128 << 20,
                bandwidth_item_bytes=1 << 20,
                parallel_items=40,
                parallel_work=100_000,
                submitit_repeat=1,
                scale_items=20_000,
                scale_dim=16,
                huge_items=200_000,
                huge_dim=4,
                huge_timeout_s=120.0,
                huge_data_limit=6 << 30,
            )
        return cls(
            quick=False,
            repeat=5,
            fresh_repeat=5,
            micro_number=200_000,
            map_items=100_000,
            map_dim=256,
            slow_items=5_000,
            open_items=(20_000, 1_000_000),
            exca_open_max=20_000,
            one_new_cache=20_000,
            bandwidth_bytes=2 << 30,
            bandwidth_item_bytes=1 << 20,
            parallel_items=200,
            parallel_work=200_000,
            submitit_repeat=5,
            scale_items=1_000_000,
            scale_dim=16,
            huge_items=100_000_000,
            huge_dim=4,
            huge_timeout_s=1800.0,  # a 100M fill takes 8-11 min quiet; shared machines vary 2x
            huge_data_limit=6 << 30,
        )


@dataclasses.dataclass
class Scenario:
    """One printed line and one entry of the results file."""

    name: str
    unit: str
    exca_lite: float | None = None
    peers: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, float | str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    target: str = ""
    status: tp.Literal["ok", "skipped", "failed"] = "ok"
    seconds: float = 0.0  # wall time spent on the scenario
    load_avg: tuple[float, float] = (0.0, 0.0)  # 1-min load average before / after: noise check

    def add(self, name: str, samples: tp.Sequence[float], scale: float = 1.0) -> float:
        """Record samples (in seconds, or any base unit) and return their median times ``scale``."""
        scaled = [s * scale for s in samples]
        self.samples[name] = scaled
        value = statistics.median(scaled)
        if name == "exca_lite":
            self.exca_lite = value
        else:
            self.peers[name] = value
        return value

    def ratios(self) -> dict[str, float]:
        lite = self.exca_lite
        if not lite:
            return {}
        return {name: value / lite for name, value in self.peers.items()}

    def line(self) -> str:
        if self.status != "ok":
            return f"{self.name}: {self.status.upper()} ({'; '.join(self.notes)})"
        parts = [f"{self.name}:"]
        if self.exca_lite is not None:
            parts.append(f"exca_lite={fmt(self.exca_lite)}{self.unit}")
        ratios = self.ratios()
        for name, value in self.peers.items():
            parts.append(f"{name}={fmt(value)}{self.unit}")
            if name in ratios:
                parts.append(f"ratio={fmt(ratios[name])}")
        if self.extra:
            extras = " ".join(
                f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in self.extra.items()
            )
            parts.append(f"[{extras}]")
        if self.notes:
            parts.append(f"({'; '.join(self.notes)})")
        return " ".join(parts)

    def to_json(self) -> dict[str, tp.Any]:
        return {
            "unit": self.unit,
            "exca_lite": self.exca_lite,
            "peers": self.peers,
            "ratios": self.ratios(),
            "extra": self.extra,
            "notes": self.notes,
            "target": self.target,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "load_avg_before_after": self.load_avg,
            "samples": self.samples,
        }


def fmt(value: float) -> str:
    """Three significant digits, no exponent for the usual range."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.001:
        return f"{value:.3g}"
    return f"{value:.2e}"


# # # timing # # #


@contextlib.contextmanager
def gc_paused() -> tp.Iterator[None]:
    """Like timeit: no collection inside a timed loop (both sides alike)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def per_call(fn: tp.Callable[[], object], number: int, repeat: int) -> list[float]:
    """Seconds per call of ``fn``, one sample per batch of ``number`` calls."""
    samples = []
    fn()  # warm-up: the first call may fill caches that every later call relies on
    with gc_paused():
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - start) / number)
    return samples


def timed(fn: tp.Callable[[], object]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def subprocess_env() -> dict[str, str]:
    """The environment of child processes: the repo importable, threads not oversubscribed."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


def run_fresh(
    task: str, *, timeout: float | None = None, data_limit: int | None = None, **kwargs: tp.Any
) -> dict[str, tp.Any]:
    """Run ``benchmarks.fresh`` ``task`` in a new interpreter; its JSON report.

    ``timeout`` (seconds) kills the child past it (``subprocess.TimeoutExpired``); ``data_limit``
    caps its private data (``RLIMIT_DATA``: heap and private writable maps, not file maps read
    shared), so a scenario that would take the shared machine's memory fails alone instead.
    """
    cmd = [sys.executable, "-m", "benchmarks.fresh", task, json.dumps(kwargs)]
    preexec = None
    if data_limit is not None:
        import resource

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        preexec_fn=preexec,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"fresh process {task} {kwargs} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"fresh process {task} printed no report:\n{proc.stdout[-2000:]}")
    return tp.cast(dict[str, tp.Any], json.loads(lines[-1]))


def wall_of_command(args: list[str]) -> float:
    """Wall seconds of a whole child interpreter (start-up included)."""
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=subprocess_env(), check=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def tempdir(prefix: str) -> tp.Iterator[Path]:
    """A temporary folder under $TMPDIR (or /tmp), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"xlbench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# # # results file # # #


# versions recorded in the results file (a missing one is "missing": e.g. datasets without ``bench``)
PEER_PACKAGES = (
    "exca",
    "joblib",
    "datasets",
    "pyarrow",
    "submitit",
    "numpy",
    "msgspec",
    "pydantic",
)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in PEER_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    out["exca_lite_commit"] = commit.stdout.strip() or "unknown"
    return out


def write_results(
    path: Path, scenarios: list[Scenario], sizes: Sizes, elapsed_s: float, merge: bool
) -> None:
    """Write (or, for ``--only`` runs, update) the results file atomically."""
    data: dict[str, tp.Any] = {"meta": {}, "scenarios": {}}
    if merge and path.exists():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(path.read_text())
    data["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "quick": sizes.quick,
        "sizes": dataclasses.asdict(sizes),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "versions": versions(),
        "elapsed_s": round(elapsed_s, 1),
        "partial": merge,
    }
    for scenario in scenarios:
        data["scenarios"][scenario.name] = scenario.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


__all__ = [
    "ROOT",
    "RESULTS_DIR",
    "Scenario",
    "Sizes",
    "fmt",
    "gc_paused",
    "per_call",
    "run_fresh",
    "subprocess_env",
    "tempdir",
    "timed",
    "wall_of_command",
    "write_results",
]
