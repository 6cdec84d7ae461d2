"""Hugging Face ``datasets`` as a peer of the map scenarios (the optional ``bench`` extra).

Its fast paths, as its users write them: a source dataset of item numbers saved to disk, then
``Dataset.map(embed_batch, batched=True, batch_size=1000)`` building the same arrays as every other
library (``items.make_item``, stacked per batch) into an Arrow cache file named by the map's
fingerprint; ``Dataset.from_file`` to open that file; ``.with_format("numpy", columns=["feat"])``
with ``.iter(batch_size=1000)`` to read, and indexing by row number to gather. HF has no per-item
key: item ``i`` is row ``i``, and a re-run of the map finds its whole output by fingerprint.

``datasets`` is imported inside the functions only: without it, every scenario still runs and
reports the peer as absent (``unavailable()``).
"""

from __future__ import annotations

import os
import time
import typing as tp
from pathlib import Path

import numpy as np

from benchmarks.items import make_item

BATCH = 1000  # batch_size of map() and iter(): HF's documented fast path
INSTALL_HINT = "pip install -e '.[bench]'"


def unavailable() -> str | None:
    """Why the HF peer cannot run (None when ``datasets`` imports)."""
    try:
        import datasets  # noqa: F401
    except Exception as e:  # ImportError, or a broken pyarrow
        return f"HF datasets not installed ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return None


def quiet() -> None:
    """No progress bars (they cost time and clutter the lines), no hub access, no INFO logs."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def embed_batch(batch: dict[str, tp.Any], dim: int) -> dict[str, np.ndarray]:
    """The batched map function: the same arrays as every other library, one (n, dim) block."""
    return {"feat": np.stack([make_item(int(item), dim) for item in batch["item"]])}


def embed_one(example: dict[str, tp.Any], dim: int) -> dict[str, np.ndarray]:
    """The unbatched map function (one example at a time)."""
    return {"feat": make_item(int(example["item"]), dim)}


def source_folder(folder: Path) -> Path:
    return folder / "src"


def write_source(folder: Path, n: int) -> None:
    """The input dataset: one int64 column ``item`` = 0..n-1, saved to disk (so map caches)."""
    from datasets import Dataset

    Dataset.from_dict({"item": np.arange(n, dtype=np.int64)}).save_to_disk(
        str(source_folder(folder))
    )


def load_source(folder: Path) -> tp.Any:
    import datasets

    return datasets.load_from_disk(str(source_folder(folder)))


def run_map(source: tp.Any, dim: int, batched: bool = True) -> tp.Any:
    """``source.map`` as its users write it: the cache file is named by the map's fingerprint."""
    if batched:
        return source.map(embed_batch, batched=True, batch_size=BATCH, fn_kwargs={"dim": dim})
    return source.map(embed_one, fn_kwargs={"dim": dim})


def fill(folder: Path, n: int, dim: int, batched: bool = True) -> float:
    """Seconds to load the saved source and map it into a new Arrow cache file (source untimed)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_source(folder, n)
    start = time.perf_counter()
    out = run_map(load_source(folder), dim, batched)
    seconds = time.perf_counter() - start
    if len(out) != n or out.cache_files[0]["filename"] != str(cache_file(folder)):
        raise RuntimeError(f"HF map wrote {out.cache_files}, expected one cache file of {n} rows")
    return seconds


def cache_file(folder: Path) -> Path:
    """The map's Arrow cache file in ``folder`` (exactly one: each folder holds one map)."""
    files = sorted(source_folder(folder).glob("cache-*.arrow"))
    if len(files) != 1:
        raise RuntimeError(f"expected one HF cache file in {source_folder(folder)}, got {files}")
    return files[0]


def open_file(path: str | Path) -> tp.Any:
    """``Dataset.from_file``: memory-maps the Arrow file."""
    from datasets import Dataset

    return Dataset.from_file(str(path))


def open_numpy(path: str | Path) -> tp.Any:
    """``Dataset.from_file``, numpy-formatted on the feature column."""
    return open_file(path).with_format("numpy", columns=["feat"])


def add_one(cache: tp.Any, item: int, dim: int, part_file: Path) -> tuple[tp.Any, np.ndarray]:
    """One new item on a cache dataset: mapped into its own part file, concatenated, read back."""
    from datasets import Dataset, concatenate_datasets

    part = Dataset.from_dict({"item": [item]}).map(
        embed_batch,
        batched=True,
        batch_size=BATCH,
        fn_kwargs={"dim": dim},
        cache_file_name=str(part_file),
    )
    cache = concatenate_datasets([cache, part])
    out: np.ndarray = cache.with_format("numpy", columns=["feat"])[len(cache) - 1]["feat"]
    return cache, out


__all__ = [
    "add_one",
    "BATCH",
    "cache_file",
    "embed_batch",
    "embed_one",
    "fill",
    "load_source",
    "open_file",
    "open_numpy",
    "quiet",
    "run_map",
    "unavailable",
    "write_source",
]
