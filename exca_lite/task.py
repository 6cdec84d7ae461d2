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
import dataclasses
import inspect
import os
import pickle
import time
import traceback
import typing as tp
import warnings
from pathlib import Path

from . import taskcache
from .config import InfraMarker, check_owner, field_infos, infra_plain, to_dict
from .errors import CacheMissError, ConfigError, CorruptCacheWarning
from .fsio import atomic_write, file_lock
from .taskcache import _MISSING, Failure, TaskPaths
from .uid import canonical_bytes, method_uid, uid_config

if tp.TYPE_CHECKING:
    from .infra import TaskInfra

Own = tp.TypeVar("Own")
R = tp.TypeVar("R")

# results kept for the life of the process when keep_in_ram=True, keyed by cache folder (or by uid
# without a folder): the same config cached in two folders is two caches
_RAM: dict[str, tp.Any] = {}
# jobs submitted (or re-attached) by this process, keyed by uid
_JOBS: dict[str, tp.Any] = {}
_POLL_MAX_S = 0.2
# submitit jobs warn from __del__ when collected during interpreter teardown: drop them first
atexit.register(_JOBS.clear)


class TaskMethod(tp.Generic[Own, R]):
    """The descriptor ``@infra.apply`` puts on the class."""

    def __init__(
        self, infra: TaskInfra, func: tp.Callable[[Own], R], exclude: tuple[str, ...]
    ) -> None:
        _check_takes_only_self(func)
        self.infra = infra
        self.func = func
        self.exclude = exclude
        self.name = getattr(func, "__name__", "method")
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        self._infra_field: dict[type, str] = {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @tp.overload
    def __get__(self, obj: None, objtype: type | None = None) -> TaskMethod[Own, R]: ...
    @tp.overload
    def __get__(self, obj: Own, objtype: type | None = None) -> BoundTask[Own, R]: ...

    def __get__(
        self, obj: Own | None, objtype: type | None = None
    ) -> TaskMethod[Own, R] | BoundTask[Own, R]:
        if obj is None:
            return self
        bound = BoundTask(self, obj)
        try:  # later accesses find it in the instance dict without calling __get__
            obj.__dict__[self.name] = bound
        except AttributeError:  # __slots__ class: no instance dict, bound objects are rebuilt
            pass
        return bound

    def infra_field(self, cls: type) -> str:
        """The name of the owner's field holding this method's infra (checked once per class)."""
        name = self._infra_field.get(cls)
        if name is None:
            check_owner(cls)
            for info in field_infos(cls):
                if info.default is self.infra:
                    name = info.name
                    break
            else:
                raise TypeError(
                    f"{cls.__qualname__}.{self.name}: the infra whose apply decorates it must be "
                    "the default of one of its dataclass fields (infra: TaskInfra = TaskInfra())"
                )
            for excluded in self.exclude:
                _check_excluded_name(cls, excluded, self.name)
            self._infra_field[cls] = name
        return name


def _check_excluded_name(cls: type, dotted: str, method: str) -> None:
    """A name in exclude_from_cache_uid must be a field (a typo would silently keep it in the uid).

    Nested parts are checked as far as the field defaults are dataclasses (a nested config that
    defaults to None cannot be checked further: its type is only an annotation).
    """
    klass: type | None = cls
    walked: list[str] = []
    for part in dotted.split("."):
        if klass is None:
            return
        infos = {info.name: info for info in field_infos(klass)}
        if part not in infos:
            where = ".".join(walked) or cls.__qualname__
            raise ConfigError(
                f"{cls.__qualname__}.{method}: exclude_from_cache_uid names {dotted!r}, but "
                f"{where} has no field {part!r}; its fields: {sorted(infos)}"
            )
        walked.append(part)
        default = infos[part].default
        is_config = dataclasses.is_dataclass(default) and not isinstance(default, type)
        klass = type(default) if is_config else None


def _infra_paths(value: tp.Any, path: str) -> set[str]:
    """Paths (as in config.json: ``sub.infra``, ``subs[0].infra``) of the infras in a config, at
    any depth: they never count, so a stored config.json may differ there."""
    if isinstance(value, InfraMarker):
        return {path}
    out: set[str] = set()
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            out |= _infra_paths(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            out |= _infra_paths(item, f"{path}.{key}" if path else str(key))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for info in field_infos(type(value)):
            where = f"{path}.{info.name}" if path else info.name
            out |= _infra_paths(getattr(value, info.name), where)
    return out


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


def _rebind(owner: tp.Any, name: str) -> BoundTask[tp.Any, tp.Any]:
    """Unpickle a bound task (it travels inside its owner's __dict__) without its caches."""
    method = _find_method(type(owner), name)
    return BoundTask(method, owner)


def _find_method(cls: type, name: str) -> TaskMethod[tp.Any, tp.Any]:
    for klass in cls.__mro__:
        method = klass.__dict__.get(name)
        if isinstance(method, TaskMethod):
            return method
    raise AttributeError(f"{cls.__qualname__} has no TaskInfra method {name!r}")


class BoundTask(tp.Generic[Own, R]):
    """``task.process``: call it for the result; inspect and manage its cache."""

    def __init__(self, method: TaskMethod[Own, R], owner: Own) -> None:
        self._method = method
        self._owner = owner
        self._result: tp.Any = _MISSING
        self._prepared = False
        self._checked = False
        self._forced = False
        self._retried = False

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (_rebind, (self._owner, self._method.name))

    def __repr__(self) -> str:
        return f"<bound task {type(self._owner).__qualname__}.{self._method.name}>"

    def __call__(self) -> R:
        result = self._result
        if result is not _MISSING:
            return tp.cast(R, result)
        return self._call()

    # # # derived state, computed once # # #

    def _prepare(self) -> None:
        if self._prepared:
            return
        method = self._method
        cls = type(self._owner)
        field = method.infra_field(cls)
        given = getattr(self._owner, field)
        if not isinstance(given, type(method.infra)):
            raise TypeError(
                f"{cls.__qualname__}.{field} must be a {type(method.infra).__name__}, got {given!r}"
            )
        self._infra: TaskInfra = given.merged_into(method.infra)
        self._uid_config = uid_config(self._owner, method.exclude)
        self._uid = method_uid(cls, method.name, self._infra.version, self._uid_config)
        folder = self._infra.folder
        self._paths = None if folder is None else TaskPaths(f"{folder}/{self._uid}")
        self._ram_key = self._uid if self._paths is None else self._paths.base
        self._prepared = True

    @property
    def infra(self) -> TaskInfra:
        """The infra in effect: the instance's, completed by the class default."""
        self._prepare()
        return self._infra

    def uid(self) -> str:
        self._prepare()
        return self._uid

    def folder(self) -> Path | None:
        self._prepare()
        return None if self._paths is None else self._paths.folder

    def config(self) -> dict[str, tp.Any]:
        """The uid config: the non-default fields the uid is computed from."""
        self._prepare()
        return dict(self._uid_config)

    # # # the call # # #

    def _call(self) -> R:
        self._prepare()
        infra = self._infra
        force_now = infra.mode == "force" and not self._forced
        if infra.keep_in_ram and not force_now:
            result = _RAM.get(self._ram_key, _MISSING)
            if result is not _MISSING:
                self._result = result
                return tp.cast(R, result)
        if self._paths is None:
            if infra.mode == "read-only":
                raise CacheMissError(f"{self._uid}: not in RAM and no folder (mode='read-only')")
            self._forced = True
            result = self._method.func(self._owner)
        else:
            result = _MISSING if force_now else self._from_disk()
            if result is _MISSING:
                result = self._compute()
        if infra.keep_in_ram:
            _RAM[self._ram_key] = result
            self._result = result
        return tp.cast(R, result)

    def _from_disk(self) -> tp.Any:
        """The cached result; raises a cached failure; ``_MISSING`` when it must be computed."""
        paths = tp.cast(TaskPaths, self._paths)
        if not self._checked:
            taskcache.check_configs(
                paths, self._uid, self._full_config(), self._uid_bytes(), self._ignored_fields()
            )
            self._checked = True
        result = taskcache.load_result(paths)
        if result is not _MISSING:
            return result
        failure = taskcache.load_failure(paths)
        if failure is not None and not (self._infra.mode == "retry" and not self._retried):
            raise failure.error()
        if self._infra.mode == "read-only":
            raise CacheMissError(
                f"{self._uid} is not cached in {paths.folder} and mode='read-only' never computes"
            )
        return _MISSING

    def _full_config(self) -> dict[str, tp.Any]:
        """The config for config.json: every field, and the infra in effect (heritage applied)."""
        full = to_dict(self._owner)
        full[self._method.infra_field(type(self._owner))] = infra_plain(self._infra)
        return full

    def _uid_bytes(self) -> bytes:
        return canonical_bytes(self._uid_config)

    def _ignored_fields(self) -> set[str]:
        return _infra_paths(self._owner, "") | set(self._method.exclude)

    def _compute(self) -> tp.Any:
        paths = tp.cast(TaskPaths, self._paths)
        paths.folder.mkdir(parents=True, exist_ok=True)
        taskcache.write_configs(paths, self._full_config(), self._uid_bytes())
        with file_lock(Path(paths.lock)):
            job = self._claim_or_submit(paths)
            if job is None:  # computed inline, or found computed by another process meanwhile
                result = taskcache.load_result(paths)
                if result is not _MISSING:
                    return result
                failure = taskcache.load_failure(paths)
                raise (failure.error() if failure else RuntimeError(f"{self._uid}: no outcome"))
        return self._wait(job, paths)

    def _claim_or_submit(self, paths: TaskPaths) -> tp.Any:
        """Under the task lock: the live job to wait for, or None when the outcome is on disk."""
        force_now = self._infra.mode == "force" and not self._forced
        retry_now = self._infra.mode == "retry" and not self._retried
        if force_now:
            taskcache.clear(paths)
            _JOBS.pop(self._uid, None)
        elif taskcache.has_outcome(paths):
            failure = taskcache.load_failure(paths)
            if failure is not None and not retry_now:
                return None
            # a result written meanwhile by another process; an unreadable one (already reported
            # by _from_disk) is recomputed, not served as "no outcome"
            if failure is None and taskcache.load_result(paths, warn=False) is not _MISSING:
                return None
            taskcache.clear(paths)
            _JOBS.pop(self._uid, None)
        self._forced = self._retried = True
        if self._infra.cluster is None:
            run_task_job(self._owner, self._method.name, str(paths.folder), self._uid)
            return None
        job = self._recorded_job(paths)
        if job is None:
            return self._submit(paths)
        if self._is_alive(job):
            return job
        if not taskcache.has_outcome(paths):
            # the recorded job died without an outcome (cancelled, killed, timed out): that is its
            # failure, cached like any other ("retry" resubmits), never silently resubmitted
            taskcache.save_failure(paths, self._death(job))
        _JOBS.pop(self._uid, None)
        return None

    def _recorded_job(self, paths: TaskPaths) -> tp.Any:
        """The job of this process, else the one recorded in job.pkl (None if none)."""
        job = _JOBS.get(self._uid)
        if job is None:
            try:
                with open(paths.job, "rb") as f:
                    job = pickle.load(f)
            except FileNotFoundError:
                return None
            except Exception as e:
                warnings.warn(
                    f"unreadable job record {paths.job} ({type(e).__name__}: {e}); ignored",
                    CorruptCacheWarning,
                    stacklevel=3,
                )
                return None
        return job

    def _is_alive(self, job: tp.Any) -> bool:
        from .execution import is_alive

        if is_alive(job):
            _JOBS[self._uid] = job
            return True
        return False

    def _death(self, job: tp.Any) -> Failure:
        """The failure of a job that ended without writing an outcome."""
        from .execution import job_failure_text

        return Failure(
            uid=self._uid,
            type="JobDied",
            message=f"job {job.job_id} ended without writing a result",
            traceback=job_failure_text(job),
            job_id=str(job.job_id),
        )

    def _submit(self, paths: TaskPaths) -> tp.Any:
        from .execution import make_executor

        name = self._infra.job_name or f"{type(self._owner).__name__}.{self._method.name}"
        executor = make_executor(self._infra, name)
        job = executor.submit(
            run_task_job, self._owner, self._method.name, str(paths.folder), self._uid
        )
        atomic_write(Path(paths.job), pickle.dumps(job))
        _JOBS[self._uid] = job
        _link_logs(paths, job)
        return job

    def _wait(self, job: tp.Any, paths: TaskPaths) -> tp.Any:
        import submitit

        from .execution import closing_debug_log_handlers, is_alive

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
            return "completed" if self._ram_key in _RAM else "not submitted"
        if os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy):
            return "completed"
        if os.path.exists(paths.error):
            return "failed"
        job = None if self._infra.cluster is None else self._recorded_job(paths)
        if job is None:
            return "not submitted"
        if self._is_alive(job):
            return "running"
        # ended: its outcome may have landed since the checks above; without one, it died
        if os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy):
            return "completed"
        return "failed"

    def job(self) -> tp.Any:
        """The submitit job computing this task (submitted now if needed, not waited for).

        With ``cluster=None`` (or an outcome already cached) a local job object is returned whose
        ``result()`` computes or loads in this process.
        """
        self._prepare()
        paths = self._paths
        if paths is None or self._infra.cluster is None or self._infra.mode == "read-only":
            return InlineJob(self)
        job = _JOBS.get(self._uid)
        if job is not None:
            return job
        paths.folder.mkdir(parents=True, exist_ok=True)
        taskcache.write_configs(paths, self._full_config(), self._uid_bytes())
        with file_lock(Path(paths.lock)):
            job = self._claim_or_submit(paths)
        return job if job is not None else InlineJob(self)

    def clear(self) -> None:
        """Remove the cached result, failure and job record (and the RAM copy)."""
        self._prepare()
        _RAM.pop(self._ram_key, None)
        _JOBS.pop(self._uid, None)
        self._result = _MISSING
        if self._paths is not None and self._infra.mode != "read-only":
            taskcache.clear(self._paths)


class InlineJob(tp.Generic[R]):
    """A job-like handle for work done in this process: ``result()`` computes or loads."""

    def __init__(self, bound: BoundTask[tp.Any, R]) -> None:
        self._bound = bound
        self.job_id = "inline"

    def result(self) -> R:
        return self._bound()

    def wait(self) -> None:
        self._bound()

    def done(self) -> bool:
        return self._bound.status() in ("completed", "failed")


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


def run_task_job(
    owner: tp.Any, method_name: str, folder: str, uid: str = "", reraise: bool = True
) -> None:
    """What a job runs: compute the method and write its outcome into the cache folder itself."""
    method = _find_method(type(owner), method_name)
    paths = TaskPaths(Path(folder))
    try:
        value = method.func(owner)
    except Exception as e:
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or ""
        failure = Failure(
            uid=uid or folder,
            type=type(e).__name__,
            message=str(e),
            traceback=traceback.format_exc(),
            job_id=job_id,
        )
        taskcache.save_failure(paths, failure)
        if reraise:
            raise
        return
    taskcache.save_result(paths, value)


__all__ = ["BoundTask", "InlineJob", "TaskMethod", "run_task_job"]
