"""What TaskInfra (``task/``) and MapInfra (``mapping/``) share: their common fields, checks and
default heritage. This module imports neither kind: each kind imports it.

``infra.apply`` turns a method into a descriptor; on an instance it gives a bound object
(``task.process``) that computes, caches and inspects (``bound.py``).

Default heritage: an infra passed at construction inherits every field it leaves unset from the class
default infra, so the method author's ``version`` and resources stay unless the caller overrides them.
"Unset" means "not passed to the constructor": each infra records the names it was given.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing as tp
from pathlib import Path

from .config import InfraMarker

R = tp.TypeVar("R")
Own = tp.TypeVar("Own")
X = tp.TypeVar("X")

TASK_CLUSTERS = (None, "local", "slurm", "auto", "debug")
MAP_CLUSTERS = (*TASK_CLUSTERS, "threadpool", "processpool")
TASK_MODES = ("cached", "retry", "force", "read-only")
MAP_MODES = ("cached", "force", "read-only")
IN_MEMORY_CLUSTERS = (None, "debug", "threadpool", "processpool")
"""Clusters whose workers run the code this process has in memory: a WorkDir is ignored there."""

Cluster = tp.Literal["local", "slurm", "auto", "debug"]
MapCluster = tp.Literal["local", "slurm", "auto", "debug", "threadpool", "processpool"]
Mode = tp.Literal["cached", "retry", "force", "read-only"]
MapMode = tp.Literal["cached", "force", "read-only"]
# the same names as encoding.CacheType and shards.Durability, spelled here so that `import exca_lite`
# does not import the store (and numpy); test_typing checks the public signatures
CacheType = tp.Literal["array", "msgpack", "pickle"] | None
Durability = tp.Literal["flush", "fsync"]
DURABILITIES: tuple[str, ...] = tp.get_args(Durability)


_VERSION = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_choice(cls: type, name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{cls.__name__}.{name}={value!r} is not one of {choices}")


@dataclasses.dataclass(frozen=True, repr=False)
class Infra(InfraMarker):
    """Fields shared by TaskInfra and MapInfra (see SPEC §3)."""

    folder: Path | str | None = None
    keep_in_ram: bool = True
    version: str = "0"
    logs: str = "{folder}/logs/{user}/%j"
    job_name: str | None = None
    timeout_min: int | None = None
    nodes: int | None = 1
    tasks_per_node: int | None = 1
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: float | None = None
    slurm_partition: str | None = None
    slurm_constraint: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_additional_parameters: dict[str, tp.Any] | None = None
    slurm_setup: list[str] | None = None
    slurm_use_srun: bool = False
    # names given to the constructor: what an instance infra overrides of the class default
    explicit_fields: frozenset[str] = dataclasses.field(
        default=frozenset(), repr=False, compare=False, kw_only=True
    )

    def __post_init__(self) -> None:
        if self.folder is not None:
            # "~" expanded and a relative folder made absolute once, here: a later chdir must not
            # move the cache, and "~" must not become a folder named "~"
            folder = os.fspath(self.folder)
            if folder.startswith("~"):
                folder = os.path.expanduser(folder)
            if not os.path.isabs(folder):
                folder = os.path.abspath(folder)
            object.__setattr__(self, "folder", Path(folder))
        if not isinstance(self.version, str):
            raise TypeError(
                f"{type(self).__name__}.version must be a str, got {self.version!r} (quote it "
                "in a config file, version: '1': a number would lose digits, 1.10 -> 1.1)"
            )
        if not _VERSION.fullmatch(self.version) or ".." in self.version:
            raise ValueError(
                f"{type(self).__name__}(version={self.version!r}): a version is a short name of "
                "letters, digits, '.', '_' and '-' (no '/' or '..'): it names a folder under "
                "`folder`, which it must not leave; e.g. version='2' or version='2024-05.b'"
            )

    def __repr__(self) -> str:
        """Only the fields that differ from their defaults: ``TaskInfra(version='1')``."""
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr and getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    def check_usable(self) -> None:
        """Raise a ValueError if this infra, completed by its class default, cannot run."""

    def merged_into(self, default: Infra) -> tp.Self:
        """This infra with every field it left unset taken from ``default`` (the class default).

        Memoized per (infra, default) object pair: fresh configs often share one infra object, and
        the merge (a dataclasses.replace) would otherwise dominate the cost of their uid.
        """
        if self is default or type(default) is not type(self):
            return self
        key = (id(self), id(default))
        memo = _MERGED.get(key)
        if memo is not None and memo[0] is self and memo[1] is default:
            return tp.cast(tp.Self, memo[2])
        merged = self._merge(default)
        if len(_MERGED) >= _MERGED_MAX:
            _MERGED.clear()
        _MERGED[key] = (self, default, merged)  # keeps both alive, so their ids are not reused
        return merged

    def _merge(self, default: tp.Self) -> tp.Self:
        given = self.explicit_fields or frozenset(
            f.name
            for f in dataclasses.fields(self)
            if f.name != "explicit_fields" and getattr(self, f.name) != f.default
        )
        if not given:
            return default
        updates = {name: getattr(self, name) for name in given}
        updates["explicit_fields"] = default.explicit_fields | given
        return dataclasses.replace(default, **updates)


_MERGED: dict[tuple[int, int], tuple[Infra, Infra, Infra]] = {}
_MERGED_MAX = 4096


def track_explicit_fields(cls: type[X]) -> type[X]:
    """Wrap the generated ``__init__`` to record which fields the caller passed."""
    generated = cls.__init__
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name != "explicit_fields"]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    defaults = {f.name: f.default for f in fields}

    @functools.wraps(generated)
    def __init__(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        generated(self, *args, **kwargs)
        given = set(names[: len(args)]) | (kwargs.keys() - {"explicit_fields"})
        if "explicit_fields" in kwargs:
            # dataclasses.replace passes every field: keep what the original set, plus changes
            given = set(kwargs["explicit_fields"]) | {
                n for n in given if getattr(self, n) != defaults[n]
            }
        object.__setattr__(self, "explicit_fields", frozenset(given))

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def exclude_tuple(names: tp.Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(
            f"exclude_from_cache_uid must be a tuple of field names, got the str {names!r}"
        )
    return tuple(names)


__all__ = [
    "DURABILITIES",
    "MAP_CLUSTERS",
    "MAP_MODES",
    "TASK_CLUSTERS",
    "TASK_MODES",
    "CacheType",
    "Cluster",
    "Durability",
    "Infra",
    "MapCluster",
    "MapMode",
    "Mode",
    "check_choice",
    "exclude_tuple",
    "track_explicit_fields",
]
