"""The typed surface: ``typing_examples.py`` is checked by mypy, line by line.

A line ending in ``# revealed: T`` must make mypy reveal ``T``; a line ending in ``# error: code``
must be refused with that code; every other line must pass (``tp.assert_type`` included).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).with_name("typing_examples.py")
REPO = Path(__file__).resolve().parent.parent
_MYPY_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<message>.*)$")
# an expectation: a comment after code (two spaces), as ruff format writes it
_MARKER = re.compile(r"\S  # (?P<kind>revealed|error): (?P<value>.+?)\s*$")
_TOP_LEVEL = re.compile(r"^(?:class|def) (?P<name>\w+)")


def _sections() -> dict[str, list[tuple[int, str]]]:
    """Lines of the examples file, grouped by the top-level class or function holding them."""
    sections: dict[str, list[tuple[int, str]]] = {"module": []}
    current = "module"
    for number, text in enumerate(EXAMPLES.read_text().splitlines(), start=1):
        match = _TOP_LEVEL.match(text)
        if match:
            current = match["name"]
            sections.setdefault(current, [])
        elif text and not text[0].isspace():
            current = "module"
        sections[current].append((number, text))
    return sections


@pytest.fixture(scope="module")
def mypy_messages() -> dict[int, list[tuple[str, str]]]:
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--follow-imports=silent",  # the examples are under test here, not the library
        "--no-error-summary",
        "--show-error-codes",
        "--no-pretty",
        "--hide-error-context",
        str(EXAMPLES),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170)
    if out.returncode not in (0, 1) or out.stderr.strip():
        pytest.fail(f"mypy did not run (exit {out.returncode}):\n{out.stderr}\n{out.stdout}")
    messages: dict[int, list[tuple[str, str]]] = {}
    for line in out.stdout.splitlines():
        match = _MYPY_LINE.match(line)
        if match and Path(match["path"]).name == EXAMPLES.name:
            messages.setdefault(int(match["line"]), []).append((match["kind"], match["message"]))
    return messages


@pytest.mark.parametrize("section", list(_sections()))
def test_typed_surface(section: str, mypy_messages: dict[int, list[tuple[str, str]]]) -> None:
    problems = []
    for number, text in _sections()[section]:
        got = mypy_messages.get(number, [])
        errors = [m for kind, m in got if kind == "error"]
        revealed = [m for kind, m in got if kind == "note" and m.startswith("Revealed type is")]
        where = f"typing_examples.py:{number}: {text.strip()}"
        marker = _MARKER.search(text)
        if marker and marker["kind"] == "revealed":
            expected = marker["value"]
            if revealed != [f'Revealed type is "{expected}"']:
                problems.append(f"{where}\n  expected {expected!r}, mypy says {revealed or got}")
        if marker and marker["kind"] == "error":
            code = marker["value"]
            if not any(m.endswith(f"[{code}]") for m in errors):
                problems.append(f"{where}\n  expected an error [{code}], mypy says {got}")
        elif errors:
            problems.append(f"{where}\n  unexpected: {errors}")
    assert not problems, "\n".join(problems)


def test_every_expectation_is_checked() -> None:
    """The examples file holds expectations in each section, and mypy revealed something."""
    markers = [_MARKER.search(line) for line in EXAMPLES.read_text().splitlines()]
    kinds = [m["kind"] for m in markers if m]
    assert kinds.count("revealed") >= 10 and kinds.count("error") >= 4
    assert {"MyTask", "task_examples", "map_examples", "config_examples"} <= set(_sections())
