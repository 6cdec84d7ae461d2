"""Config classes used by the tests and by the subprocesses they start (importable by module name).

Computations append one line to a ``counter`` file (``O_APPEND``: atomic between processes) so that
tests count how many times a task really ran, in any process.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np

import exca_lite as xl


def record(counter: str) -> None:
    """Append one line to the counter file (atomic between processes thanks to O_APPEND)."""
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def count(counter: str | Path) -> int:
    try:
        return len(Path(counter).read_text().splitlines())
    except FileNotFoundError:
        return 0


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Encoder:
    depth: int = 2
    name: str = "enc"
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Model:
    encoder: Encoder = Encoder()
    lr: float = 0.1
    color: Color = Color.RED


@dataclasses.dataclass(frozen=True)
class Task:
    """The SPEC's example: a random result scaled by ``param``, counted in ``counter``."""

    param: int = 12
    counter: str = ""
    sleep_s: float = 0.0
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("counter", "sleep_s"))
    def process(self) -> float:
        record(self.counter)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.param * float(np.random.rand())


@dataclasses.dataclass(frozen=True)
class Failing:
    """Always fails, with a recognisable message, from a recognisable function."""

    message: str = "boom"
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("counter",))
    def process(self) -> int:
        record(self.counter)
        return self._explode_in_helper()

    def _explode_in_helper(self) -> int:
        raise ValueError(f"deliberate failure: {self.message}")


@dataclasses.dataclass(frozen=True)
class Flaky:
    """Fails while ``flag`` exists as a file, succeeds once it is removed."""

    flag: str = ""
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("flag", "counter"))
    def process(self) -> str:
        record(self.counter)
        self._check_flag()
        return "ok"

    def _check_flag(self) -> None:
        if os.path.exists(self.flag):
            raise RuntimeError(f"flag file present: {self.flag}")


@dataclasses.dataclass(frozen=True)
class Arrays:
    """Returns an array of ``size`` float64 values."""

    size: int = 10
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("counter",))
    def process(self) -> np.ndarray[tp.Any, np.dtype[np.float64]]:
        record(self.counter)
        return np.arange(self.size, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Nested:
    """A config with a nested dataclass and several kinds of fields (for uids and round trips)."""

    model: Model = Model()
    names: frozenset[str] = frozenset()
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    seed: int = 0
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("model.encoder.name", "seed"))
    def process(self) -> int:
        return self.model.encoder.depth


@dataclasses.dataclass(frozen=True)
class Versioned:
    """The author's infra sets the version; instance infras inherit it (default heritage)."""

    x: int = 0
    infra: xl.TaskInfra = xl.TaskInfra(version="1", cpus_per_task=3)

    @infra.apply
    def process(self) -> int:
        return self.x + 1


@dataclasses.dataclass(frozen=True)
class Dying:
    """Kills its own process without raising: the job ends without writing an outcome."""

    code: int = 3
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> int:
        print("about to die", flush=True)
        os._exit(self.code)


@dataclasses.dataclass(frozen=True)
class Gated:
    """Runs until the file ``gate`` exists: a test looks at the running task, then opens it."""

    gate: str = ""
    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("gate", "counter"))
    def process(self) -> float:
        record(self.counter)
        while not os.path.exists(self.gate):
            time.sleep(0.01)
        return float(np.random.rand())


@dataclasses.dataclass(frozen=True)
class ArraySubclass:
    """Returns an instance of a numpy array subclass (masked, record array, memmap)."""

    kind: str = "masked"
    folder: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("folder",))
    def process(self) -> tp.Any:
        if self.kind == "masked":
            return np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
        if self.kind == "record":
            return np.rec.fromarrays([np.arange(3), np.ones(3)], names="a,b")
        mm = np.memmap(os.path.join(self.folder, "mm.bin"), dtype=np.float32, mode="w+", shape=(3,))
        mm[:] = 7
        return mm


@dataclasses.dataclass(frozen=True)
class Unpicklable:
    """Returns an object pickle refuses (a lock)."""

    counter: str = ""
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply(exclude_from_cache_uid=("counter",))
    def process(self) -> tp.Any:
        record(self.counter)
        return threading.Lock()
