"""``xl.job_array``: a sweep of task configs submitted as one submitit job array.

Each task goes through the submission protocol of a single task (``method.py``): under its
``task.lock`` the disk is re-checked, a live job recorded in ``job.pkl`` is re-attached to, and only
tasks with neither an outcome nor a live job are submitted, their job records written before the
locks are released. The difference is that the locks of the whole sweep are held together, so that
every task to submit goes into one ``executor.batch()`` (one array per distinct executor setting).
They are taken in the order of their paths: two sweeps sharing configs, started at once, cannot
each hold a lock the other waits for. (Holding one lock at a time and submitting afterwards was
rejected: another process could submit the same task in between, and it would run twice.)

The method machinery (numpy, submitit) is imported when the function runs, not with this module:
``import exca_lite`` exports ``job_array`` and stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing as tp
from pathlib import Path

from ..fsio import file_lock

if tp.TYPE_CHECKING:
    from .method import BoundTask

logger = logging.getLogger("exca_lite")

R = tp.TypeVar("R")
R_co = tp.TypeVar("R_co", covariant=True)

# clusters whose jobs run in this process: job_array runs their tasks one after the other
_IN_PROCESS = (None, "debug")


class TaskJob(tp.Protocol[R_co]):
    """What ``job_array`` returns per task: a submitit job, or a handle on work done here."""

    @property
    def job_id(self) -> str: ...

    def result(self) -> R_co: ...

    def done(self) -> bool: ...

    def wait(self) -> None: ...


def job_array(
    methods: tp.Sequence[BoundTask[tp.Any, R]], max_parallel: int | None = None
) -> list[TaskJob[R]]:
    """Submit the tasks of a sweep (bound methods ``run.train``, one per config) as one job array.

    Tasks already computed (or failed: failures are cached per task) are left alone, tasks whose
    job is running (submitted by any process) are re-attached to, and the others are submitted as
    one submitit job array per distinct executor setting (infra resources, cluster, logs folder,
    job name): one array for the usual sweep. ``max_parallel`` caps how many of an array's tasks
    run at once (SLURM's array throttle, ``--array=0-N%max_parallel``; submitit's local executor has
    no such setting and starts them all). With ``cluster=None`` (or ``"debug"``) the tasks are
    computed here, one after the other, a failure being cached and the sweep going on.

    Returns one job per method, in order; ``method()`` then reads (or waits for) each result.
    """
    from .method import BoundTask, InlineJob

    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise ValueError(
            f"job_array(max_parallel={max_parallel!r}): give a number of tasks >= 1, or None "
            "for no cap"
        )
    bounds = list(methods)
    for k, bound in enumerate(bounds):
        if not isinstance(bound, BoundTask):
            raise TypeError(
                "job_array() takes bound TaskInfra methods, one per config: "
                "[run.train for run in runs] (the methods, not their results run.train()); "
                f"item {k} is {bound!r:.200}"
            )
    jobs: list[TaskJob[R] | None] = [None] * len(bounds)
    # one task per cache folder: the same config twice is one task (its lock taken once)
    first: dict[str, int] = {}
    inline: list[int] = []
    submitted: list[int] = []
    for k, bound in enumerate(bounds):
        bound._prepare_to_run()
        infra = bound._infra
        key = bound._uid if bound._paths is None else bound._paths.base
        if key in first:
            continue
        first[key] = k
        if infra.mode == "read-only":
            jobs[k] = InlineJob(bound)  # never computes: result() loads or raises CacheMissError
        elif infra.cluster in _IN_PROCESS or bound._paths is None:
            inline.append(k)
        else:
            bound._check_configs()  # before any submission: a mismatched folder is refused
            bound._write_configs()
            submitted.append(k)
    if submitted:
        _submit(bounds, submitted, jobs, max_parallel)
    for k in inline:
        jobs[k] = _run_here(bounds[k])
    for k, bound in enumerate(bounds):
        if jobs[k] is None:  # a repeated config: the job of its first occurrence
            key = bound._uid if bound._paths is None else tp.cast(tp.Any, bound._paths).base
            jobs[k] = jobs[first[key]]
    return tp.cast(list[TaskJob[R]], jobs)


def _run_here(bound: BoundTask[tp.Any, R]) -> TaskJob[R]:
    """Compute a task in this process now; a failure is cached (with a folder) and kept for the
    job's ``result()``, and the sweep goes on."""
    from .method import InlineJob

    try:
        bound()
    except Exception as e:
        logger.info("%s failed: %s: %s", bound._uid, type(e).__name__, e)
        # with a folder, result() re-raises the cached failure (with its traceback); without
        # one nothing caches it, so the job keeps it rather than computing it again
        return InlineJob(bound, None if bound._paths is not None else e)
    return InlineJob(bound)


def _submit(
    bounds: list[BoundTask[tp.Any, tp.Any]],
    todo: list[int],
    jobs: list[tp.Any],
    max_parallel: int | None,
) -> None:
    """Under the locks of every task of ``todo``: fill ``jobs`` with the cached outcome's handle,
    the live job, or the job of the array it is submitted in."""
    from ..execution import make_executor
    from .method import SUBMIT, InlineJob

    order = sorted(todo, key=lambda k: tp.cast(tp.Any, bounds[k]._paths).lock)
    groups: dict[tuple[str, str], list[int]] = {}
    with contextlib.ExitStack() as locks:
        for k in order:
            locks.enter_context(file_lock(Path(tp.cast(tp.Any, bounds[k]._paths).lock)))
        for k in todo:
            bound = bounds[k]
            claim = bound._claim(tp.cast(tp.Any, bound._paths))
            if claim is SUBMIT:
                groups.setdefault(_executor_key(bound), []).append(k)
            elif claim is None:  # computed (or failed) already: result() loads it
                jobs[k] = InlineJob(bound)
            else:
                logger.info("%s: re-attached to running job %s", bound._uid, claim.job_id)
                jobs[k] = claim
        for members in groups.values():
            head = bounds[members[0]]
            executor = make_executor(head._infra, head.job_name())
            if max_parallel is not None and executor.cluster == "slurm":
                executor.update_parameters(slurm_array_parallelism=max_parallel)
            copies: dict[tp.Any, tp.Any] = {}  # one copy of the code (workdir) per array
            calls = [bounds[k].job_call(copies) for k in members]
            with executor.batch():
                array = [executor.submit(*call) for call in calls]
            for k, job in zip(members, array, strict=True):
                bounds[k]._record(job, executor.cluster)
                jobs[k] = job
            logger.info(
                "%s: submitted %d tasks to %s as one array (first job %s)",
                head.job_name(),
                len(members),
                executor.cluster,
                array[0].job_id,
            )


def _executor_key(bound: BoundTask[tp.Any, tp.Any]) -> tuple[str, str]:
    """Tasks with equal keys share an executor, hence an array: the job name and the infra in
    effect, less the fields that do not reach the executor (mode, RAM, version)."""
    infra = dataclasses.replace(bound._infra, mode="cached", keep_in_ram=True, version="0")
    return bound.job_name(), repr(infra)


__all__ = ["TaskJob", "job_array"]
