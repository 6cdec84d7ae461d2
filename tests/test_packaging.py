"""The wheel users install: every module, the type marker, the console script, exactly the
runtime dependencies of the design card.

The test suite runs against an editable install, which would hide a module or a data file missing
from the wheel: this builds the wheel (as ``pip install .`` does) and reads it.
"""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = {"numpy", "submitit", "msgspec", "filelock"}


@pytest.mark.timeout(240)
def test_the_wheel_holds_the_package_its_marker_script_and_exactly_its_dependencies(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("exca_lite-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
        (entry_points_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_points_name).decode()
    modules = {f"exca_lite/{p.name}" for p in (ROOT / "exca_lite").glob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "exca_lite/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    requires = metadata.get_all("Requires-Dist") or []
    runtime = {
        r.split(">")[0].split("=")[0].split(";")[0].strip() for r in requires if "extra" not in r
    }
    assert runtime == RUNTIME
    assert "exca-lite = exca_lite.cli:main" in entry_points
