"""The SLURM tests' guard (``slurm_defs.project_cluster_problem``) against fake SLURM commands.

The guard decides whether the SLURM tests may submit jobs here: only to the project's own test
cluster (tests/slurm/cluster.sh). Each case puts shell scripts named like SLURM's commands first
on PATH, answering as a login node, a remote controller, a foreign slurm.conf would; the real
cluster's case is covered by tests/test_slurm.py itself (it runs only when the guard says so).
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from slurm_defs import _script_setting, project_cluster_problem

COMMANDS = ("sbatch", "sinfo", "sacct", "squeue", "scancel", "scontrol")


def fake_slurm(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, str] | None,
    skip: tuple[str, ...] = (),
) -> None:
    """SLURM commands in ``folder``, alone on PATH; ``scontrol show config`` prints ``config``
    (None: the controller does not answer), ``sinfo`` an idle partition, ``sacct`` nothing."""
    folder.mkdir()
    for name in COMMANDS:
        if name in skip:
            continue
        if name == "scontrol":
            body = (
                "echo 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2; exit 1"
                if config is None
                else "printf '%s\\n' "  # a builtin: PATH holds only these fakes
                + " ".join(f"'{key:<24}= {value}'" for key, value in config.items())
            )
        elif name == "sinfo":
            body = "echo 'up idle'"
        else:
            body = "exit 0"
        script = folder / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))  # /bin/sh runs the scripts: no other PATH needed


def project_conf(tmp_path: Path, first_line: str | None = None) -> Path:
    conf = tmp_path / "slurm.conf"
    marker = _script_setting("MARKER")
    conf.write_text(f"{first_line if first_line is not None else marker}\nClusterName=exca\n")
    return conf


def config(conf: Path, name: str = "exca", controller: str = "vm(127.0.0.1)") -> dict[str, str]:
    return {"ClusterName": name, "SlurmctldHost[0]": controller, "SLURM_CONF": str(conf)}


def test_the_project_cluster_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(tmp_path / "bin", monkeypatch, config(project_conf(tmp_path)))
    assert project_cluster_problem() == ""
    host = socket.gethostname().split(".")[0]
    fake_slurm(tmp_path / "bin2", monkeypatch, config(project_conf(tmp_path), controller=host))
    assert project_cluster_problem() == ""


def test_no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(tmp_path / "bin", monkeypatch, None, skip=("sbatch",))
    assert project_cluster_problem() == "`sbatch` is not installed"


def test_no_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(tmp_path / "bin", monkeypatch, None)
    problem = project_cluster_problem()
    assert problem.startswith("no SLURM controller answers") and "Unable to contact" in problem


def test_a_site_cluster_from_a_login_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = config(Path("/etc/slurm/slurm.conf"), name="jean-zay", controller="ctl1(10.0.0.5)")
    fake_slurm(tmp_path / "bin", monkeypatch, site)
    assert project_cluster_problem() == (
        "the SLURM cluster here is not the project's test cluster 'exca' "
        "(cluster 'jean-zay', controller ctl1(10.0.0.5))"
    )


def test_a_remote_controller_named_like_the_test_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = config(project_conf(tmp_path), controller="ctl1(10.0.0.5)")
    fake_slurm(tmp_path / "bin", monkeypatch, remote)
    assert "the SLURM controller is not on this machine" in project_cluster_problem()


def test_a_local_cluster_not_configured_by_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = project_conf(tmp_path, first_line="# written by hand")
    fake_slurm(tmp_path / "bin", monkeypatch, config(conf))
    assert project_cluster_problem() == (
        f"{conf} was not written by tests/slurm/cluster.sh (cluster 'exca', controller "
        "vm(127.0.0.1); first line '# written by hand')"
    )
