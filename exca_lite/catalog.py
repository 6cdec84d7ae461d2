"""Find and describe cache folders on disk, for the command line: what is there, how big, how healthy.

A cache folder is ``{root}/{module.Class.method,version}/{readable-hash}``: its uid is the last two
parts of its path. It is recognized by its files, never by its name (folders are often moved or
copied whole between clusters):

- a *map* cache holds the map store's index files (``*.idx``, see ``shards``); or only its
  ``config.json``/``uid.json`` with a ``MapInfra`` in the config, before its first item;
- a *task* cache holds ``uid.json``/``config.json`` and at most a result, a failure, a job record.

Everything here reads only, except ``compact`` and ``clear``, which go through the stores' own
operations (concurrent readers and writers stay safe: no file is written by two processes).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import stat
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

_SKIPPED_DIRS = frozenset({"logs", "locks", "claims", "__pycache__"})
"""Folders ``find_caches`` never enters: job logs can hold thousands of folders and no cache."""
_TASK_FILES = ("result.pkl", "result.npy", "error.json", "job.pkl", "task.lock")
_CONFIG_FILES = ("uid.json", "config.json")
_MAP_INFRA_KEYS = frozenset({"max_jobs", "min_samples_per_job", "forbid_single_item_computation"})
"""Keys only a ``MapInfra`` has: how ``config.json`` tells an empty map cache from a task cache."""


@dataclasses.dataclass(frozen=True)
class CacheSummary:
    """One row of ``ls``: a cache folder, its kind, how many items and bytes, when last written."""

    path: Path
    uid: str
    kind: Kind
    items: int
    bytes: int
    last_write: float | None

    def to_json(self) -> dict[str, tp.Any]:
        return {
            "uid": self.uid,
            "kind": self.kind,
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


def summarize(path: Path, kind: Kind | None = None) -> CacheSummary:
    """The ``ls`` row of one cache folder."""
    kind = kind or require_cache(path)
    files = _data_files(path)
    nbytes = sum(size for _, size, _ in files)
    if kind == "map":
        store = open_store(path)
        items = len(store)
    else:
        paths = TaskPaths(path)
        items = int(os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy))
    mtimes = [mtime for name, _, mtime in files if _counts_as_write(name)]
    return CacheSummary(
        path=path,
        uid=cache_uid(path),
        kind=kind,
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
        out["status"] = _task_status(paths)
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
    """Read back every file of a task cache: the result must load, the failure and job must decode."""
    problems = []
    try:
        with open(paths.result_pkl, "rb") as f:
            pickle.load(f)
    except FileNotFoundError:
        pass
    except Exception as e:  # unpickling runs arbitrary code: any error means an unusable result
        problems.append(f"{paths.result_pkl}: unreadable result ({type(e).__name__}: {e})")
    try:
        np.load(paths.result_npy, mmap_mode="r")  # a header or a length that disagrees fails here
    except FileNotFoundError:
        pass
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


def _task_status(paths: TaskPaths) -> str:
    if os.path.exists(paths.result_pkl) or os.path.exists(paths.result_npy):
        return "completed"
    if os.path.exists(paths.error):
        return "failed"
    if os.path.exists(paths.job):
        return "submitted"
    return "not submitted"


def _job_id(paths: TaskPaths) -> str | None:
    """The submitit job id recorded in ``job.pkl``, without unpickling it (that imports submitit
    and runs code): the id is the folder name of the ``logs`` link, else unknown."""
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
    "cache_kind",
    "cache_uid",
    "check_folder",
    "clear",
    "compact",
    "describe",
    "find_caches",
    "human_bytes",
    "iso_time",
    "open_store",
    "require_cache",
    "summarize",
    "verify",
]
