"""Code snapshots for map jobs (``MapInfra(workdir=xl.WorkDir(...))``): a job array runs from one
copy of the code made at submission, with real submitit local jobs (the task side is
test_workdir.py)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing as tp
import uuid
from pathlib import Path

import pytest
from test_workdir import copies

import exca_lite as xl

pytestmark = pytest.mark.timeout(180)

MODULE = """
import dataclasses
import os
import typing as tp

import exca_lite as xl

VERSION = {version!r}


@dataclasses.dataclass(frozen=True)
class MapSnap:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def where(self, items: tp.Sequence[int]) -> tp.Iterator[dict[str, tp.Any]]:
        for item in items:
            yield {{"item": item, "version": VERSION, "cwd": os.getcwd(), "pid": os.getpid()}}
"""


def write_module(src: Path, name: str, version: str) -> None:
    src.mkdir(exist_ok=True)
    (src / f"{name}.py").write_text(MODULE.format(version=version))


def test_a_map_job_array_runs_from_one_copy_made_at_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"mapsnap_{uuid.uuid4().hex[:8]}"  # importable here only: jobs find it in the copy
    src = tmp_path / "src"
    write_module(src, name, "v1")
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    root = tmp_path / "cache"
    infra = xl.MapInfra(
        folder=root, cluster="local", max_jobs=2, workdir=xl.WorkDir(copied=(name,))
    )
    first = list(module.MapSnap(infra=infra).where([1, 2, 3, 4]))
    (copy,) = copies(root)
    assert {o["version"] for o in first} == {"v1"} and {o["cwd"] for o in first} == {str(copy)}
    assert len({o["pid"] for o in first}) == 2  # two jobs of the array, one copy
    assert sorted(p.name for p in copy.iterdir()) == [f"{name}.py"]
    # edited: the next submission runs the new code from a new copy; cached items stay as they are
    write_module(src, name, "v2")
    second = list(module.MapSnap(infra=infra).where([4, 5, 6]))
    assert [o["version"] for o in second] == ["v1", "v2", "v2"]
    assert len(copies(root)) == 2 and "v1" in (copy / f"{name}.py").read_text()
    # in this process (and in pools) there is nothing to copy: the code in memory runs
    here = module.MapSnap(infra=dataclasses.replace(infra, cluster=None)).where([7])
    assert next(here)["cwd"] == os.getcwd() and len(copies(root)) == 2


def test_map_workdir_must_be_a_workdir(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"MapInfra.workdir must be an xl.WorkDir"):
        xl.MapInfra(folder=tmp_path, workdir="mypkg")  # type: ignore[arg-type]
    infra: tp.Any = xl.MapInfra(folder=tmp_path, workdir=xl.WorkDir(copied=("mypkg",)))
    assert infra.workdir.copied == ("mypkg",)
