"""Records of submitted map jobs: which items each job computes, for whoever comes next.

A driver submitting a job array writes ``jobs/{token}.pkl`` in the cache folder (the submitit
jobs and each one's item uids) before it waits for them, and removes it once they ended. A job
queued on a cluster holds no claim yet (it claims its items when it starts), and its driver's
claim dies with the driver: the record is what tells a rerun, after the driver was killed, that a
live job will compute those items. The rerun waits for them, submits only what no live job holds,
and takes over the items of jobs that died (cancelled, killed, timed out) without storing them.

Liveness is asked of the scheduler (``execution.is_alive``: the pid of a local job's controller,
``squeue``/``sacct`` for SLURM), never guessed from times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import typing as tp
from pathlib import Path

JOBS_DIR = "jobs"
SUFFIX = ".pkl"


@dataclasses.dataclass
class JobRecord:
    """One submission: its jobs, and the item uids of each (same order)."""

    jobs: list[tp.Any]
    uids: list[list[str]]


def record_path(folder: str | Path, token: str) -> Path:
    return Path(folder) / JOBS_DIR / f"{token}{SUFFIX}"


def save(path: Path, jobs: list[tp.Any], uids: list[list[str]]) -> None:
    """Record a submission (plain data: a dict of lists, read back by a restricted unpickler)."""
    from ..execution import save_job_record

    path.parent.mkdir(parents=True, exist_ok=True)
    save_job_record(path, {"jobs": jobs, "uids": uids})


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def live_holders(folder: str | Path, uids: tp.Iterable[str]) -> dict[str, tp.Any]:
    """uid -> the live recorded job computing it, among ``uids``. Records whose jobs all ended
    are removed (their items are free again: claims, not records, decide who computes them)."""
    try:
        entries = [e for e in os.scandir(Path(folder) / JOBS_DIR) if e.name.endswith(SUFFIX)]
    except FileNotFoundError:
        return {}  # nothing was ever submitted from this folder: the usual case, one syscall
    if not entries:
        return {}
    from ..execution import is_alive

    wanted = set(uids)
    held: dict[str, tp.Any] = {}
    for entry in entries:
        record = _load(Path(entry.path))
        if record is None:
            continue
        live = [k for k, job in enumerate(record.jobs) if is_alive(job)]
        if not live:
            remove(Path(entry.path))
            continue
        for k in live:
            for uid in record.uids[k]:
                if uid in wanted:
                    held.setdefault(uid, record.jobs[k])
    return held


def _load(path: Path) -> JobRecord | None:
    from ..execution import load_job_record

    data = load_job_record(path)
    if data is None:
        return None
    if not (isinstance(data, dict) and len(data.get("jobs", ())) == len(data.get("uids", ()))):
        remove(path)  # not a record this version writes: nothing to follow
        return None
    return JobRecord(list(data["jobs"]), [list(u) for u in data["uids"]])


def drop_ended(folder: str | Path) -> None:
    """Remove the records whose jobs have all ended (a call that waited for them, now done)."""
    live_holders(folder, ())


def wait_for(
    holders: dict[str, tp.Any],
    missing: tp.Callable[[list[str]], list[str]],
    poll_max_s: float,
) -> None:
    """Wait until every held item is stored (``missing``: the store's, which re-reads its index),
    or until a job holding some unstored ones ended: the caller then looks again, and those items
    are free to take over."""
    from ..execution import is_alive

    delay_s = 0.01
    pending = dict(holders)
    while True:
        still = set(missing(list(pending)))
        pending = {uid: job for uid, job in pending.items() if uid in still}
        if not pending:
            return
        jobs = {id(job): job for job in pending.values()}
        if not all(is_alive(job) for job in jobs.values()):
            return
        time.sleep(delay_s)
        delay_s = min(delay_s * 1.5, poll_max_s)


__all__ = ["JobRecord", "live_holders", "record_path", "remove", "save", "wait_for"]
