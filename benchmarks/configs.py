"""exca_lite configs the task scenarios run, importable by fresh processes and submitit jobs.

``ExcaExperiment`` (in ``exca_configs``) is the same config as a pydantic model for exca, and
``run_experiment`` the same computation as a plain function for joblib.Memory.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import numpy as np

import exca_lite as xl


@dataclasses.dataclass(frozen=True)
class Encoder:
    layers: int = 4
    width: int = 256
    activation: str = "relu"
    dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Ten fields, one of them a nested config (the ``uid`` scenario's shape)."""

    name: str = "exp"
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    weight_decay: float = 0.0
    augment: bool = False
    tags: tuple[str, ...] = ()
    data_path: str = "/data"
    encoder: Encoder = Encoder()
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return score(self.seed, self.lr)


@dataclasses.dataclass(frozen=True)
class Embedding:
    """A task whose result is a (256,) float32 array (task_hit_disk's array case)."""

    seed: int = 0
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def process(self) -> np.ndarray:
        return np.arange(256, dtype=np.float32) * self.seed


def score(seed: int, lr: float) -> float:
    return seed * lr + 1.0


def experiment_kwargs(seed: int) -> dict[str, tp.Any]:
    """Non-default values for every field (nested ones as a plain dict)."""
    return {
        "name": "bench",
        "seed": seed,
        "lr": 0.01,
        "batch_size": 64,
        "epochs": 5,
        "weight_decay": 0.01,
        "augment": True,
        "tags": ("a", "b"),
        "data_path": "/data/x",
        "encoder": {"layers": 6, "width": 512, "activation": "gelu", "dropout": 0.2},
    }


def make_experiment(seed: int, infra: xl.TaskInfra) -> Experiment:
    kwargs = experiment_kwargs(seed)
    kwargs["encoder"] = Encoder(**kwargs["encoder"])
    return Experiment(**kwargs, infra=infra)


def run_experiment(**kwargs: tp.Any) -> float:
    """The experiment as a plain function: what joblib.Memory caches."""
    return score(kwargs["seed"], kwargs["lr"])


def bare_job() -> float:
    """What the bare submitit round trip runs."""
    return score(1, 0.5)


__all__ = [
    "Encoder",
    "Experiment",
    "bare_job",
    "experiment_kwargs",
    "make_experiment",
    "run_experiment",
    "score",
]
