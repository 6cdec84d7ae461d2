"""Docs that run: every code block of README.md and docs/*.md is executed, so docs cannot drift.

- ```python blocks of one file run in order, in one namespace (``__name__ == "__main__"``), with
  ``tmp_path`` predefined (a fresh folder per file).
- ```console blocks run each ``$ command`` line with bash in ``tmp_path`` (``exca-lite`` is this
  interpreter's ``python -m exca_lite``), in order with the python blocks. The command must exit 0
  and print the lines that follow it, compared with digits and runs of spaces normalized (sizes,
  dates and hashes vary), ``...`` matching any text within a line or any lines on a line alone.
- ```text blocks and blocks without a language are output samples or diagrams, not code; any
  other block (```bash, ```toml, ...) must be preceded by a
  ``<!-- no-test: why -->`` comment (as must a python/console block that cannot run here).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing as tp
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGS = ("python", "console")
DATA_LANGS = ("text", "")
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason given in a preceding <!-- no-test: ... --> comment

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, in order."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, lang = match.groups()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        skip = None
        if previous.startswith("<!-- no-test"):
            skip = previous.removeprefix("<!-- no-test").strip(" :-<>!") or "no reason given"
        blocks.append(Block(path, start + 1, lang, "\n".join(body) + "\n", skip))
    return blocks


def _normalize(line: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d", "0", line)).strip()


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines match the ``expected`` ones (see the module docstring)."""
    if not expected:
        return not actual
    head = _normalize(expected[0])
    if head == "...":
        return any(output_matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("...")) + r"\Z"
    return re.match(pattern, _normalize(actual[0])) is not None and output_matches(
        expected[1:], actual[1:]
    )


def console_commands(code: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of each ``$ `` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"console block starts with output, not a '$ ' command: {line!r}")
    return out


def run_console(block: Block, cwd: Path, env: dict[str, str]) -> None:
    shell_env = dict(env, EXCA_LITE_PYTHON=sys.executable)
    preamble = 'exca-lite() { "$EXCA_LITE_PYTHON" -m exca_lite "$@"; }\n'
    for command, expected in console_commands(block.code):
        proc = subprocess.run(
            ["bash", "-c", preamble + command],
            cwd=cwd,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (
            f"{block.where()}: `{command}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
        actual = [line.rstrip() for line in proc.stdout.splitlines()]
        while expected and not expected[-1].strip():
            expected.pop()
        assert output_matches(expected, actual), (
            f"{block.where()}: `{command}` printed:\n{proc.stdout}\nthe docs say:\n"
            + "\n".join(expected)
        )


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_runs_or_says_why_not(path: Path) -> None:
    for block in extract(path):
        if block.lang not in RUN_LANGS + DATA_LANGS:
            assert block.skip, (
                f"{block.where()}: a ```{block.lang} block must be python, console or text, "
                "or be preceded by <!-- no-test: why -->"
            )


def _has_runnable_block(path: Path) -> bool:
    return any(b.lang in RUN_LANGS and b.skip is None for b in extract(path))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "path",
    [p for p in DOC_FILES if _has_runnable_block(p)],  # design.md only has diagrams
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_doc_blocks(
    path: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    subprocess_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = [b for b in extract(path) if b.lang in RUN_LANGS and b.skip is None]
    namespace: dict[str, tp.Any] = {"__name__": "__main__", "tmp_path": tmp_path}
    # run as a user runs a script saved next to the doc: classes of a __main__ compiled from
    # guide.py are named `guide` in uids (a copy of the markdown, so tracebacks show its lines)
    script = tmp_path_factory.mktemp("docs") / f"{path.stem}.py"
    script.write_text(path.read_text())
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        if block.lang == "console":
            run_console(block, tmp_path, subprocess_env)
            continue
        # compile with the markdown line numbers, so a traceback points into the doc; without
        # this module's `from __future__ import annotations` (docs run as users would run them)
        code = compile("\n" * block.line + block.code, str(script), "exec", dont_inherit=True)
        exec(code, namespace)


def test_output_matching() -> None:
    assert output_matches(["a 12 B", "..."], ["a 99 B", "x", "y"])
    assert output_matches(["uid: ...-0c8f5a21"], ["uid:   m.C.f,1/default-1c9f0a77"])
    assert not output_matches(["a KiB"], ["a MiB"])
    assert not output_matches(["a", "b"], ["a"])
    assert output_matches(["...", "total"], ["x", "total"])
    assert output_matches(["[1, 2] (a*b)"], ["[7, 8] (a*b)"])
    assert not output_matches(["ab"], ["abc"])


def test_readme_benchmark_table_is_generated() -> None:
    """The README's benchmark section is exactly what benchmarks/table.py makes of latest.json."""
    results = REPO / "benchmarks" / "results" / "latest.json"
    script = REPO / "benchmarks" / "table.py"
    if not (results.exists() and script.exists()):
        pytest.skip("no benchmark results or table script yet")
    proc = subprocess.run(
        [sys.executable, str(script), str(results)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
    assert start in readme and end in readme, "README.md lacks the benchmark markers"
    section = readme.split(start, 1)[1].split(end, 1)[0]
    assert section.strip() == proc.stdout.strip(), (
        "README.md's benchmark table is stale: run `python benchmarks/table.py --readme README.md`"
    )
