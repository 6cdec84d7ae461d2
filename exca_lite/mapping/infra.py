"""``MapInfra``: where and how a method over items is cached and run, one output per item.

``apply`` imports the method machinery (``method.py``, which needs numpy and the store) when it
decorates, not at import: ``import exca_lite`` stays light, and ``method.py`` never imports this
module at run time, so the arrow runs one way.
"""

from __future__ import annotations

import dataclasses
import typing as tp

from ..infra import (
    DURABILITIES,
    MAP_CLUSTERS,
    MAP_MODES,
    CacheType,
    Durability,
    Infra,
    MapCluster,
    MapMode,
    check_choice,
    exclude_tuple,
    track_explicit_fields,
)
from ..workdir import WorkDir, check_workdir

if tp.TYPE_CHECKING:
    from .method import MapMethod

R = tp.TypeVar("R")
Own = tp.TypeVar("Own")
X = tp.TypeVar("X")


@track_explicit_fields
@dataclasses.dataclass(frozen=True, repr=False)
class MapInfra(Infra):
    """Cache (and run) a method over many items: one cached output per item, in shared shards."""

    cluster: MapCluster | None = None
    mode: MapMode = "cached"
    max_jobs: int | None = None
    """Jobs (or pool workers) at most; unset: one worker per CPU for pools, 128 for job arrays."""
    min_samples_per_job: int = 1
    forbid_single_item_computation: bool = False
    durability: Durability = "flush"
    workdir: WorkDir | None = None
    """Run submitted jobs from a copy of this code, made at submission (one copy per job array;
    ignored in this process, in pools and for ``"debug"``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(MapInfra, "cluster", self.cluster, MAP_CLUSTERS)
        check_choice(MapInfra, "mode", self.mode, MAP_MODES)
        check_choice(MapInfra, "durability", self.durability, DURABILITIES)
        check_workdir(MapInfra, self.workdir)
        if (self.max_jobs is not None and self.max_jobs < 1) or self.min_samples_per_job < 1:
            raise ValueError("MapInfra.max_jobs and min_samples_per_job must be >= 1")

    def check_usable(self) -> None:
        # not at construction: a class default may name the cluster, each instance the folder
        if self.cluster not in (None, "threadpool") and self.folder is None:
            raise ValueError(
                f"MapInfra(cluster={self.cluster!r}) needs a folder: workers write their results "
                "into the cache folder; set folder=... (or cluster=None or 'threadpool' to "
                "compute in this process)"
            )

    def apply(
        self,
        method: tp.Callable[..., tp.Any] | None = None,
        /,
        *,
        item_uid: tp.Callable[[tp.Any], str],
        exclude_from_cache_uid: tp.Sequence[str] = (),
        cache_type: CacheType = None,
    ) -> MapDecorator:
        """Decorate a method taking one sequence of items and yielding one output per item."""
        if method is not None:
            raise TypeError(
                "MapInfra.apply needs item_uid: use @infra.apply(item_uid=str) (a function naming "
                "each item), not a bare @infra.apply"
            )
        if not callable(item_uid):
            raise TypeError(f"item_uid must be a callable item -> str, got {item_uid!r}")
        if cache_type not in (None, "array", "msgpack", "pickle"):
            raise ValueError(
                f"cache_type={cache_type!r} is not one of None, 'array', 'msgpack', 'pickle'"
            )
        return MapDecorator(self, item_uid, exclude_tuple(exclude_from_cache_uid), cache_type)


class MapDecorator:
    """What ``MapInfra.apply(item_uid=...)`` returns: applied to the method, gives the descriptor."""

    def __init__(
        self,
        infra: MapInfra,
        item_uid: tp.Callable[[tp.Any], str],
        exclude: tuple[str, ...],
        cache_type: CacheType,
    ) -> None:
        self._args = (infra, item_uid, exclude, cache_type)

    def __call__(
        self, func: tp.Callable[[Own, tp.Sequence[X]], tp.Iterable[R]]
    ) -> MapMethod[Own, X, R]:
        from .method import MapMethod

        infra, item_uid, exclude, cache_type = self._args
        return MapMethod(infra, func, item_uid, exclude, cache_type)


__all__ = ["MapDecorator", "MapInfra"]
