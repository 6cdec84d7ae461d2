"""The README's main job: a task computed in a subprocess then cached, and a feature map over a
few thousand items computed by a process pool then served from the memmap shards."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np

from .mapping import MapInfra
from .task import TaskInfra


@dataclasses.dataclass(frozen=True)
class Training:
    """An expensive computation per config: cached once, whatever the number of calls."""

    learning_rate: float = 0.1
    steps: int = 200_000
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        rng = np.random.default_rng(12)
        weight = 0.0
        for _ in range(self.steps // 1000):
            grads = rng.normal(size=1000) + weight - 3.0
            weight -= self.learning_rate * float(grads.mean())
        return weight


@dataclasses.dataclass(frozen=True)
class Featurizer:
    """One feature vector per text: computed once per item, stored in memmap shards."""

    dim: int = 256
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, texts: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            rng = np.random.default_rng(seed)
            vec = rng.normal(size=(32, self.dim))
            yield np.tanh(vec).mean(axis=0).astype(np.float32)  # some real CPU work per item


def _timed(fn: tp.Callable[[], tp.Any]) -> tuple[tp.Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(folder: Path | None = None, n_items: int = 4000) -> None:
    """Run the demo in ``folder`` (a fresh temporary folder by default) and print timings."""
    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="exca_lite_demo_"))
    print(f"cache folder: {root}")

    task = Training(learning_rate=0.05, infra=TaskInfra(folder=root, cluster="local"))
    print(f"\n[TaskInfra] uid: {task.train.uid()}")
    weight, seconds = _timed(task.train)
    print(
        f"  first call (computed in a submitit subprocess): {weight:.4f} in {seconds * 1e3:.0f} ms"
    )
    fresh = Training(learning_rate=0.05, infra=TaskInfra(folder=root, cluster="local"))
    again, seconds = _timed(fresh.train)
    print(f"  same config, new object (loaded from disk): {again:.4f} in {seconds * 1e6:.0f} µs")
    if again != weight:
        raise RuntimeError("the cached result differs from the computed one")

    texts = [f"text number {i}" for i in range(n_items)]
    feat = Featurizer(infra=MapInfra(folder=root, cluster="processpool", max_jobs=2))
    print(f"\n[MapInfra] uid: {feat.embed.uid()}")
    computed, seconds = _timed(lambda: feat.embed.compute(texts))
    print(f"  {computed} items computed by 2 worker processes in {seconds:.2f} s")
    fresh_feat = Featurizer(infra=MapInfra(folder=root, cluster="processpool", max_jobs=2))
    stacked, seconds = _timed(lambda: fresh_feat.embed.stack(texts))
    print(
        f"  second run, all cache hits: stack() of {stacked.shape} {stacked.dtype} in "
        f"{seconds * 1e3:.1f} ms ({seconds / n_items * 1e6:.2f} µs/item)"
    )
    first = next(iter(fresh_feat.embed(texts[:1])))
    print(f"  one cached item is a read-only memmap view: {type(first).__name__}, {first.shape}")
    print(f"\ncaches in {root}: python -m exca_lite ls {root}")


__all__ = ["Featurizer", "Training", "run"]
