"""Map config classes for the tests and the worker processes they start (importable by name).

Each computed item appends its uid to a ``counter`` file (``O_APPEND``: atomic between processes),
so tests count how many times each item was really computed, in any process or job.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing as tp

import numpy as np

import exca_lite as xl


def record_items(counter: str, uids: tp.Iterable[str]) -> None:
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{u}\n" for u in uids).encode())
    finally:
        os.close(fd)


def counts(counter: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if os.path.exists(counter):
        with open(counter) as f:
            for line in f.read().splitlines():
                out[line] = out.get(line, 0) + 1
    return out


@dataclasses.dataclass(frozen=True)
class Featurizer:
    dim: int = 4
    counter: str = ""
    delay_s: float = 0.0
    fail_on: str = ""  # an item whose computation raises
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("counter", "delay_s", "fail_on"))
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            if item == self.fail_on:
                raise ValueError(f"cannot embed {item!r}")
            if self.delay_s:
                time.sleep(self.delay_s)
            record_items(self.counter, [item])
            yield np.full(self.dim, len(item), dtype=np.float32) + np.arange(self.dim)


@dataclasses.dataclass(frozen=True)
class Miscounted:
    """Yields the wrong number of outputs (``extra`` more, or fewer when negative)."""

    extra: int = -1
    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[float]:
        n = len(items) + self.extra
        for i in range(max(n, 0)):
            yield float(i)


@dataclasses.dataclass(frozen=True)
class Skipping:
    """A realistic miscount: items named in ``skip`` (unreadable files, say) are left out, so
    every later output is yielded for the wrong item. ``skip`` is not part of the uid (it is
    the bug being fixed, not a config)."""

    skip: tuple[str, ...] = ()
    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=str, exclude_from_cache_uid=("skip",))
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            if item not in self.skip:
                yield np.array([float(len(item)), float(ord(item[0]))])


@dataclasses.dataclass(frozen=True)
class Objects:
    """Non-array outputs: plain data and pickled objects must round trip with their type."""

    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=lambda x: str(x))
    def describe(self, items: tp.Sequence[int]) -> tp.Iterator[tp.Any]:
        for x in items:
            if x % 3 == 0:
                yield {"x": x, "name": f"n{x}", "values": [x, x / 2]}
            elif x % 3 == 1:
                yield (x, "tuple")
            else:
                yield np.float32(x)


@dataclasses.dataclass(frozen=True)
class PidFeaturizer:
    """Records which process computed each item."""

    infra: xl.MapInfra = xl.MapInfra()

    @infra.apply(item_uid=str)
    def pid(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for _ in items:
            yield np.array(os.getpid(), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Numbered:
    """Items of any type named by ``str`` (ints, bools, floats, numpy integers): their value."""

    counter: str = ""
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("counter",))
    def embed(self, items: tp.Sequence[tp.Any]) -> tp.Iterator[np.ndarray]:
        for item in items:
            record_items(self.counter, [str(item)])
            yield np.array([float(item)])


@dataclasses.dataclass(frozen=True)
class Shifted:
    """len(item) + shift: two objects of one cache (shift is not in the uid) write different values."""

    shift: float = 0.0
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("shift",))
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.array([len(item) + self.shift])
