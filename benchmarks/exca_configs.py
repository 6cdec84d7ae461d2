"""The same configs as pydantic models for exca 0.6 (TaskInfra and MapInfra with its memmap format)."""

# no ``from __future__ import annotations``: exca reads the annotations of map methods at runtime
import logging
import typing as tp

import exca
import numpy as np
import pydantic

from benchmarks.configs import score
from benchmarks.items import buffer, burn

# exca configures its logger at import (INFO per job): keep the printed lines readable
logging.getLogger("exca").setLevel(logging.WARNING)

MEMMAP = "MemmapArray"


def task_infra(**fields: tp.Any) -> exca.TaskInfra:
    """A new exca TaskInfra (one per object, as a dict in the constructor would give)."""
    return exca.TaskInfra(**fields)


def map_infra(**fields: tp.Any) -> exca.MapInfra:
    """A new exca MapInfra (one per object)."""
    return exca.MapInfra(
        **fields
    )  # exca's memmap cache_type (its default for arrays), set explicitly


class ExcaEncoder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    layers: int = 4
    width: int = 256
    activation: str = "relu"
    dropout: float = 0.1


class ExcaExperiment(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = "exp"
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    weight_decay: float = 0.0
    augment: bool = False
    tags: tuple[str, ...] = ()
    data_path: str = "/data"
    encoder: ExcaEncoder = ExcaEncoder()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return score(self.seed, self.lr)


class ExcaFeaturizer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    dim: int = 256
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, cache_type=MEMMAP)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.full(self.dim, item, dtype=np.float32)


class ExcaBlob(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    nbytes: int = 1 << 20
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, cache_type=MEMMAP)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        buf = buffer(self.nbytes)
        for _ in items:
            yield buf


class ExcaBurner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    work: int = 100_000
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, cache_type=MEMMAP)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield burn(item, self.work)


__all__ = [
    "ExcaBlob",
    "ExcaBurner",
    "ExcaEncoder",
    "ExcaExperiment",
    "ExcaFeaturizer",
    "map_infra",
    "task_infra",
]
