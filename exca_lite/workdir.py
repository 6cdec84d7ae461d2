"""``WorkDir``: a copy of the code made when a job is submitted, which the job runs from.

A job that waits hours in a queue would otherwise import whatever code is on disk when it starts.
At submission the named packages, modules and folders are copied (Python sources by default) into
``{folder}/code/{hash}``, where the hash is that of the copied files' names and bytes: the same
code is copied once, however many jobs use it, and a copy is never modified once published (it is
written to a temp folder, then renamed into place).

The job must import the config's classes from the copy, and submitit unpickles a job's arguments
before calling anything: so what is submitted is ``run_from_snapshot(copy, payload)``, whose
arguments are plain values, and the task itself travels as pickled bytes, loaded only once the
copy leads ``sys.path`` (and is the working directory, for relative paths such as
``scripts/train.py``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import os
import shutil
import sys
import typing as tp
import uuid
from pathlib import Path

SNAPSHOTS_DIR = "code"
_HASH_HEX_CHARS = 16


@dataclasses.dataclass(frozen=True)
class WorkDir:
    """What a submitted job runs from: a copy of ``copied``, made at submission.

    ``copied`` names top-level packages or modules (``"mypkg"``, found as ``import`` would find
    them) or paths of folders and files (``"scripts/train.py"``, relative to the current
    directory, kept relative in the copy). Only files matching ``includes`` are copied (Python
    sources by default), and nothing whose name matches ``excludes``.
    """

    copied: tuple[str, ...] = ()
    includes: tuple[str, ...] = ("*.py",)
    excludes: tuple[str, ...] = ("__pycache__", ".*")

    def __post_init__(self) -> None:
        for name in ("copied", "includes", "excludes"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(
                    f"WorkDir.{name} is a tuple of names, got the str {value!r}: "
                    f"write {name}=({value!r},)"
                )
            object.__setattr__(self, name, tuple(os.fspath(v) for v in value))
        if not self.copied:
            raise ValueError(
                "WorkDir(copied=()) copies nothing: name the packages, modules or folders the "
                'job imports, e.g. WorkDir(copied=("mypkg", "scripts/train.py"))'
            )


def _sources(workdir: WorkDir) -> list[tuple[Path, str]]:
    """(source path, its name in the copy) of each entry of ``copied``."""
    out = []
    for name in workdir.copied:
        path = Path(name)
        looks_like_path = os.sep in name or name.endswith(".py") or path.exists()
        if looks_like_path:
            if not path.exists():
                raise FileNotFoundError(
                    f"WorkDir(copied=...) names {name!r}, which does not exist (relative paths "
                    f"are taken from the current directory, {os.getcwd()})"
                )
            target = os.path.normpath(name)
            if path.is_absolute() or target.startswith(os.pardir):
                target = path.resolve().name  # kept inside the copy
            out.append((path.resolve(), target))
            continue
        top = name.split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None:
            raise ModuleNotFoundError(
                f"WorkDir(copied=...) names {name!r}: no module or package {top!r} is importable "
                "here, nor is it a path; give a path (e.g. 'src/mypkg') or fix sys.path"
            )
        if spec.submodule_search_locations:
            out.append((Path(next(iter(spec.submodule_search_locations))), top))
        elif spec.origin and spec.origin.endswith(".py"):
            out.append((Path(spec.origin), f"{top}.py"))
        else:
            raise ValueError(
                f"WorkDir(copied=...) names {name!r}, which is not Python source "
                f"({spec.origin}): only packages, .py modules and folders can be copied"
            )
    return out


def check_sources(workdir: WorkDir) -> None:
    """Raise the error a snapshot would (a path that does not exist, a module not importable),
    before anything is written for a submission."""
    _sources(workdir)


def _files(workdir: WorkDir, source: Path, target: str, skip: str) -> list[tuple[Path, str]]:
    """(file, its path in the copy) under one source, sorted, filtered by includes/excludes;
    nothing under the folder ``skip`` (a real path: the cache root, with earlier copies)."""
    if source.is_file():
        return [(source, target)]
    out = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(
            d
            for d in dirs
            if not _matches(d, workdir.excludes) and os.path.realpath(os.path.join(root, d)) != skip
        )
        for name in sorted(names):
            if _matches(name, workdir.excludes) or not _matches(name, workdir.includes):
                continue
            path = Path(root) / name
            out.append((path, os.path.join(target, os.path.relpath(path, source))))
    return out


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def snapshot(workdir: WorkDir, root: Path | str) -> Path:
    """The copy of the code ``workdir`` names, under ``root/code``: made now unless the same
    bytes were copied before."""
    files: list[tuple[Path, str]] = []
    # a cache root inside the copied folder (folder="cache" in the project) holds the earlier
    # copies: copied too, every copy would differ from the last and double in size
    skip = os.path.realpath(root)
    for source, target in _sources(workdir):
        files += _files(workdir, source, target, skip)
    digest = hashlib.blake2b(digest_size=_HASH_HEX_CHARS // 2)
    contents = []
    for path, target in files:
        data = path.read_bytes()
        contents.append((target, data))
        digest.update(f"{len(target)}:{target}:{len(data)}:".encode())
        digest.update(data)
    base = Path(root) / SNAPSHOTS_DIR
    copy = base / digest.hexdigest()
    if copy.is_dir():
        return copy
    tmp = base / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        for target, data in contents:
            dest = tmp / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        tmp.mkdir(parents=True, exist_ok=True)  # an empty selection still gets its folder
        try:
            os.rename(tmp, copy)  # publish; a folder already there is the same code
        except OSError:
            if not copy.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return copy


def check_workdir(infra_class: type, workdir: object) -> None:
    """Raise unless ``workdir`` (an infra's field) is None or a ``WorkDir``, saying how to write one."""
    if workdir is not None and not isinstance(workdir, WorkDir):
        raise TypeError(
            f"{infra_class.__name__}.workdir must be an xl.WorkDir, got {workdir!r}: "
            'e.g. workdir=xl.WorkDir(copied=("mypkg",))'
        )


def snapshot_call(copy: Path, call: tuple[tp.Any, ...]) -> tuple[tp.Any, ...]:
    """What to submit so that ``call`` (``(function, *args)``) runs from ``copy``: its arguments
    as bytes, loaded only once the copy leads ``sys.path`` (cloudpickle, submitit's own
    dependency, pickles the classes of a script, ``__main__``, by value)."""
    import cloudpickle  # type: ignore[import-untyped]

    return (run_from_snapshot, str(copy), cloudpickle.dumps(call))


def run_from_snapshot(copy: str, payload: bytes) -> tp.Any:
    """What a job runs: from the copy of the code, the pickled ``(function, *args)``."""
    import pickle

    sys.path.insert(0, copy)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [copy, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    os.chdir(copy)
    function, *args = pickle.loads(payload)
    return function(*args)


__all__ = [
    "WorkDir",
    "check_sources",
    "check_workdir",
    "run_from_snapshot",
    "snapshot",
    "snapshot_call",
]
