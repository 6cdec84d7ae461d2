"""Config classes for the uid tests of issue 14 (importable by module name, and by subprocesses)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import typing as tp

import numpy as np

import exca_lite as xl


def record(counter: str, line: str = "x") -> None:
    """One line appended to ``counter`` per computation (O_APPEND: atomic between processes)."""
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class Svm:
    """Numbers count by their annotation."""

    C: float = 1.0
    n_bins: int = 9
    gammas: list[float] = dataclasses.field(default_factory=list)
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter",))
    def fit(self) -> float:
        record(self.counter)
        return self.C * self.n_bins + sum(self.gammas)


@dataclasses.dataclass(frozen=True)
class Feat:
    """An upstream config with an infra of its own (its version counts downstream)."""

    dim: int = 4
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def compute(self) -> int:
        return self.dim


@dataclasses.dataclass(frozen=True)
class Head:
    feat: Feat = Feat()
    feats: tuple[Feat, ...] = ()
    lr: float = 0.1
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def train(self) -> float:
        return self.feat.compute() * self.lr


@dataclasses.dataclass(frozen=True)
class Leaf:
    x: int = 0
    name: str = "leaf"


@dataclasses.dataclass(frozen=True)
class Tree:
    """Every container of configs from_dict must build, and time values."""

    leaves: dict[str, Leaf] = dataclasses.field(default_factory=dict)
    chain: list[Leaf] = dataclasses.field(default_factory=list)
    pair: tuple[Leaf, Leaf] = (Leaf(), Leaf())
    maybe: Leaf | None = None
    timeout: datetime.timedelta = datetime.timedelta(hours=1)
    start: datetime.datetime | None = None
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def run(self) -> int:
        return len(self.leaves) + len(self.chain)


@dataclasses.dataclass(frozen=True)
class Measures:
    values: list[float] = dataclasses.field(default_factory=list)
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def total(self) -> float:
        return float(sum(self.values))


@dataclasses.dataclass(frozen=True)
class Base:
    k: int = 1
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.k * 10


@dataclasses.dataclass(frozen=True)
class SuperOverride(Base):
    """The same through super(): the parent's bound object must not hide this override."""

    def process(self) -> int:  # type: ignore[override]
        return super().process() + 1  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Redecorated(Base):
    """Overrides the cached method with a cached method of its own, calling the parent's."""

    @Base.infra.apply
    def process(self) -> int:
        return super().process() + 2  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Bumped(Base):
    """Re-declares the infra field to bump the version of the inherited method."""

    infra: xl.TaskInfra = xl.TaskInfra(version="2")


@dataclasses.dataclass(frozen=True)
class BumpedOverride(Base):
    """Re-declares the infra field and overrides the method with it, calling the parent's."""

    infra: xl.TaskInfra = xl.TaskInfra(version="3")

    @infra.apply
    def process(self) -> int:
        return super().process() + 3  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class ArrayMap:
    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=str)
    def embed(self, arrays: tp.Sequence[np.ndarray]) -> tp.Iterator[float]:
        for a in arrays:
            yield float(a.sum())


@dataclasses.dataclass(frozen=True)
class Lengths:
    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=str)
    def measure(self, texts: tp.Sequence[str]) -> tp.Iterator[int]:
        for text in texts:
            yield len(text)


@dataclasses.dataclass(frozen=True)
class Doubled(Lengths):
    """A map method overriding a map method and calling it through super()."""

    @Lengths.infra.apply(item_uid=str)
    def measure(self, texts: tp.Sequence[str]) -> tp.Iterator[int]:
        for n in super().measure(texts):
            yield 2 * n
