"""``xl.job_array`` and code snapshots on the project's SLURM test cluster (tests/slurm/cluster.sh):
real arrays, real held jobs.

Run, skipped and failed exactly as test_slurm.py's tests (its ``slurm_cluster`` fixture): only
against the project's own cluster, never skipped under ``CI=true``. Jobs wait at a gate file, so
the tests observe them while they run instead of guessing sleep times.
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import pytest
from slurm_defs import read_records
from sweep_defs import Run
from test_slurm import (
    open_gate_at_teardown,
    python,
    run,
    sacct,
    sacct_settled,
    scontrol_job,
    slurm_cluster,
    unique_name,
    wait_until,
)

import exca_lite as xl
from exca_lite.task import method as task_module

pytestmark = [pytest.mark.slurm]

__all__ = ["open_gate_at_teardown", "slurm_cluster"]  # the fixtures, used by every test here


def starts(counter: Path) -> dict[tuple[float, int], list[str]]:
    """(lr, seed) -> where (``{array id}_{task}`` or a job id) each start of that config ran."""
    out: dict[tuple[float, int], list[str]] = {}
    for where, _pid, lr, seed in read_records(counter):
        out.setdefault((float(lr), int(seed)), []).append(where)
    return out


def squeue_tasks(array_id: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of each task of an array still known to squeue."""
    out = run("squeue", "-h", "-r", "-j", array_id, "-o", "%i|%T|%r")
    return [tp.cast(tuple[str, str, str], tuple(line.split("|"))) for line in out.splitlines()]


@pytest.mark.timeout(180)
def test_sweep_of_six_is_one_array_throttled_by_max_parallel(tmp_path: Path) -> None:
    gate, counter = tmp_path / "gate", tmp_path / "counter"
    name = unique_name("xl-sweep")
    infra = xl.TaskInfra(folder=tmp_path / "cache", cluster="slurm", job_name=name)
    runs = [
        Run(lr=lr, seed=seed, counter=str(counter), gate=str(gate), infra=infra)
        for lr in (0.1, 0.01, 0.001)
        for seed in (0, 1)
    ]
    jobs = xl.job_array([r.train for r in runs], max_parallel=2)
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"not one array: {[job.job_id for job in jobs]}"
    (array_id,) = array_ids
    assert [job.job_id for job in jobs] == [f"{array_id}_{k}" for k in range(6)]
    # max_parallel reached the scheduler: the array's throttle
    info = scontrol_job(array_id)
    print("\n" + run("scontrol", "show", "job", "-o", array_id))
    assert info["ArrayTaskThrottle"] == "2", info
    # two tasks start and wait at the gate; the throttle holds the four others back
    wait_until(lambda: len(read_records(counter)) == 2, 60, "two array tasks to start")

    def two_running_four_pending() -> list[tuple[str, str, str]] | None:
        tasks = squeue_tasks(array_id)
        states = sorted(state for _, state, _ in tasks)
        return tasks if states == ["PENDING"] * 4 + ["RUNNING"] * 2 else None

    tasks = wait_until(two_running_four_pending, 30, "squeue: 2 running and 4 pending tasks")
    assert {reason for _, state, reason in tasks if state == "PENDING"} == {"JobArrayTaskLimit"}
    assert [r.train.status() for r in runs].count("running") == 6  # pending counts as running
    gate.touch()
    results = [r.train() for r in runs]
    assert [res["job"] for res in results] == [job.job_id for job in jobs]
    assert {key: len(w) for key, w in starts(counter).items()} == {(r.lr, r.seed): 1 for r in runs}
    rows = sacct_settled(array_id, 6, name)
    assert sorted(row["JobID"] for row in rows) == [f"{array_id}_{k}" for k in range(6)]
    assert {row["State"] for row in rows} == {"COMPLETED"}
    print("\n" + run("sacct", "-X", "-j", array_id, "-o", "JobID,JobName%24,State,ExitCode"))


@pytest.mark.timeout(240)
def test_sweep_submits_only_new_configs_and_reattaches_to_a_running_one(tmp_path: Path) -> None:
    """Two configs cached, one running (submitted by another process), three new of which one
    diverges: one array of the three new ones; every config computed once."""
    gate, counter, cache = tmp_path / "gate", tmp_path / "counter", tmp_path / "cache"
    name = unique_name("xl-resweep")
    infra = xl.TaskInfra(folder=cache, cluster="slurm", job_name=name)
    runs = [
        Run(lr=lr, seed=seed, counter=str(counter), gate=str(gate), infra=infra)
        for lr in (0.1, 0.01, 0.001)
        for seed in (0, 1)
    ]
    runs[5] = Run(lr=0.001, seed=1, diverge=True, counter=str(counter), gate=str(gate), infra=infra)
    here = xl.TaskInfra(folder=cache)  # the same caches, computed in this process
    gate.touch()
    cached = [Run(lr=r.lr, seed=r.seed, counter=str(counter), infra=here).train() for r in runs[:2]]
    gate.unlink()
    task_module._RAM.clear()
    child = python(
        f"""
        import exca_lite as xl
        from sweep_defs import Run
        run = Run(lr={runs[2].lr!r}, seed={runs[2].seed!r}, counter={str(counter)!r},
                  gate={str(gate)!r},
                  infra=xl.TaskInfra(folder={str(cache)!r}, cluster="slurm", job_name={name!r}))
        print(run.train.job().job_id, flush=True)
        """
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    running_id = out.strip()
    wait_until(lambda: (runs[2].lr, runs[2].seed) in starts(counter), 60, "the other job to start")

    jobs = xl.job_array([r.train for r in runs], max_parallel=2)

    assert [job.job_id for job in jobs[:2]] == ["inline", "inline"]
    assert jobs[2].job_id == running_id  # re-attached
    array_ids = {job.job_id.split("_")[0] for job in jobs[3:]}
    assert len(array_ids) == 1 and "_" in jobs[3].job_id
    (array_id,) = array_ids
    assert [job.job_id for job in jobs[3:]] == [f"{array_id}_{k}" for k in range(3)]
    assert scontrol_job(array_id)["ArrayTaskThrottle"] == "2"
    gate.touch()
    assert [r.train() for r in runs[:2]] == cached
    for r, job in zip(runs[2:5], jobs[2:5], strict=True):
        assert r.train()["job"] == job.job_id
    with pytest.raises(xl.JobError) as info:
        runs[5].train()
    message = str(info.value)
    assert "FloatingPointError: loss diverged with lr=0.001" in message
    assert "in _blow_up" in message and jobs[5].job_id in message
    # each config computed once, in the job that was meant to compute it
    assert starts(counter) == {
        **{(r.lr, r.seed): ["-"] for r in runs[:2]},
        (runs[2].lr, runs[2].seed): [running_id],
        **{(r.lr, r.seed): [job.job_id] for r, job in zip(runs[3:], jobs[3:], strict=True)},
    }
    rows = sacct_settled(array_id, 3, name)
    assert sorted((row["JobID"], row["State"]) for row in rows) == [
        (f"{array_id}_0", "COMPLETED"),
        (f"{array_id}_1", "COMPLETED"),
        (f"{array_id}_2", "FAILED"),
    ]
    assert len(sacct(running_id)) == 1
    # the failure is cached per task: a new sweep submits nothing
    task_module._RAM.clear()
    task_module._JOBS.clear()
    again = xl.job_array([r.train for r in runs])
    assert [job.job_id for job in again] == ["inline"] * 6
    assert [r.train.status() for r in runs] == ["completed"] * 5 + ["failed"]


@pytest.mark.timeout(180)
def test_held_job_runs_the_code_as_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs submitted held (sbatch --hold) with the same code share one copy of it; the
    module is edited, then they are released: they run the code as it was at submission."""
    from test_workdir import copies, snap_module, write_module

    module, src, name = snap_module(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    workdir = xl.WorkDir(copied=(name,))
    held = xl.TaskInfra(
        folder=cache, cluster="slurm", workdir=workdir, slurm_additional_parameters={"hold": True}
    )
    snaps = [module.Snap(param=p, infra=held) for p in (1, 2)]
    jobs = [snap.where.job() for snap in snaps]
    for job in jobs:
        info = scontrol_job(job.job_id)
        assert (info["JobState"], info["Reason"]) == ("PENDING", "JobHeldUser"), info
    (copy,) = copies(cache)  # the same code submitted twice is copied once
    write_module(src, name, "v2")
    run("scontrol", "release", *(job.job_id for job in jobs))
    for snap in snaps:
        assert snap.where() == {
            "version": "v1",
            "cwd": str(copy),
            "file": str(copy / f"{name}.py"),
        }
    # submitted after the edit: the new code, in a copy of its own
    now = xl.TaskInfra(folder=cache, cluster="slurm", workdir=workdir)
    assert module.Snap(param=3, infra=now).where()["version"] == "v2"
    assert len(copies(cache)) == 2
