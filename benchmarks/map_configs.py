"""exca_lite MapInfra configs of the map scenarios (their item functions are in ``items``).

Imported only once ``exca_lite.mapping`` is known to work (applying a MapInfra imports it).
"""

from __future__ import annotations

import dataclasses
import typing as tp

import numpy as np

import exca_lite as xl
from benchmarks.items import buffer, burn


@dataclasses.dataclass(frozen=True)
class Featurizer:
    dim: int = 256
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.full(self.dim, item, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Blob:
    nbytes: int = 1 << 20
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        buf = buffer(self.nbytes)
        for _ in items:
            yield buf


@dataclasses.dataclass(frozen=True)
class Burner:
    work: int = 100_000
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield burn(item, self.work)


__all__ = ["Blob", "Burner", "Featurizer"]
