"""``TaskInfra``: where and how a method taking only ``self`` is cached and run.

``apply`` imports the method machinery (``method.py``, which needs numpy) when it decorates, not at
import: ``import exca_lite`` stays free of numpy, and ``method.py`` never imports this module at
run time, so the arrow runs one way.
"""

from __future__ import annotations

import dataclasses
import typing as tp

from ..infra import (
    TASK_CLUSTERS,
    TASK_MODES,
    Cluster,
    Infra,
    Mode,
    check_choice,
    exclude_tuple,
    track_explicit_fields,
)
from ..workdir import WorkDir, check_workdir

if tp.TYPE_CHECKING:
    from .method import TaskMethod

R = tp.TypeVar("R")
Own = tp.TypeVar("Own")


@track_explicit_fields
@dataclasses.dataclass(frozen=True, repr=False)
class TaskInfra(Infra):
    """Cache (and run) one computation per config: the result of a method taking only ``self``."""

    cluster: Cluster | None = None
    mode: Mode = "cached"
    workdir: WorkDir | None = None
    """Run submitted jobs from a copy of this code, made at submission (ignored for
    ``cluster=None`` and ``"debug"``, which run in this process)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(TaskInfra, "cluster", self.cluster, TASK_CLUSTERS)
        check_choice(TaskInfra, "mode", self.mode, TASK_MODES)
        check_workdir(TaskInfra, self.workdir)

    def check_usable(self) -> None:
        # not at construction: a class default may name the cluster, each instance the folder
        if self.cluster is not None and self.folder is None:
            raise ValueError(
                f"TaskInfra(cluster={self.cluster!r}) needs a folder: results come back through "
                "the cache folder; set folder=... (or cluster=None to compute in this process)"
            )

    @tp.overload
    def apply(self, method: tp.Callable[[Own], R], /) -> TaskMethod[Own, R]: ...

    @tp.overload
    def apply(
        self, /, *, exclude_from_cache_uid: tp.Sequence[str] = ()
    ) -> tp.Callable[[tp.Callable[[Own], R]], TaskMethod[Own, R]]: ...

    def apply(
        self,
        method: tp.Callable[[Own], R] | None = None,
        /,
        *,
        exclude_from_cache_uid: tp.Sequence[str] = (),
    ) -> TaskMethod[Own, R] | tp.Callable[[tp.Callable[[Own], R]], TaskMethod[Own, R]]:
        """Decorate a method taking only ``self``: its result is cached per config uid."""
        exclude = exclude_tuple(exclude_from_cache_uid)

        def decorate(func: tp.Callable[[Own], R]) -> TaskMethod[Own, R]:
            from .method import TaskMethod

            return TaskMethod(self, func, exclude)

        return decorate(method) if method is not None else decorate


__all__ = ["TaskInfra"]
