"""The command line through real subprocesses (``python -m exca_lite ...``) on real caches.

The caches are made by the library itself, in subprocesses too: this module doubles as their
script (``python -c "import test_cli; test_cli.script()" ...``), so the config classes below have
the same module name, hence the same uids, in every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest

import exca_lite as xl

DIM = 64


def expected(uid: str) -> np.ndarray:
    """The value of item ``uid``: any process can check what it reads."""
    return np.arange(DIM, dtype=np.float64) + int(uid)


@dataclasses.dataclass(frozen=True)
class Feat:
    dim: int = DIM
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield expected(str(item))


@dataclasses.dataclass(frozen=True)
class Task:
    param: int = 0
    array: bool = False
    fail: bool = False
    gate: str = ""  # when set: touch gate + ".started", then wait until the gate file exists
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("gate",))
    def process(self) -> tp.Any:
        if self.gate:
            Path(self.gate + ".started").touch()
            while not Path(self.gate).exists():
                time.sleep(0.02)
        if self.fail:
            raise ValueError(f"task {self.param} fails on purpose")
        if self.array:
            return np.arange(1000, dtype=np.float32) * self.param
        return {"param": self.param}


# # # the script side: run in subprocesses # # #


def script() -> None:
    """``fill ROOT START STOP [cluster] [mode] [chunk] [pause_s]`` | ``read CACHE STOP_FILE``."""
    command, *args = sys.argv[1:]
    if command == "fill":
        root, start, stop = args[0], int(args[1]), int(args[2])
        cluster = None if len(args) < 4 or args[3] == "none" else args[3]
        mode = args[4] if len(args) > 4 else "cached"
        chunk = int(args[5]) if len(args) > 5 else stop - start
        pause_s = float(args[6]) if len(args) > 6 else 0.0
        feat = Feat(infra=xl.MapInfra(folder=root, cluster=cluster, mode=mode, max_jobs=4))  # type: ignore[arg-type]
        for first in range(start, stop, chunk):
            feat.embed.compute(list(range(first, min(stop, first + chunk))))
            time.sleep(pause_s)
    elif command == "task":
        root = args[0]
        for param in range(int(args[1])):
            Task(param=param, array=param % 2 == 1, infra=xl.TaskInfra(folder=root)).process()
    elif command == "read":
        _read_loop(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown command {command}")


def _read_loop(cache: Path, stop_file: Path) -> None:
    """Iterate the whole cache again and again until ``stop_file`` exists: every value must be
    right, and an item once seen must never disappear. Prints the number of passes and reads."""
    from exca_lite.store import MapStore

    store = MapStore(cache)
    seen: set[str] = set()
    passes = reads = 0
    while not stop_file.exists():
        store.refresh()
        uids = store.item_uids()
        lost = seen - set(uids)
        if lost:
            raise SystemExit(f"items lost while reading: {sorted(lost)[:5]}")
        for uid in uids:
            value = store.load(uid)
            if not np.array_equal(value, expected(uid)):
                raise SystemExit(f"item {uid} read back wrong: {value[:4]}")
            reads += 1
        seen.update(uids)
        passes += 1
    print(json.dumps({"passes": passes, "reads": reads, "items": len(seen)}))


# # # helpers of the test side # # #


def run_script(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    code = "import test_cli; test_cli.script()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode:
        raise AssertionError(f"script {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_script(env: dict[str, str], *args: str | Path) -> subprocess.Popen[str]:
    code = "import test_cli; test_cli.script()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(
    env: dict[str, str],
    *args: str | Path,
    input: str | None = None,
    prefix: tp.Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "exca_lite", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        input=input if input is not None else "",
        timeout=120,
    )


def map_cache(root: Path) -> Path:
    (folder,) = [p for p in root.glob("test_cli.Feat.embed,1/*") if p.is_dir()]
    return folder


def shard_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.bin"))


def ls_json(env: dict[str, str], root: Path) -> dict[str, dict[str, tp.Any]]:
    """``ls --json`` rows by uid."""
    proc = cli(env, "ls", "--json", root)
    assert proc.returncode == 0, proc.stderr
    return {row["uid"]: row for row in json.loads(proc.stdout)}


def wait_for_file(path: Path, timeout_s: float = 60) -> None:
    """Poll until ``path`` exists (a job says it started), with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {path}")
        time.sleep(0.02)


def set_mtime(cache: Path, days_ago: float) -> None:
    """Make every file of a cache folder look last written ``days_ago`` days ago."""
    when = time.time() - days_ago * 86400
    for file in [cache, *cache.rglob("*")]:
        os.utime(file, (when, when), follow_symlinks=False)


WRITER = (
    "import sys, pathlib, time\n"
    "import numpy as np\n"
    "from exca_lite.store import MapStore\n"
    "with MapStore(sys.argv[1]).writer() as w:\n"
    "    print('open', flush=True)\n"
    "    while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
)
"""A process holding a writer of a map cache open until a stop file exists."""


def info_json(env: dict[str, str], cache: Path) -> dict[str, tp.Any]:
    proc = cli(env, "info", "--json", cache)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, tp.Any] = json.loads(proc.stdout)
    return out


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    env = dict(subprocess_env)
    env["PYTHONWARNINGS"] = "error::DeprecationWarning:exca_lite"
    return env


@pytest.fixture
def filled(tmp_path: Path, env: dict[str, str]) -> Path:
    """A cache root with a map cache of 600 items (written by 4 threads) and 4 task caches."""
    root = tmp_path / "root"
    run_script(env, "fill", root, 0, 600, "threadpool")
    run_script(env, "task", root, 4)
    return root


# # # ls # # #


@pytest.mark.timeout(120)
def test_ls_table_and_json(filled: Path, env: dict[str, str]) -> None:
    proc = cli(env, "ls", filled)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["PATH", "KIND", "STATUS", "ITEMS", "SIZE", "LAST", "WRITE"]
    assert len(lines) == 1 + 5 + 1  # header, 5 caches, total
    cache = map_cache(filled)
    assert re.search(rf"^{re.escape(str(cache))}\s+map\s+-\s+600\s+\d+\.\d KiB", proc.stdout, re.M)
    tasks = [line for line in lines if "test_cli.Task.process,1/" in line]
    assert len(tasks) == 4 and all(
        line.split()[1:4] == ["task", "completed", "-"] for line in tasks
    )
    assert lines[-1].startswith("5 cache(s), ")
    # each path is usable as CACHE_DIR as printed
    for line in lines[1:-1]:
        assert cli(env, "info", line.split()[0]).returncode == 0

    proc = cli(env, "ls", "--json", filled)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [row["uid"] for row in rows] == sorted(row["uid"] for row in rows)
    kinds = {row["uid"].split("/")[0]: row["kind"] for row in rows}
    assert kinds == {"test_cli.Feat.embed,1": "map", "test_cli.Task.process,1": "task"}
    (feat,) = [row for row in rows if row["kind"] == "map"]
    assert feat["items"] == 600
    assert feat["bytes"] >= 600 * DIM * 8
    assert feat["last_write"] <= time.time() + 1
    assert Path(feat["path"]) == map_cache(filled)
    assert all(row["items"] == 1 for row in rows if row["kind"] == "task")
    assert {row["status"] for row in rows} == {None, "completed"}  # None: a map cache
    # a cache folder itself, or a folder above the root, lists the same caches
    proc = cli(env, "ls", "--json", map_cache(filled))
    assert [row["uid"] for row in json.loads(proc.stdout)] == [feat["uid"]]
    proc = cli(env, "ls", "--json", filled.parent)
    assert len(json.loads(proc.stdout)) == 5


@pytest.mark.timeout(60)
def test_ls_empty_folder(tmp_path: Path, env: dict[str, str]) -> None:
    proc = cli(env, "ls", tmp_path)
    assert proc.returncode == 0 and "no cache under" in proc.stdout
    proc = cli(env, "ls", "--json", tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


@pytest.mark.timeout(180)
def test_ls_status_of_tasks(tmp_path: Path, env: dict[str, str]) -> None:
    """completed / failed / running / not submitted, as ``task.process.status()`` says."""
    root = tmp_path / "root"
    infra = xl.TaskInfra(folder=root)
    done = Task(param=1, infra=infra)
    done.process()
    failed = Task(param=2, fail=True, infra=infra)
    with pytest.raises(ValueError, match="fails on purpose"):
        failed.process()
    cleared = Task(param=3, infra=infra)
    cleared.process()
    cleared.process.clear()  # the folder and its configs stay: a cache not submitted (again)
    gate = tmp_path / "gate"
    running = Task(param=4, gate=str(gate), infra=xl.TaskInfra(folder=root, cluster="local"))
    job = running.process.job()  # a real submitit job, blocked until the gate opens
    try:
        wait_for_file(Path(f"{gate}.started"))
        expected = {done: "completed", failed: "failed", cleared: "not submitted"}
        expected[running] = "running"
        rows = ls_json(env, root)
        assert {row["status"] for row in rows.values()} == set(expected.values())
        for task, status in expected.items():
            assert rows[task.process.uid()]["status"] == status == task.process.status()
        proc = cli(env, "ls", root)
        assert proc.returncode == 0, proc.stderr
        for task, status in expected.items():
            assert re.search(rf"{re.escape(task.process.uid())}\s+task\s+{status}\s", proc.stdout)
        # info derives the status the same way
        assert info_json(env, tp.cast(Path, running.process.folder()))["status"] == "running"
        # a running task is not cleared under its job's feet
        proc = cli(env, "clear", "--yes", running.process.folder())
        assert proc.returncode == 5 and "its job is running" in proc.stderr, proc.stderr
    finally:
        gate.touch()
    assert job.result() == {"param": 4}
    assert ls_json(env, root)[running.process.uid()]["status"] == "completed"
    folder = tp.cast(Path, running.process.folder())
    assert info_json(env, folder)["job_id"] == str(job.job_id)
    running.process.clear()  # the logs link stays; the job id it names is no longer this task's
    assert info_json(env, folder)["job_id"] is None


# # # info # # #


@pytest.mark.timeout(120)
def test_info_map_and_task(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    proc = cli(env, "info", cache)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^items:\s+600$", proc.stdout, re.M)
    assert re.search(r"^shards:\s+\d+$", proc.stdout, re.M)
    assert re.search(r"^writers:\s+0 holding a lock now$", proc.stdout, re.M)
    assert '"max_jobs": 4' in proc.stdout  # the config.json
    info = info_json(env, cache)
    assert info["kind"] == "map" and info["items"] == 600
    assert set(info["shards"]) == {p.name for p in shard_files(cache)}
    assert info["shards"] == {p.name: p.stat().st_size for p in shard_files(cache)}
    assert info["dead_bytes"] == 0
    assert info["config"]["dim"] == DIM

    task = next(filled.glob("test_cli.Task.process,1/array=true,param=1-*"))
    proc = cli(env, "info", task)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^status:\s+completed$", proc.stdout, re.M)
    assert re.search(r"^file:\s+result\.npy\s+\d", proc.stdout, re.M)
    info = info_json(env, task)
    assert info["kind"] == "task" and info["config"]["param"] == 1
    assert info["lock_held"] is False


@pytest.mark.timeout(120)
def test_info_shows_a_writer_holding_a_lock(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    stop = filled / "stop"
    code = (
        "import sys, pathlib, time\n"
        "from exca_lite.store import MapStore\n"
        "with MapStore(sys.argv[1]).writer() as w:\n"
        "    print('open', flush=True)\n"
        "    while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(cache), str(stop)], env=env, stdout=subprocess.PIPE
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"open\n"
            assert info_json(env, cache)["writers"] == 1
        finally:
            stop.touch()
            assert writer.wait(timeout=60) == 0
    assert info_json(env, cache)["writers"] == 0


# # # verify # # #


@pytest.mark.timeout(120)
def test_verify_healthy(filled: Path, env: dict[str, str]) -> None:
    proc = cli(env, "verify", map_cache(filled))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "600 item(s) checked, no damage" in proc.stdout
    assert "verifying 600 item(s)" in proc.stderr  # progress goes to stderr
    for task in filled.glob("test_cli.Task.process,1/*"):
        assert cli(env, "verify", task).returncode == 0


@pytest.mark.timeout(120)
def test_verify_truncated_shard(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    shard = max(shard_files(cache), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size // 2)
    proc = cli(env, "verify", cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "points past the end" in proc.stdout and shard.name in proc.stdout
    assert "problem(s) found" in proc.stderr


@pytest.mark.timeout(120)
def test_verify_corrupted_shard(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    shard = shard_files(cache)[0]
    with open(shard, "r+b") as f:  # flip bytes inside the data of the first items
        f.seek(200)
        data = f.read(16)
        f.seek(200)
        f.write(bytes(b ^ 0xFF for b in data))
    proc = cli(env, "verify", cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "do not match their checksum" in proc.stdout
    damaged = [line for line in proc.stdout.splitlines() if line.startswith("damaged:")]
    assert 1 <= len(damaged) <= 2  # only the items whose bytes were touched


@pytest.mark.timeout(120)
def test_verify_corrupted_index(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    index = sorted(cache.glob("*.idx"))[0]
    with open(index, "r+b") as f:
        f.seek(32 + 12 + 5)  # inside the payload of the first record
        f.write(b"\xde\xad\xbe\xef")
    proc = cli(env, "verify", cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert index.name in proc.stdout


@pytest.mark.timeout(120)
def test_verify_damaged_task(filled: Path, env: dict[str, str]) -> None:
    npy = next(filled.glob("test_cli.Task.process,1/array=true,param=1-*/result.npy"))
    os.truncate(npy, npy.stat().st_size - 100)
    proc = cli(env, "verify", npy.parent)
    assert proc.returncode == 1 and "result.npy: unreadable result" in proc.stdout
    pkl = next(filled.glob("test_cli.Task.process,1/default-*/result.pkl"))
    pkl.write_bytes(b"not a pickle")
    proc = cli(env, "verify", pkl.parent)
    assert proc.returncode == 1 and "result.pkl: unreadable result" in proc.stdout


@pytest.mark.timeout(120)
def test_verify_a_root_names_the_damaged_cache(filled: Path, env: dict[str, str]) -> None:
    proc = cli(env, "verify", filled)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok: ") == 5
    assert "5 cache(s): 5 healthy, 0 damaged, 0 could not be checked" in proc.stderr
    npy = next(filled.glob("test_cli.Task.process,1/array=true,param=1-*/result.npy"))
    os.truncate(npy, npy.stat().st_size - 100)
    proc = cli(env, "verify", filled)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("ok: ") == 4
    assert f"damaged: {npy}: unreadable result" in proc.stdout
    assert f"damaged cache: {npy.parent} " in proc.stderr
    assert "5 cache(s): 4 healthy, 1 damaged, 0 could not be checked" in proc.stderr
    # several CACHE_DIRs, and a root given with one of its own caches (checked once)
    proc = cli(env, "verify", map_cache(filled), filled / "test_cli.Feat.embed,1")
    assert proc.returncode == 0 and proc.stdout.count("ok: ") == 1, proc.stderr
    proc = cli(env, "verify", map_cache(filled), npy.parent)
    assert proc.returncode == 1 and f"damaged cache: {npy.parent} " in proc.stderr
    empty = filled / "empty"
    empty.mkdir()
    proc = cli(env, "verify", map_cache(filled), empty)
    assert proc.returncode == 2 and f"no cache under {empty}" in proc.stderr


@pytest.mark.timeout(180)
def test_verify_while_written(filled: Path, env: dict[str, str]) -> None:
    """A cache being written is healthy: records in progress are not damage."""
    cache = map_cache(filled)
    writer = start_script(env, "fill", filled, 600, 3000, "none", "cached", 20, 0.002)
    runs = 0
    try:
        while writer.poll() is None or runs < 3:
            proc = cli(env, "verify", cache)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            runs += 1
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert runs >= 3
    assert info_json(env, cache)["items"] == 3000


# # # compact # # #


@pytest.mark.timeout(240)
def test_compact_while_reading_and_writing(filled: Path, env: dict[str, str]) -> None:
    root = filled
    cache = map_cache(root)
    # duplicates: recompute 300 items (mode="force" appends them again), so there is dead space
    run_script(env, "fill", root, 0, 300, "none", "force")
    before = info_json(env, cache)
    assert before["dead_bytes"] > 0 and before["items"] == 600

    stop = root / "stop-reading"
    reader = start_script(env, "read", cache, stop)
    writer = start_script(env, "fill", root, 600, 2000, "none", "cached", 50, 0.02)
    compactions = 0
    try:
        while writer.poll() is None or compactions < 2:
            proc = cli(env, "compact", cache)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout.startswith("compacted ")
            compactions += 1
            time.sleep(0.05)
    finally:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, out + err
    reading = json.loads(out)
    assert reading["passes"] >= 2 and reading["items"] >= 600

    middle = info_json(env, cache)
    proc = cli(env, "compact", cache)  # quiet now: everything ends in one file
    assert proc.returncode == 0, proc.stderr
    after = info_json(env, cache)
    assert after["items"] == 2000
    assert list(after["shards"]) == [next(iter(after["shards"]))]  # one shard
    assert after["shards"] and next(iter(after["shards"])).startswith("c-")
    assert after["dead_bytes"] == 0
    assert after["bytes"] <= middle["bytes"] + 4096  # (index records may differ by a few bytes)
    # bytes reduced: 2000 items now take less than the 600 (+300 duplicates) took per item
    assert after["bytes"] / 2000 < before["bytes"] / 600
    assert cli(env, "verify", cache).returncode == 0

    # nothing lost, values identical, read by a fresh process
    check = (
        "import sys, numpy as np, test_cli\n"
        "from exca_lite.store import MapStore\n"
        "store = MapStore(sys.argv[1])\n"
        "uids = store.item_uids()\n"
        "assert sorted(map(int, uids)) == list(range(2000)), len(uids)\n"
        "for u in uids: assert np.array_equal(store.load(u), test_cli.expected(u)), u\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check, str(cache)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(120)
def test_compact_reports_bytes(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    run_script(env, "fill", filled, 0, 600, "none", "force")  # every item twice
    before = info_json(env, cache)["bytes"]
    proc = cli(env, "compact", "--no-verify", cache)
    assert proc.returncode == 0, proc.stderr
    assert "checking" not in proc.stderr and "compacting 600 item(s)" in proc.stderr
    assert re.match(r"compacted \S+: 600 item\(s\) moved, .* -> .* \(.* reclaimed\)", proc.stdout)
    after = info_json(env, cache)["bytes"]
    assert after < before * 0.6
    task = next(filled.glob("test_cli.Task.process,1/*"))
    proc = cli(env, "compact", task)
    assert proc.returncode == 0 and "nothing to compact" in proc.stdout


@pytest.mark.timeout(120)
def test_compact_refuses_a_damaged_cache(filled: Path, env: dict[str, str]) -> None:
    """Compaction copies bytes as they are: it must not turn damage into a 'healthy' cache."""
    cache = map_cache(filled)
    shard = max(shard_files(cache), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size - 64)
    files = {p.name: p.stat().st_size for p in cache.iterdir() if p.is_file()}
    env = {**env, "EXCA_LITE_LAG_WARN_S": "0"}  # damage, not a late-visibility lag
    proc = cli(env, "compact", cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not compacted" in proc.stderr and "damaged:" in proc.stdout
    assert {p.name: p.stat().st_size for p in cache.iterdir() if p.is_file()} == files
    # the store's warning about the damage is one readable line, not a Python warning dump
    assert "warning: " in proc.stderr and "mapstore.py" not in proc.stderr


# # # clear # # #


@pytest.mark.timeout(120)
def test_clear_asks_for_confirmation(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    for answer in ("", "n\n", "no\n"):
        proc = cli(env, "clear", cache, input=answer)
        assert proc.returncode == 1, proc.stderr
        assert "[y/N]" in proc.stderr and "nothing removed" in proc.stderr
    assert info_json(env, cache)["items"] == 600
    proc = cli(env, "clear", cache, input="y\n")
    assert proc.returncode == 0, proc.stderr
    assert "cleared" in proc.stdout and "600 item(s)" in proc.stdout
    assert info_json(env, cache)["items"] == 0
    assert not shard_files(cache)


@pytest.mark.timeout(120)
def test_clear_yes(filled: Path, env: dict[str, str]) -> None:
    task = next(filled.glob("test_cli.Task.process,1/default-*"))
    proc = cli(env, "clear", "--yes", task)
    assert proc.returncode == 0, proc.stderr
    assert not (task / "result.pkl").exists() and (task / "config.json").exists()
    rows = json.loads(cli(env, "ls", "--json", filled).stdout)
    assert {row["uid"]: row["items"] for row in rows}[
        f"{task.parent.name}/{task.name}"
    ] == 0  # still listed, now empty
    proc = cli(env, "clear", "-y", map_cache(filled))
    assert proc.returncode == 0, proc.stderr
    assert cli(env, "verify", map_cache(filled)).returncode == 0  # an empty cache is healthy


@pytest.mark.timeout(120)
def test_clear_refuses_a_live_writer_unless_forced(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    stop = filled.parent / "stop"
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cache), str(stop)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"open\n"
            proc = cli(env, "clear", "--yes", cache)
            assert proc.returncode == 5, proc.stdout + proc.stderr
            assert f"refused: {cache}: 1 writer(s) active now" in proc.stderr
            assert "--force" in proc.stderr
            assert info_json(env, cache)["items"] == 600
            # over the root: the idle task caches are cleared, the busy map cache is not
            proc = cli(env, "clear", "--yes", filled)
            assert proc.returncode == 5, proc.stdout + proc.stderr
            assert proc.stdout.count("cleared ") == 4 and "4 cache(s) cleared" in proc.stdout
            rows = ls_json(env, filled)
            assert {row["status"] for row in rows.values()} == {None, "not submitted"}
            assert info_json(env, cache)["items"] == 600
            proc = cli(env, "clear", "--yes", "--force", cache)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "cleared anyway (--force)" in proc.stderr and "600 item(s)" in proc.stdout
            assert info_json(env, cache)["items"] == 0
        finally:
            stop.touch()
            writer.wait(timeout=60)
    assert info_json(env, cache)["writers"] == 0


@pytest.mark.timeout(120)
def test_clear_older_than(filled: Path, env: dict[str, str]) -> None:
    cache = map_cache(filled)
    old_task, *recent_tasks = sorted(filled.glob("test_cli.Task.process,1/*"))
    set_mtime(cache, days_ago=40)
    set_mtime(old_task, days_ago=10)
    set_mtime(recent_tasks[0], days_ago=2)
    proc = cli(env, "clear", "--older-than", "30", filled, input="n\n")
    assert proc.returncode == 1 and "nothing removed" in proc.stderr  # still asks first
    assert f"of {cache.parent.name}/{cache.name} in {cache}?" in proc.stderr
    proc = cli(env, "clear", "--yes", "--older-than", "7", filled)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 cache(s) cleared" in proc.stdout
    rows = ls_json(env, filled)
    assert rows[f"{cache.parent.name}/{cache.name}"]["items"] == 0
    assert rows[f"{old_task.parent.name}/{old_task.name}"]["status"] == "not submitted"
    for task in recent_tasks:
        assert rows[f"{task.parent.name}/{task.name}"]["status"] == "completed"
    proc = cli(env, "clear", "--yes", "--older-than", "1.5", recent_tasks[1])
    assert proc.returncode == 0 and "nothing cleared" in proc.stdout, proc.stderr
    assert cli(env, "clear", "--yes", "--older-than", "-1", filled).returncode == 2


# # # errors and help # # #


@pytest.mark.timeout(120)
def test_bad_paths(filled: Path, env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    a_file = tmp_path / "file.txt"
    a_file.write_text("hello")
    for command in ("ls", "info", "verify", "compact", "clear"):
        proc = cli(env, command, missing)
        assert proc.returncode == 2, (command, proc.stderr)
        assert f"exca-lite {command}: error: no such folder: {missing}" in proc.stderr
        proc = cli(env, command, a_file)
        assert proc.returncode == 2 and f"not a folder: {a_file}" in proc.stderr
        assert "Traceback" not in proc.stderr
    for command in ("info", "compact"):
        proc = cli(env, command, filled)  # the root, not a cache: a hint names one
        assert proc.returncode == 2, proc.stderr
        assert f"not a cache folder: {filled}; it holds 5 cache(s)" in proc.stderr
        proc = cli(env, command, tmp_path / "root" / "test_cli.Feat.embed,1")
        assert proc.returncode == 2 and "not a cache folder" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("verify", "clear"):  # these take roots: one without any cache is an error
        proc = cli(env, command, tmp_path / "root" / "test_cli.Feat.embed,1", empty)
        assert proc.returncode == 2, proc.stderr
        assert f"exca-lite {command}: error: no cache under {empty}" in proc.stderr
    assert info_json(env, map_cache(filled))["items"] == 600  # nothing cleared before the error
    assert cli(env, "frobnicate").returncode == 2
    assert cli(env).returncode == 2
    assert cli(env, "info").returncode == 2  # missing CACHE_DIR


@pytest.fixture
def shared_tmp() -> tp.Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="exca_lite_cli_"))
    folder.chmod(0o755)
    yield folder
    for sub in [folder, *folder.rglob("*")]:
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(folder)


def _other_user() -> list[str]:
    """Run as an unprivileged user: root ignores file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.timeout(120)
def test_permission_errors(shared_tmp: Path, env: dict[str, str]) -> None:
    prefix = _other_user()
    root = shared_tmp / "root"
    run_script(env, "fill", root, 0, 50)
    run_script(env, "task", root, 2)
    cache = map_cache(root)
    task = next(root.glob("test_cli.Task.process,1/default-*"))
    # readable but not writable: inspecting works, maintenance is refused with exit 3
    assert cli(env, "verify", cache, prefix=prefix).returncode == 0
    assert cli(env, "info", cache, prefix=prefix).returncode == 0
    for args in (("compact", cache), ("clear", "--yes", cache), ("clear", "--yes", task)):
        proc = cli(env, *args, prefix=prefix)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert f"exca-lite {args[0]}: error: permission denied" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert info_json(env, cache)["items"] == 50  # nothing was removed
    assert (task / "result.pkl").exists()
    # unreadable: exit 3 for a cache, skipped with a warning by ls
    task.chmod(0o700)
    proc = cli(env, "info", task, prefix=prefix)
    assert proc.returncode == 3 and "permission denied" in proc.stderr, proc.stderr
    proc = cli(env, "ls", "--json", root, prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 2  # the map cache and the other task
    assert "permission denied" in proc.stderr and "skipped" in proc.stderr
    # verify: a cache it cannot read is "could not check" (3), never damage (1)...
    proc = cli(env, "verify", root, prefix=prefix)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"could not check: permission denied: cannot list {task}" in proc.stderr
    assert "3 cache(s): 2 healthy, 0 damaged, 1 could not be checked" in proc.stderr
    # ...unless damage is found elsewhere: then 1, with both said
    other = next(p for p in root.glob("test_cli.Task.process,1/*") if p != task)
    (other / "result.pkl").write_bytes(b"not a pickle")
    proc = cli(env, "verify", root, prefix=prefix)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"damaged cache: {other} " in proc.stderr and "could not check" in proc.stderr
    root.chmod(0o700)
    proc = cli(env, "ls", root, prefix=prefix)
    assert proc.returncode == 3 and "permission denied" in proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["ls", "info", "verify", "compact", "clear", "demo"])
def test_help(command: str, env: dict[str, str]) -> None:
    proc = cli(env, command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: exca-lite {command}")
    assert "exit codes:" in proc.stdout
    proc = cli(env, "--help")
    assert proc.returncode == 0 and "permission denied" in proc.stdout


@pytest.mark.timeout(60)
def test_console_script_matches_module(env: dict[str, str]) -> None:
    """``exca-lite`` (the installed console script) is the same entry point as ``-m exca_lite``."""
    script = Path(sys.executable).parent / "exca-lite"
    if not script.exists():
        pytest.skip("exca-lite console script not installed in this environment")
    proc = subprocess.run(
        [str(script), "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: exca-lite")


@pytest.mark.timeout(300)
def test_the_readme_demo_runs(tmp_path: Path, env: dict[str, str]) -> None:
    """``python -m exca_lite demo``, the README's first command: a package's ``__main__`` that
    runs a processpool map (its workers never run that module again: no guard needed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "exca_lite", "demo"],
        env=dict(env, TMPDIR=str(tmp_path)),  # the demo's cache folder goes under tmp_path
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "computed by 2 worker processes" in proc.stdout
    assert "all cache hits" in proc.stdout
