"""Config classes for the SLURM tests (importable by module name inside SLURM jobs).

Each computation records where it ran (SLURM job and array task ids, pid) in a ``counter`` file
(``O_APPEND``: atomic between processes and jobs), so tests can tell how many times, and in which
job, something was computed. ``Gated`` blocks until its ``gate`` file exists, so a test can observe
(and re-attach to, or cancel) a job that is really running, without guessing sleep times.

``project_cluster_problem`` tells whether the SLURM cluster these commands reach is the project's
own test cluster (``tests/slurm/cluster.sh``): the SLURM tests must never submit to another one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import time
import typing as tp
from pathlib import Path

import numpy as np

import exca_lite as xl

GATE_TIMEOUT_S = 120.0
CLUSTER_SCRIPT = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
START_HINT = "start it with `sudo bash tests/slurm/cluster.sh start` (see tests/slurm/README.md)"
_SLURM_COMMANDS = ("sbatch", "sinfo", "sacct", "squeue", "scancel", "scontrol")


def _script_setting(name: str) -> str:
    """A ``NAME=value`` of cluster.sh: the script is the one place the cluster's identity is set."""
    match = re.search(rf'^{name}="?([^"\n]*)"?$', CLUSTER_SCRIPT.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{CLUSTER_SCRIPT} sets no {name}=...: update project_cluster_problem")
    return match.group(1)


def _run(command: list[str]) -> tuple[str, str]:
    """(stdout, "") of a SLURM command, or ("", why it failed)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", f"`{' '.join(command)}` failed: {e}"
    if proc.returncode != 0:
        return "", f"`{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    return proc.stdout, ""


def project_cluster_problem() -> str:
    """Why the SLURM tests must not run here ("" when they may).

    They may only against the cluster that tests/slurm/cluster.sh configures: its controller
    (asked with ``scontrol show config``, the one every ``sbatch`` of the tests reaches) must
    report the script's ClusterName, run on this machine (the tests and the jobs share
    ``tmp_path``), and read a slurm.conf carrying the script's marker line. Anything else (a
    site's cluster seen from a login node, another test cluster on this machine) would get real
    jobs, or hang on partitions and accounting it does not have.
    """
    for command in _SLURM_COMMANDS:
        if shutil.which(command) is None:
            return f"`{command}` is not installed"
    out, problem = _run(["scontrol", "show", "config"])
    if problem:
        return f"no SLURM controller answers ({problem})"
    config = {
        key.strip(): value.strip()
        for key, equals, value in (line.partition("=") for line in out.splitlines())
        if equals
    }
    name, marker = _script_setting("CLUSTER"), _script_setting("MARKER")
    conf = config.get("SLURM_CONF", "(unknown)")
    controller = config.get("SlurmctldHost[0]", "(unknown)")
    where = f"cluster {config.get('ClusterName', '(unknown)')!r}, controller {controller}"
    if config.get("ClusterName") != name:
        return f"the SLURM cluster here is not the project's test cluster {name!r} ({where})"
    host, _, address = controller.partition("(")
    local = {"127.0.0.1", "localhost", socket.gethostname().split(".")[0]}
    if not {host, address.rstrip(")")} & local:
        return f"the SLURM controller is not on this machine ({where}): not the test cluster"
    try:
        with open(conf) as f:
            first_line = f.readline().rstrip("\n")
    except OSError as e:
        return f"cannot read the SLURM configuration {conf} ({where}): {e}"
    if first_line != marker:
        return (
            f"{conf} was not written by tests/slurm/cluster.sh ({where}; first line {first_line!r})"
        )
    for command in (
        ["sinfo", "-h", "-o", "%a %t"],
        ["sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID"],
    ):
        out, problem = _run(command)
        if problem:
            return problem
        if command[0] == "sinfo" and not any(
            line.startswith("up ") and not line.endswith(("down", "drain", "down*", "drain*"))
            for line in out.splitlines()
        ):
            return f"the test cluster has no usable partition (sinfo: {out.strip()!r})"
    return ""


def where() -> str:
    """``{array job id}_{array task id}`` inside an array task, the SLURM job id otherwise."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID", "-")


def record_lines(counter: str, lines: tp.Iterable[str]) -> None:
    if not counter:
        return
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
    finally:
        os.close(fd)


def read_records(counter: str | os.PathLike[str]) -> list[list[str]]:
    """The counter's lines, split on spaces (missing file: no records)."""
    try:
        with open(counter) as f:
            return [line.split(" ") for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def wait_for(path: str, timeout_s: float = GATE_TIMEOUT_S) -> None:
    """Block until ``path`` exists (a test opens the gate by creating it)."""
    if not path:
        return
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class Gated:
    """Records its start, waits for ``gate``, fails while ``fail_flag`` exists, else a random value."""

    param: int = 1
    gate: str = ""
    counter: str = ""
    fail_flag: str = ""
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("gate", "counter", "fail_flag"))
    def process(self) -> dict[str, tp.Any]:
        record_lines(self.counter, [f"{where()} {os.getpid()}"])
        wait_for(self.gate)
        if self.fail_flag and os.path.exists(self.fail_flag):
            self._fail_in_helper()
        return {
            "value": self.param * float(np.random.rand()),
            "job": where(),
            "cpus": os.environ.get("SLURM_CPUS_PER_TASK", ""),
            "partition": os.environ.get("SLURM_JOB_PARTITION", ""),
        }

    def _fail_in_helper(self) -> None:
        raise ValueError(f"deliberate failure of param={self.param}")


@dataclasses.dataclass(frozen=True)
class JobFeaturizer:
    """A map whose workers record ``item where pid`` per computed item.

    It raises on ``fail_item`` while ``fail_flag`` exists; ``gate`` (if set) must exist before any
    item is computed, and each worker first writes its pid into ``{started}/{where}`` (if set).
    Outputs depend on the item only, so every cluster gives the same arrays.
    """

    dim: int = 3
    counter: str = ""
    fail_item: str = ""
    fail_flag: str = ""
    gate: str = ""
    started: str = ""
    delay_s: float = 0.0
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(
        item_uid=str,
        exclude_from_cache_uid=("counter", "fail_item", "fail_flag", "gate", "started", "delay_s"),
    )
    def embed(self, items: tp.Sequence[str]) -> tp.Iterator[np.ndarray[tp.Any, tp.Any]]:
        here = f"{where()} {os.getpid()}"
        if self.started:
            record_lines(os.path.join(self.started, where()), [str(os.getpid())])
        wait_for(self.gate)
        for item in items:
            if item == self.fail_item and self.fail_flag and os.path.exists(self.fail_flag):
                raise ValueError(f"deliberate failure on item {item!r}")
            if self.delay_s:
                time.sleep(self.delay_s)
            record_lines(self.counter, [f"{item} {here}"])
            yield np.full(self.dim, len(item), dtype=np.float32) + np.arange(self.dim)
