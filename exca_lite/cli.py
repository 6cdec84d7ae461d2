"""The ``exca-lite`` command line: inspect and maintain cache folders, and run the demo.

argparse only (no extra dependency). Finding and describing caches lives in ``catalog``; this module
parses arguments, formats tables and JSON, and maps errors to exit codes (see ``EPILOG``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import textwrap
import threading
import time
import typing as tp
import warnings
from pathlib import Path

from . import catalog
from .catalog import NotACacheError, human_bytes, iso_time
from .errors import ExcaLiteError, StoreError

EXIT_OK = 0
EXIT_DAMAGE = 1
EXIT_USAGE = 2
EXIT_PERMISSION = 3
EXIT_FILESYSTEM = 4
"""The filesystem failed the command (no locks, no space, a folder removed): not damage."""

EPILOG = """\
exit codes:
  0  success (verify: the cache is healthy)
  1  damage found (verify; compact refuses a damaged cache); clear not confirmed
  2  bad usage, or a path that is missing, not a folder, or not a cache folder
  3  permission denied (reading a folder, or writing for compact/clear)
  4  the filesystem failed the command (no space, no locks, a folder removed): not damage

A cache folder is FOLDER/{module.Class.method,version}/{readable-hash}, the folder given to
TaskInfra/MapInfra(folder=FOLDER) being the root that `ls` takes.
"""

_HEARTBEAT_S = 5.0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.folder, n_items=args.items)
    return 0


# # # ls / info # # #


def _ls(args: argparse.Namespace) -> int:
    paths, unreadable = catalog.find_caches(args.folder)
    rows = []
    for path in paths:
        try:
            rows.append(catalog.summarize(path))
        except PermissionError as e:
            unreadable.append(_permission_message(e))
    for message in unreadable:
        print(f"exca-lite ls: warning: {message} (skipped)", file=sys.stderr)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(f"no cache under {args.folder}")
        return EXIT_OK
    table = [
        [row.uid, row.kind, f"{row.items:,}", human_bytes(row.bytes), _when(row.last_write)]
        for row in rows
    ]
    print(_table(["UID", "KIND", "ITEMS", "SIZE", "LAST WRITE"], table, right={2, 3}))
    total = sum(row.bytes for row in rows)
    print(f"{len(rows)} cache(s), {human_bytes(total)} in {args.folder}")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    info = catalog.describe(args.cache_dir)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    lines = [
        ("uid", info["uid"]),
        ("kind", info["kind"]),
        ("path", info["path"]),
        ("items", f"{info['items']:,}"),
        ("on disk", f"{human_bytes(info['bytes'])} ({info['bytes']:,} bytes)"),
        ("last write", _when(info["last_write"])),
    ]
    if info["kind"] == "map":
        shards: dict[str, int] = info["shards"]
        lines.append(("shards", str(len(shards)) if shards else "none"))
        lines.extend(("", f"  {name}  {human_bytes(size)}") for name, size in shards.items())
        dead = info["dead_bytes"]
        hint = " (reclaimable by `exca-lite compact`)" if dead else ""
        lines.append(("dead bytes", f"{human_bytes(dead)}{hint}"))
        lines.append(("writers", f"{info['writers']} holding a lock now"))
    else:
        lines.append(("status", info["status"]))
        if "error" in info:
            lines.append(("error", info["error"]))
        for name, size in info["files"].items():
            lines.append(("file", f"{name}  {human_bytes(size)}"))
        if info["job_id"]:
            lines.append(("job id", info["job_id"]))
        lines.append(
            ("lock", "held now (a process is submitting)" if info["lock_held"] else "free")
        )
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':' if key else '':<{width}} {value}")
    config = info["config"]
    print("config.json:" if config is not None else "config.json: (none yet)")
    if config is not None:
        for line in json.dumps(config, indent=2, default=str).splitlines():
            print(f"  {line}")
    return EXIT_OK


# # # verify / compact / clear # # #


def _verify(args: argparse.Namespace) -> int:
    path: Path = args.cache_dir
    summary = catalog.summarize(path)
    _progress(f"verifying {summary.items:,} item(s), {human_bytes(summary.bytes)} in {path}")
    with _heartbeat("verify"):
        problems = catalog.verify(path)
    if not problems:
        print(f"ok: {summary.uid}: {summary.items:,} item(s) checked, no damage")
        return EXIT_OK
    for problem in problems:
        print(f"damaged: {problem}")
    print(f"{len(problems)} problem(s) found in {summary.uid}", file=sys.stderr)
    return EXIT_DAMAGE


def _compact(args: argparse.Namespace) -> int:
    path: Path = args.cache_dir
    summary = catalog.summarize(path)
    if summary.kind != "map":
        print(f"{summary.uid}: a task cache holds one file per result: nothing to compact")
        return EXIT_OK
    # the store copies items' bytes as they are: compacting a damaged cache would carry the damage
    # into a file whose checksums then agree with it, so damage is refused here, not laundered
    problems: list[str] = []
    if not args.no_verify:
        _progress(f"checking {summary.items:,} item(s), {human_bytes(summary.bytes)} in {path}")
        with _heartbeat("verify"):
            problems = catalog.verify(path)
    if problems:
        for problem in problems:
            print(f"damaged: {problem}")
        print(
            f"{len(problems)} problem(s) found in {summary.uid}: not compacted (compacting would "
            "keep the damaged items); `exca-lite clear` the cache and recompute it",
            file=sys.stderr,
        )
        return EXIT_DAMAGE
    _progress(f"compacting {summary.items:,} item(s) in {path}")
    with _heartbeat("compact"):
        result = catalog.compact(path)
    before, after = result["bytes_before"], result["bytes_after"]
    print(
        f"compacted {summary.uid}: {result['items']:,} item(s) moved, "
        f"{human_bytes(before)} -> {human_bytes(after)} "
        f"({human_bytes(max(0, before - after))} reclaimed)"
    )
    return EXIT_OK


def _clear(args: argparse.Namespace) -> int:
    path: Path = args.cache_dir
    summary = catalog.summarize(path)
    if not args.yes:
        question = (
            f"remove the {summary.items:,} cached item(s) ({human_bytes(summary.bytes)}) of "
            f"{summary.uid} in {path}? [y/N] "
        )
        print(question, end="", flush=True, file=sys.stderr)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("not confirmed: nothing removed (--yes skips this question)", file=sys.stderr)
            return EXIT_DAMAGE
    freed = catalog.clear(path)
    print(f"cleared {summary.uid}: {summary.items:,} item(s), {human_bytes(freed)} freed")
    return EXIT_OK


# # # formatting # # #


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _when(timestamp: float | None) -> str:
    text = iso_time(timestamp)
    return "-" if text is None else text[:19].replace("T", " ")


def _progress(message: str) -> None:
    print(f"{message} ...", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _heartbeat(what: str) -> tp.Iterator[None]:
    """Say every few seconds that a long ``verify``/``compact`` is still running, and how long."""
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(_HEARTBEAT_S):
            print(f"  {what}: {time.monotonic() - start:.0f} s ...", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    seconds = time.monotonic() - start
    print(f"{what} took {seconds:.1f} s", file=sys.stderr, flush=True)


def _show_warning(
    command: str,
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: tp.TextIO | None = None,
    line: str | None = None,
) -> None:
    """Library warnings (damaged data skipped) as one line, without a source line to confuse."""
    print(f"exca-lite {command}: warning: {message}", file=sys.stderr)


def _permission_message(error: PermissionError) -> str:
    if error.filename is not None and str(error.filename) not in str(error.args[-1]):
        return f"permission denied: {error.filename}"
    return str(error.args[-1]) if error.args else str(error)


# # # parser # # #


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exca-lite",
        description="Inspect and maintain exca_lite cache folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=textwrap.fill(description, 100),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ls = add(
        "ls",
        "list every cache under a folder",
        "List every cache folder under FOLDER, one row each: uid, kind (task/map), items, size "
        "on disk, last write; sorted by uid. Unreadable sub-folders are skipped with a warning.",
    )
    ls.add_argument("folder", type=Path, metavar="FOLDER", help="a cache root (an infra's folder)")
    ls.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ls.set_defaults(run=_ls)

    info = add(
        "info",
        "describe one cache",
        "Describe one cache: its config (config.json), uid, items, size; for a map cache its "
        "shards and their sizes, the writers holding a lock now and the dead bytes that "
        "`compact` reclaims; for a task cache its status, files and job.",
    )
    info.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", help="one cache folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)

    verify = add(
        "verify",
        "check a cache's integrity (exit 1 on damage)",
        "Check every index entry of a cache and the bytes it points to (checksums), or that a "
        "task's result loads. Prints each problem; exit 0 when healthy, 1 on damage. Safe on a "
        "cache that is being written (a record still being written is not damage).",
    )
    verify.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", help="one cache folder")
    verify.set_defaults(run=_verify)

    compact = add(
        "compact",
        "merge a map cache's shards into one file",
        "Merge the shards of a map cache into one contiguous file, dropping duplicate and dead "
        "bytes. Other processes keep reading and writing meanwhile: the shards of writers busy "
        "right now are left for the next compaction. Values are unchanged; nothing is lost. "
        "The cache is verified first: a damaged cache is not compacted (exit 1).",
    )
    compact.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", help="one cache folder")
    compact.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the integrity check (one read of every byte; damaged bytes are then copied)",
    )
    compact.set_defaults(run=_compact)

    clear = add(
        "clear",
        "remove the cached items of one cache",
        "Remove every cached item (or a task's result, failure and job record) of one cache; "
        "config.json and uid.json stay. Asks for confirmation unless --yes.",
    )
    clear.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", help="one cache folder")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(run=_clear)

    demo = add(
        "demo",
        "run the README's main demo (task + map caches)",
        "Run the README's main demo: a task computed in a subprocess then cached, and a map "
        "over a few thousand items computed by a process pool then served from the cache.",
    )
    demo.add_argument("--folder", type=Path, default=None, help="cache root (default: a temp dir)")
    demo.add_argument("--items", type=int, default=4000, help="number of items of the map part")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: tp.Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"exca-lite {args.command}: error:"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(_show_warning, args.command)
            return int(args.run(args))
    except PermissionError as e:
        print(f"{prefix} {_permission_message(e)}", file=sys.stderr)
        return EXIT_PERMISSION
    except StoreError as e:
        cause = e.__cause__
        if isinstance(cause, PermissionError):
            print(f"{prefix} permission denied: {e}", file=sys.stderr)
            return EXIT_PERMISSION
        print(f"{prefix} {e}", file=sys.stderr)
        return EXIT_FILESYSTEM if isinstance(cause, OSError) else EXIT_DAMAGE
    except (FileNotFoundError, NotADirectoryError, NotACacheError) as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"exca-lite {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `exca-lite ls ROOT | head`
        return EXIT_OK
    except (ExcaLiteError, OSError) as e:  # a damaged store, a full disk: one line, no traceback
        print(f"{prefix} {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_DAMAGE


__all__ = ["EPILOG", "build_parser", "main"]
