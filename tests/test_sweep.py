"""Sweeps: many configs submitted as one job array (``job_array``) and the results table of a
sweep from its caches (``iter_cached``), with real processes (submitit's local executor; the SLURM
sweep is in test_slurm_sweep.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
import time
import typing as tp
import warnings
from pathlib import Path

import pytest
from slurm_defs import read_records
from sweep_defs import Embedder, Optim, Run

import exca_lite as xl
from exca_lite.task import method as task_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> tp.Iterator[None]:
    """Results kept in RAM would hide what the cache folders hold: each test starts clean."""
    task_module._RAM.clear()
    yield
    task_module._RAM.clear()
    task_module._JOBS.clear()


def sweep_of_six(infra: xl.TaskInfra) -> list[Run]:
    """Six configs: three learning rates x two seeds, one with a nested change, one diverging."""
    runs = [Run(lr=lr, seed=seed, infra=infra) for lr in (0.1, 0.01, 0.001) for seed in (0, 1)]
    runs[3] = Run(lr=0.01, seed=1, optim=Optim(momentum=0.9), infra=infra)
    runs[5] = Run(lr=0.001, seed=1, diverge=True, infra=infra)
    return runs


def fields(run: Run) -> tuple[tp.Any, ...]:
    return (run.lr, run.seed, run.optim, run.diverge)


# # # iter_cached # # #


def test_iter_cached_rebuilds_every_config_with_the_callers_infra(tmp_path: Path) -> None:
    runs = sweep_of_six(xl.TaskInfra(folder=tmp_path))
    for run in runs:
        try:
            run.train()
        except FloatingPointError:
            assert run.diverge
    # neither another folder nor another version belongs to this sweep's table
    Run(lr=0.5, infra=xl.TaskInfra(folder=tmp_path / "elsewhere")).train()
    Run(lr=0.5, infra=xl.TaskInfra(folder=tmp_path, version="2")).train()
    task_module._RAM.clear()

    reader = xl.TaskInfra(folder=tmp_path, mode="read-only", keep_in_ram=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no folder here is skipped: no warning at all
        rows = list(Run(lr=7.0, infra=reader).train.iter_cached())
    assert sorted(map(fields, rows), key=repr) == sorted(map(fields, runs), key=repr)
    assert all(row.infra is reader for row in rows)  # the caller's infra, as given
    by_fields = {fields(row): row for row in rows}
    for run in runs:
        row = by_fields[fields(run)]
        assert row.train.uid() == run.train.uid()
        assert row.train.folder() == run.train.folder()
        if run.diverge:
            assert row.train.status() == "failed"
            with pytest.raises(xl.JobError, match=r"loss diverged with lr=0\.001") as info:
                row.train()
            assert "in _blow_up" in str(info.value)  # the original traceback, from the cache
        else:
            assert row.train.status() == "completed"
            assert row.train()["loss"] == pytest.approx(run.lr * (run.seed + 1))
    # the read-only reader wrote nothing: no folder for the caller's own config
    assert not tp.cast(Path, Run(lr=7.0, infra=reader).train.folder()).exists()
    # the version is the caller's: version 2 holds one cache
    (v2,) = Run(infra=xl.TaskInfra(folder=tmp_path, version="2")).train.iter_cached()
    assert v2.lr == 0.5 and v2.train.status() == "completed"


def test_iter_cached_lists_nothing_before_the_first_cache(tmp_path: Path) -> None:
    assert list(Run(infra=xl.TaskInfra(folder=tmp_path / "empty")).train.iter_cached()) == []
    with pytest.raises(ValueError, match=r"Run\.train\.iter_cached\(\).*set folder="):
        Run().train.iter_cached()


def test_iter_cached_skips_foreign_and_unreadable_folders_with_one_warning(
    tmp_path: Path,
) -> None:
    infra = xl.TaskInfra(folder=tmp_path)
    good = [Run(lr=lr, infra=infra) for lr in (0.1, 0.2, 0.3)]
    for run in good:
        run.train()
    folders = [tp.cast(Path, run.train.folder()) for run in good]
    method_dir = folders[0].parent
    # foreign: a folder of notes, a plain file, a copy of a cache under a name not its uid
    (method_dir / "notes").mkdir()
    (method_dir / "notes" / "todo.txt").write_text("compare the lrs\n")
    (method_dir / "README.txt").write_text("results of the lr sweep\n")
    shutil.copytree(folders[1], method_dir / "lr=0.2-copy")
    # unreadable: a damaged config.json (the cache itself stays, but cannot be rebuilt)
    (folders[2] / "config.json").write_bytes(b'{"lr": 0.3, "seed"')
    (method_dir / ".hidden-tmp").mkdir()  # hidden entries (temp files) are not caches: silent

    with pytest.warns(xl.CorruptCacheWarning) as record:
        rows = list(Run(infra=infra).train.iter_cached())
    assert [row.lr for row in rows] == [0.1, 0.2]
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert str(method_dir) in message and "skipped 4 folder(s)" in message
    for name in ("notes", "README.txt", "lr=0.2-copy", folders[2].name):
        assert name in message
    assert "no config.json" in message and "DecodeError" in message
    assert "Remove them" in message
    # the skipped cache is left alone: its own config still finds its result
    assert Run(lr=0.3, infra=infra).train.status() == "completed"


def test_iter_cached_of_a_map_method(tmp_path: Path) -> None:
    infra = xl.MapInfra(folder=tmp_path, cluster="threadpool", max_jobs=2)
    embedders = [Embedder(dim=2, infra=infra), Embedder(dim=3, scale=0.5, infra=infra)]
    items = {2: ["a", "bb", "ccc"], 3: ["dddd"]}
    for emb in embedders:
        assert emb.embed.compute(items[emb.dim]) == len(items[emb.dim])
    reader = xl.MapInfra(folder=tmp_path, mode="read-only")
    rows = list(Embedder(infra=reader).embed.iter_cached())
    assert sorted((row.dim, row.scale) for row in rows) == [(2, 1.0), (3, 0.5)]
    assert all(row.infra is reader for row in rows)
    for row in rows:
        assert sorted(row.embed.cached_uids()) == items[row.dim]
        stacked = row.embed.stack(items[row.dim])
        assert stacked.shape == (len(items[row.dim]), row.dim)
        assert float(stacked[0, 0]) == len(items[row.dim][0]) * row.scale


# # # job_array # # #


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


def starts(counter: Path) -> dict[tuple[float, int], list[str]]:
    """(lr, seed) -> the pids that started computing it."""
    out: dict[tuple[float, int], list[str]] = {}
    for _where, pid, lr, seed in read_records(counter):
        out.setdefault((float(lr), int(seed)), []).append(pid)
    return out


@pytest.mark.parametrize("cluster", [None, "local"])
def test_job_array_sweep(
    cluster: str | None, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Six configs: two cached already, one diverging; with "local", one more is running in a
    job another process submitted, which the sweep re-attaches to."""
    import submitit

    counter, gate, cache = tmp_path / "counter", tmp_path / "gate", tmp_path / "cache"
    infra = xl.TaskInfra(folder=cache, cluster=cluster)  # type: ignore[arg-type]
    runs = [dataclasses.replace(run, counter=str(counter)) for run in sweep_of_six(infra)]
    # two computed before the sweep (in this process: the cache does not depend on the cluster)
    here = xl.TaskInfra(folder=cache)
    cached = [dataclasses.replace(run, infra=here) for run in runs[:2]]
    values = [run.train() for run in cached]
    task_module._RAM.clear()
    running_id = None
    if cluster == "local":
        # another process submits runs[2], held at a gate, and exits; its job keeps running
        runs[2] = dataclasses.replace(runs[2], gate=str(gate))
        script = f"""
            import exca_lite as xl
            from sweep_defs import Run
            run = Run(lr={runs[2].lr!r}, seed={runs[2].seed!r}, counter={str(counter)!r},
                      gate={str(gate)!r}, infra=xl.TaskInfra(folder={str(cache)!r}, cluster="local"))
            print(run.train.job().job_id)
            """
        # the job's controller inherits the child's outputs: files, not pipes, which would
        # stay open as long as the job runs
        out, err = tmp_path / "child.out", tmp_path / "child.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            child = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(script)],
                env=subprocess_env,
                stdout=stdout,
                stderr=stderr,
                timeout=60,
            )
        assert child.returncode == 0, err.read_text()
        running_id = out.read_text().strip()
        wait_until(lambda: (runs[2].lr, runs[2].seed) in starts(counter), 30, "runs[2] to start")
        assert runs[2].train.status() == "running"

    jobs = xl.job_array([run.train for run in runs], max_parallel=2)

    assert len(jobs) == 6
    assert [job.job_id for job in jobs[:2]] == ["inline", "inline"]  # cached: left alone
    if cluster == "local":
        assert jobs[2].job_id == running_id  # re-attached, not submitted again
        new = jobs[3:]
        assert all(isinstance(job, submitit.LocalJob) for job in new)
        assert len({job.job_id for job in new}) == 3
        assert running_id not in {job.job_id for job in new}
        gate.touch()
    else:
        # computed here, one after the other, before job_array returned
        assert all(job.job_id == "inline" for job in jobs)
        assert all(job.done() for job in jobs)
        assert {pid for pids in starts(counter).values() for pid in pids} == {str(os.getpid())}
    # method() reads (or waits for) each result; the diverging one re-raises its failure
    for run, value in zip(runs[:2], values, strict=True):
        assert run.train() == value
    for run in runs[2:5]:
        result = run.train()
        assert result["loss"] == pytest.approx(run.lr * (run.seed + 1))
        if cluster == "local":
            assert result["pid"] != os.getpid()
    with pytest.raises(xl.JobError) as info:
        runs[5].train()
    message = str(info.value)
    assert "FloatingPointError: loss diverged with lr=0.001" in message
    assert "in _blow_up" in message and "Traceback (most recent call last)" in message
    with pytest.raises(xl.JobError, match="loss diverged"):
        jobs[5].result() if cluster is None else runs[5].train()
    # each config computed once: the cached ones not at all, the running one not twice
    assert {key: len(pids) for key, pids in starts(counter).items()} == {
        (run.lr, run.seed): 1 for run in runs
    }
    assert [run.train.status() for run in runs] == ["completed"] * 5 + ["failed"]
    for job in jobs[3:]:
        job.wait()  # local controllers reaped before the test ends
    # the failure is cached per task: a second sweep submits and computes nothing
    task_module._RAM.clear()
    task_module._JOBS.clear()
    again = xl.job_array([run.train for run in runs])
    assert [job.job_id for job in again] == ["inline"] * 6
    with pytest.raises(xl.JobError, match="loss diverged"):
        again[5].result()
    assert sum(len(pids) for pids in starts(counter).values()) == 6


def test_job_array_without_folder_keeps_failures_and_repeats(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    runs = [Run(lr=0.2, counter=str(counter)), Run(lr=0.3, diverge=True, counter=str(counter))]
    jobs = xl.job_array([runs[0].train, runs[1].train, runs[0].train])
    assert jobs[0] is jobs[2]  # one config given twice is one task
    assert jobs[0].result()["loss"] == pytest.approx(0.2)
    with pytest.raises(FloatingPointError, match=r"lr=0\.3"):
        jobs[1].result()  # nothing caches it: the error itself, not a second computation
    assert jobs[1].done()
    assert len(read_records(counter)) == 2


def test_job_array_refuses_what_it_cannot_submit(tmp_path: Path) -> None:
    run = Run(infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(TypeError, match=r"\[run\.train for run in runs\].*item 1 is {.loss"):
        xl.job_array([run.train, run.train()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"max_parallel=0"):
        xl.job_array([run.train], max_parallel=0)
    assert xl.job_array([]) == []
