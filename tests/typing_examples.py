"""The typed surface, checked by mypy in ``test_typing.py`` (never executed).

``# revealed: T`` after ``tp.reveal_type(...)`` is the type mypy must reveal on that line;
``# error: code`` marks a line mypy must refuse with that error code; ``tp.assert_type`` lines must
pass as they are.
"""

from __future__ import annotations

import dataclasses
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt

import exca_lite as xl
from exca_lite.mapping.method import BoundMap
from exca_lite.mapping.view import MapView
from exca_lite.task import TaskJob
from exca_lite.task.method import BoundTask, TaskMethod


@dataclasses.dataclass(frozen=True)
class MyTask:
    param: int = 12
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.param * float(np.random.rand())

    @infra.apply(exclude_from_cache_uid=("param",))
    def array(self) -> npt.NDArray[np.float32]:
        return np.zeros(self.param, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Featurizer:
    dim: int = 4
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[npt.NDArray[np.float32]]:
        for item in items:
            yield np.full(self.dim, len(item), dtype=np.float32)


def task_examples(tmp_path: Path) -> None:
    task = MyTask(param=1, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    tp.reveal_type(task.process())  # revealed: float
    tp.assert_type(task.array(), npt.NDArray[np.float32])
    tp.assert_type(task.process, BoundTask[MyTask, float])
    tp.assert_type(MyTask.process, TaskMethod[MyTask, float])
    tp.reveal_type(task.process.uid())  # revealed: str
    tp.reveal_type(task.process.folder())  # revealed: pathlib.Path | None
    tp.reveal_type(task.process.config())  # revealed: dict[str, Any]
    tp.assert_type(
        task.process.status(), tp.Literal["not submitted", "running", "completed", "failed"]
    )
    tp.reveal_type(task.process.infra)  # revealed: exca_lite.task.infra.TaskInfra
    tp.reveal_type(task.process.clear())  # revealed: None
    tp.assert_type(task.process.iter_cached(), tp.Iterator[MyTask])
    tp.reveal_type(next(task.process.iter_cached()).param)  # revealed: int
    tp.assert_type(xl.job_array([task.process], max_parallel=2), list[TaskJob[float]])
    tp.reveal_type(xl.job_array([task.process])[0].result())  # revealed: float
    xl.job_array([task.process()])  # error: arg-type
    tp.assert_type(task.infra.mode, tp.Literal["cached", "retry", "force", "read-only"])
    task.process(1)  # error: call-arg
    xl.TaskInfra(cluster="locale")  # error: arg-type
    xl.TaskInfra(mode="cache")  # error: arg-type
    task.param = 3  # error: misc


def map_examples(tmp_path: Path) -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=tmp_path, cluster="processpool", max_jobs=4))
    tp.assert_type(feat.embed(["a", "bb"]), tp.Iterator[npt.NDArray[np.float32]])
    tp.assert_type(feat.embed.stack(["a"]), tp.Any)
    tp.reveal_type(feat.embed.compute(["a"]))  # revealed: int
    tp.reveal_type(feat.embed.uid())  # revealed: str
    tp.reveal_type(feat.embed.folder())  # revealed: pathlib.Path | None
    tp.reveal_type(feat.embed.cached_uids())  # revealed: list[str]
    tp.assert_type(feat.embed.iter_cached(), tp.Iterator[Featurizer])
    tp.assert_type(feat.embed, BoundMap[Featurizer, str, npt.NDArray[np.float32]])
    feat.embed([1, 2])  # error: list-item
    view = feat.embed.view(["a", "bb"])
    tp.assert_type(view, MapView[npt.NDArray[np.float32]])
    tp.assert_type(view[-1], npt.NDArray[np.float32])
    tp.assert_type(view[np.int64(0)], npt.NDArray[np.float32])
    tp.assert_type(view[0:2], np.ndarray)
    tp.assert_type(view[[1, 0]], np.ndarray)
    tp.reveal_type(len(view))  # revealed: int
    feat.embed.view([1])  # error: list-item


def config_examples(path: Path) -> None:
    tp.reveal_type(xl.from_dict(MyTask, {"param": 2}))  # revealed: typing_examples.MyTask
    tp.reveal_type(xl.load_config(MyTask, path))  # revealed: typing_examples.MyTask
    tp.reveal_type(xl.to_dict(MyTask()))  # revealed: dict[str, Any]
    xl.from_dict(MyTask, [1])  # error: arg-type


def error_examples() -> None:
    try:
        MyTask().process()
    except xl.ExcaLiteError as e:
        tp.reveal_type(e)  # revealed: exca_lite.errors.ExcaLiteError
    err: TypeError = xl.ConfigError("x")
    val: ValueError = xl.ValidationError("x")
    job: RuntimeError = xl.JobError("x")
    miss: LookupError = xl.CacheMissError("x")
    print(err, val, job, miss)
