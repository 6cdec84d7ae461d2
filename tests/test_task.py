"""TaskInfra: caching, modes, failures, folder layout and concurrency, with real processes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pickle
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from task_defs import Arrays, ArraySubclass, Dying, Failing, Flaky, Gated, Task, Versioned, count

import exca_lite as xl
from exca_lite.task import method as task_module

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> tp.Iterator[None]:
    """RAM results are keyed by uid only: tests reusing a config in another folder must not see
    each other's results, as if each test ran in its own process."""
    task_module._RAM.clear()
    yield
    task_module._RAM.clear()
    task_module._JOBS.clear()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


# # # caching per cluster # # #


@pytest.mark.parametrize("cluster", [None, "debug", "local"])
def test_result_is_cached_and_not_recomputed(cluster: str | None, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path / "cache", cluster=cluster)  # type: ignore[arg-type]
    task = Task(param=3, counter=str(counter), infra=infra)
    assert task.process.status() == "not submitted"
    out = task.process()
    assert isinstance(out, float) and 0 <= out <= 3
    assert count(counter) == 1
    assert task.process.status() == "completed"
    assert task.process() == out
    # a new object, nothing in RAM: loaded from the folder
    task_module._RAM.clear()
    again = Task(param=3, counter=str(counter), infra=infra)
    assert again.process() == out
    assert count(counter) == 1
    # another config is another computation
    assert Task(param=4, counter=str(counter), infra=infra).process() != out
    assert count(counter) == 2


def test_folder_layout_of_a_local_job(tmp_path: Path) -> None:
    task = Task(param=5, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    out = task.process()
    folder = task.process.folder()
    assert folder is not None
    assert folder == tmp_path / "task_defs.Task.process,1" / folder.name
    assert {"config.json", "uid.json", "result.pkl", "job.pkl", "logs"} <= _files(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["param"] == 5 and config["infra"]["cluster"] == "local"
    assert json.loads((folder / "uid.json").read_text()) == task.process.config() == {"param": 5}
    with open(folder / "result.pkl", "rb") as f:
        assert pickle.load(f) == out
    logs = (folder / "logs").resolve()
    assert (folder / "logs").is_symlink() and logs.is_dir()
    assert logs.parent.parent == (tmp_path / "logs").resolve()  # {folder}/logs/{user}/%j
    assert any(p.name.endswith("_log.out") for p in logs.iterdir())  # the job's log files


def test_cluster_none_writes_no_job_files(tmp_path: Path) -> None:
    task = Task(param=5, infra=xl.TaskInfra(folder=tmp_path))
    task.process()
    folder = task.process.folder()
    assert folder is not None
    assert {"config.json", "uid.json", "result.pkl"} <= _files(folder)
    assert not (folder / "job.pkl").exists() and not (folder / "logs").exists()


def test_no_folder_computes_in_ram_only(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    task = Task(param=2, counter=str(counter))
    assert task.process.folder() is None
    assert task.process.status() == "not submitted"
    out = task.process()
    assert task.process() == out
    assert Task(param=2, counter=str(counter)).process() == out  # kept in RAM, by uid
    assert count(counter) == 1
    assert task.process.status() == "completed"
    assert list(tmp_path.iterdir()) == [counter]


def test_keep_in_ram(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    kept = Task(param=6, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    first = kept.process()
    folder = kept.process.folder()
    assert folder is not None
    (folder / "result.pkl").unlink()
    # keep_in_ram=True: served from memory, for this object and any equal config
    assert kept.process() is first
    assert (
        Task(param=6, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path)).process() is first
    )
    assert count(counter) == 1
    # keep_in_ram=False: every call goes to the folder (here: gone, so recomputed, and stored)
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    not_kept = Task(param=6, counter=str(counter), infra=infra)
    second = not_kept.process()
    assert second != first
    assert count(counter) == 2
    assert not_kept.process() == second and not_kept.process() is not not_kept.process()
    assert count(counter) == 2


# # # modes # # #


def test_mode_force_recomputes_once_per_object(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    cached = Task(param=7, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    first = cached.process()
    forced = Task(param=7, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path, mode="force"))
    second = forced.process()
    assert second != first and count(counter) == 2
    assert forced.process() == second and count(counter) == 2  # once per object
    # the forced result overwrote the cache
    task_module._RAM.clear()
    fresh = Task(param=7, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    assert fresh.process() == second
    other = Task(param=7, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path, mode="force"))
    assert other.process() not in (first, second) and count(counter) == 3


def test_mode_read_only_never_computes_nor_writes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    cache = tmp_path / "cache"
    ro = xl.TaskInfra(folder=cache, mode="read-only")
    task = Task(param=8, counter=str(counter), infra=ro)
    with pytest.raises(xl.CacheMissError, match=r"read-only") as info:
        task.process()
    assert isinstance(info.value, LookupError)
    assert task.process.uid() in str(info.value)
    assert task.process.status() == "not submitted"
    with pytest.raises(xl.CacheMissError):
        task.process.job().result()
    with pytest.raises(ValueError, match="read-only"):
        task.process.clear()  # refused, never silently ignored
    assert list(tmp_path.iterdir()) == []  # no folder, no file, no counter: nothing ran
    with pytest.raises(xl.CacheMissError):
        Task(param=8, infra=xl.TaskInfra(mode="read-only")).process()  # no folder at all
    # once cached by someone else, read-only serves it
    out = Task(param=8, counter=str(counter), infra=xl.TaskInfra(folder=cache)).process()
    task_module._RAM.clear()
    assert Task(param=8, counter=str(counter), infra=ro).process() == out
    assert count(counter) == 1


def test_cached_failure_inline_then_retry(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    flag = tmp_path / "flag"
    flag.touch()
    infra = xl.TaskInfra(folder=tmp_path / "cache")
    task = Flaky(flag=str(flag), counter=str(counter), infra=infra)
    with pytest.raises(RuntimeError, match="flag file present"):
        task.process()  # computed in this process: the original exception
    assert task.process.status() == "failed"
    flag.unlink()
    # "cached": the failure is re-raised without running
    again = Flaky(flag=str(flag), counter=str(counter), infra=infra)
    with pytest.raises(xl.JobError, match=r"RuntimeError: flag file present") as info:
        again.process()
    assert "_check_flag" in str(info.value)
    assert count(counter) == 1
    # "retry": the failure is recomputed
    retried = Flaky(
        flag=str(flag), counter=str(counter), infra=dataclasses.replace(infra, mode="retry")
    )
    assert retried.process() == "ok"
    assert count(counter) == 2 and retried.process.status() == "completed"
    # and the success is what "cached" now serves
    assert Flaky(flag=str(flag), counter=str(counter), infra=infra).process() == "ok"
    assert count(counter) == 2


def test_failure_in_a_local_job_carries_its_traceback(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    flag = tmp_path / "flag"
    flag.touch()
    infra = xl.TaskInfra(folder=tmp_path / "cache", cluster="local")
    task = Flaky(flag=str(flag), counter=str(counter), infra=infra)
    with pytest.raises(xl.JobError) as info:
        task.process()
    text = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert f"flag file present: {flag}" in text  # the original message
    assert "Traceback" in text and "_check_flag" in text  # the job's own traceback
    assert task.process.uid() in text
    assert count(counter) == 1
    assert task.process.status() == "failed"
    # cached: a new object re-raises without submitting anything
    flag.unlink()
    again = Flaky(flag=str(flag), counter=str(counter), infra=infra)
    with pytest.raises(xl.JobError, match="flag file present"):
        again.process()
    assert count(counter) == 1
    retried = Flaky(
        flag=str(flag), counter=str(counter), infra=dataclasses.replace(infra, mode="retry")
    )
    assert retried.process() == "ok"
    assert count(counter) == 2


def test_job_dying_without_an_outcome_is_a_cached_failure(tmp_path: Path) -> None:
    task = Dying(infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    with pytest.raises(xl.JobError, match="ended without writing a result") as info:
        task.process()
    assert "about to die" in str(info.value)  # the tail of the job's output
    assert task.process.status() == "failed"
    folder = task.process.folder()
    assert folder is not None and (folder / "error.json").exists()
    with pytest.raises(xl.JobError, match="ended without writing a result"):
        Dying(infra=task.infra).process()


def test_failing_without_folder_is_not_cached(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    task = Failing(message="nowhere", counter=str(counter))
    for _ in range(2):
        with pytest.raises(ValueError, match="deliberate failure: nowhere"):
            task.process()
    assert count(counter) == 2


# # # job(), status(), clear() # # #


def test_job_returns_without_waiting_and_another_process_reattaches(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path / "cache", cluster="local")
    task = Task(param=9, counter=str(counter), sleep_s=2.0, infra=infra)
    job = task.process.job()  # submits, does not wait for the 2 s job
    assert not job.done()
    assert task.process.status() == "running"
    assert task.process.job() is job  # not submitted twice
    folder = task.process.folder()
    assert folder is not None and (folder / "job.pkl").exists()
    # another process finds job.pkl of the running job and waits for it instead of submitting
    script = (
        "import exca_lite as xl, task_defs as d\n"
        f"infra = xl.TaskInfra(folder={str(tmp_path / 'cache')!r}, cluster='local')\n"
        f"print(repr(d.Task(param=9, counter={str(counter)!r}, sleep_s=2.0, infra=infra).process()))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 0, other.stderr
    out = task.process()
    assert float(other.stdout.strip()) == out
    assert count(counter) == 1
    assert task.process.status() == "completed"
    job.wait()
    assert job.done()


def test_job_with_cluster_none_is_a_local_handle(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    task = Task(param=10, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    job = task.process.job()
    assert count(counter) == 0 and not job.done()
    out = job.result()
    assert job.done() and out == task.process() and count(counter) == 1


def test_clear(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path, cluster="debug")
    task = Task(param=11, counter=str(counter), infra=infra)
    first = task.process()
    folder = task.process.folder()
    assert folder is not None and (folder / "result.pkl").exists()
    task.process.clear()
    assert task.process.status() == "not submitted"
    assert not {"result.pkl", "result.npy", "error.json", "job.pkl"} & _files(folder)
    second = task.process()  # neither RAM nor disk: recomputed
    assert second != first and count(counter) == 2
    failing = Failing(infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(ValueError, match="deliberate"):
        failing.process()
    assert failing.process.status() == "failed"
    failing.process.clear()
    assert failing.process.status() == "not submitted"


# # # results as arrays # # #


def test_arrays_are_stored_as_npy_and_large_ones_memory_mapped(tmp_path: Path) -> None:
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    small = Arrays(size=10, infra=infra)
    np.testing.assert_array_equal(small.process(), np.arange(10))
    folder = small.process.folder()
    assert folder is not None and (folder / "result.npy").exists()
    assert not (folder / "result.pkl").exists()
    loaded = small.process()
    assert type(loaded) is np.ndarray
    np.testing.assert_array_equal(np.load(folder / "result.npy"), np.arange(10))
    large = Arrays(size=1 << 18, infra=infra)  # 2 MiB of float64
    computed = large.process()
    assert computed.shape == (1 << 18,)
    loaded = large.process()
    assert isinstance(loaded, np.memmap)
    assert not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, np.arange(1 << 18, dtype=np.float64))


# # # damaged or disagreeing caches # # #


def test_corrupt_result_warns_and_recomputes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    task = Task(param=12 + 1, counter=str(counter), infra=infra)
    task.process()
    folder = task.process.folder()
    assert folder is not None
    (folder / "result.pkl").write_bytes(b"\x80\x05 not a pickle")
    with pytest.warns(xl.CorruptCacheWarning, match="result.pkl"):
        out = task.process()
    assert count(counter) == 2
    with open(folder / "result.pkl", "rb") as f:
        assert pickle.load(f) == out  # rewritten
    np_task = Arrays(size=5, counter=str(counter), infra=infra)
    np_task.process()
    npy = np_task.process.folder() / "result.npy"  # type: ignore[operator]
    npy.write_bytes(npy.read_bytes()[:20])  # truncated
    with pytest.warns(xl.CorruptCacheWarning, match="result.npy"):
        np.testing.assert_array_equal(np_task.process(), np.arange(5))
    assert count(counter) == 4


def test_corrupt_job_record_warns_and_recomputes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    task = Task(
        param=14, counter=str(counter), infra=xl.TaskInfra(folder=tmp_path, cluster="debug")
    )
    folder = task.process.folder()
    assert folder is not None
    folder.mkdir(parents=True)
    (folder / "job.pkl").write_bytes(b"garbage")
    with pytest.warns(xl.CorruptCacheWarning, match="job.pkl"):
        out = task.process()
    assert isinstance(out, float) and count(counter) == 1


def test_disagreeing_stored_config_is_a_uid_mismatch(tmp_path: Path) -> None:
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    task = Versioned(x=0, infra=infra)
    assert task.process() == 1
    folder = task.process.folder()
    assert folder is not None
    # as if the default of x had been 5 when the cache was written
    config = json.loads((folder / "config.json").read_text())
    config["x"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(xl.UidMismatchError, match=r"x: stored 5, now 0"):
        Versioned(x=0, infra=infra).process()
    # infra fields may differ: they never count
    config["x"] = 0
    config["infra"]["cluster"] = "local"
    (folder / "config.json").write_text(json.dumps(config))
    assert Versioned(x=0, infra=infra).process() == 1
    # a uid.json that disagrees
    (folder / "uid.json").write_text('{"x": 3}')
    with pytest.raises(xl.UidMismatchError, match="uid"):
        Versioned(x=0, infra=infra).process()


# # # infra checks and default heritage # # #


@dataclasses.dataclass(frozen=True)
class OnDebug:
    """The class says how its task runs (cluster), each instance where it is cached (folder)."""

    x: int = 1
    infra: xl.TaskInfra = xl.TaskInfra(cluster="debug", version="2")

    @infra.apply
    def process(self) -> int:
        return self.x * 10


def test_submitit_cluster_needs_a_folder_once_completed(tmp_path: Path) -> None:
    for cluster in ("local", "debug", "slurm", "auto"):
        infra = xl.TaskInfra(cluster=cluster)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs a folder"):
            Task(infra=infra).process()
    with pytest.raises(ValueError, match=r"OnDebug\.process: TaskInfra\(cluster='debug'\) needs"):
        OnDebug().process()  # nothing gave it a folder
    assert OnDebug().process.uid() == OnDebug(infra=xl.TaskInfra(folder=tmp_path)).process.uid()
    task = OnDebug(x=3, infra=xl.TaskInfra(folder=tmp_path))
    assert task.process.infra.cluster == "debug"  # completed by the class default
    assert task.process() == 30
    assert task.process.status() == "completed"
    assert (tmp_path / task.process.uid()).is_dir()


@pytest.mark.parametrize(
    ("kwargs", "choices"),
    [
        ({"cluster": "locall"}, ["'local'", "'slurm'", "'debug'", "'auto'"]),
        ({"mode": "cache"}, ["'cached'", "'retry'", "'force'", "'read-only'"]),
    ],
)
def test_unknown_cluster_or_mode_lists_valid_choices(
    kwargs: dict[str, str], choices: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as info:
        xl.TaskInfra(folder=tmp_path, **kwargs)  # type: ignore[arg-type]
    for choice in choices:
        assert choice in str(info.value)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_method_with_arguments_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match=r"takes only self"):

        @dataclasses.dataclass(frozen=True)
        class WithArgs:
            infra: xl.TaskInfra = xl.TaskInfra()

            @infra.apply  # type: ignore[arg-type]
            def process(self, x: int) -> int:
                return x

    with pytest.raises(TypeError, match=r"takes only self"):
        xl.TaskInfra().apply(lambda: 1)  # type: ignore[arg-type]


def test_infra_must_be_a_field_default() -> None:
    infra = xl.TaskInfra()

    @dataclasses.dataclass(frozen=True)
    class Elsewhere:
        x: int = 0

        @infra.apply
        def process(self) -> int:
            return self.x

    with pytest.raises(TypeError, match="default of one of its dataclass fields"):
        Elsewhere().process()


def test_default_heritage(tmp_path: Path) -> None:
    inherited = Versioned(infra=xl.TaskInfra(folder=tmp_path)).process
    assert inherited.infra.version == "1" and inherited.infra.cpus_per_task == 3
    assert inherited.infra.folder == tmp_path
    assert ",1/" in inherited.uid()
    explicit = Versioned(
        infra=xl.TaskInfra(folder=tmp_path, version="0", cpus_per_task=None)
    ).process
    assert explicit.infra.version == "0" and explicit.infra.cpus_per_task is None
    assert ",0/" in explicit.uid()
    # positional arguments count as set, and replace keeps what was set
    positional = Versioned(infra=xl.TaskInfra(tmp_path)).process
    assert positional.infra.folder == tmp_path and positional.infra.version == "1"
    replaced = dataclasses.replace(xl.TaskInfra(folder=tmp_path), mode="force")
    derived = Versioned(infra=replaced).process.infra
    assert derived.version == "1" and derived.mode == "force" and derived.folder == tmp_path
    # the class default itself
    assert Versioned().process.infra.version == "1"


# # # processes # # #


@pytest.mark.parametrize("cluster", [None, "local"])
def test_two_processes_compute_once(
    cluster: str | None, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    counter = tmp_path / "counter"
    script = (
        "import exca_lite as xl, task_defs as d\n"
        f"infra = xl.TaskInfra(folder={str(tmp_path / 'cache')!r}, cluster={cluster!r})\n"
        f"print(repr(d.Task(param=15, counter={str(counter)!r}, sleep_s=1.0, infra=infra).process()))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    results = {float(out.strip()) for out, _ in outs}
    assert len(results) == 1
    assert count(counter) == 1


def test_two_threads_compute_once(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    tasks = [Task(param=20, counter=str(counter), sleep_s=0.5, infra=infra) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: t.process(), tasks))
    assert results[0] == results[1]
    assert count(counter) == 1


def test_import_does_not_import_submitit(subprocess_env: dict[str, str]) -> None:
    script = (
        "import sys, exca_lite as xl, task_defs as d\n"
        "d.Task(param=16).process()\n"
        "assert 'submitit' not in sys.modules, 'submitit imported'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_bound_task_pickles_with_its_owner(tmp_path: Path) -> None:
    task = Task(param=17, infra=xl.TaskInfra(folder=tmp_path))
    out = task.process()
    clone = pickle.loads(pickle.dumps(task))
    assert clone == task
    assert clone.process.uid() == task.process.uid()
    assert clone.process() == out


def test_cache_hits_never_resubmit(tmp_path: Path) -> None:
    task = Task(param=18, infra=xl.TaskInfra(folder=tmp_path, cluster="local", keep_in_ram=False))
    out = task.process()
    folder = task.process.folder()
    assert folder is not None
    job_record = (folder / "job.pkl").read_bytes()
    for _ in range(5):
        assert task.process() == out
        assert Task(param=18, infra=task.infra).process() == out
    assert (folder / "job.pkl").read_bytes() == job_record


def test_job_record_of_a_reused_pid_is_not_waited_for(tmp_path: Path) -> None:
    """A job.pkl naming a pid now used by an unrelated live process: that job is gone (a failure
    without an outcome), not a job to wait for until the stranger exits."""
    import submitit

    counter = tmp_path / "counter"
    infra = xl.TaskInfra(folder=tmp_path, cluster="local")
    task = Task(param=19, counter=str(counter), infra=infra)
    folder = task.process.folder()
    assert folder is not None
    folder.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as stranger:
        try:
            record = submitit.LocalJob(folder=tmp_path / "old_logs", job_id=str(stranger.pid))
            (folder / "job.pkl").write_bytes(pickle.dumps(record))
            del record
            assert task.process.status() == "failed"
            with pytest.raises(xl.JobError, match="ended without writing a result"):
                task.process()
            retried = Task(
                param=19, counter=str(counter), infra=dataclasses.replace(infra, mode="retry")
            )
            assert isinstance(retried.process(), float)
            assert count(counter) == 1
            assert stranger.poll() is None  # still running: nothing waited for it
        finally:
            stranger.kill()


# # # issue 14 # # #


@pytest.mark.parametrize("with_folder", [False, True])
def test_case6_an_override_calling_super_gets_its_own_value_every_call(
    tmp_path: Path, with_folder: bool
) -> None:
    from uid_defs import Base, Redecorated, SuperOverride

    infra = xl.TaskInfra(folder=tmp_path if with_folder else None)
    child = SuperOverride(k=2, infra=infra)
    assert [child.process() for _ in range(3)] == [21, 21, 21]
    assert Base(k=2, infra=infra).process() == 20
    redecorated = Redecorated(k=2, infra=infra)
    assert [redecorated.process() for _ in range(3)] == [22, 22, 22]
    # the override and the method it overrides have a cache each
    assert redecorated.process.uid().startswith("uid_defs.Redecorated.process,1/k=2-")
    parent = Base.process.__get__(redecorated)
    assert parent.uid().startswith("uid_defs.Redecorated.process@Base,1/k=2-")
    assert parent() == 20
    # a fresh object (as in a new process) reads both back
    again = Redecorated(k=2, infra=infra)
    assert again.process() == 22
    # and so does an unpickled one
    clone = pickle.loads(pickle.dumps(redecorated))
    assert clone.process() == 22 and Base.process.__get__(clone)() == 20


def test_case6_overridden_method_runs_in_a_subprocess_job(tmp_path: Path) -> None:
    from uid_defs import Redecorated

    task = Redecorated(k=3, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    assert task.process() == 32


def _redefined(default: int) -> type:
    """A class re-defined with another default, as a re-run notebook cell does."""

    @dataclasses.dataclass(frozen=True)
    class Cell:
        a: int = default
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply
        def process(self) -> int:
            return self.a * 100

    return Cell


def test_case7_a_ram_hit_never_contradicts_the_disk_check(tmp_path: Path) -> None:
    old, new = _redefined(1), _redefined(2)
    assert old().process.uid() == new().process.uid()
    assert old(infra=xl.TaskInfra(folder=tmp_path)).process() == 100
    with pytest.raises(xl.UidMismatchError, match="a: stored 1, now 2"):
        new(infra=xl.TaskInfra(folder=tmp_path)).process()
    # as a fresh process does (no RAM copy)
    with pytest.raises(xl.UidMismatchError, match="a: stored 1, now 2"):
        new(infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False)).process()
    # the old class still gets its result
    assert old(infra=xl.TaskInfra(folder=tmp_path)).process() == 100


def _redefined_dict(default: dict[str, tp.Any]) -> type:
    """A class re-defined with another dict default (a key added or removed)."""

    @dataclasses.dataclass(frozen=True)
    class Augmented:
        augment: dict[str, tp.Any] = dataclasses.field(default_factory=lambda: dict(default))
        nested: tuple[dict[str, int], ...] = ({"a": 1},)
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply
        def process(self) -> list[str]:
            return sorted(self.augment)

    return Augmented


def test_case7_a_key_added_to_or_removed_from_a_dict_default_is_a_different_config(
    tmp_path: Path,
) -> None:
    """Keys of a dict value are data, not fields: unlike a new field (tolerated, so that adding
    a field keeps old caches), a changed dict default is refused, never served stale."""
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    assert _redefined_dict({"flip": 0.5})(infra=infra).process() == ["flip"]
    for changed, why in (({"flip": 0.5, "crop": 0.9}, "crop"), ({}, "flip")):
        with pytest.raises(xl.UidMismatchError, match=rf"augment\['{why}'\]"):
            _redefined_dict(changed)(infra=infra).process()
    assert _redefined_dict({"flip": 0.5})(infra=infra).process() == ["flip"]  # unchanged: a hit


def test_case7_without_folder_a_changed_default_recomputes() -> None:
    old, new = _redefined(1), _redefined(2)
    first = old()
    assert first.process() == 100
    assert new().process() == 200
    assert first.process() == 100
    assert old().process() == 100  # a fresh object of the old class: its own RAM copy is back


def test_case10_a_damaged_uid_json_is_rewritten(tmp_path: Path) -> None:
    task = Task(param=4, infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False))
    value = task.process()
    folder = task.process.folder()
    assert folder is not None
    good_uid = (folder / "uid.json").read_bytes()
    good_config = json.loads((folder / "config.json").read_text())
    (folder / "uid.json").write_text("{not json")
    (folder / "config.json").write_text("[")
    fresh = Task(param=4, infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False))
    with pytest.warns(xl.CorruptCacheWarning, match="uid.json.*rewritten") as caught:
        assert fresh.process() == value
    assert any("config.json" in str(w.message) for w in caught)
    assert (folder / "uid.json").read_bytes() == good_uid
    assert json.loads((folder / "config.json").read_text()) == good_config
    # the check is on again: a later object gets no warning (warnings are errors here)
    assert Task(param=4, infra=xl.TaskInfra(folder=tmp_path)).process() == value


def test_case10_read_only_mode_reports_but_never_rewrites(tmp_path: Path) -> None:
    task = Task(param=4, infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False))
    value = task.process()
    folder = task.process.folder()
    assert folder is not None
    (folder / "uid.json").write_text("{not json")
    reader = Task(param=4, infra=xl.TaskInfra(folder=tmp_path, mode="read-only"))
    with pytest.warns(xl.CorruptCacheWarning, match="read-only"):
        assert reader.process() == value
    assert (folder / "uid.json").read_text() == "{not json"


def test_inline_job_has_exception_like_submitit(tmp_path: Path) -> None:
    job = Failing(infra=xl.TaskInfra(folder=tmp_path)).process.job()
    error = job.exception()
    assert isinstance(error, Exception) and "boom" in str(error)
    assert job.done()
    ok = Task(param=1).process.job()
    assert ok.exception() is None
    assert ok.result() == Task(param=1).process()


@pytest.mark.parametrize(
    "value",
    [
        np.arange(256, dtype=np.float32),
        np.asfortranarray(np.arange(12).reshape(3, 4)),
        np.array(3.5),
        np.zeros((0, 3)),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.arange(5, dtype=">i2"),
    ],
)
def test_a_small_array_result_reads_back_as_np_load_gives_it(tmp_path: Path, value: tp.Any) -> None:
    from exca_lite import taskcache

    path = tmp_path / "result.npy"
    np.save(path, value)
    for _ in range(2):  # the second read takes the parsed header from the cache
        got = taskcache.load_result(taskcache.TaskPaths(tmp_path))
        ref = np.load(path)
        assert got.dtype == ref.dtype and got.shape == ref.shape and got.flags.writeable
        assert got.flags.f_contiguous == ref.flags.f_contiguous
        np.testing.assert_array_equal(got, ref)


# # # a submitted job is the one computing its task, for every object of every process # # #


def test_force_with_a_submitted_job_never_serves_the_old_ram_copy(tmp_path: Path) -> None:
    counter, gate = tmp_path / "counter", tmp_path / "gate"
    folder = tmp_path / "cache"
    gate.touch()
    old = Gated(gate=str(gate), counter=str(counter), infra=xl.TaskInfra(folder=folder)).process()
    gate.unlink()
    forced = Gated(
        gate=str(gate),
        counter=str(counter),
        infra=xl.TaskInfra(folder=folder, cluster="local", mode="force"),
    )
    job = forced.process.job()
    # the old result is gone from the folder and from RAM while the forced job runs
    plain = Gated(gate=str(gate), infra=xl.TaskInfra(folder=folder, cluster="local"))
    assert plain.process.status() == "running"
    gate.touch()
    new = forced.process()  # waits for the job
    assert new != old and job.result() == new
    assert plain.process() == new  # another object of this process: not the old RAM copy
    assert forced.process() == new  # forced once per object
    assert count(counter) == 2


def _wait_started(counter: Path, times: int = 1) -> None:
    deadline = time.monotonic() + 60  # a generous bound: the job starts in well under a second
    while count(counter) < times and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count(counter) == times


def test_a_job_finishing_after_a_clear_caches_nothing(tmp_path: Path) -> None:
    """clear() while a job runs (the code changed, say): the job's outcome, computed by the
    code just cleared, is not cached when it ends; a caller waiting for that job is told, and
    the next call computes anew."""
    counter, gate = tmp_path / "counter", tmp_path / "gate"
    infra = xl.TaskInfra(folder=tmp_path / "cache", cluster="local")
    task = Gated(gate=str(gate), counter=str(counter), infra=infra)
    folder = task.process.folder()
    assert folder is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(task.process)  # submits, then waits for its job
        _wait_started(counter)
        job = task_module._JOBS[task.process.uid()]
        task.process.clear()
        assert task.process.status() == "not submitted"
        gate.touch()
        with pytest.raises(xl.JobError, match="cleared while its job"):
            waiting.result(timeout=60)
    job.wait()
    assert not {"result.pkl", "result.npy", "error.json", "job.pkl"} & _files(folder)
    assert "was cleared" in job.stderr()
    assert task.process.status() == "not submitted"
    again = task.process()
    assert count(counter) == 2 and task.process.status() == "completed"
    assert (
        Gated(infra=xl.TaskInfra(folder=tmp_path / "cache", keep_in_ram=False)).process() == again
    )


def test_a_forced_job_supersedes_the_one_a_call_waits_for(tmp_path: Path) -> None:
    """A call waits for job 1; another forces the task (job 2) meanwhile: job 1 caches nothing
    when it ends, the waiting call goes on waiting for job 2 (never caches job 1's end as a
    death), and both calls return job 2's result."""
    counter, folder = tmp_path / "counter", tmp_path / "cache"
    gates = [tmp_path / "gate1", tmp_path / "gate2"]  # the gate is not part of the uid

    def task(mode: str, gate: Path) -> Gated:
        infra = xl.TaskInfra(folder=folder, cluster="local", mode=tp.cast(tp.Any, mode))
        return Gated(gate=str(gate), counter=str(counter), infra=infra)

    uid = task("cached", gates[0]).process.uid()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(task("cached", gates[0]).process)
        _wait_started(counter)
        first_job = task_module._JOBS[uid]
        forcing = pool.submit(task("force", gates[1]).process)
        _wait_started(counter, 2)
        gates[0].touch()
        first_job.wait()  # ended, superseded: nothing written
        folder_files = _files(tp.cast(Path, task("cached", gates[0]).process.folder()))
        assert not {"result.pkl", "error.json"} & folder_files
        assert not waiting.done() or waiting.exception() is None
        gates[1].touch()
        first, second = waiting.result(timeout=60), forcing.result(timeout=60)
    cached = Gated(infra=xl.TaskInfra(folder=folder, keep_in_ram=False)).process()
    assert first == second == cached
    assert task("cached", gates[0]).process.status() == "completed" and count(counter) == 2
    assert "was cleared (or computed anew)" in first_job.stderr()


def test_a_call_computing_here_while_cleared_returns_its_value_uncached(tmp_path: Path) -> None:
    """cluster=None: a clear while the call computes (from another object, another process, or
    the CLI with --force) leaves nothing cached; the call still gets the value it computed."""
    counter, gate = tmp_path / "counter", tmp_path / "gate"
    infra = xl.TaskInfra(folder=tmp_path / "cache")
    task = Gated(gate=str(gate), counter=str(counter), infra=infra)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        computing = pool.submit(task.process)
        _wait_started(counter)
        Gated(infra=xl.TaskInfra(folder=tmp_path / "cache")).process.clear()
        gate.touch()
        value = computing.result(timeout=60)
    assert isinstance(value, float)
    assert task.process.status() == "not submitted"
    assert task.process() != value and count(counter) == 2  # computed anew, then cached
    assert task.process.status() == "completed"


def test_cluster_none_waits_for_a_job_another_process_submitted(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    counter, gate = tmp_path / "counter", tmp_path / "gate"
    folder = tmp_path / "cache"
    script = (
        "import exca_lite as xl, task_defs as d\n"
        f"infra = xl.TaskInfra(folder={str(folder)!r}, cluster='local')\n"
        f"d.Gated(gate={str(gate)!r}, counter={str(counter)!r}, infra=infra).process.job()\n"
    )
    log = tmp_path / "submit.log"
    with log.open("w") as out:  # not a pipe: the job inherits it and outlives the submitter
        submit = subprocess.run(
            [sys.executable, "-c", script], env=subprocess_env, stdout=out, stderr=out, timeout=60
        )
    assert submit.returncode == 0, log.read_text()
    # the submitting process has exited; its job runs (held by the closed gate)
    reader = Gated(gate=str(gate), counter=str(counter), infra=xl.TaskInfra(folder=folder))
    assert reader.process.status() == "running"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(reader.process)
        uid = reader.process.uid()
        # the reader either adopts the recorded job (the fix) or runs the method itself (a
        # second line in the counter): wait for whichever happens first
        while uid not in task_module._JOBS and count(counter) < 2 and not future.done():
            time.sleep(0.01)
        assert count(counter) <= 1
        gate.touch()
        result = future.result(timeout=60)
    assert count(counter) == 1
    assert reader.process.status() == "completed"
    assert Gated(infra=xl.TaskInfra(folder=folder, keep_in_ram=False)).process() == result


@pytest.mark.parametrize("kind", ["masked", "record", "memmap"])
def test_array_subclass_results_come_back_as_their_class(tmp_path: Path, kind: str) -> None:
    infra = xl.TaskInfra(folder=tmp_path / "cache", keep_in_ram=False)
    task = ArraySubclass(kind=kind, folder=str(tmp_path), infra=infra)
    first, again = task.process(), task.process()
    for got in (first, again):
        if kind == "masked":
            assert isinstance(got, np.ma.MaskedArray) and got.mask.tolist() == [False, True, False]
            assert float(got.sum()) == 4.0
        elif kind == "record":
            assert isinstance(got, np.recarray) and got.b.tolist() == [1.0, 1.0, 1.0]
        else:
            assert got.tolist() == [7.0, 7.0, 7.0]
    assert task.process.status() == "completed"


def test_a_subclass_redeclaring_the_infra_field_bumps_the_inherited_version(
    tmp_path: Path,
) -> None:
    from uid_defs import Base, Bumped, BumpedOverride

    infra = xl.TaskInfra(folder=tmp_path)
    assert Base(k=2, infra=infra).process.uid().startswith("uid_defs.Base.process,1/")
    bumped = Bumped(k=2, infra=infra)  # the caller's infra sets no version: the subclass's counts
    assert bumped.process.uid().startswith("uid_defs.Bumped.process,2/")
    assert bumped.process() == 20
    assert Bumped(k=2).process.uid().startswith("uid_defs.Bumped.process,2/")
    assert (
        Bumped(k=2, infra=xl.TaskInfra(version="7"))
        .process.uid()
        .startswith("uid_defs.Bumped.process,7/")
    )
    override = BumpedOverride(k=2, infra=infra)
    assert override.process() == 23
    assert override.process.uid().startswith("uid_defs.BumpedOverride.process,3/")
    parent = Base.process.__get__(override)
    assert parent.uid().startswith("uid_defs.BumpedOverride.process@Base,3/")


def test_clear_in_read_only_mode_is_refused_not_ignored(tmp_path: Path) -> None:
    from map_defs import Featurizer

    task = Task(param=31, infra=xl.TaskInfra(folder=tmp_path))
    value = task.process()
    reader = Task(param=31, infra=xl.TaskInfra(folder=tmp_path, mode="read-only"))
    with pytest.raises(ValueError, match=r"read-only.*exca-lite clear"):
        reader.process.clear()
    assert reader.process() == value and task.process.status() == "completed"
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path))
    feat.embed.compute(["a", "bb"])
    frozen = Featurizer(infra=xl.MapInfra(folder=tmp_path, mode="read-only"))
    with pytest.raises(ValueError, match="read-only"):
        frozen.embed.clear()
    assert sorted(frozen.embed.cached_uids()) == ["a", "bb"]


def test_a_result_that_cannot_be_saved_is_a_cached_failure(tmp_path: Path) -> None:
    from task_defs import Unpicklable

    counter = tmp_path / "counter"
    task = Unpicklable(counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(TypeError, match="pickle"):
        task.process()
    assert task.process.status() == "failed"
    again = Unpicklable(counter=str(counter), infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(xl.JobError, match="the result could not be saved"):
        again.process()  # as a local job's failure: cached, not computed again
    assert count(counter) == 1
