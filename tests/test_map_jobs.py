"""Map jobs: workers hold the items they compute (a driver killed mid-run costs no duplicate
work), pools sized to the machine and started one way, Ctrl-C, nested calls. Real processes and
real signals throughout."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from map_defs import counts
from map_jobs_defs import Ahead, Chain, Pids

import exca_lite as xl
from exca_lite.execution import is_alive, load_job_record, pid_is_alive
from exca_lite.pools import available_cpus


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(counts(str(path)).values()) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} items computed after {timeout_s} s")
        time.sleep(0.01)


def _driver(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_POOL_DRIVER = """
import sys
import exca_lite as xl
from map_jobs_defs import Pids
folder, counter, cluster = sys.argv[1:4]
feat = Pids(counter=counter, delay_s=0.02,
            infra=xl.MapInfra(folder=folder, cluster=cluster, max_jobs=2))
feat.pid.compute([f"i{k}" for k in range(120)])
print("done", flush=True)
"""


@pytest.mark.timeout(180)
def test_a_killed_driver_leaves_its_pool_workers_holding_their_items(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    driver = _driver(_POOL_DRIVER, tmp_path / "cache", counter, "processpool")
    _wait_for_lines(counter, 10, driver)
    driver.kill()  # kill -9: no cleanup at all
    driver.communicate()
    # a rerun waits for the items the orphaned workers hold and computes only the rest
    rerun = Pids(counter=str(counter), infra=xl.MapInfra(folder=tmp_path / "cache"))
    items = [f"i{k}" for k in range(120)]
    out = rerun.pid.stack(items)
    assert out.shape == (120, 1)
    seen = counts(str(counter))
    assert sorted(seen) == sorted(items)
    twice = [u for u, n in seen.items() if n > 1]
    assert twice == [], f"{len(twice)} items computed twice: {twice[:5]}"
    # the orphaned workers finished their chunks and exited (none waits forever)
    workers = {int(p) for p in out[:, 0]} - {os.getpid()}
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "orphaned pool workers did not exit"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_SHARE_DRIVER = """
import sys
import exca_lite as xl
from map_jobs_defs import Pids
folder, counter, cluster = sys.argv[1:4]
feat = Pids(counter=counter, delay_s=0.02, infra=xl.MapInfra(
    folder=folder, cluster=None if cluster == "none" else cluster, max_jobs=2))
print("computed", feat.pid.compute([f"i{k}" for k in range(400)]), flush=True)
"""


def _computed(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return int(out.split("computed")[-1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cluster", ["none", "processpool"])
def test_a_second_driver_computes_a_share_of_what_is_left(tmp_path: Path, cluster: str) -> None:
    counter = tmp_path / "counter"
    first = _driver(_SHARE_DRIVER, tmp_path / "cache", counter, cluster)
    _wait_for_lines(counter, 10, first)  # the first is under way: it holds its first pieces
    second = _driver(_SHARE_DRIVER, tmp_path / "cache", counter, cluster)
    a, b = _computed(first), _computed(second)
    seen = counts(str(counter))
    twice = [u for u, n in seen.items() if n > 1]
    assert twice == [], f"{len(twice)} items computed twice: {twice[:5]}"
    assert len(seen) == 400 and a + b == 400, (a, b)
    # the second did not wait for all of it: it took pieces nobody held yet
    assert a > 0 and b > 0, (a, b)
    print(f"{cluster}: first computed {a}, second {b}, 0 twice")


_CTRL_C = """
import sys
import exca_lite as xl
from map_jobs_defs import Pids
folder, counter = sys.argv[1:3]
feat = Pids(counter=counter, delay_s=0.05,
            infra=xl.MapInfra(folder=folder, cluster="threadpool", max_jobs=4))
try:
    feat.pid.compute([f"i{k}" for k in range(400)])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_threadpool_at_the_next_item(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    driver = _driver(_CTRL_C, tmp_path / "cache", counter)
    _wait_for_lines(counter, 20, driver)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "interrupted" in out, err[-2000:]
    done = sum(counts(str(counter)).values())
    # each of the 4 threads finishes at most the item it is computing (not its 100-item chunk)
    assert done < 20 + 4 * 3, done
    cached = xl.MapInfra  # the items computed before the interrupt stay cached
    feat = Pids(infra=cached(folder=tmp_path / "cache", mode="read-only"))
    assert len(feat.pid.cached_uids()) >= 20


_CTRL_C_ANY = """
import sys
import exca_lite as xl
from map_jobs_defs import Pids
folder, counter, cluster = sys.argv[1:4]
feat = Pids(counter=counter, delay_s=0.05, infra=xl.MapInfra(
    folder=folder, cluster=None if cluster == "none" else cluster, max_jobs=2))
try:
    feat.pid.compute([f"i{k}" for k in range(400)])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` now (from /proc: forkserver workers are its grandchildren)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", ["none", "processpool"])
def test_ctrl_c_stops_the_caller_and_its_pool_workers(tmp_path: Path, cluster: str) -> None:
    counter = tmp_path / "counter"
    driver = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_ANY, str(tmp_path / "cache"), str(counter), cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    _wait_for_lines(counter, 10, driver)
    workers = _descendants(driver.pid)
    assert (len(workers) >= 2) == (cluster == "processpool"), workers  # forkserver + workers
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "interrupted" in out, err[-2000:]
    # no worker is left running (reaped by the pool, or exiting on their own)
    deadline = time.monotonic() + 30
    while any(pid_is_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in workers if pid_is_alive(p)] == []
    done = sum(counts(str(counter)).values())
    assert done < 400  # stopped, not run to the end
    # what was stored before the interrupt reads back; the rest is computed by the next call
    feat = Pids(infra=xl.MapInfra(folder=tmp_path / "cache"))
    stored = len(feat.pid.cached_uids())
    assert feat.pid.compute([f"i{k}" for k in range(400)]) == 400 - stored


def test_a_nested_call_needing_its_own_items_is_an_error_not_a_hang(tmp_path: Path) -> None:
    chain = Chain(infra=xl.MapInfra(folder=tmp_path))
    assert [float(v[0]) for v in chain.value([0, 1, 2, 3])] == [1.0, 2.0, 3.0, 4.0]
    other = Chain(infra=xl.MapInfra(folder=tmp_path / "other"))
    with pytest.raises(RuntimeError, match=r"nested .*'2'"):
        list(other.value([3, 2, 1, 0]))  # item 3 needs 2, which this very call holds


@pytest.mark.timeout(120)
def test_a_nested_call_in_a_recorded_job_does_not_wait_for_its_own_job(tmp_path: Path) -> None:
    chain = Chain(infra=xl.MapInfra(folder=tmp_path, cluster="local", max_jobs=1))
    assert [float(v[0]) for v in chain.value([0, 1, 2, 3])] == [1.0, 2.0, 3.0, 4.0]
    other = Chain(infra=xl.MapInfra(folder=tmp_path / "other", cluster="local", max_jobs=1))
    with pytest.raises(xl.JobError, match=r"nested .*'2'"):
        list(other.value([3, 2, 1, 0]))  # the job's record holds item 2: an error, not a wait


def test_pools_default_to_one_worker_per_cpu(tmp_path: Path) -> None:
    feat = Pids(infra=xl.MapInfra(folder=tmp_path, cluster="processpool"))
    pids = feat.pid.stack([f"i{k}" for k in range(64)])[:, 0]
    assert 1 <= len(set(pids.tolist())) <= available_cpus()
    assert xl.MapInfra().max_jobs is None  # unset: the pool's size follows the machine
    feat.pid._prepare()
    assert feat.pid._max_jobs() == available_cpus()  # (pids alone cannot tell 2 from 128 workers)
    array = Pids(infra=xl.MapInfra(folder=tmp_path, cluster="local"))
    array.pid._prepare()
    assert array.pid._max_jobs() == 128


def test_a_processpool_starts_the_same_way_whatever_threads_run(tmp_path: Path) -> None:
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)  # a thread alive, as torch or a logger starts
    busy.start()
    try:
        feat = Pids(infra=xl.MapInfra(folder=tmp_path, cluster="processpool", max_jobs=2))
        out = feat.pid.stack([f"i{k}" for k in range(20)])
        assert os.getpid() not in set(out[:, 0].tolist())
        assert np.all(out > 0)
    finally:
        stop.set()
        busy.join()


_SCRIPT = """
import dataclasses, sys, typing as tp
import numpy as np
import exca_lite as xl


def digits(x: int) -> int:  # a helper only the script defines
    return len(str(x))


@dataclasses.dataclass(frozen=True)
class Feat:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for x in items:
            yield np.array([digits(x)])


{guard}
    feat = Feat(infra=xl.MapInfra(folder=sys.argv[1], cluster="processpool", max_jobs=2))
    print(feat.embed.stack([1, 22, 333, 4444]).ravel().tolist())
"""


def _run_script(
    tmp_path: Path, name: str, text: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as the script ``name`` (python name.py CACHE), from ``tmp_path``."""
    script = tmp_path / name
    script.write_text(text)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_class_in_a_processpool_works_or_says_how_to_fix_it(
    tmp_path: Path, guarded: bool
) -> None:
    guard = 'if __name__ == "__main__":' if guarded else "if True:"
    done = _run_script(tmp_path, "featurize.py", _SCRIPT.replace("{guard}", guard))
    if guarded:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().endswith("[1, 2, 3, 4]")
    else:  # before any worker starts: what is wrong and the fix, not "terminated abruptly"
        assert done.returncode != 0
        assert 'if __name__ == "__main__":' in done.stderr and "featurize.py" in done.stderr
        assert "terminated abruptly" not in done.stderr


_MODULE_SCRIPT = """
import sys
import exca_lite as xl
from map_defs import Featurizer

print("top-level code ran", file=sys.stderr)
feat = Featurizer(infra=xl.MapInfra(folder=sys.argv[1], cluster="processpool", max_jobs=2))
print(feat.embed.stack(["a", "bb", "ccc"]).shape)
"""


def test_an_unguarded_script_using_a_module_class_in_a_processpool_says_how_to_fix_it(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    done = _run_script(tmp_path, "extract.py", _MODULE_SCRIPT, env=subprocess_env)
    # before any worker starts (each would run the script again: hangs or crashes)
    assert done.returncode != 0
    assert done.stderr.count("top-level code ran") == 1, done.stderr[-2000:]
    assert 'if __name__ == "__main__":' in done.stderr and "extract.py" in done.stderr


def test_a_class_defined_in_a_function_in_a_processpool_says_how_to_fix_it(
    tmp_path: Path,
) -> None:
    @dataclasses.dataclass(frozen=True)
    class Local:
        infra: xl.MapInfra = xl.MapInfra()

        @infra.apply(item_uid=str)
        def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray]:
            for _ in items:
                yield np.zeros(1)

    feat = Local(infra=xl.MapInfra(folder=tmp_path, cluster="processpool", max_jobs=2))
    with pytest.raises(RuntimeError, match="inside a function"):
        feat.embed.compute(["a", "b"])
    assert (
        Local(infra=xl.MapInfra(folder=tmp_path, cluster="threadpool")).embed.compute(["a", "b"])
        == 2
    )


def test_a_notebook_class_in_a_processpool_says_how_to_fix_it(tmp_path: Path) -> None:
    code = _SCRIPT.replace("{guard}", "if True:")  # run with -c: no file names the class
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "interactive session" in done.stderr, done.stderr[-2000:]
    assert "Move Feat into a module" in done.stderr


_JOBS_DRIVER = """
import sys
import exca_lite as xl
from map_jobs_defs import Pids
folder, counter = sys.argv[1:3]
feat = Pids(counter=counter, delay_s=0.3,
            infra=xl.MapInfra(folder=folder, cluster="local", max_jobs=2))
feat.pid.compute([f"i{k}" for k in range(40)])
print("done", flush=True)
"""


def _kill_tree(pid: int) -> None:
    """SIGKILL a local job: its submitit controller and the task processes it started."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for p in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(pid_is_alive(p) for p in [pid, *children]):
        assert time.monotonic() < deadline, f"job {pid} did not die"
        time.sleep(0.01)


@pytest.mark.timeout(300)
def test_a_rerun_waits_for_the_live_jobs_of_a_killed_driver_and_takes_over_dead_ones(
    tmp_path: Path,
) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "counter"
    with open(tmp_path / "driver.log", "w") as log:  # not a pipe: the jobs inherit it
        driver = subprocess.Popen(
            [sys.executable, "-c", _JOBS_DRIVER, cache, counter], stdout=log, stderr=log
        )
    first, second = {f"i{k}" for k in range(20)}, {f"i{k}" for k in range(20, 40)}
    deadline = time.monotonic() + 120
    while not (len(set(counts(str(counter))) & first) > 2 and set(counts(str(counter))) & second):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the two local jobs did not start"
        time.sleep(0.01)
    driver.kill()  # kill -9 of the driver: its two local jobs run on
    driver.wait()
    rerun = Pids(counter=str(counter), infra=xl.MapInfra(folder=cache, cluster="local", max_jobs=2))
    folder = rerun.pid.folder()
    assert folder is not None
    (record,) = (folder / "jobs").glob("*.pkl")
    data = load_job_record(record)
    live, dead = (
        data["jobs"][data["uids"].index(sorted(c, key=lambda u: int(u[1:])))]
        for c in (first, second)
    )
    _kill_tree(int(dead.job_id))  # a job that dies (cancelled, killed) before its end
    stored = set(Pids(infra=xl.MapInfra(folder=cache, mode="read-only")).pid.cached_uids())
    lost = {u for u in counts(str(counter)) if u in second} - stored  # computed, never stored
    assert is_alive(live), "the first job ended before the rerun: nothing to wait for"
    items = [f"i{k}" for k in range(60)]  # 20 more than the killed driver asked for
    computed = rerun.pid.compute(items)
    seen = counts(str(counter))
    assert sorted(seen) == sorted(items)
    twice = {u for u, n in seen.items() if n > 1}
    # only the dead job's work in flight is done again; the live job's items were waited for
    assert twice <= lost, sorted(twice - lost)
    assert computed == 20 + len(second - stored)
    # the record of jobs that all ended goes at the next look (a call with missing items)
    deadline = time.monotonic() + 60
    while is_alive(live):
        assert time.monotonic() < deadline, "the live job did not end"
        time.sleep(0.05)
    assert rerun.pid.compute(["one more"]) == 1
    assert not list((folder / "jobs").glob("*.pkl"))
    print(
        f"rerun computed {computed}: 20 new, {len(second - stored)} of the dead job, "
        f"{len(twice)} twice (lost in the kill: {len(lost)})"
    )


@pytest.mark.timeout(300)
def test_a_rerun_waits_for_jobs_a_killed_driver_submitted_before_they_claim_anything(
    tmp_path: Path,
) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "counter"
    rerun = Pids(counter=str(counter), infra=xl.MapInfra(folder=cache, cluster="local", max_jobs=2))
    records = tp.cast(Path, rerun.pid.folder()) / "jobs"
    with open(tmp_path / "driver.log", "w") as log:  # not a pipe: the jobs inherit it
        driver = subprocess.Popen(
            [sys.executable, "-c", _JOBS_DRIVER, cache, counter], stdout=log, stderr=log
        )
    deadline = time.monotonic() + 120
    while not list(records.glob("*.pkl")):  # submitted: the jobs may not even run yet
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no job record"
        time.sleep(0.005)
    driver.kill()
    driver.wait()
    items = [f"i{k}" for k in range(40)]
    computed = rerun.pid.compute(items)  # the jobs hold every item: nothing to submit
    seen = counts(str(counter))
    assert sorted(seen) == sorted(items)
    assert computed == 0 and all(n == 1 for n in seen.values()), (computed, seen)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["threadpool", "processpool"])
def test_a_nested_call_waits_for_an_item_another_worker_computes(
    tmp_path: Path, cluster: str
) -> None:
    # every input first: pieces of 32 go to two workers, and a worker's nested call needs items
    # of the other worker's piece (held by that worker and listed by the driver too)
    order = [*range(64, 96), *range(0, 32), *range(96, 128), *range(32, 64)]
    feat = Ahead(infra=xl.MapInfra(folder=tmp_path, cluster=cluster, max_jobs=2))
    values = feat.value.stack(order)[:, 0]
    assert values.tolist() == [float(i + 65 if i < 64 else i) for i in order]


def test_a_nested_call_in_a_pool_worker_computes_in_that_worker(tmp_path: Path) -> None:
    # only the first half is asked: each item's input is free, and its nested call computes it
    feat = Ahead(n=16, infra=xl.MapInfra(folder=tmp_path, cluster="processpool", max_jobs=2))
    out = feat.value.stack(list(range(8)))
    assert out[:, 0].tolist() == [float(i + 9) for i in range(8)]
    inputs = Ahead(n=16, infra=xl.MapInfra(folder=tmp_path, mode="read-only"))
    deps = inputs.value.stack(list(range(8, 16)))
    # in the worker computing the item (a pool per nested call took seconds per item)
    assert deps[:, 1].tolist() == out[:, 1].tolist()


@pytest.mark.timeout(120)
def test_a_recorded_local_job_whose_pid_now_runs_another_job_is_not_alive(tmp_path: Path) -> None:
    """A leftover record's local job id is the pid of its controller; once that pid is reused,
    even by the controller of another submitit job, the record's job is over (a rerun would
    otherwise wait for an unrelated job)."""
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "logs_old", cluster="local")
    executor.update_parameters(timeout_min=2)
    other = executor.submit(time.sleep, 60)  # a live controller, of another folder
    try:
        own = submitit.LocalJob(folder=executor.folder, job_id=other.job_id)
        assert is_alive(own)  # the same job, read from a record: alive
        for folder in ("mine", "logs", "logs_ol"):  # prefixes of its folder too
            record = submitit.LocalJob(folder=tmp_path / folder, job_id=other.job_id)
            assert not is_alive(record), folder
    finally:
        other.cancel()
        other._process.wait(timeout=60)
