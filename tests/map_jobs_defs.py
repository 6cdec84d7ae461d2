"""Map configs for the tests of map jobs (tests/test_map_jobs.py), importable by name."""

from __future__ import annotations

import dataclasses
import os
import time
import typing as tp

import numpy as np
from map_defs import record_items

import exca_lite as xl


@dataclasses.dataclass(frozen=True)
class Chain:
    """Item k needs item k - 1, asked of its own cache (a nested call)."""

    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def value(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for k in items:
            before = next(self.value([k - 1]))[0] if k > 0 else 0.0
            yield np.array([before + 1.0])


@dataclasses.dataclass(frozen=True)
class Pids:
    """Records which process computed each item (slowly: the pool stays busy)."""

    counter: str = ""
    delay_s: float = 0.0
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("counter", "delay_s"))
    def pid(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            if self.delay_s:
                time.sleep(self.delay_s)
            record_items(self.counter, [item])
            yield np.array([os.getpid()], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Ahead:
    """Item i < n/2 needs item i + n/2, asked of its own cache (a nested call); each output is
    [value, pid of the process that computed it]."""

    n: int = 128
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def value(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for i in items:
            time.sleep(0.002)
            if i < self.n // 2:
                (dep,) = list(self.value([i + self.n // 2]))
                yield np.array([dep[0] + 1, os.getpid()])
            else:
                yield np.array([float(i), os.getpid()])
