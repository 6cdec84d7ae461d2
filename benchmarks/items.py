"""The item functions of the map scenarios, shared by exca_lite, exca and the plain loops.

No exca_lite import here: the exca peers and the baselines run without ``exca_lite.mapping``.
"""

from __future__ import annotations

import typing as tp

import numpy as np

_BUFFERS: dict[int, np.ndarray] = {}


def make_item(item: int, dim: int) -> np.ndarray:
    """One feature vector: what every map_* item function yields (and the plain loop builds)."""
    return np.full(dim, item, dtype=np.float32)


def buffer(nbytes: int) -> np.ndarray:
    """One shared float32 block of ``nbytes``: the bandwidth scenario writes it again and again."""
    buf = _BUFFERS.get(nbytes)
    if buf is None:
        buf = _BUFFERS[nbytes] = np.ones(nbytes // 4, dtype=np.float32)
    return buf


def burn(item: int, work: int) -> np.ndarray:
    """A CPU-bound item function that holds the GIL (pure Python arithmetic)."""
    total = 0
    for k in range(work):
        total = (total * 31 + k + item) & 0xFFFFFFFF
    return np.array([total], dtype=np.int64)


def plain_loop(items: tp.Sequence[int], dim: int) -> None:
    """The work of the map_fill item function, without any cache."""
    for item in items:
        np.full(dim, item, dtype=np.float32)


__all__ = ["buffer", "burn", "make_item", "plain_loop"]
