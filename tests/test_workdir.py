"""Code snapshots (``TaskInfra(workdir=xl.WorkDir(...))``): jobs run the code as it was when they
were submitted, from a content-addressed copy, with real submitit jobs (the held SLURM job is in
test_slurm_sweep.py)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import typing as tp
import uuid
from pathlib import Path

import pytest

import exca_lite as xl
from exca_lite.task import method as task_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> tp.Iterator[None]:
    task_module._RAM.clear()
    yield
    task_module._RAM.clear()
    task_module._JOBS.clear()


MODULE = """
import dataclasses
import os
import typing as tp

import exca_lite as xl

VERSION = {version!r}


@dataclasses.dataclass(frozen=True)
class Snap:
    param: int = 0
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def where(self) -> dict[str, tp.Any]:
        return {{"version": VERSION, "cwd": os.getcwd(), "file": __file__}}
"""


def write_module(src: Path, name: str, version: str) -> None:
    """The module's source as the user edits it (a job must not see an edit made after its
    submission)."""
    src.mkdir(exist_ok=True)
    (src / f"{name}.py").write_text(MODULE.format(version=version))


def snap_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tp.Any, Path, str]:
    """A fresh module (unique name) importable here only: jobs can import it from a copy only."""
    name = f"snap_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    write_module(src, name, "v1")
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    return module, src, name


def copies(cache: Path) -> list[Path]:
    code = cache / "code"
    return sorted(p for p in code.iterdir() if not p.name.startswith(".")) if code.exists() else []


def test_local_jobs_run_from_a_copy_made_at_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, src, name = snap_module(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    infra = xl.TaskInfra(folder=cache, cluster="local", workdir=xl.WorkDir(copied=(name,)))
    first = module.Snap(param=1, infra=infra).where()
    (copy,) = copies(cache)
    assert first == {"version": "v1", "cwd": str(copy), "file": str(copy / f"{name}.py")}
    assert sorted(p.name for p in copy.iterdir()) == [f"{name}.py"]
    # the same code again: the same copy, not a second one
    assert module.Snap(param=2, infra=infra).where()["cwd"] == str(copy)
    assert copies(cache) == [copy]
    # edited: the next submission gets a copy of the new code; the first copy is untouched
    write_module(src, name, "v2")
    third = module.Snap(param=3, infra=infra).where()
    assert third["version"] == "v2" and len(copies(cache)) == 2
    assert "v1" in (copy / f"{name}.py").read_text()
    # a job array shares one copy
    jobs = xl.job_array([module.Snap(param=p, infra=infra).where for p in (4, 5)])
    assert [job.result()["cwd"] for job in jobs] == [third["cwd"]] * 2
    for job in jobs:
        job.wait()  # their controllers reaped before the test ends
    assert len(copies(cache)) == 2
    # cluster=None runs here: nothing to copy, the code in memory runs
    here = module.Snap(param=6, infra=dataclasses.replace(infra, cluster=None)).where()
    assert here["cwd"] == os.getcwd() and len(copies(cache)) == 2


def test_a_copied_folder_keeps_python_sources_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, _src, name = snap_module(tmp_path, monkeypatch)
    lib = tmp_path / "work" / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "__pycache__").mkdir()
    (lib / "a.py").write_text("A = 1\n")
    (lib / "sub" / "b.py").write_text("B = 2\n")
    (lib / "data.csv").write_text("1,2\n")
    (lib / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (lib / ".hidden.py").write_text("")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "c.py").write_text("C = 3\n")
    monkeypatch.chdir(tmp_path / "work")
    cache = tmp_path / "cache"
    # a path leaving the current directory is copied under its own name, inside the copy
    workdir = xl.WorkDir(copied=(name, "lib", "../extra"))
    out = module.Snap(infra=xl.TaskInfra(folder=cache, cluster="local", workdir=workdir)).where()
    (copy,) = copies(cache)
    assert out["cwd"] == str(copy)
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert files == ["extra/c.py", "lib/a.py", "lib/sub/b.py", f"{name}.py"]


def test_a_cache_inside_the_copied_folder_is_not_copied(tmp_path: Path) -> None:
    """copied=(".",) with folder="cache" in the project: the cache (and its earlier copies) stays
    out of each copy, so the same code is one copy however often it is submitted."""
    from exca_lite.workdir import snapshot

    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("X = 1\n")
    cache = project / "cache"
    (cache / "some.Task.run,0" / "x=1-abc").mkdir(parents=True)
    (cache / "some.Task.run,0" / "x=1-abc" / "notes.py").write_text("")
    workdir = xl.WorkDir(copied=(str(project),))
    first = snapshot(workdir, cache)
    assert snapshot(workdir, cache) == first and len(list((cache / "code").iterdir())) == 1
    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert files == ["project/pkg/__init__.py"]


def test_workdir_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, _src, _name = snap_module(tmp_path, monkeypatch)
    with pytest.raises(TypeError, match=r"copied=\('mypkg',\)"):
        xl.WorkDir(copied="mypkg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="copies nothing"):
        xl.WorkDir()
    cache = tmp_path / "cache"
    for copied, error in [
        (("no_such_package_xyz",), ModuleNotFoundError),
        (("missing/train.py",), FileNotFoundError),
    ]:
        infra = xl.TaskInfra(folder=cache, cluster="local", workdir=xl.WorkDir(copied=copied))
        with pytest.raises(error, match=copied[0]):
            module.Snap(infra=infra).where()
        with pytest.raises(error, match=copied[0]):  # a sweep: refused before any submission
            xl.job_array([module.Snap(param=p, infra=infra).where for p in range(3)])
    assert copies(cache) == []
    # nothing was submitted, so no cache folder was left behind (no "not submitted" rows)
    assert not list(cache.rglob("config.json"))
    # the workdir is part of the infra's config (config.json), never of the uid
    infra = xl.TaskInfra(folder=cache, workdir=xl.WorkDir(copied=("lib",)))
    snap = module.Snap(param=9, infra=infra)
    assert snap.where.uid() == module.Snap(param=9, infra=xl.TaskInfra(folder=cache)).where.uid()
    assert xl.from_dict(module.Snap, xl.to_dict(snap)) == snap
    assert sys.modules[module.__name__] is module
