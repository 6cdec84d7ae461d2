"""Config classes for tests/test_user_edge_cases.py, importable by name in worker processes.

Every computation appends a line to a ``counter`` file (``O_APPEND``: atomic between processes and
threads), so the tests count how many times something was really computed, wherever it ran.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
import typing as tp

import numpy as np

import exca_lite as xl


def record(counter: str, line: str) -> None:
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def counts(counter: str | os.PathLike[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    if os.path.exists(counter):
        with open(counter) as f:
            for line in f.read().splitlines():
                out[line] = out.get(line, 0) + 1
    return out


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    name: str = "adam"


@dataclasses.dataclass(frozen=True)
class Rich:
    """A researcher's config: every supported field kind, with default_factory fields."""

    color: Color = Color.RED
    level: Level = Level.LOW
    data_dir: pathlib.Path = pathlib.Path("/data")
    ckpt: pathlib.Path | None = None
    optim: Optim = Optim()
    layers: tuple[int, ...] = (64, 64)
    tags: list[str] = dataclasses.field(default_factory=list)
    labels: frozenset[str] = frozenset()
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    scale: float = 1.0
    seed: int | None = None
    blob: bytes = b""
    note: str = ""
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter",))
    def run(self) -> dict[str, tp.Any]:
        record(self.counter, "run")
        return {
            "color": self.color,
            "level": self.level,
            "data_dir": self.data_dir,
            "ckpt": self.ckpt,
            "optim": self.optim,
            "layers": self.layers,
            "tags": self.tags,
            "labels": self.labels,
            "weights": self.weights,
            "scale": self.scale,
            "seed": self.seed,
            "blob": self.blob,
            "note": self.note,
        }


@dataclasses.dataclass(frozen=True)
class Scaled:
    """A task whose result depends on a float bit for bit (sign of zero, nan)."""

    x: float = 0.0
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter",))
    def run(self) -> str:
        record(self.counter, repr(self.x))
        return repr(self.x)


@dataclasses.dataclass(frozen=True)
class NanDefault:
    x: float = float("nan")
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter",))
    def run(self) -> str:
        record(self.counter, repr(self.x))
        return repr(self.x)


@dataclasses.dataclass(frozen=True)
class Flaky:
    """A task failing while ``fail`` is set (``fail`` is excluded: the same cache either way)."""

    fail: bool = True
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("fail", "counter"))
    def run(self) -> int:
        record(self.counter, "run")
        if self.fail:
            raise ValueError("flaky failure 1234")
        return 42


@dataclasses.dataclass(frozen=True)
class Items:
    """A map over str items; ``kind`` picks the output type, ``fail_on`` an item that raises."""

    kind: str = "vec"
    dim: int = 3
    counter: str = ""
    fail_on: str = ""
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("counter", "fail_on"))
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[tp.Any]:
        for item in items:
            if self.fail_on and item == self.fail_on:
                raise ValueError(f"cannot embed {item!r}")
            record(self.counter, item)
            yield make_output(self.kind, item, self.dim)


def make_output(kind: str, item: str, dim: int) -> tp.Any:
    n = len(item)
    if kind == "vec":
        return np.full(dim, n, dtype=np.float32)
    if kind == "ragged":  # a shape that depends on the item
        return np.arange(n, dtype=np.float32)
    if kind == "mixed_dtype":
        return np.arange(dim, dtype=np.float32 if n % 2 else np.float64)
    if kind == "scalar0d":
        return np.array(float(n))
    if kind == "none":
        return None
    if kind == "object":
        return {"item": item, "len": n, 0: (n, None)}
    raise ValueError(kind)


@dataclasses.dataclass(frozen=True)
class Both:
    """Two applied methods, one per infra, on one class."""

    x: int = 1
    counter: str = ""
    task_infra: xl.TaskInfra = xl.TaskInfra(version="3")
    map_infra: xl.MapInfra = xl.MapInfra(version="7")

    @task_infra.apply(exclude_from_cache_uid=("counter",))
    def total(self) -> int:
        record(self.counter, "total")
        return self.x * 100

    @map_infra.apply(item_uid=str, exclude_from_cache_uid=("counter",))
    def per_item(self, items: tp.Sequence[str]) -> tp.Iterator[int]:
        for item in items:
            record(self.counter, item)
            yield self.x + len(item)


@dataclasses.dataclass(frozen=True)
class Base:
    a: int = 1
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter",))
    def run(self) -> tuple[str, int]:
        record(self.counter, type(self).__name__)
        return (type(self).__name__, self.a)


@dataclasses.dataclass(frozen=True)
class ChildDefault(Base):
    """Overrides the default of ``a``: ChildDefault() computes with a=5."""

    a: int = 5


@dataclasses.dataclass(frozen=True)
class ChildField(Base):
    b: int = 0
