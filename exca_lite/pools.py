"""The machine's own pools for map chunks ("threadpool", "processpool"): how many workers, how a
process worker starts, when it stops.

- Size: one worker per CPU this process may use (``os.sched_getaffinity``), not the 128 jobs a
  cluster array may have: a model loaded per worker would otherwise exhaust memory.
- Start: always the same way, ``forkserver`` where the platform has it (``spawn`` elsewhere).
  ``fork`` was faster but unsafe once the caller runs any thread (torch, a logging handler), and
  switching between the two made the same script work or fail depending on its threads.
- Stop: a process worker whose driver died finishes the chunk it holds (its items stay claimed
  by it, so a rerun waits for them rather than recomputing them), seals its files and exits,
  instead of waiting forever for work that will never come. A thread pool stops at the next item
  when the caller is interrupted (``StopFlag``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.context
import os
import re
import sys
import threading
import time
import typing as tp

from .execution import pid_is_alive

WATCH_INTERVAL_S = 0.2


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def process_context() -> multiprocessing.context.BaseContext:
    """The start method of every process pool: forkserver (spawn where there is none)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def check_importable(owner: object) -> None:
    """Raise before any worker starts if process workers cannot import the owner's class, or
    would run the caller's script again: a class of a notebook (no file to import) or defined in
    a function, or a script whose top-level code is not guarded (forkserver workers import the
    main script, whatever module the class is in: each would run it again, and fail or hang)."""
    cls = type(owner)
    name = cls.__qualname__
    if "<locals>" in name:
        raise RuntimeError(
            f"{name} is defined inside a function: processpool workers cannot import it. Define "
            'it at the top level of a module, or use cluster="threadpool"'
        )
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    rerun = _workers_run_main(main)
    if cls.__module__ == "__main__" and not rerun:
        where = "an interactive session (a notebook)" if path is None else f"{path}"
        raise RuntimeError(
            f"{name} is defined in {where}, which processpool workers do not import: they "
            f"cannot find it. Move {name} into a module (a .py file) and import it, or use "
            'cluster="threadpool"'
        )
    if path is None or not rerun or _has_main_guard(path):
        return
    what = (
        f"{name} is defined in the script {path}, which processpool workers import"
        if cls.__module__ == "__main__"
        else f"processpool workers import the script {path} that runs this map"
    )
    raise RuntimeError(
        f"{what}: its top-level code would run again in each worker. Put the code that runs "
        'the script under `if __name__ == "__main__":`'
        + (" (or move the class into a module)" if cls.__module__ == "__main__" else "")
    )


def _workers_run_main(main: tp.Any) -> bool:
    """Whether spawned/forkserver workers run the caller's main module again (as
    ``multiprocessing.spawn`` decides): a script (``python x.py``) or a module run with
    ``python -m mod`` is; a package's ``__main__.py`` (``python -m pkg``), ``python -c`` and
    notebooks are not."""
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:
        return spec_name != "__main__" and not spec_name.endswith(".__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.splitext(os.path.basename(path))[0] != "ipython"


@functools.lru_cache(maxsize=16)
def _has_main_guard(path: str) -> bool:
    """Whether a script guards its top-level code (an unreadable one is given the benefit)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return True
    return _MAIN_GUARD.search(source) is not None


_MAIN_GUARD = re.compile(r"""^\s*if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)


class StopFlag:
    """Set by an interrupted caller; thread workers check it between items."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt("the map call was interrupted")


_state_lock = threading.Lock()
_busy = 0
_orphaned = False


def init_worker(driver_pid: int) -> None:
    """Initializer of process workers: watch the driver (and this worker's parent, the fork
    server) and exit once it is gone and no chunk is being computed."""
    parent = os.getppid()
    thread = threading.Thread(
        target=_watch, args=(driver_pid, parent), name="exca-lite-orphan-watch", daemon=True
    )
    thread.start()


def _watch(driver_pid: int, parent: int) -> None:
    global _orphaned
    while os.getppid() == parent and pid_is_alive(driver_pid):
        time.sleep(WATCH_INTERVAL_S)
    with _state_lock:
        _orphaned = True
        if _busy == 0:
            _exit_worker()


@contextlib.contextmanager
def working() -> tp.Iterator[None]:
    """Around a chunk computed by a process worker: an orphaned worker exits after it."""
    global _busy
    with _state_lock:
        _busy += 1
    try:
        yield
    finally:
        with _state_lock:
            _busy -= 1
            if _orphaned and _busy == 0:
                _exit_worker()


def _exit_worker() -> tp.NoReturn:
    from .store.writer import release_all_parked

    release_all_parked()  # seal this worker's files: compaction may then fold them
    os._exit(0)


__all__ = [
    "StopFlag",
    "check_importable",
    "available_cpus",
    "init_worker",
    "process_context",
    "working",
]
