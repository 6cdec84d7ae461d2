"""Sweeps: the results table of a sweep from its caches (``iter_cached``), with real processes."""

from __future__ import annotations

import shutil
import typing as tp
import warnings
from pathlib import Path

import pytest
from sweep_defs import Embedder, Optim, Run

import exca_lite as xl
from exca_lite.task import method as task_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> tp.Iterator[None]:
    """Results kept in RAM would hide what the cache folders hold: each test starts clean."""
    task_module._RAM.clear()
    yield
    task_module._RAM.clear()
    task_module._JOBS.clear()


def sweep_of_six(infra: xl.TaskInfra) -> list[Run]:
    """Six configs: three learning rates x two seeds, one with a nested change, one diverging."""
    runs = [Run(lr=lr, seed=seed, infra=infra) for lr in (0.1, 0.01, 0.001) for seed in (0, 1)]
    runs[3] = Run(lr=0.01, seed=1, optim=Optim(momentum=0.9), infra=infra)
    runs[5] = Run(lr=0.001, seed=1, diverge=True, infra=infra)
    return runs


def fields(run: Run) -> tuple[tp.Any, ...]:
    return (run.lr, run.seed, run.optim, run.diverge)


# # # iter_cached # # #


def test_iter_cached_rebuilds_every_config_with_the_callers_infra(tmp_path: Path) -> None:
    runs = sweep_of_six(xl.TaskInfra(folder=tmp_path))
    for run in runs:
        try:
            run.train()
        except FloatingPointError:
            assert run.diverge
    # neither another folder nor another version belongs to this sweep's table
    Run(lr=0.5, infra=xl.TaskInfra(folder=tmp_path / "elsewhere")).train()
    Run(lr=0.5, infra=xl.TaskInfra(folder=tmp_path, version="2")).train()
    task_module._RAM.clear()

    reader = xl.TaskInfra(folder=tmp_path, mode="read-only", keep_in_ram=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no folder here is skipped: no warning at all
        rows = list(Run(lr=7.0, infra=reader).train.iter_cached())
    assert sorted(map(fields, rows), key=repr) == sorted(map(fields, runs), key=repr)
    assert all(row.infra is reader for row in rows)  # the caller's infra, as given
    by_fields = {fields(row): row for row in rows}
    for run in runs:
        row = by_fields[fields(run)]
        assert row.train.uid() == run.train.uid()
        assert row.train.folder() == run.train.folder()
        if run.diverge:
            assert row.train.status() == "failed"
            with pytest.raises(xl.JobError, match=r"loss diverged with lr=0\.001") as info:
                row.train()
            assert "in _blow_up" in str(info.value)  # the original traceback, from the cache
        else:
            assert row.train.status() == "completed"
            assert row.train()["loss"] == pytest.approx(run.lr * (run.seed + 1))
    # the read-only reader wrote nothing: no folder for the caller's own config
    assert not tp.cast(Path, Run(lr=7.0, infra=reader).train.folder()).exists()
    # the version is the caller's: version 2 holds one cache
    (v2,) = Run(infra=xl.TaskInfra(folder=tmp_path, version="2")).train.iter_cached()
    assert v2.lr == 0.5 and v2.train.status() == "completed"


def test_iter_cached_lists_nothing_before_the_first_cache(tmp_path: Path) -> None:
    assert list(Run(infra=xl.TaskInfra(folder=tmp_path / "empty")).train.iter_cached()) == []
    with pytest.raises(ValueError, match=r"Run\.train\.iter_cached\(\).*set folder="):
        Run().train.iter_cached()


def test_iter_cached_skips_foreign_and_unreadable_folders_with_one_warning(
    tmp_path: Path,
) -> None:
    infra = xl.TaskInfra(folder=tmp_path)
    good = [Run(lr=lr, infra=infra) for lr in (0.1, 0.2, 0.3)]
    for run in good:
        run.train()
    folders = [tp.cast(Path, run.train.folder()) for run in good]
    method_dir = folders[0].parent
    # foreign: a folder of notes, a plain file, a copy of a cache under a name not its uid
    (method_dir / "notes").mkdir()
    (method_dir / "notes" / "todo.txt").write_text("compare the lrs\n")
    (method_dir / "README.txt").write_text("results of the lr sweep\n")
    shutil.copytree(folders[1], method_dir / "lr=0.2-copy")
    # unreadable: a damaged config.json (the cache itself stays, but cannot be rebuilt)
    (folders[2] / "config.json").write_bytes(b'{"lr": 0.3, "seed"')
    (method_dir / ".hidden-tmp").mkdir()  # hidden entries (temp files) are not caches: silent

    with pytest.warns(xl.CorruptCacheWarning) as record:
        rows = list(Run(infra=infra).train.iter_cached())
    assert [row.lr for row in rows] == [0.1, 0.2]
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert str(method_dir) in message and "skipped 4 folder(s)" in message
    for name in ("notes", "README.txt", "lr=0.2-copy", folders[2].name):
        assert name in message
    assert "no config.json" in message and "DecodeError" in message
    assert "Remove them" in message
    # the skipped cache is left alone: its own config still finds its result
    assert Run(lr=0.3, infra=infra).train.status() == "completed"


def test_iter_cached_of_a_map_method(tmp_path: Path) -> None:
    infra = xl.MapInfra(folder=tmp_path, cluster="threadpool", max_jobs=2)
    embedders = [Embedder(dim=2, infra=infra), Embedder(dim=3, scale=0.5, infra=infra)]
    items = {2: ["a", "bb", "ccc"], 3: ["dddd"]}
    for emb in embedders:
        assert emb.embed.compute(items[emb.dim]) == len(items[emb.dim])
    reader = xl.MapInfra(folder=tmp_path, mode="read-only")
    rows = list(Embedder(infra=reader).embed.iter_cached())
    assert sorted((row.dim, row.scale) for row in rows) == [(2, 1.0), (3, 0.5)]
    assert all(row.infra is reader for row in rows)
    for row in rows:
        assert sorted(row.embed.cached_uids()) == items[row.dim]
        stacked = row.embed.stack(items[row.dim])
        assert stacked.shape == (len(items[row.dim]), row.dim)
        assert float(stacked[0, 0]) == len(items[row.dim][0]) * row.scale
