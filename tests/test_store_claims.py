"""Claims: overlapping requests from processes and threads compute each item once.

Every computation appends a line to an O_APPEND side-effect file, so the tests count real work.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from store_worker import value_of

from exca_lite.mapstore import MapStore

WORKER = str(Path(__file__).with_name("store_worker.py"))


def start_claimer(
    folder: Path, first: int, last: int, side: Path, work_s: float, go: Path | str = "-"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            WORKER,
            "claim",
            str(folder),
            str(first),
            str(last),
            str(side),
            str(work_s),
            str(go),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate()
            raise AssertionError(f"worker ended before {prefix!r}: {err[-2000:]}")
        if line.startswith(prefix):
            return line.strip()


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, err[-2000:]
    return out.splitlines()


def computed(side: Path) -> collections.Counter[str]:
    return collections.Counter(line.split()[0] for line in side.read_text().splitlines())


@pytest.mark.timeout(60)
def test_four_processes_overlapping_items_compute_each_once(tmp_path: Path) -> None:
    side, go = tmp_path / "side.txt", tmp_path / "go"
    windows = [(0, 110), (30, 140), (60, 170), (90, 200)]
    procs = [start_claimer(tmp_path / "c", a, b, side, 0.002, go) for a, b in windows]
    time.sleep(0.5)  # all four are importing and waiting: start them together
    go.touch()
    outputs = [finish(p) for p in procs]
    counts = computed(side)
    assert sorted(counts) == sorted(f"item-{i}" for i in range(200))
    assert set(counts.values()) == {1}, [uid for uid, n in counts.items() if n > 1]
    assert all(out[-1].startswith("done 0 ") for out in outputs)
    store = MapStore(tmp_path / "c")
    assert store.missing([f"item-{i}" for i in range(200)]) == []


@pytest.mark.timeout(60)
def test_disjoint_items_are_not_delayed_by_others_work(tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    slow = start_claimer(tmp_path / "c", 0, 15, side, 0.3)
    wait_line(slow, "mine")
    t0 = time.monotonic()
    fast = start_claimer(tmp_path / "c", 100, 110, side, 0.001)
    fast_out = finish(fast)
    elapsed = float(fast_out[-1].split()[2])
    assert elapsed < 1.0, fast_out  # the slow one needs 4.5 s
    assert time.monotonic() - t0 < 4.0
    # overlapping: computes its own part first, then waits for the rest
    mixed = start_claimer(tmp_path / "c", 10, 20, side, 0.001)
    mixed_out = finish(mixed)
    own = float(next(line for line in mixed_out if line.startswith("computed_own")).split()[1])
    assert own < 1.0
    finish(slow)
    counts = computed(side)
    assert set(counts.values()) == {1}
    assert len(counts) == 30


@pytest.mark.timeout(60)
def test_a_killed_owners_items_are_taken_over(tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    victim = start_claimer(tmp_path / "c", 0, 40, side, 0.2)
    assert wait_line(victim, "mine") == "mine 40"
    time.sleep(0.5)
    waiter = start_claimer(tmp_path / "c", 0, 40, side, 0.001)
    assert wait_line(waiter, "mine") == "mine 0"
    time.sleep(0.3)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    out = finish(waiter)
    freed = int(next(line for line in out if line.startswith("freed")).split()[1])
    assert 0 < freed < 40
    assert out[-1].startswith("done 0 ")
    counts = computed(side)
    assert len(counts) == 40
    # at most the item being computed (and one not yet flushed) at the kill are done twice
    assert sum(counts.values()) - 40 <= 2
    store = MapStore(tmp_path / "c")
    assert store.missing([f"item-{i}" for i in range(40)]) == []


@pytest.mark.timeout(60)
def test_threads_of_one_process_coordinate(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    done: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    uids = [f"item-{i}" for i in range(60)]

    def work(k: int) -> None:
        mine = uids[k * 10 : k * 10 + 30]
        local = MapStore(tmp_path)
        with local.claim(mine) as claim:
            with local.writer() as w:
                for uid in claim.mine:
                    with lock:
                        done[uid] += 1
                    time.sleep(0.002)
                    w.write(uid, value_of(uid))
            freed = claim.wait_others(poll_max_s=0.02)
            with local.writer() as w:
                for uid in freed:
                    with lock:
                        done[uid] += 1
                    w.write(uid, value_of(uid))
        assert local.missing(mine) == []

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(done.values()) == {1} and len(done) == 60
    assert store.missing(uids) == []
    assert not list((tmp_path / "claims").glob("*.uids"))  # released


@pytest.mark.timeout(60)
def test_claim_skips_cached_items_and_releases(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.writer() as w:
        w.write("a", np.zeros(2))
    with store.claim(["a", "b", "b", "c"]) as first:
        assert first.mine == ["b", "c"]
        with store.claim(["b", "d"]) as second:
            assert second.mine == ["d"] and second.others == ["b"]
            with store.writer() as w:
                w.write("b", np.ones(2))
                w.write("d", np.ones(2))
            assert second.wait_others(poll_max_s=0.02) == []
    with store.claim(["c"]) as third:
        assert third.mine == ["c"]  # the first claim was released without computing it


def _claim_in_forked_child(folder: str, queue: tp.Any) -> None:
    store = MapStore(folder)
    with store.claim(["x"]) as claim:
        queue.put((claim.mine, claim.others))
        queue.put(claim.wait_others(poll_max_s=0.02))


@pytest.mark.timeout(60)
def test_a_forked_child_sees_its_parents_claims_end(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    store = MapStore(tmp_path)
    queue = ctx.Queue()
    with store.claim(["x"]) as claim:
        assert claim.mine == ["x"]
        child = ctx.Process(target=_claim_in_forked_child, args=(str(tmp_path), queue))
        child.start()
        assert queue.get(timeout=30) == ([], ["x"])
        time.sleep(0.1)
    # released without computing "x": the child takes it over
    assert queue.get(timeout=30) == ["x"]
    child.join(timeout=30)
    assert child.exitcode == 0
