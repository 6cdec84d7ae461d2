"""The ``exca-lite`` command line: inspect and maintain cache folders, and run the demo."""

from __future__ import annotations

import argparse
import typing as tp
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.folder, n_items=args.items)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exca-lite", description="Inspect and maintain exca_lite cache folders."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the README's main demo (task + map caches)")
    demo.add_argument("--folder", type=Path, default=None, help="cache root (default: a temp dir)")
    demo.add_argument("--items", type=int, default=4000, help="number of items of the map part")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: tp.Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


__all__ = ["build_parser", "main"]
