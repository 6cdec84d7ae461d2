"""``@TaskInfra.apply``: one cached result per config, computed here or in a submitit job.

The descriptor (``TaskMethod``) lives on the class; ``task.process`` is a ``BoundTask`` stored in the
instance's ``__dict__`` on first access, holding everything recomputable (infra, uid, paths), so a
RAM hit is one attribute check and a disk hit opens one precomputed path.

Submission protocol (two processes calling the same task at once run it once): under the folder's
``task.lock`` a caller re-checks the disk, re-attaches to a live job found in ``job.pkl``, or submits
and records the job; it then waits outside the lock for the job to write its outcome into the folder.
The job writes the result (or the failure) itself: outcomes never travel back through submitit.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import time
import traceback
import typing as tp
from pathlib import Path

from .. import taskcache
from ..bound import BoundMethod, InfraMethod, find_method, refuse_read_only_clear
from ..errors import CacheMissError, JobError
from ..fsio import file_lock
from ..infra import IN_MEMORY_CLUSTERS
from ..store.locks import probe_lock
from ..taskcache import _MISSING, Failure, TaskPaths

if tp.TYPE_CHECKING:
    from .infra import TaskInfra

Own = tp.TypeVar("Own")
R = tp.TypeVar("R")

# results kept for the life of the process when keep_in_ram=True, keyed by cache folder (or by uid
# without a folder): the same config cached in two folders is two caches
# Each value is a list (a cell: [result, the bound object that filled it]) shared by every bound
# object of that key, so that one object's clear() empties what the others serve from RAM too.
# A bound object whose config disagrees with the filler's (same uid, another class default) gets
# a cell of its own: a RAM hit never serves what the disk check would refuse.
_RAM: dict[str, list[tp.Any]] = {}
# jobs submitted (or re-attached) by this process, keyed by uid
_JOBS: dict[str, tp.Any] = {}
_POLL_MAX_S = 0.2
# what _claim returns when the task must be run (or submitted) by its caller
SUBMIT: tp.Any = object()
# submitit jobs warn from __del__ when collected during interpreter teardown: drop them first
atexit.register(_JOBS.clear)


class TaskMethod(InfraMethod["BoundTask[tp.Any, tp.Any]"], tp.Generic[Own, R]):
    """The descriptor ``@infra.apply`` puts on the class."""

    def __init__(
        self, infra: TaskInfra, func: tp.Callable[[Own], R], exclude: tuple[str, ...]
    ) -> None:
        _check_takes_only_self(func)
        super().__init__(infra, func, exclude)

    def new_bound(self, obj: tp.Any) -> BoundTask[tp.Any, tp.Any]:
        return BoundTask(self, obj)

    @tp.overload
    def __get__(self, obj: None, objtype: type | None = None) -> TaskMethod[Own, R]: ...
    @tp.overload
    def __get__(self, obj: Own, objtype: type | None = None) -> BoundTask[Own, R]: ...

    def __get__(
        self, obj: Own | None, objtype: type | None = None
    ) -> TaskMethod[Own, R] | BoundTask[Own, R]:
        if obj is None:
            return self
        return tp.cast("BoundTask[Own, R]", self.bind(obj))


def _check_takes_only_self(func: tp.Callable[..., tp.Any]) -> None:
    """At decoration time: the bound task is called without arguments, so the method takes none."""
    name = getattr(func, "__qualname__", repr(func))
    if not callable(func):
        raise TypeError(f"TaskInfra.apply decorates a method, got {func!r}")
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # no signature to inspect (some builtins): let it be
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional or len(params) > 1:
        raise TypeError(
            f"{name}{inspect.signature(func)}: a TaskInfra method takes only self (its result is "
            "cached per config, so every input must be a field of the config): move the "
            "arguments into dataclass fields, or use MapInfra for a method over items"
        )


class BoundTask(BoundMethod, tp.Generic[Own, R]):
    """``task.process``: call it for the result; inspect and manage its cache."""

    _infra: TaskInfra

    def __init__(self, method: TaskMethod[Own, R], owner: Own) -> None:
        super().__init__(method, owner)
        # [result, the bound object that filled it], shared through _RAM by every bound object
        # of the same cache whose config agrees
        self._cell: list[tp.Any] = [_MISSING, self]
        self._replace_cell = False
        self._forced = False
        self._retried = False

    def __call__(self) -> R:
        result = self._cell[0]
        if result is not _MISSING:
            return tp.cast(R, result)
        return self._call()

    def _prepare_more(self) -> None:
        self._ram_key = self._uid if self._paths is None else self._paths.base

    @property
    def infra(self) -> TaskInfra:
        """The infra in effect: the instance's, completed by the class default."""
        self._prepare()
        return self._infra

    # # # the call # # #

    def _call(self) -> R:
        self._prepare_to_run()
        infra = self._infra
        force_now = infra.mode == "force" and not self._forced
        shared = _RAM.get(self._ram_key) if infra.keep_in_ram else None
        if shared is not None and not self._agrees_with(shared[1]):
            # filled for another config with this uid (a class re-defined with another default,
            # in a notebook): never served here; the disk check decides, as in a fresh process
            shared = None
            self._replace_cell = True
        if shared is not None and not force_now and shared[0] is not _MISSING:
            self._cell = shared
            return tp.cast(R, shared[0])
        if self._paths is None:
            if infra.mode == "read-only":
                raise CacheMissError(f"{self._uid}: not in RAM and no folder (mode='read-only')")
            self._forced = True
            result = self._method.func(self._owner)
        else:
            result = _MISSING if force_now else self._from_disk()
            if result is _MISSING:
                result = self._compute()
                if isinstance(result, _Uncached):  # nor kept in RAM: the next call computes
                    return tp.cast(R, result.value)
        if infra.keep_in_ram:
            cell = _RAM.get(self._ram_key)
            if cell is None or self._replace_cell:
                cell = _RAM[self._ram_key] = [_MISSING, self]
                self._replace_cell = False
            cell[0], cell[1] = result, self
            self._cell = cell
        return tp.cast(R, result)

    def _forget_job(self) -> None:
        """The outcome is on disk: the job this process submitted for it (``job_array``, ``job()``)
        is done with; a local one is waited for, as ``_wait`` does."""
        job = _JOBS.pop(self._uid, None)
        if job is not None:
            _let_local_job_exit(job)

    def _agrees_with(self, other: BoundTask[tp.Any, tp.Any]) -> bool:
        """Whether a RAM copy filled by ``other`` (same uid) may be served here: only if the two
        configs pass the check a cache folder's config.json gets."""
        if other is self or other._owner == self._owner:
            return True
        ignored, dicts = self._compared_paths()
        return not taskcache.config_diffs(
            other._check_config(), self._check_config(), ignored, dicts
        )

    def _from_disk(self) -> tp.Any:
        """The cached result; raises a cached failure; ``_MISSING`` when it must be computed."""
        paths = tp.cast(TaskPaths, self._paths)
        self._check_configs()
        result = taskcache.load_result(paths)
        if result is not _MISSING:
            if _JOBS:
                self._forget_job()
            return result
        failure = taskcache.load_failure(paths)
        if failure is not None and not (self._infra.mode == "retry" and not self._retried):
            if _JOBS:
                self._forget_job()
            raise failure.error()
        if self._infra.mode == "read-only":
            raise CacheMissError(
                f"{self._uid} is not cached in {paths.folder} and mode='read-only' never computes"
            )
        return _MISSING

    def _compute(self) -> tp.Any:
        paths = tp.cast(TaskPaths, self._paths)
        self._write_configs()
        with file_lock(Path(paths.lock)):
            job = self._claim_or_submit(paths)
            if isinstance(job, _Uncached):  # computed here, cleared meanwhile: not cached
                return job
            if job is None:  # computed inline, or found computed by another process meanwhile
                result = taskcache.load_result(paths)
                if result is not _MISSING:
                    return result
                failure = taskcache.load_failure(paths)
                raise (failure.error() if failure else RuntimeError(f"{self._uid}: no outcome"))
            # the token of the computation that job is (submissions write it under this lock)
            token = taskcache.current_submission(paths)
        return self._wait(job, paths, token)

    def _claim_or_submit(self, paths: TaskPaths) -> tp.Any:
        """Under the task lock: the live job to wait for, or None when the outcome is on disk."""
        claim = self._claim(paths)
        if claim is not SUBMIT:
            return claim
        if self._infra.cluster is None:
            token = taskcache.new_submission(paths)
            value = run_task_job(self._owner, self._ref, str(paths.folder), self._uid, True, token)
            # cleared (from the CLI with --force, or by another process) while computing here:
            # this call gets its value, the cache does not keep it
            return None if taskcache.is_current(paths, token) else _Uncached(value)
        return self._submit(paths)

    def _claim(self, paths: TaskPaths) -> tp.Any:
        """Under the task lock: None when the outcome is on disk, the live job computing it (this
        process's, or the one job.pkl records), else ``SUBMIT``: the caller must run it now
        (``job_array`` submits many at once, each under its lock)."""
        force_now = self._infra.mode == "force" and not self._forced
        retry_now = self._infra.mode == "retry" and not self._retried
        if force_now:
            self._clear_outcome(paths)
        elif taskcache.has_outcome(paths):
            failure = taskcache.load_failure(paths)
            if failure is not None and not retry_now:
                return None
            # a result written meanwhile by another process; an unreadable one (already reported
            # by _from_disk) is recomputed, not served as "no outcome"
            if failure is None and taskcache.load_result(paths, warn=False) is not _MISSING:
                return None
            self._clear_outcome(paths)
        self._forced = self._retried = True
        # a job recorded by any process (cluster=None included: a notebook reading a sweep that
        # is still running waits for its job instead of computing the task a second time)
        job = self._recorded_job(paths)
        if job is None:
            return SUBMIT
        if self._is_alive(job):
            return job
        if not taskcache.has_outcome(paths):
            # the recorded job died without an outcome (cancelled, killed, timed out): that is its
            # failure, cached like any other ("retry" resubmits), never silently resubmitted
            taskcache.save_failure(paths, self._death(job))
        _JOBS.pop(self._uid, None)
        return None

    def _clear_outcome(self, paths: TaskPaths) -> None:
        """Under the task lock: drop the outcome (forced or retried) on disk and in RAM, so that
        no object of this process serves the old result while the new one is computed."""
        taskcache.clear(paths)
        _JOBS.pop(self._uid, None)
        cell = _RAM.pop(self._ram_key, None)
        if cell is not None:
            cell[0] = _MISSING
        self._cell = [_MISSING, self]

    def _recorded_job(self, paths: TaskPaths) -> tp.Any:
        """The job of this process, else the one recorded in job.pkl (None if none)."""
        from ..execution import load_job_record

        job = _JOBS.get(self._uid)
        return load_job_record(paths.job) if job is None else job

    def _is_alive(self, job: tp.Any) -> bool:
        from ..execution import is_alive

        if is_alive(job):
            _JOBS[self._uid] = job
            return True
        return False

    def _death(self, job: tp.Any) -> Failure:
        """The failure of a job that ended without writing an outcome."""
        from ..execution import job_failure_text

        return Failure(
            uid=self._uid,
            type="JobDied",
            message=f"job {job.job_id} ended without writing a result",
            traceback=job_failure_text(job),
            job_id=str(job.job_id),
        )

    def _submit(self, paths: TaskPaths) -> tp.Any:
        from ..execution import make_executor

        executor = make_executor(self._infra, self.job_name())
        job = executor.submit(*self.job_call())
        self._record(job, executor.cluster)
        return job

    def job_name(self) -> str:
        """The name submitted jobs get: ``job_name``, else ``{Class}.{method}``."""
        return self._infra.job_name or f"{type(self._owner).__name__}.{self._method.name}"

    def job_call(self, copies: dict[tp.Any, tp.Any] | None = None) -> tuple[tp.Any, ...]:
        """What a job runs: ``run_task_job`` and its arguments (for ``executor.submit``), from a
        copy of the code when the infra has a ``workdir`` (``copies``: the calls of one
        submission share their copy, instead of hashing the code once per task)."""
        paths = tp.cast(TaskPaths, self._paths)
        token = taskcache.new_submission(paths)
        call = (run_task_job, self._owner, self._ref, str(paths.folder), self._uid, True, token)
        infra = self._infra
        if infra.workdir is None or infra.cluster in IN_MEMORY_CLUSTERS:
            return call
        from ..workdir import snapshot, snapshot_call

        key = (infra.workdir, str(infra.folder))
        copy = None if copies is None else copies.get(key)
        if copy is None:
            copy = snapshot(infra.workdir, tp.cast(Path, infra.folder))
            if copies is not None:
                copies[key] = copy
        return snapshot_call(copy, call)

    def _record(self, job: tp.Any, cluster: str) -> None:
        """Under the task lock, just submitted: record the job for every process to find."""
        from ..execution import save_job_record

        paths = tp.cast(TaskPaths, self._paths)
        if cluster != "debug":  # a debug job runs in this process: no record to share
            save_job_record(Path(paths.job), job)
        _JOBS[self._uid] = job
        _link_logs(paths, job)

    def _wait(self, job: tp.Any, paths: TaskPaths, token: str | None) -> tp.Any:
        """The outcome of ``job`` (the computation ``token`` names, None: one of an exca_lite
        before tokens), once on disk. A job superseded meanwhile writes nothing: then the
        computation that superseded it is waited for, or, if the task was cleared, a JobError
        says so; its end is never cached as a death."""
        import submitit

        from ..execution import closing_debug_log_handlers, is_alive

        if isinstance(job, submitit.DebugJob):
            with closing_debug_log_handlers(job):
                try:
                    job.result()  # runs the function here; its outcome is in the folder
                except Exception:
                    pass
        delay = 0.002
        while True:
            result = taskcache.load_result(paths)
            if result is not _MISSING:
                _let_local_job_exit(_JOBS.pop(self._uid, job))
                return result
            failure = taskcache.load_failure(paths)
            if failure is not None:
                _let_local_job_exit(_JOBS.pop(self._uid, job))
                raise failure.error()
            if not is_alive(job):
                # the outcome may have landed between the two checks
                if taskcache.has_outcome(paths):
                    continue
                if _JOBS.get(self._uid) is job:
                    _JOBS.pop(self._uid)
                if token is not None and not taskcache.is_current(paths, token):
                    # superseded while the job ran: it wrote nothing on purpose, and its end is
                    # no outcome to cache either
                    if taskcache.current_submission(paths) is not None:
                        return self._compute()  # forced or cleared and called again: that one
                    raise JobError(
                        f"{self._uid} was cleared while its job {job.job_id} ran: its outcome "
                        "was not cached; call again to compute it"
                    )
                failure = self._death(job)
                taskcache.save_failure(paths, failure)
                _JOBS.pop(self._uid, None)
                raise failure.error()
            time.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)

    # # # inspection # # #

    def status(self) -> tp.Literal["not submitted", "running", "completed", "failed"]:
        self._prepare()
        paths = self._paths
        if paths is None:
            cell = _RAM.get(self._ram_key)
            return "completed" if cell is not None and cell[0] is not _MISSING else "not submitted"
        if os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy):
            return "completed"
        if os.path.exists(paths.error):
            return "failed"
        if probe_lock(Path(paths.lock)):
            return "running"  # computed inline, or being submitted, by a live process
        job = self._recorded_job(paths)
        if job is None:
            return "not submitted"
        if self._is_alive(job):
            return "running"
        # ended: its outcome may have landed since the checks above; without one, it died
        if os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy):
            return "completed"
        return "failed"

    def iter_cached(self) -> tp.Iterator[Own]:
        """The owner of every cache of this method and version under ``folder``, rebuilt from its
        config.json with this owner's infra, whatever its other fields (the rows of a sweep's
        results table: ``run.lr``, ``run.process.status()``, ``run.process()``). Folders that
        are not readable caches of this class are skipped, with one warning naming them."""
        return iter(self._cached_owners())

    def job(self) -> tp.Any:
        """The submitit job computing this task (submitted now if needed, not waited for).

        With ``cluster=None`` (or an outcome already cached) a local job object is returned whose
        ``result()`` computes or loads in this process.
        """
        self._prepare_to_run()
        paths = self._paths
        if paths is None or self._infra.cluster is None or self._infra.mode == "read-only":
            return InlineJob(self)
        job = _JOBS.get(self._uid)
        if job is not None and not taskcache.has_outcome(paths):
            return job
        self._write_configs()
        with file_lock(Path(paths.lock)):
            job = self._claim_or_submit(paths)
        return job if job is not None else InlineJob(self)

    def clear(self) -> None:
        """Remove the cached result, failure and job record (and the RAM copy)."""
        self._prepare()
        refuse_read_only_clear(self._infra.mode, self._uid, self._paths)
        cell = _RAM.pop(self._ram_key, None)
        if cell is not None:
            cell[0] = _MISSING
        self._cell = [_MISSING, self]
        _JOBS.pop(self._uid, None)
        if self._paths is not None:
            taskcache.clear(self._paths)


class InlineJob(tp.Generic[R]):
    """A job-like handle for work done in this process: ``result()`` computes or loads.

    ``error``: the failure of a computation already done here that no folder caches (a task
    without a folder, run by ``job_array``): re-raised rather than computed again.
    """

    def __init__(self, bound: BoundTask[tp.Any, R], error: Exception | None = None) -> None:
        self._bound = bound
        self._error = error
        self.job_id = "inline"

    def result(self) -> R:
        if self._error is not None:
            raise self._error
        return self._bound()

    def wait(self) -> None:
        try:
            self.result()
        except Exception:  # as submitit's Job.wait(): waits, raises nothing
            pass

    def done(self) -> bool:
        if self._error is not None:
            return True
        return self._bound.status() in ("completed", "failed")

    def exception(self) -> BaseException | None:
        """The job's error (computing or loading first), or None if it succeeded, as submitit's
        ``Job.exception()``."""
        try:
            self.result()
        except Exception as e:
            return e
        return None


def _let_local_job_exit(job: tp.Any, timeout_s: float = 10.0) -> None:
    """Wait for a local job's process, which wrote the outcome and is only finishing up.

    Dropped while still running, its ``Popen`` warns (ResourceWarning) when collected; waiting a
    little is cheaper than keeping finished jobs around to reap later.
    """
    process = getattr(job, "_process", None)
    if process is None or not hasattr(process, "wait"):
        return
    try:
        process.wait(timeout=timeout_s)
    except Exception:  # still busy (threads left by the method?): let submitit handle it
        pass


def _link_logs(paths: TaskPaths, job: tp.Any) -> None:
    """A ``logs`` link in the cache folder to the job's log folder (best effort: links may fail)."""
    try:
        target = Path(job.paths.folder)
        tmp = Path(paths.logs + f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, paths.logs)
    except OSError:
        pass


class _Uncached(tp.NamedTuple):
    """The value a call computed here while its task was cleared: returned, not cached."""

    value: tp.Any


def _job_id() -> str:
    """The id of the job running here, as submitit and sacct name it (``{array}_{task}`` in an
    array task: its own SLURM_JOB_ID is a number no one else shows)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or ""


def run_task_job(
    owner: tp.Any,
    method_name: str,
    folder: str,
    uid: str = "",
    reraise: bool = True,
    submission: str = "",
) -> tp.Any:
    """What a job runs: compute the method and write its outcome into the cache folder itself,
    unless the task was cleared (or computed anew) meanwhile: ``submission`` is the token the
    submitter wrote (see ``taskcache.new_submission``; "" from exca_lite before it: unchecked)."""
    method = find_method(type(owner), method_name)
    paths = TaskPaths(Path(folder))
    try:
        value = method.func(owner)
    except Exception as e:
        if _superseded(paths, submission, uid or folder):
            raise
        return _cache_failure(paths, uid or folder, e, "", reraise)
    if _superseded(paths, submission, uid or folder):
        return value
    try:
        taskcache.save_result(paths, value)
    except OSError:
        raise  # the filesystem failed, not the task: nothing to cache
    except Exception as e:  # a result that cannot be pickled: as a local job's failure would be
        return _cache_failure(paths, uid or folder, e, "the result could not be saved: ", reraise)
    # returned too, so that job().result() gives the value (the caller itself reads the cache)
    return value


def _superseded(paths: TaskPaths, submission: str, uid: str) -> bool:
    """Whether this computation's outcome must not be written: its task was cleared (or forced,
    retried) while it ran. Said in the job's log, where its user looks for its outcome."""
    if not submission or taskcache.is_current(paths, submission):
        return False
    print(
        f"exca_lite: {uid} was cleared (or computed anew) while this job ran: its outcome is not "
        "cached",
        file=sys.stderr,
        flush=True,
    )
    return True


def _cache_failure(
    paths: TaskPaths, uid: str, error: Exception, prefix: str, reraise: bool
) -> None:
    """Write the failure of a task into its folder, then re-raise it (or return None)."""
    failure = Failure(
        uid=uid,
        type=type(error).__name__,
        message=prefix + str(error),
        traceback=traceback.format_exc(),
        job_id=_job_id(),
    )
    taskcache.save_failure(paths, failure)
    if reraise:
        raise error
    return None


__all__ = ["BoundTask", "InlineJob", "TaskMethod", "run_task_job"]
