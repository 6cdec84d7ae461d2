"""Where computations run: submitit executors (local, debug, slurm, auto) behind one interface.

Everything about submitit lives here, imported only when a job is actually submitted, so that
``import exca_lite`` and cache hits never pay for it.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import logging
import math
import os
import pickle
import shlex
import threading
import typing as tp
import warnings
from pathlib import Path

from .errors import CorruptCacheWarning
from .fsio import atomic_write

if tp.TYPE_CHECKING:
    import submitit


# infra field -> AutoExecutor parameter; only fields that are set (not None) are passed
_PARAMETERS = {
    "job_name": "name",
    "timeout_min": "timeout_min",
    "nodes": "nodes",
    "tasks_per_node": "tasks_per_node",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
    "mem_gb": "mem_gb",
    "slurm_partition": "slurm_partition",
    "slurm_constraint": "slurm_constraint",
    "slurm_account": "slurm_account",
    "slurm_qos": "slurm_qos",
    "slurm_additional_parameters": "slurm_additional_parameters",
    "slurm_setup": "slurm_setup",
    "slurm_use_srun": "slurm_use_srun",
}


class ExecutorSettings(tp.Protocol):
    """The infra fields an executor is built from (TaskInfra and MapInfra both have them)."""

    @property
    def folder(self) -> Path | str | None: ...
    @property
    def cluster(self) -> str | None: ...
    @property
    def logs(self) -> str: ...


def logs_folder(infra: ExecutorSettings) -> Path:
    """The submitit log folder: ``logs`` with ``{folder}`` and ``{user}`` filled in."""
    return Path(str(infra.logs).replace("{folder}", str(infra.folder)).replace("{user}", _user()))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return str(os.getuid())


def make_executor(infra: ExecutorSettings, default_name: str) -> submitit.AutoExecutor:
    """An AutoExecutor for the infra's cluster, given only the parameters the infra sets."""
    import submitit

    cluster = None if infra.cluster == "auto" else infra.cluster
    executor = submitit.AutoExecutor(folder=logs_folder(infra), cluster=cluster)
    params: dict[str, tp.Any] = {"name": default_name}
    for field, param in _PARAMETERS.items():
        value = getattr(infra, field)
        if value is None:  # unset; False is a choice (submitit's own default for use_srun is True)
            continue
        if field == "slurm_setup":
            value = list(value)
        params[param] = value
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    return executor


def is_alive(job: tp.Any) -> bool:
    """Whether a submitit job may still produce a result (pending or running)."""
    import submitit

    if isinstance(job, submitit.DebugJob):
        return False  # debug jobs run inside result() of the process that submitted them
    if isinstance(job, submitit.LocalJob):
        process = getattr(job, "_process", None)
        if process is not None:
            return bool(process.poll() is None)
        # record from another process: the job id is the pid of its controller process, which
        # must still be the controller of this job's folder (a pid reused by anything else, even
        # another submitit job, would be waited for in vain)
        pid = int(str(job.job_id).split("_")[0])
        return pid_is_alive(pid) and _runs_controller(pid, _job_folder(job))
    try:
        return not job.done(force_check=False)
    except Exception:  # the scheduler cannot tell (job too old for sacct): treat as gone
        return False


def save_job_record(path: Path, record: object) -> None:
    """Write a record of submitted jobs (submitit job objects, plain data) whole, for any process
    to find while the jobs run: the jobs outlive the process that submitted them."""
    atomic_write(path, pickle.dumps(record))


class _JobRecordUnpickler(pickle.Unpickler):
    """Builds only what a job record holds (submitit job classes, their paths, plain data), so
    that reading a record from a shared folder cannot run arbitrary code."""

    def find_class(self, module: str, name: str, /) -> tp.Any:
        if module.split(".")[0] in ("submitit", "pathlib"):
            import submitit
            from submitit.core.utils import JobPaths

            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(
                found, (submitit.core.core.Job, JobPaths, os.PathLike)
            ):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a submitit job record")


def load_job_record(path: str | Path) -> tp.Any:
    """The record at ``path``, or None if there is none; an unreadable one (garbage, truncated,
    a foreign class) is warned about and counts as none: there is no job to follow."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return _JobRecordUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        warnings.warn(
            f"unreadable job record {path} ({type(e).__name__}: {e}); ignored",
            CorruptCacheWarning,
            stacklevel=3,
        )
        return None


def pid_is_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(b")", 1)[-1].split()[0:1]
    return state not in ([b"Z"], [b"X"])


def _job_folder(job: tp.Any) -> str | None:
    """The folder a local job's controller was started with (its last argument), if known."""
    folder = getattr(getattr(job, "_paths", None), "_folder", None)
    return None if folder is None else str(folder)


def _runs_controller(pid: int, folder: str | None) -> bool:
    """Whether a live pid is a submitit local job controller of ``folder`` (any folder if None;
    True where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True
    if b"submitit" not in cmdline:
        return False
    if folder is None:
        return True
    # the controller runs `python -m submitit.local._local FOLDER`, inside `sh -c "... FOLDER"`
    # when the executor has setup commands: FOLDER is its last argument, compared whole
    args = cmdline.rstrip(b"\0").split(b"\0")
    last = args[-1].decode(errors="surrogateescape")
    if last == folder:
        return True
    try:
        return shlex.split(last)[-1:] == [folder]
    except ValueError:
        return False


def job_failure_text(job: tp.Any) -> str:
    """What is known of a job that ended without an outcome: its state and the tail of stderr."""
    parts = []
    try:
        parts.append(f"job state: {job.state}")
    except Exception:
        pass
    # the log files only: job.exception() would wait up to 15 s for a result file that a dead
    # job never writes
    for name in ("stderr", "stdout"):
        try:
            text = getattr(job, name)() or ""
        except Exception:
            continue
        if text.strip():
            parts.append(f"{name} tail:\n" + "\n".join(text.splitlines()[-30:]))
    return "\n".join(parts) or "no information from the scheduler"


def chunk_sizes(n_items: int, max_jobs: int, min_samples_per_job: int) -> list[int]:
    """Sizes of near-equal contiguous chunks: ``min(max_jobs, ceil(n / min_samples))`` jobs.

    Sizes differ by at most one and none is empty.
    """
    if n_items <= 0:
        return []
    n_jobs = max(1, min(max_jobs, math.ceil(n_items / max(1, min_samples_per_job)), n_items))
    base, extra = divmod(n_items, n_jobs)
    return [base + 1 if i < extra else base for i in range(n_jobs)]


PIECES_PER_WORKER = 8
PIECE_MIN_ITEMS = 32


def piece_size(n_items: int, workers: int, min_samples_per_job: int) -> int:
    """Items per piece when work is claimed piece by piece (inline and in pools): up to
    ``PIECES_PER_WORKER`` pieces per worker, so a process started later finds free pieces to
    share; at least ``min_samples_per_job`` and ``PIECE_MIN_ITEMS`` items each (a piece is one
    call of the method, with whatever setup it does), but never fewer pieces than workers."""
    floor = max(1, min_samples_per_job)
    size = max(PIECE_MIN_ITEMS, floor, math.ceil(n_items / (max(1, workers) * PIECES_PER_WORKER)))
    return max(1, min(size, max(floor, math.ceil(n_items / max(1, workers)))))


def chunks(items: tp.Sequence[tp.Any], sizes: list[int]) -> list[list[tp.Any]]:
    out = []
    start = 0
    for size in sizes:
        out.append(list(items[start : start + size]))
        start += size
    return out


_DEBUG_LOGS_LOCK = threading.Lock()
_debug_logs: set[str] = set()
_debug_depth = 0


@contextlib.contextmanager
def closing_debug_log_handlers(job: tp.Any) -> tp.Iterator[None]:
    """Close the log file handlers submitit's DebugJob adds to the root logger.

    submitit 1.5 removes them without closing them, and they are collected as soon as
    ``job.result()`` returns: a ResourceWarning per file (an error under ``-W error``). Closing them
    afterwards is too late, so ``removeHandler`` of the root logger is intercepted while debug jobs
    run (one interception however many threads run debug jobs; only their own log files are
    closed, and the logger is restored when the last one ends).
    """
    global _debug_depth
    logs = {os.path.abspath(job.paths.stdout), os.path.abspath(job.paths.stderr)}
    root = logging.getLogger()
    with _DEBUG_LOGS_LOCK:
        _debug_logs.update(logs)
        if _debug_depth == 0:
            remove = root.removeHandler

            def remove_and_close(handler: logging.Handler) -> None:
                remove(handler)
                if isinstance(handler, logging.FileHandler) and handler.baseFilename in _debug_logs:
                    handler.close()

            root.removeHandler = remove_and_close  # type: ignore[method-assign,assignment]
        _debug_depth += 1
    try:
        yield
    finally:
        with _DEBUG_LOGS_LOCK:
            _debug_depth -= 1
            _debug_logs.difference_update(logs)
            if _debug_depth == 0:
                del root.removeHandler


__all__ = [
    "closing_debug_log_handlers",
    "chunk_sizes",
    "chunks",
    "is_alive",
    "job_failure_text",
    "load_job_record",
    "logs_folder",
    "make_executor",
    "pid_is_alive",
    "piece_size",
    "save_job_record",
]
