"""Config classes of the sweep tests (importable by module name in jobs and subprocesses).

``Run`` is one configuration of a sweep: it records ``{where} {pid} {lr} {seed}`` in ``counter``
(``O_APPEND``: atomic between processes and jobs) when it starts, waits for ``gate`` (if set), fails
with a recognisable traceback when ``diverge`` is set, and returns where it ran.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp

import numpy as np
from slurm_defs import record_lines, wait_for, where

import exca_lite as xl


@dataclasses.dataclass(frozen=True)
class Optim:
    name: str = "sgd"
    momentum: float = 0.0


@dataclasses.dataclass(frozen=True)
class Run:
    lr: float = 0.1
    seed: int = 0
    optim: Optim = Optim()
    diverge: bool = False
    counter: str = ""
    gate: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter", "gate"))
    def train(self) -> dict[str, tp.Any]:
        record_lines(self.counter, [f"{where()} {os.getpid()} {self.lr} {self.seed}"])
        wait_for(self.gate)
        if self.diverge:
            self._blow_up()
        return {"loss": self.lr * (self.seed + 1), "pid": os.getpid(), "job": where()}

    def _blow_up(self) -> None:
        raise FloatingPointError(f"loss diverged with lr={self.lr}")


@dataclasses.dataclass(frozen=True)
class Embedder:
    dim: int = 2
    scale: float = 1.0
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray[tp.Any, tp.Any]]:
        for item in items:
            yield np.full(self.dim, len(item) * self.scale, dtype=np.float32)
