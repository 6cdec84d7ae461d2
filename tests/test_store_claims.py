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

from exca_lite.store import MapStore

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
    uids = [f"item-{i}" for i in range(15)]
    # this test holds a claim on items 0-14 for as long as it likes: the other processes' progress
    # is observed while it is held, so no timing is assumed (the timeouts only guard against hangs)
    store = MapStore(tmp_path / "c")
    with store.claim(uids) as held:
        assert held.mine == uids
        fast = start_claimer(tmp_path / "c", 100, 110, side, 0.001)
        fast_out = finish(fast)  # disjoint: done while the claim on 0-14 is still held
        assert fast_out[0] == "mine 10" and fast_out[-1].startswith("done 0 "), fast_out
        # overlapping: computes its own part first, then waits for the rest
        mixed = start_claimer(tmp_path / "c", 10, 20, side, 0.001)
        assert wait_line(mixed, "mine") == "mine 5"
        wait_line(mixed, "computed_own")  # its items 15-19, with 10-14 still claimed here
        assert mixed.poll() is None  # still waiting for 10-14
        with store.writer() as w:
            for uid in held.mine:
                with open(side, "a") as f:
                    f.write(f"{uid} {os.getpid()}\n")
                w.write(uid, value_of(uid))
    mixed_out = finish(mixed)
    assert "freed 0" in mixed_out and mixed_out[-1].startswith("done 0 "), mixed_out
    counts = computed(side)
    assert set(counts.values()) == {1}
    assert len(counts) == 30


def wait_until(condition: tp.Callable[[], bool], hang_guard_s: float = 30) -> None:
    deadline = time.monotonic() + hang_guard_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting (hang guard)"
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_a_killed_owners_items_are_taken_over(tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    uids = [f"item-{i}" for i in range(40)]
    victim = start_claimer(tmp_path / "c", 0, 40, side, 0.5)  # 20 s of work: killed long before
    assert wait_line(victim, "mine") == "mine 40"
    waiter = start_claimer(tmp_path / "c", 0, 40, side, 0.001)
    assert wait_line(waiter, "mine") == "mine 0"  # all claimed by the victim: it waits
    # kill the victim once some of its items are published, and before it finished them
    reader = MapStore(tmp_path / "c")
    wait_until(lambda: len(reader.missing(uids)) < 40)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    published = 40 - len(reader.missing(uids))
    out = finish(waiter)
    freed = int(next(line for line in out if line.startswith("freed")).split()[1])
    assert 0 < freed <= 40 - published, (freed, published)
    assert out[-1].startswith("done 0 ")
    counts = computed(side)
    assert len(counts) == 40
    # at most the item being computed (and one not yet flushed) at the kill are done twice
    assert sum(counts.values()) - 40 <= 2
    store = MapStore(tmp_path / "c")
    assert store.missing(uids) == []


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
    assert not list((tmp_path / "claims").glob("*.owner"))  # released


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
    # released without computing "x": the child takes it over
    assert queue.get(timeout=30) == ["x"]
    child.join(timeout=30)
    assert child.exitcode == 0


@pytest.mark.timeout(60)
def test_items_taken_over_in_another_order_get_their_own_outputs(tmp_path: Path) -> None:
    # two owners hold "a" and "b" and die "b" first: the waiting call takes them over as
    # ["b", "a"], and each must still be computed from its own item
    import dataclasses

    import exca_lite as xl

    @dataclasses.dataclass(frozen=True)
    class Code:
        infra: xl.MapInfra = xl.MapInfra()

        @infra.apply(item_uid=str)
        def code(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
            for item in items:
                yield np.array([ord(item)], dtype=np.int64)

    bound = Code(infra=xl.MapInfra(folder=tmp_path)).code
    bound.compute(["z"])  # creates the cache folder
    store = MapStore(bound.folder())
    owner_a, owner_b = store.claim(["a"]), store.claim(["b"])
    owner_a.acquire()
    owner_b.acquire()
    claims = Path(bound.folder()) / "claims"
    tokens = {owner_a.token, owner_b.token}

    def wait_for(condition: tp.Callable[[list[Path]], bool]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = [p for p in claims.glob("*.owner") if p.stem not in tokens]
            if condition(waiting):
                return
            time.sleep(0.01)
        raise TimeoutError("the waiting call never got there")

    def die_in_turn() -> None:
        wait_for(lambda waiting: bool(waiting))  # the call has claimed, nothing for itself
        owner_b.release()
        # the call has taken "b" over and waits on for "a": both come back in one batch
        wait_for(lambda waiting: any(b'"b"' in p.read_bytes() for p in waiting if p.exists()))
        owner_a.release()

    thread = threading.Thread(target=die_in_turn)
    thread.start()
    out = bound.stack(["a", "b"])
    thread.join()
    assert out[:, 0].tolist() == [ord("a"), ord("b")]
    fresh = MapStore(bound.folder())
    assert int(fresh.load("a")[0]) == ord("a") and int(fresh.load("b")[0]) == ord("b")


_HOLD = """
import sys, time, pathlib
import numpy as np
from exca_lite.store import MapStore
folder, adopt, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
store = MapStore(folder)
uids = [f"item-{i}" for i in range(20)]
with store.claim(uids, adopt=None if adopt == "-" else adopt) as claim:
    print(claim.token, len(claim.mine), flush=True)
    while not go.exists():
        time.sleep(0.01)
    with store.writer() as w:
        for uid in claim.mine:
            w.write(uid, np.full(4, float(uid.split("-")[1])))
print("done", flush=True)
"""


@pytest.mark.timeout(120)
def test_items_held_by_a_worker_outlive_the_driver_that_claimed_them(tmp_path: Path) -> None:
    # the driver claims; a worker adopts the driver's claim (its items become the worker's too);
    # the driver is killed: the items stay held by the live worker, so a rerun waits for them
    # instead of computing them a second time
    never, go = tmp_path / "never", tmp_path / "go"
    driver = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path), "-", str(never)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    token, mine = wait_line(driver, "").split()
    assert int(mine) == 20
    worker = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path), token, str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_line(worker, "").split()[1] == "20"  # the driver's items, adopted
    driver.kill()
    driver.communicate()
    rerun = MapStore(tmp_path)
    with rerun.claim([f"item-{i}" for i in range(20)]) as claim:
        assert claim.mine == [] and len(claim.others) == 20  # held by the live worker
        go.touch()
        assert claim.wait_others(poll_max_s=0.05) == []  # stored by the worker, none taken over
    assert finish(worker)[-1] == "done"
    assert rerun.missing([f"item-{i}" for i in range(20)]) == []


def _run_in_a_thread(target: tp.Callable[[], None]) -> None:
    """Run ``target`` in another thread (a pool worker's) and wait for it."""
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()


@pytest.mark.timeout(60)
def test_a_nested_call_needing_items_its_own_computation_holds_is_an_error(tmp_path: Path) -> None:
    store = MapStore(tmp_path)
    with store.claim(["a", "b", "c"]) as outer, outer.computing():
        with pytest.raises(RuntimeError, match=r"nested .* holds .*'b'"), store.claim(["b", "x"]):
            pass  # pragma: no cover
        # a worker thread computing for the outer claim (adopting it) is the same computation
        seen: list[BaseException] = []

        def worker() -> None:
            with store.claim(["a"], adopt=outer.token) as claim, claim.computing():
                try:
                    with store.claim(["c"]):
                        pass  # pragma: no cover
                except RuntimeError as e:
                    seen.append(e)

        _run_in_a_thread(worker)
        assert len(seen) == 1 and "'c'" in str(seen[0])
    # outside the computation, the same items are simply claimed
    with store.claim(["b"]) as again:
        assert again.mine == ["b"]


def test_a_worker_of_a_piecewise_driver_may_wait_for_the_drivers_other_items(
    tmp_path: Path,
) -> None:
    # a driver handing out pieces holds only pieces that running workers compute: a nested call
    # in one worker needing an item of another's piece waits for it (no error), while items of
    # its own piece are still refused
    store = MapStore(tmp_path)
    with store.claim(["a", "b", "c"]) as driver:
        outcome: list[tp.Any] = []

        def worker() -> None:
            piece = store.claim(["a"], adopt=driver.token, adopt_pieces=True)
            with piece as claim, claim.computing():
                with store.claim(["c"]) as nested:
                    outcome.append((nested.mine, nested.others))
                try:
                    with store.claim(["a"]):
                        pass  # pragma: no cover
                except RuntimeError as e:
                    outcome.append(e)

        _run_in_a_thread(worker)
    assert outcome[0] == ([], ["c"])
    assert isinstance(outcome[1], RuntimeError) and "'a'" in str(outcome[1])
