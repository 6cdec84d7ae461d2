"""Fault injection: writers killed with SIGKILL at random instants never damage the cache.

Each trial starts a writer subprocess that prints the last published item after every flush, kills
it after a random delay (between writes, inside a buffered write, inside a flush or a large direct
write), then checks with warnings as errors that every published item is intact. A last writer
completes the rest and the store verifies clean.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from store_worker import value_of

from exca_lite.store import MapStore
from exca_lite.store import writer as writer_module
from exca_lite.store.mapstore import AUTO_FOLD_PAIRS

WORKER = str(Path(__file__).with_name("store_worker.py"))


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def kill_one_writer(folder: Path, start: int, stop: int, rng: random.Random) -> tuple[int, bool]:
    """Run a writer, SIGKILL it at a random instant: (last published index, was it killed)."""
    flush_every = rng.choice([1, 3, 17, 200])
    sleep_s = rng.choice([0.0, 0.0, 0.0005])
    lazy = rng.choice(["lazy", "eager"])  # a worker that never reads the index, or a reader
    proc = subprocess.Popen(
        [
            sys.executable,
            WORKER,
            "write",
            str(folder),
            str(start),
            str(stop),
            str(flush_every),
            str(sleep_s),
            lazy,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "pair w-...": the store is open, writing starts now
    time.sleep(rng.uniform(0, 0.06))
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    published = [int(line.split()[1]) for line in out.splitlines() if line.startswith("published")]
    return (max(published) if published else start - 1), proc.returncode == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_sigkill_at_random_instants_loses_only_unpublished_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # killed writers' pairs count as abandoned at once (not after an hour): they get folded
    monkeypatch.setattr(writer_module, "STALE_WRITER_S", 0.0)
    monkeypatch.setenv("EXCA_LITE_STALE_WRITER_S", "0")
    rng = random.Random(12345)
    folder = tmp_path / "cache"
    kills = trials = 0
    published: set[int] = set()
    next_item = 0
    while kills < 20 and trials < 60:
        trials += 1
        stop = next_item + 3000
        last, killed = kill_one_writer(folder, next_item, stop, rng)
        kills += killed
        published.update(range(next_item, last + 1))
        # a reader in a fresh process state: no warning (a torn tail is not damage), no loss
        store = MapStore(folder)
        missing = store.missing([f"item-{i}" for i in sorted(published)])
        assert missing == [], f"trial {trials}: published items lost: {missing[:5]}"
        for i in rng.sample(sorted(published), min(200, len(published))):
            assert same(store.load(f"item-{i}"), value_of(f"item-{i}")), i
        next_item = stop
    assert kills >= 20
    print(f"fault injection: {trials} trials, {kills} kills, {len(published)} published, 0 lost")
    # a new writer completes everything, without hanging on anything the dead ones left
    everything = [f"item-{i}" for i in range(next_item)]
    store = MapStore(folder)
    with store.writer() as w:  # (the test's timeout guards against a hang)
        for uid in store.missing(everything):
            w.write(uid, value_of(uid))
    final = MapStore(folder)
    assert final.missing(everything) == []
    for uid in everything[::7]:
        assert same(final.load(uid), value_of(uid)), uid
    assert final.verify() == []
    # every killed writer left a pair; new writers fold them once they are many
    assert len(list(folder.glob("*.bin"))) <= AUTO_FOLD_PAIRS + 2
    final.compact()
    assert len(list(folder.glob("*.bin"))) == 1
    assert MapStore(folder).missing(everything) == []
