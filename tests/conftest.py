"""Shared fixtures, kept generic: make ``tests/`` importable here and in subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent

# helper modules (task_defs, ...) must import both in this process and in the subprocesses that
# submitit and the concurrency tests start: the config classes are pickled by module name
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
_paths = [
    str(TESTS_DIR),
    str(REPO_DIR),
    *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
]
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(_paths))


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for ``subprocess`` children: tests/ and the repository importable."""
    return dict(os.environ)


# real-filesystem fixtures (FUSE mounts without shared locks, ENOLCK, read-only, tiny tmpfs)
from fsmounts import nolock_binary, nolock_fs, readonly_mount, small_tmpfs, two_hosts  # noqa: E402

__all__ = [
    "nolock_binary",
    "nolock_fs",
    "readonly_mount",
    "small_tmpfs",
    "subprocess_env",
    "two_hosts",
]
