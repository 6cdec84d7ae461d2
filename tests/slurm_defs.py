"""Config classes for the SLURM tests (importable by module name inside SLURM jobs).

Each computation records where it ran (SLURM job and array task ids, pid) in a ``counter`` file
(``O_APPEND``: atomic between processes and jobs), so tests can tell how many times, and in which
job, something was computed. ``Gated`` blocks until its ``gate`` file exists, so a test can observe
(and re-attach to, or cancel) a job that is really running, without guessing sleep times.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing as tp

import numpy as np

import exca_lite as xl

GATE_TIMEOUT_S = 120.0


def where() -> str:
    """``{array job id}_{array task id}`` inside an array task, the SLURM job id otherwise."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID", "-")


def record_lines(counter: str, lines: tp.Iterable[str]) -> None:
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
    finally:
        os.close(fd)


def read_records(counter: str | os.PathLike[str]) -> list[list[str]]:
    """The counter's lines, split on spaces (missing file: no records)."""
    try:
        with open(counter) as f:
            return [line.split(" ") for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def wait_for(path: str, timeout_s: float = GATE_TIMEOUT_S) -> None:
    """Block until ``path`` exists (a test opens the gate by creating it)."""
    if not path:
        return
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class Gated:
    """Records its start, waits for ``gate``, fails while ``fail_flag`` exists, else a random value."""

    param: int = 1
    gate: str = ""
    counter: str = ""
    fail_flag: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("gate", "counter", "fail_flag"))
    def process(self) -> dict[str, tp.Any]:
        record_lines(self.counter, [f"{where()} {os.getpid()}"])
        wait_for(self.gate)
        if self.fail_flag and os.path.exists(self.fail_flag):
            self._fail_in_helper()
        return {
            "value": self.param * float(np.random.rand()),
            "job": where(),
            "cpus": os.environ.get("SLURM_CPUS_PER_TASK", ""),
            "partition": os.environ.get("SLURM_JOB_PARTITION", ""),
        }

    def _fail_in_helper(self) -> None:
        raise ValueError(f"deliberate failure of param={self.param}")


@dataclasses.dataclass(frozen=True)
class JobFeaturizer:
    """A map whose workers record ``item where pid`` per computed item.

    It raises on ``fail_item`` while ``fail_flag`` exists; ``gate`` (if set) must exist before any
    item is computed, and each worker first writes its pid into ``{started}/{where}`` (if set).
    Outputs depend on the item only, so every cluster gives the same arrays.
    """

    dim: int = 3
    counter: str = ""
    fail_item: str = ""
    fail_flag: str = ""
    gate: str = ""
    started: str = ""
    delay_s: float = 0.0
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(
        item_uid=str,
        exclude_from_cache_uid=("counter", "fail_item", "fail_flag", "gate", "started", "delay_s"),
    )
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray[tp.Any, tp.Any]]:
        here = f"{where()} {os.getpid()}"
        if self.started:
            record_lines(os.path.join(self.started, where()), [str(os.getpid())])
        wait_for(self.gate)
        for item in items:
            if item == self.fail_item and self.fail_flag and os.path.exists(self.fail_flag):
                raise ValueError(f"deliberate failure on item {item!r}")
            if self.delay_s:
                time.sleep(self.delay_s)
            record_lines(self.counter, [f"{item} {here}"])
            yield np.full(self.dim, len(item), dtype=np.float32) + np.arange(self.dim)
