"""Markdown table of a results file: ``python benchmarks/table.py [results.json] [--readme README.md]``.

Prints the table; with ``--readme`` it also replaces the text between the
``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` markers of that file.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing as tp
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _peer_cell(entry: dict[str, tp.Any], name: str) -> str:
    value = entry["peers"].get(name)
    if value is None:
        return "—"
    ratio = entry["ratios"].get(name)
    suffix = f" (x{_fmt(ratio)})" if ratio is not None else ""
    return _fmt(value, entry["unit"]) + suffix


def _is_hf(peer: str) -> bool:
    """Hugging Face datasets figures: ``hf`` and its variants (``hf_unbatched``, ...)."""
    return peer == "hf" or peer.startswith("hf_")


def _details(entry: dict[str, tp.Any]) -> str:
    """The scenario's extra figures (sub-measurements, differences), one per line."""
    parts = [
        f"{key}: {_fmt(value) if isinstance(value, (int, float)) else value}"
        for key, value in entry.get("extra", {}).items()
    ]
    return "<br>".join(parts)


def table(data: dict[str, tp.Any]) -> str:
    """The markdown table: one row per scenario, ratios = peer / exca_lite."""
    meta = data.get("meta", {})
    versions = meta.get("versions", {})
    machine = meta.get("machine", {})
    lines = [
        "| scenario | exca_lite | exca (ratio) | HF datasets (ratio) | joblib (ratio) "
        "| other baselines (ratio) | target | details |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in data.get("scenarios", {}).items():
        if entry.get("status") != "ok":
            notes = "; ".join(entry.get("notes", [])[1:])  # the first note says how it is measured
            lines.append(
                f"| `{name}` | {entry.get('status')} | | | | | {entry.get('target', '')} "
                f"| {notes} |"
            )
            continue
        hf = [f"{peer}: {_peer_cell(entry, peer)}" for peer in entry["peers"] if _is_hf(peer)]
        if len(hf) == 1 and "hf" in entry["peers"]:
            hf = [_peer_cell(entry, "hf")]
        others = [
            f"{peer}: {_peer_cell(entry, peer)}"
            for peer in entry["peers"]
            if peer not in ("exca", "joblib") and not _is_hf(peer)
        ]
        lite = _fmt(entry["exca_lite"], entry["unit"])
        lines.append(
            f"| `{name}` | {lite} | {_peer_cell(entry, 'exca')} | {'<br>'.join(hf) or '—'} "
            f"| {_peer_cell(entry, 'joblib')} | {'<br>'.join(others) or '—'} "
            f"| {entry.get('target', '')} | {_details(entry)} |"
        )
    lines.append("")
    lines.append(
        f"Measured {meta.get('date', '?')} on {machine.get('cpu_count', '?')} cores "
        f"({machine.get('platform', '?')}), {'quick' if meta.get('quick') else 'full'} sizes; "
        f"exca {versions.get('exca', '?')}, HF datasets {versions.get('datasets', '?')}, "
        f"joblib {versions.get('joblib', '?')}, "
        f"numpy {versions.get('numpy', '?')}, Python {versions.get('python', '?')}. "
        "Ratios are peer / exca_lite (above 1: exca_lite is faster; for MiB/s, below 1 is better). "
        "Medians over repeated runs; regenerate with `python benchmarks/run.py && "
        "python benchmarks/table.py`."
    )
    return "\n".join(lines)


def replace_between_markers(path: Path, text: str) -> None:
    content = path.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {START} ... {END} markers to replace between")
    path.write_text(content[: start + len(START)] + "\n" + text + "\n" + content[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, help="file whose marked section is replaced")
    args = parser.parse_args(argv)
    text = table(json.loads(args.results.read_text()))
    print(text)
    if args.readme is not None:
        replace_between_markers(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
