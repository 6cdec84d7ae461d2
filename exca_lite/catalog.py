"""Find and describe cache folders on disk, for the command line: what is there, how big, how healthy.

A cache folder is ``{root}/{module.Class.method,version}/{readable-hash}``: its uid is the last two
parts of its path. It is recognized by its files, never by its name (folders are often moved or
copied whole between clusters):

- a *map* cache holds the map store's index files (``*.idx``, see ``shards``); or only its
  ``config.json``/``uid.json`` with a ``MapInfra`` in the config, before its first item;
- a *task* cache holds ``uid.json``/``config.json`` and at most a result, a failure, a job record.

Everything here reads only, except ``compact`` and ``clear``, which go through the stores' own
operations (concurrent readers and writers stay safe: no file is written by two processes).
Nothing here runs code stored in a cache (roots are often shared): a task's ``job.pkl`` is read by
an unpickler that only builds submitit job records, and ``verify`` checks a ``result.pkl`` opcode
by opcode without loading it.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import io
import os
import pickletools
import stat
import time
import typing as tp
from pathlib import Path

import msgspec
import numpy as np

from . import taskcache
from .errors import NotACacheError
from .store.format import pairs_from_listing
from .store.locks import probe_lock
from .taskcache import TaskPaths

if tp.TYPE_CHECKING:
    from .store.mapstore import MapStore

Kind = tp.Literal["task", "map"]
TaskStatus = tp.Literal["not submitted", "running", "completed", "failed"]

_SKIPPED_DIRS = frozenset({"logs", "locks", "claims", "__pycache__"})
"""Folders ``find_caches`` never enters: job logs can hold thousands of folders and no cache."""
_TASK_FILES = ("result.pkl", "result.npy", "error.json", "job.pkl", "task.lock")
_CONFIG_FILES = ("uid.json", "config.json")
_MAP_INFRA_KEYS = frozenset({"max_jobs", "min_samples_per_job", "forbid_single_item_computation"})
"""Keys only a ``MapInfra`` has: how ``config.json`` tells an empty map cache from a task cache."""


@dataclasses.dataclass(frozen=True)
class CacheSummary:
    """One row of ``ls``: a cache folder, its kind, a task's status, how many items and bytes, when
    last written."""

    path: Path
    uid: str
    kind: Kind
    status: TaskStatus | None  # None for a map cache
    items: int
    bytes: int
    last_write: float | None

    def to_json(self) -> dict[str, tp.Any]:
        return {
            "uid": self.uid,
            "kind": self.kind,
            "status": self.status,
            "items": self.items,
            "bytes": self.bytes,
            "last_write": self.last_write,
            "last_write_iso": iso_time(self.last_write),
            "path": str(self.path),
        }


def cache_uid(path: Path) -> str:
    """``{method,version}/{readable-hash}``: the last two parts of the folder's path."""
    path = Path(os.path.abspath(path))
    return f"{path.parent.name}/{path.name}"


def check_folder(path: Path) -> None:
    """Raise ``FileNotFoundError``/``NotADirectoryError``/``PermissionError`` with the path named."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such folder: {path}") from None
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(f"not a folder: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"permission denied: cannot list {path}")


def cache_kind(path: Path) -> Kind | None:
    """ "task", "map", or None when ``path`` is not a cache folder (it must be a readable folder)."""
    names = set(os.listdir(path))
    if pairs_from_listing(list(names)) or "locks" in names or "claims" in names:
        return "map"
    if names.intersection(_TASK_FILES):
        return "task"
    if not names.intersection(_CONFIG_FILES):
        return None
    return "map" if _has_map_infra(_read_json(path / "config.json")) else "task"


def require_cache(path: Path) -> Kind:
    """The kind of the cache at ``path``, or a clear error saying why it is not one."""
    check_folder(path)
    kind = cache_kind(path)
    if kind is None:
        caches = find_caches(path, max_depth=3)[0]
        hint = (
            f"; it holds {len(caches)} cache(s), e.g. {caches[0]} (`exca-lite ls {path}` lists them)"
            if caches
            else " (a cache folder holds uid.json, config.json and a result or *.idx store files)"
        )
        raise NotACacheError(f"not a cache folder: {path}{hint}")
    return kind


def find_caches(root: Path, max_depth: int = 8) -> tuple[list[Path], list[str]]:
    """Every cache folder under ``root`` (``root`` included), sorted; and the folders that could
    not be read (permission denied), as messages. Cache folders are not entered: caches do not
    nest. Symlinks are not followed (a task's ``logs`` link points to the job's log folder)."""
    check_folder(root)
    found: list[Path] = []
    unreadable: list[str] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            kind = cache_kind(folder)
        except PermissionError:
            unreadable.append(f"permission denied: cannot list {folder}")
            return
        if kind is not None:
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            unreadable.append(f"permission denied: cannot list {folder}")
            return
        for entry in entries:
            if (
                entry.name in _SKIPPED_DIRS
                or entry.name.startswith(".")
                or not entry.is_dir(follow_symlinks=False)
            ):
                continue
            walk(Path(entry.path), depth + 1)

    walk(Path(root), 0)
    return sorted(found, key=lambda p: (cache_uid(p), str(p))), unreadable


def caches_under(paths: tp.Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The caches that ``verify``/``clear`` act on: each path is a cache folder or a root whose
    caches are all taken; duplicates once. Every path is checked before anything is returned (a
    typo must not stop a ``clear`` half-way): a missing path, or one holding no cache, raises."""
    found: dict[str, Path] = {}
    unreadable: list[str] = []
    for path in paths:
        caches, skipped = find_caches(path)
        if not caches and not skipped:
            raise NotACacheError(
                f"no cache under {path} (a cache folder holds uid.json, config.json and a "
                "result or *.idx store files)"
            )
        for cache in caches:
            found.setdefault(os.path.realpath(cache), cache)
        unreadable.extend(skipped)
    return list(found.values()), unreadable


def summarize(path: Path, kind: Kind | None = None) -> CacheSummary:
    """The ``ls`` row of one cache folder."""
    kind = kind or require_cache(path)
    files = _data_files(path)
    nbytes = sum(size for _, size, _ in files)
    status: TaskStatus | None = None
    if kind == "map":
        store = open_store(path)
        items = len(store)
    else:
        status = task_status(TaskPaths(path))
        items = int(status == "completed")
    mtimes = [mtime for name, _, mtime in files if _counts_as_write(name)]
    return CacheSummary(
        path=path,
        uid=cache_uid(path),
        kind=kind,
        status=status,
        items=items,
        bytes=nbytes,
        last_write=max(mtimes) if mtimes else None,
    )


def open_store(path: Path) -> MapStore:
    """A map store opened for reading (opening never writes: a colleague's read-only cache is fine)."""
    from .store.mapstore import MapStore  # the CLI's task-only commands need not load the store

    store = MapStore(path)
    store.refresh()
    return store


def describe(path: Path) -> dict[str, tp.Any]:
    """Everything ``info`` shows about one cache folder, as plain data."""
    kind = require_cache(path)
    summary = summarize(path, kind)
    out: dict[str, tp.Any] = summary.to_json()
    out["config"] = _read_json(path / "config.json")
    if kind == "map":
        stats = dict(open_store(path).stats())
        out["store"] = stats
        out["shards"] = dict(stats.get("shards", {}))
        out["dead_bytes"] = stats.get("dead_bytes")
        out["writers"] = stats.get("writers")
    else:
        paths = TaskPaths(path)
        out["files"] = {
            name: size
            for name, size, _ in _data_files(path)
            if name not in _CONFIG_FILES and name != "task.lock"
        }
        out["job_id"] = _job_id(paths)
        out["lock_held"] = bool(probe_lock(Path(paths.lock)))
        failure = taskcache.load_failure(paths)
        if failure is not None:
            out["error"] = f"{failure.type}: {failure.message}"
    return out


def verify(path: Path) -> list[str]:
    """Problems found in the cache at ``path``: empty when it is healthy."""
    kind = require_cache(path)
    problems = _verify_configs(path)
    if kind == "map":
        problems += open_store(path).verify()
    else:
        problems += _verify_task(TaskPaths(path))
    return problems


def _verify_configs(path: Path) -> list[str]:
    problems = []
    for name in _CONFIG_FILES:
        file = path / name
        try:
            msgspec.json.decode(file.read_bytes())
        except FileNotFoundError:
            continue  # written with the first result: a cache being filled may not have them yet
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            problems.append(f"{file}: not valid JSON ({e})")
    return problems


def _verify_task(paths: TaskPaths) -> list[str]:
    """Read back every file of a task cache: the result must parse, the failure must decode.

    An ``OSError`` (permission, I/O) propagates: the file could not be checked, which is not
    damage. The pickle is walked opcode by opcode, not loaded: loading would run code from a
    possibly shared folder and fail on classes this environment cannot import, which says
    nothing about the file.
    """
    problems = []
    try:
        with open(paths.result_pkl, "rb") as f:
            for _ in pickletools.genops(io.BytesIO(f.read())):
                pass
    except FileNotFoundError:
        pass
    except OSError:
        raise
    except Exception as e:  # a truncated stream, an unknown opcode, a bad argument
        problems.append(f"{paths.result_pkl}: unreadable result ({type(e).__name__}: {e})")
    try:
        np.load(paths.result_npy, mmap_mode="r")  # a header or a length that disagrees fails here
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ENOLCK):
            raise
        problems.append(f"{paths.result_npy}: unreadable result ({type(e).__name__}: {e})")
    except Exception as e:
        problems.append(f"{paths.result_npy}: unreadable result ({type(e).__name__}: {e})")
    try:
        msgspec.json.decode(Path(paths.error).read_bytes(), type=taskcache.Failure)
    except FileNotFoundError:
        pass
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        problems.append(f"{paths.error}: unreadable failure record ({e})")
    return problems


def compact(path: Path) -> dict[str, int]:
    """Merge a map cache's shards into one (bytes before/after, items); a task cache has nothing
    to compact (one file per result) and gives an empty dict."""
    kind = require_cache(path)
    if kind != "map":
        return {}
    return dict(open_store(path).compact())


def clear(path: Path) -> int:
    """Remove the cached items of the cache at ``path`` (configs stay); the bytes freed."""
    kind = require_cache(path)
    before = sum(size for _, size, _ in _data_files(path))
    if kind == "map":
        open_store(path).clear()
    else:
        taskcache.clear(TaskPaths(path))
    after = sum(size for _, size, _ in _data_files(path))
    return max(0, before - after)


def task_status(paths: TaskPaths) -> TaskStatus:
    """As ``task.process.status()`` says it, from the folder alone: "running" needs a live job
    (its record in ``job.pkl``) or a process computing inline (holding ``task.lock``); a recorded
    job that ended without an outcome died, which is a failure."""
    if _has_result(paths):
        return "completed"
    if os.path.exists(paths.error):
        return "failed"
    if probe_lock(Path(paths.lock)):
        return "running"  # computed inline (cluster=None) or being submitted, by a live process
    job = load_job(paths)
    if job is None:
        return "not submitted"
    from .execution import is_alive  # imports submitit: only for records of unfinished jobs

    if is_alive(job):
        return "running"
    return "completed" if _has_result(paths) else "failed"  # it may have finished meanwhile


def busy_reason(path: Path, kind: Kind) -> str | None:
    """Why clearing the cache at ``path`` now would pull it from under a live writer (None: idle).

    A map cache is busy while another process holds one of its writers: one filling it now, or
    one kept open for its next call (a notebook that computed items keeps it until it exits).
    The store's lock files are the only trustworthy signal; an mtime is not (a writer may pause).
    """
    if kind == "map":
        writers = int(open_store(path).stats()["writers"])
        return f"{writers} writer(s) active now" if writers else None
    status = task_status(TaskPaths(path))
    return "its job is running now" if status == "running" else None


def last_write_age_s(summary: CacheSummary) -> float:
    """Seconds since the cache was last written (infinite when nothing was ever written)."""
    if summary.last_write is None:
        return float("inf")
    return max(0.0, time.time() - summary.last_write)


def load_job(paths: TaskPaths) -> tp.Any:
    """The submitit job recorded in ``job.pkl``, or None (none, or unreadable: warned)."""
    from .execution import load_job_record

    return load_job_record(paths.job)


def _has_result(paths: TaskPaths) -> bool:
    return os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy)


def _job_id(paths: TaskPaths) -> str | None:
    """The submitit job id recorded in ``job.pkl``, without unpickling it (that imports submitit
    and runs code): the id is the folder name of the ``logs`` link, else unknown. None once the
    record is gone (a cleared task keeps its ``logs`` link, to an older job)."""
    if not os.path.exists(paths.job):
        return None
    try:
        return Path(os.readlink(paths.logs)).name or None
    except OSError:
        return None


def _data_files(path: Path) -> list[tuple[str, int, float]]:
    """(relative name, size, mtime) of every regular file in a cache folder (links not followed)."""
    out: list[tuple[str, int, float]] = []
    stack = [(path, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:  # removed under us (a clear, a compaction)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out.append((prefix + entry.name, st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue
    return sorted(out)


def _counts_as_write(name: str) -> bool:
    """Lock and claim files change when someone merely reads or waits: they are not writes."""
    return not (
        name.startswith(("locks/", "claims/")) or name.endswith(".lock") or name.endswith(".tmp")
    )


def _read_json(file: Path) -> tp.Any:
    try:
        return msgspec.json.decode(file.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError, UnicodeDecodeError):
        return None


def _has_map_infra(config: tp.Any) -> bool:
    if isinstance(config, dict):
        if config.keys() >= _MAP_INFRA_KEYS:
            return True
        return any(_has_map_infra(value) for value in config.values())
    return False


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def human_bytes(size: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (powers of 1024, as ``du -h`` and ``ls -lh`` count)."""
    if size is None:
        return "-"
    if abs(size) < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


__all__ = [
    "CacheSummary",
    "Kind",
    "NotACacheError",
    "TaskStatus",
    "busy_reason",
    "cache_kind",
    "cache_uid",
    "caches_under",
    "check_folder",
    "clear",
    "compact",
    "describe",
    "find_caches",
    "human_bytes",
    "iso_time",
    "last_write_age_s",
    "load_job",
    "open_store",
    "require_cache",
    "summarize",
    "task_status",
    "verify",
]
