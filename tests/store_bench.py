"""Micro-benchmarks of the map store (run by hand: ``python tests/store_bench.py [--big]``).

Each open is timed in a fresh subprocess (imports excluded), as a user opening a cache would see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from exca_lite.store import MapStore

_OPEN = """
import sys, time
from exca_lite.store import MapStore
uids = [f"item-{i}" for i in range(int(sys.argv[2]))]
t0 = time.perf_counter()
store = MapStore(sys.argv[1])
missing = store.missing(uids)
t1 = time.perf_counter()
assert not missing, len(missing)
t2 = time.perf_counter()
for uid in uids[: int(sys.argv[3])]:
    store.load(uid)
t3 = time.perf_counter()
print(t1 - t0, t3 - t2 + (t1 - t0))
"""


def fill(folder: Path, n: int, dim: int = 256) -> float:
    store = MapStore(folder)
    value = np.ones(dim, dtype=np.float32)
    uids = [f"item-{i}" for i in range(n)]
    t0 = time.perf_counter()
    with store.writer() as w:
        for uid in uids:
            w.write(uid, value)
    return time.perf_counter() - t0


def open_in_fresh_process(folder: Path, n: int, n_load: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _OPEN, str(folder), str(n), str(n_load)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    ).stdout.split()
    return float(out[0]), float(out[1])


def write_overhead(folder: Path, n: int = 100_000) -> float:
    arrays = [np.full(256, i, dtype=np.float32) for i in range(1000)]
    uids = [f"w-{i}" for i in range(n)]
    t0 = time.perf_counter()
    sink = []
    for i, uid in enumerate(uids):
        sink.append((uid, arrays[i % 1000]))
    plain = time.perf_counter() - t0
    store = MapStore(folder)
    t0 = time.perf_counter()
    with store.writer() as w:
        for i, uid in enumerate(uids):
            w.write(uid, arrays[i % 1000])
    stored = time.perf_counter() - t0
    return (stored - plain) / n


def stack_time(folder: Path, n: int) -> tuple[float, float]:
    store = MapStore(folder)
    uids = [f"item-{i}" for i in range(n)]
    store.stack(uids[:10])
    t0 = time.perf_counter()
    out = store.stack(uids)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.copyto(np.empty_like(out), out)
    memcpy = time.perf_counter() - t0
    return total / n, (total - memcpy) / n


def bandwidth(
    folder: Path, total_bytes: int = 2 << 30, item_bytes: int = 1 << 20
) -> dict[str, float]:
    n = total_bytes // item_bytes
    items = [np.random.default_rng(i).random(item_bytes // 8) for i in range(8)]
    raw = folder / "raw.bin"
    t0 = time.perf_counter()
    with open(raw, "wb") as f:
        for i in range(n):
            f.write(items[i % 8])
    raw_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(raw, "rb") as f:
        while f.read(item_bytes):
            pass
    raw_read = time.perf_counter() - t0
    raw.unlink()
    store = MapStore(folder / "bw")
    t0 = time.perf_counter()
    with store.writer() as w:
        for i in range(n):
            w.write(f"b{i}", items[i % 8])
    store_write = time.perf_counter() - t0
    store = MapStore(folder / "bw")
    t0 = time.perf_counter()
    for i in range(n):
        bytes(store.load(f"b{i}").data)  # touch every byte, as a read() does
    store_read = time.perf_counter() - t0
    gib = total_bytes / (1 << 30)
    return {
        "raw_write_gib_s": gib / raw_write,
        "store_write_gib_s": gib / store_write,
        "write_ratio": raw_write / store_write,
        "raw_read_gib_s": gib / raw_read,
        "store_read_gib_s": gib / store_read,
        "read_ratio": raw_read / store_read,
    }


def main() -> None:
    big = "--big" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill(root / "s20k", 20_000)
        t_open, _ = open_in_fresh_process(root / "s20k", 20_000, 0)
        print(f"open + missing, 20k items: {t_open * 1e3:.2f} ms")
        store = MapStore(root / "s20k")
        t0 = time.perf_counter()
        for i in range(1000):
            store.missing([f"new-{i}"])
        print(f"missing([one_new]) on 20k: {(time.perf_counter() - t0) * 1e3:.3f} us/call")
        print(f"write overhead: {write_overhead(root / 'w') * 1e6:.2f} us/item")
        fill(root / "s100k", 100_000)
        _, t_iter = open_in_fresh_process(root / "s100k", 100_000, 100_000)
        print(f"open + load() x 100k: {t_iter / 100_000 * 1e6:.2f} us/item")
        per_item, beyond = stack_time(root / "s100k", 100_000)
        print(f"stack 100k: {per_item * 1e6:.3f} us/item ({beyond * 1e6:.3f} beyond memcpy)")
        if big:
            fill(root / "s1m", 1_000_000, dim=16)
            t_open, _ = open_in_fresh_process(root / "s1m", 1_000_000, 0)
            print(f"open + missing, 1M items: {t_open:.3f} s")
            print(bandwidth(root))


if __name__ == "__main__":
    main()
