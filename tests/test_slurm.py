"""TaskInfra and MapInfra on a real SLURM cluster (tests/slurm/cluster.sh): real jobs, no mocks.

They run only against the project's own test cluster (``slurm_defs.project_cluster_problem``):
under ``CI=true`` the test command starts it first and these tests fail if it is missing or another
SLURM answers; elsewhere they skip, saying why and how to start it. Jobs run on this machine, so
the cache folders (under pytest's ``tmp_path``) are shared between the tests and the jobs.

Waiting is done by polling observable state (counter files written by the jobs, ``squeue``,
``sacct``, the cache folder) with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import typing as tp
import uuid
from pathlib import Path

import numpy as np
import pytest
from slurm_defs import START_HINT, Gated, JobFeaturizer, project_cluster_problem, read_records

import exca_lite as xl
from exca_lite.execution import load_job_record, pid_is_alive

pytestmark = [pytest.mark.slurm]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """Only the project's own test cluster (tests/slurm/cluster.sh) gets these tests' jobs: any
    other SLURM skips them, and under CI=true (where the test command starts that cluster) fails
    them, so that a missing or foreign cluster is never mistaken for a passing run."""
    problem = project_cluster_problem()
    if not problem:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"CI=true but the project's SLURM test cluster is not usable: {problem}; {START_HINT}",
            pytrace=False,
        )
    pytest.skip(f"not the project's SLURM test cluster ({problem}): {START_HINT}")


@pytest.fixture(autouse=True)
def open_gate_at_teardown(tmp_path: Path) -> tp.Iterator[None]:
    """A test that fails while its jobs wait at ``tmp_path / "gate"`` lets them end at once."""
    yield
    (tmp_path / "gate").touch()


# # # helpers # # #


def wait_until(predicate: tp.Callable[[], tp.Any], timeout_s: float, what: str) -> tp.Any:
    """Poll ``predicate`` (quickly at first) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


SACCT_FIELDS = ("JobID", "JobName", "Partition", "State", "AllocCPUS", "Timelimit", "ReqMem")


def sacct(job_id: str) -> list[dict[str, str]]:
    """One row per job (array tasks included, steps excluded) of ``job_id``."""
    out = run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", ",".join(SACCT_FIELDS))
    return [dict(zip(SACCT_FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


def sacct_settled(
    job_id: str, n_rows: int, name: str, timeout_s: float = 20
) -> list[dict[str, str]]:
    """``sacct`` rows once it has caught up: ``n_rows`` finished rows carrying the job name."""

    def settled() -> list[dict[str, str]] | None:
        rows = sacct(job_id)
        ok = len(rows) == n_rows and all(
            r["JobName"] == name and r["State"] not in ("PENDING", "RUNNING") for r in rows
        )
        return rows if ok else None

    return tp.cast(list[dict[str, str]], wait_until(settled, timeout_s, f"sacct -j {job_id}"))


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (values without spaces, which is all we ask for)."""
    out = run("scontrol", "show", "job", "-o", job_id)
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def squeue_state(job_id: str) -> str:
    return run("squeue", "-h", "-j", job_id, "-o", "%T").strip()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def task_infra(folder: Path, **kwargs: tp.Any) -> xl.TaskInfra:
    kwargs.setdefault("cluster", "slurm")
    return xl.TaskInfra(folder=folder, **kwargs)


def map_infra(folder: Path, **kwargs: tp.Any) -> xl.MapInfra:
    kwargs.setdefault("cluster", "slurm")
    return xl.MapInfra(folder=folder, **kwargs)


def python(script: str, **kwargs: tp.Any) -> subprocess.Popen[str]:
    """A Python child process (tests/ is importable: conftest sets PYTHONPATH)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# # # TaskInfra # # #


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cluster", ["slurm", "auto"])
def test_task_runs_as_slurm_job(tmp_path: Path, cluster: str) -> None:
    import submitit

    gate, counter, cache = tmp_path / "gate", tmp_path / "counter", tmp_path / "cache"
    # each test (and parametrization) computes its own config: nothing is shared through RAM
    param = {"slurm": 3, "auto": 4}[cluster]
    task = Gated(
        param=param, gate=str(gate), counter=str(counter), infra=task_infra(cache, cluster=cluster)
    )
    statuses = [task.process.status()]
    job = task.process.job()
    assert isinstance(job, submitit.SlurmJob), f"cluster={cluster!r} did not pick SLURM: {job!r}"
    statuses.append(task.process.status())
    # the job itself is running once it recorded its start (it now blocks on the gate)
    wait_until(lambda: read_records(counter), 30, "the job to start")
    assert squeue_state(job.job_id) == "RUNNING"
    statuses.append(task.process.status())
    gate.touch()
    result = task.process()
    statuses.append(task.process.status())
    assert statuses == ["not submitted", "running", "running", "completed"]
    assert result["job"] == job.job_id  # computed in that SLURM job, not here
    # cached: a fresh object reads the disk (no RAM copy) and submits nothing
    again = Gated(
        param=param,
        gate=str(gate),
        counter=str(counter),
        infra=task_infra(cache, cluster=cluster, keep_in_ram=False),
    )
    assert again.process.status() == "completed"
    assert again.process() == result
    assert len(read_records(counter)) == 1
    # the job's logs are reachable from the cache folder
    folder = task.process.folder()
    assert folder is not None
    assert {"config.json", "uid.json", "result.pkl", "job.pkl"} <= {
        p.name for p in folder.iterdir()
    }
    logs = folder / "logs"
    assert logs.is_dir()
    assert (logs / f"{job.job_id}_0_log.out").exists()
    assert (logs / f"{job.job_id}_0_log.err").exists()
    script = (logs / f"{job.job_id}_submission.sh").read_text()
    assert script.count("#SBATCH") > 0
    # slurm_use_srun defaults to False: the job runs python directly in the batch step
    assert "srun" not in script.split("# command")[-1], script


@pytest.mark.timeout(90)
def test_second_process_reattaches_to_running_job(tmp_path: Path) -> None:
    gate, counter, cache = tmp_path / "gate", tmp_path / "counter", tmp_path / "cache"
    task = Gated(param=5, gate=str(gate), counter=str(counter), infra=task_infra(cache))
    job = task.process.job()
    wait_until(lambda: read_records(counter), 30, "the job to start")
    child = python(
        f"""
        import json
        import exca_lite as xl
        from slurm_defs import Gated
        task = Gated(param=5, gate={str(gate)!r}, counter={str(counter)!r},
                     infra=xl.TaskInfra(folder={str(cache)!r}, cluster="slurm"))
        status = task.process.status()
        job = task.process.job()
        print(json.dumps({{"status": status, "job_id": job.job_id}}), flush=True)
        print(json.dumps(task.process()), flush=True)
        """
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"the child process failed: {child.communicate()[1]}"
        assert json.loads(line) == {"status": "running", "job_id": job.job_id}
        gate.touch()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert json.loads(out) == task.process()
    records = read_records(counter)
    assert len(records) == 1 and records[0][0] == job.job_id  # one job, never a second one


@pytest.mark.timeout(120)
def test_failure_carries_traceback_is_cached_and_retried(tmp_path: Path) -> None:
    flag, counter, cache = tmp_path / "fail", tmp_path / "counter", tmp_path / "cache"
    flag.touch()
    task = Gated(param=7, counter=str(counter), fail_flag=str(flag), infra=task_infra(cache))
    with pytest.raises(xl.JobError) as info:
        task.process()
    message = str(info.value)
    job_id = read_records(counter)[0][0]
    assert "ValueError: deliberate failure of param=7" in message
    assert "Traceback (most recent call last)" in message
    assert "in _fail_in_helper" in message  # the job's own frames
    assert job_id in message
    assert task.process.status() == "failed"
    # the failure is cached: a fresh object re-raises it without a new job
    again = Gated(param=7, counter=str(counter), fail_flag=str(flag), infra=task_infra(cache))
    with pytest.raises(xl.JobError, match="deliberate failure of param=7"):
        again.process()
    assert len(read_records(counter)) == 1
    # "retry" resubmits
    flag.unlink()
    retry = Gated(
        param=7, counter=str(counter), fail_flag=str(flag), infra=task_infra(cache, mode="retry")
    )
    result = retry.process()
    records = read_records(counter)
    assert len(records) == 2 and records[1][0] != job_id
    assert result["job"] == records[1][0]
    assert retry.process.status() == "completed"
    assert again.process() == result


@pytest.mark.timeout(90)
@pytest.mark.parametrize("caller", ["waiting", "later"])
def test_cancelled_job_is_reported_failed(tmp_path: Path, caller: str) -> None:
    """``scancel`` while a caller waits for the job, or before anyone asks for the result."""
    gate, counter, cache = tmp_path / "gate", tmp_path / "counter", tmp_path / "cache"
    param = {"waiting": 11, "later": 12}[caller]
    task = Gated(param=param, gate=str(gate), counter=str(counter), infra=task_infra(cache))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = task.process.job()
        wait_until(lambda: read_records(counter), 30, "the job to start")
        waiter = pool.submit(task.process) if caller == "waiting" else None
        run("scancel", job.job_id)
        start = time.monotonic()
        with pytest.raises(xl.JobError) as info:
            task.process() if waiter is None else waiter.result(timeout=60)
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert "CANCELLED" in message and job.job_id in message
    assert elapsed < 10, f"a cancelled job took {elapsed:.1f} s to be reported"
    assert task.process.status() == "failed"
    # cached like any failure: a fresh object re-raises it; "retry" resubmits
    again = Gated(param=param, gate=str(gate), counter=str(counter), infra=task_infra(cache))
    with pytest.raises(xl.JobError, match="CANCELLED"):
        again.process()
    assert len(read_records(counter)) == 1
    # the cancelled job's process outlives its CANCELLED state by seconds (submitit ignores
    # SIGTERM; srun waits for the step before killing it): open the gate only once it is gone
    pid = int(read_records(counter)[0][1])
    wait_until(lambda: not pid_is_alive(pid), 60, "the cancelled job's process to end")
    gate.touch()
    retry = Gated(
        param=param, gate=str(gate), counter=str(counter), infra=task_infra(cache, mode="retry")
    )
    assert retry.process()["job"] == read_records(counter)[1][0] != job.job_id


@pytest.mark.timeout(90)
def test_slurm_parameters_reach_the_job(tmp_path: Path) -> None:
    gate, counter = tmp_path / "gate", tmp_path / "counter"
    name = unique_name("xl-params")
    infra = task_infra(
        tmp_path / "cache",
        job_name=name,
        timeout_min=7,
        cpus_per_task=2,
        mem_gb=0.5,
        slurm_partition="test",
        slurm_additional_parameters={"comment": name},
    )
    task = Gated(param=13, gate=str(gate), counter=str(counter), infra=infra)
    job = task.process.job()
    wait_until(lambda: read_records(counter), 30, "the job to start")
    info = scontrol_job(job.job_id)
    assert info["JobName"] == name
    assert info["Partition"] == "test"
    assert info["TimeLimit"] == "00:07:00"
    assert info["NumCPUs"] == "2"
    assert info["MinMemoryNode"] == "512M"
    assert info["Comment"] == name
    gate.touch()
    result = task.process()
    assert (result["cpus"], result["partition"]) == ("2", "test")
    (row,) = sacct_settled(job.job_id, 1, name)
    assert (row["Partition"], row["Timelimit"], row["AllocCPUS"], row["ReqMem"]) == (
        "test",
        "00:07:00",
        "2",
        "512M",
    )
    assert row["State"] == "COMPLETED"


# # # MapInfra # # #

ITEMS = [f"{chr(97 + i)}" * (1 + i % 4) for i in range(10)]  # 10 distinct items, 4 lengths


def tasks_by_item(counter: Path) -> dict[str, list[str]]:
    """item -> the array tasks ("{array id}_{task id}") that computed it."""
    out: dict[str, list[str]] = {}
    for item, where, _pid in read_records(counter):
        out.setdefault(item, []).append(where)
    return out


def items_by_task(counter: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item, where, _pid in read_records(counter):
        out.setdefault(where, []).append(item)
    return out


@pytest.mark.timeout(90)
def test_map_runs_as_one_job_array(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    name = unique_name("xl-map")
    feat = JobFeaturizer(
        counter=str(counter),
        infra=map_infra(
            tmp_path / "slurm",
            max_jobs=4,
            job_name=name,
            slurm_partition="test",
            timeout_min=9,
            mem_gb=0.25,
        ),
    )
    asked = [*ITEMS, *ITEMS[:3]]
    out = feat.embed.stack(asked)
    local = JobFeaturizer(infra=xl.MapInfra(folder=tmp_path / "local"))
    np.testing.assert_array_equal(out, local.embed.stack(asked))
    assert [o.tolist() for o in feat.embed(asked)] == [o.tolist() for o in local.embed(asked)]
    # every item computed once, in an array task
    by_item = tasks_by_item(counter)
    assert sorted(by_item) == sorted(ITEMS)
    assert all(len(w) == 1 for w in by_item.values()), by_item
    by_task = items_by_task(counter)
    array_ids = {w.split("_")[0] for w in by_task}
    assert len(array_ids) == 1, f"chunks were not submitted as one array: {sorted(by_task)}"
    (array_id,) = array_ids
    # balanced contiguous chunks, in task order
    chunks = [by_task[f"{array_id}_{k}"] for k in range(4)]
    assert [len(c) for c in chunks] == [3, 3, 2, 2]
    assert [i for c in chunks for i in c] == ITEMS
    # sacct: one array id, 4 tasks, with the job's parameters
    rows = sacct_settled(array_id, 4, name)
    assert sorted(r["JobID"] for r in rows) == [f"{array_id}_{k}" for k in range(4)]
    assert {(r["State"], r["Partition"], r["Timelimit"], r["ReqMem"]) for r in rows} == {
        ("COMPLETED", "test", "00:09:00", "256M")
    }
    # workers wrote the cache themselves: what travelled back through submitit is a count
    pickles = sorted((tmp_path / "slurm").rglob(f"{array_id}_*_result.pkl"))
    assert len(pickles) == 4
    counts = []
    for path in pickles:
        with path.open("rb") as f:
            outcome, value = pickle.load(f)
        assert outcome == "success" and isinstance(value, int)
        counts.append(value)
    assert sorted(counts) == [2, 2, 3, 3]
    # all cached: nothing more is computed, by this object or a fresh one
    assert feat.embed.compute(asked) == 0
    fresh = JobFeaturizer(counter=str(counter), infra=map_infra(tmp_path / "slurm", max_jobs=4))
    assert sorted(fresh.embed.cached_uids()) == sorted(ITEMS)
    assert fresh.embed.compute(ITEMS) == 0
    assert len(read_records(counter)) == len(ITEMS)


@pytest.mark.timeout(90)
def test_map_min_samples_per_job(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    name = unique_name("xl-min")
    feat = JobFeaturizer(
        counter=str(counter),
        infra=map_infra(tmp_path / "cache", max_jobs=8, min_samples_per_job=4, job_name=name),
    )
    assert feat.embed.compute(ITEMS) == len(ITEMS)
    by_task = items_by_task(counter)
    (array_id,) = {w.split("_")[0] for w in by_task}
    assert [len(by_task[f"{array_id}_{k}"]) for k in range(3)] == [4, 3, 3]
    assert len(sacct_settled(array_id, 3, name)) == 3


@pytest.mark.timeout(120)
def test_map_array_with_failing_task(tmp_path: Path) -> None:
    counter, flag = tmp_path / "counter", tmp_path / "fail"
    flag.touch()
    items = ITEMS[:8]  # 4 tasks of 2 items; task 2 fails on its second item
    infra = map_infra(tmp_path / "cache", max_jobs=4)
    feat = JobFeaturizer(counter=str(counter), fail_item=items[5], fail_flag=str(flag), infra=infra)
    start = time.monotonic()
    with pytest.raises(xl.JobError) as info:
        feat.embed.compute(items)
    elapsed = time.monotonic() - start
    by_task = items_by_task(counter)
    (array_id,) = {w.split("_")[0] for w in by_task}
    message = str(info.value)
    assert f"job {array_id}_2 (2 items)" in message  # the caller names the failed task
    assert f"after 1 of 2 items, job {array_id}_2)" in message  # so does the task itself
    assert f"deliberate failure on item {items[5]!r}" in message
    assert "1 of 4 jobs failed" in message
    assert elapsed < 15, f"the failed array took {elapsed:.1f} s to be reported"
    # the other tasks' items, and the failing task's first item, are cached
    assert sorted(feat.embed.cached_uids()) == sorted(set(items) - {items[5]})
    # the rerun computes only what is missing
    flag.unlink()
    again = JobFeaturizer(
        counter=str(counter), fail_item=items[5], fail_flag=str(flag), infra=infra
    )
    assert again.embed.compute(items) == 1
    assert sorted(again.embed.cached_uids()) == sorted(items)
    assert {item: len(w) for item, w in tasks_by_item(counter).items()} == {i: 1 for i in items}
    np.testing.assert_array_equal(
        again.embed.stack(items), JobFeaturizer(infra=xl.MapInfra()).embed.stack(items)
    )


@pytest.mark.timeout(120)
def test_map_array_with_cancelled_task(tmp_path: Path) -> None:
    counter, gate, started = tmp_path / "counter", tmp_path / "gate", tmp_path / "started"
    started.mkdir()
    items = ITEMS[:4]
    feat = JobFeaturizer(
        counter=str(counter),
        gate=str(gate),
        started=str(started),
        infra=map_infra(tmp_path / "cache", max_jobs=2),
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(feat.embed.compute, items)
        pids = wait_until(
            lambda: (
                {p.name: int(p.read_text()) for p in started.iterdir() if p.read_text()}
                if len(os.listdir(started)) == 2
                else None
            ),
            30,
            "both array tasks to run",
        )
        first, second = sorted(pids, key=lambda w: int(w.split("_")[1]))
        run("scancel", second)
        # the cancelled task's process outlives its CANCELLED state by seconds (submitit ignores
        # SIGTERM): let it end before the gate opens, else it would compute its items after all
        wait_until(lambda: not pid_is_alive(pids[second]), 60, "the cancelled task to end")
        gate.touch()
        start = time.monotonic()
        with pytest.raises(xl.JobError) as info:
            future.result(timeout=60)
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"job {second} " in message and "CANCELLED" in message
    assert f"job {first} " not in message and "1 of 2 jobs failed" in message
    assert elapsed < 10, f"a cancelled array task took {elapsed:.1f} s to be reported"
    assert sorted(feat.embed.cached_uids()) == sorted(items[:2])  # the other task's items
    # the rerun computes what is missing only
    assert feat.embed.compute(items) == 2
    assert sorted(feat.embed.cached_uids()) == sorted(items)
    assert {item: len(w) for item, w in tasks_by_item(counter).items()} == {i: 1 for i in items}


@pytest.mark.timeout(120)
def test_two_processes_same_map_compute_each_item_once(tmp_path: Path) -> None:
    """Both callers submit at once; the jobs are held at a gate until both have claimed."""
    counter, cache, gate, started = (tmp_path / n for n in ("counter", "cache", "gate", "started"))
    started.mkdir()
    items = ITEMS[:8]
    script = f"""
        import exca_lite as xl
        from slurm_defs import JobFeaturizer
        feat = JobFeaturizer(counter={str(counter)!r}, gate={str(gate)!r}, started={str(started)!r},
                             infra=xl.MapInfra(folder={str(cache)!r}, cluster="slurm", max_jobs=2))
        print("ready", flush=True)
        print(feat.embed.compute({items!r}), flush=True)
        print(sorted(feat.embed.cached_uids()), flush=True)
        """
    children = [python(script), python(script)]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n", child.communicate()[1]
        # a claim takes milliseconds, a SLURM job seconds to start: once a worker runs, both
        # callers have claimed what they compute
        wait_until(lambda: os.listdir(started), 30, "a worker to start")
        gate.touch()
        outputs = [child.communicate(timeout=100) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    for child, (_out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    computed = [int(out.splitlines()[0]) for out, _ in outputs]
    assert sum(computed) == len(items), computed
    assert all(out.splitlines()[1] == repr(sorted(items)) for out, _ in outputs)
    by_item = tasks_by_item(counter)
    assert {item: len(w) for item, w in by_item.items()} == {i: 1 for i in items}, by_item
    # computed by SLURM array tasks (one array per caller that had items to compute)
    arrays = {w[0].split("_")[0] for w in by_item.values()}
    assert all("_" in w[0] for w in by_item.values())
    assert len(arrays) == sum(1 for c in computed if c)


@pytest.mark.timeout(180)
def test_map_rerun_after_a_killed_driver_waits_for_its_queued_jobs(tmp_path: Path) -> None:
    """Queued (held) array tasks hold no claim: only the job record tells a rerun they will
    compute their items. The driver is killed (kill -9) while its array waits in the queue; the
    rerun submits only new items, waits for the live task, takes over the cancelled one's."""
    counter, cache = tmp_path / "counter", tmp_path / "cache"
    items = ITEMS[:8]
    script = textwrap.dedent(
        f"""
        import exca_lite as xl
        from slurm_defs import JobFeaturizer
        feat = JobFeaturizer(counter={str(counter)!r}, infra=xl.MapInfra(
            folder={str(cache)!r}, cluster="slurm", max_jobs=2,
            slurm_additional_parameters={{"hold": True}}))
        feat.embed.compute({items!r})
        """
    )
    with open(tmp_path / "driver.log", "w") as log:  # not a pipe: nobody reads it
        driver = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=log)
    rerun = JobFeaturizer(counter=str(counter), infra=map_infra(cache, max_jobs=2))
    records = tp.cast(Path, rerun.embed.folder()) / "jobs"
    record = wait_until(lambda: list(records.glob("*.pkl")), 60, "the driver's job record")[0]
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()
    driver.kill()
    driver.wait()
    data = load_job_record(record)
    first, second = (str(job.job_id) for job in data["jobs"])
    assert squeue_state(first) == squeue_state(second) == "PENDING"
    extra = ITEMS[8:]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(rerun.embed.compute, [*items, *extra])
        # the rerun computes the new items only (its own array) while the held ones wait
        wait_until(lambda: len(read_records(counter)) >= len(extra), 60, "the new items")
        assert sorted(tasks_by_item(counter)) == sorted(extra)
        run("scontrol", "release", first)
        run("scancel", second)  # a job that dies without computing: taken over
        computed = future.result(timeout=120)
    by_item = tasks_by_item(counter)
    assert {item: len(w) for item, w in by_item.items()} == {i: 1 for i in ITEMS}, by_item
    assert computed == len(extra) + len(data["uids"][1])  # new items + the cancelled task's
    assert all(by_item[item] == [first] for item in data["uids"][0])  # the released task's
