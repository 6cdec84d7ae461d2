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
EXIT_BUSY = 5
"""``clear`` refused a cache that a live process is writing (``--force`` clears it anyway)."""

EPILOG = """\
exit codes:
  0  success (verify: every cache checked is healthy)
  1  damage found (verify; compact refuses a damaged cache); clear not confirmed
  2  bad usage, or a path that is missing, not a folder, or not a cache folder (verify/clear:
     holding no cache)
  3  permission denied (reading a folder, or writing for compact/clear); for verify: a cache
     could not be checked for lack of permission (never reported as damage)
  4  the filesystem failed the command (no space, no locks, a folder removed): not damage; for
     verify: a cache could not be checked
  5  clear refused a cache with an active writer or a running job (--force clears it anyway)
When verify or clear acts on several caches the first code that applies in the order 1, 3, 4, 5
is returned; each cache's outcome is printed.

A cache folder is FOLDER/{module.Class.method,version}/{readable-hash}, the folder given to
TaskInfra/MapInfra(folder=FOLDER) being the root that `ls` takes; `ls` prints each cache's
path, usable as CACHE_DIR.
"""
_SECONDS_PER_DAY = 86400.0

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
        [
            str(row.path),
            row.kind,
            row.status or "-",
            f"{row.items:,}" if row.kind == "map" else "-",
            human_bytes(row.bytes),
            _when(row.last_write),
        ]
        for row in rows
    ]
    header = ["PATH", "KIND", "STATUS", "ITEMS", "SIZE", "LAST WRITE"]
    print(_table(header, table, right={3, 4}))
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
    caches, unreadable = catalog.caches_under(args.cache_dirs)
    damaged: list[Path] = []
    unchecked: list[tuple[str, int]] = [(m, EXIT_PERMISSION) for m in unreadable]
    for path in caches:
        try:
            problems = _verify_one(path)
        except Exception as e:  # whatever stops the check is "could not check", never damage
            code = _error_code(e)
            unchecked.append((_error_text(e, path), code))
            continue
        if problems:
            damaged.append(path)
    for message, _ in unchecked:
        print(f"could not check: {message}", file=sys.stderr)
    if len(caches) + len(unreadable) > 1:
        healthy = len(caches) - len(damaged) - len(unchecked) + len(unreadable)
        print(
            f"{len(caches) + len(unreadable)} cache(s): {healthy} healthy, {len(damaged)} "
            f"damaged, {len(unchecked)} could not be checked",
            file=sys.stderr,
        )
    for path in damaged:
        print(
            f"damaged cache: {path} (its damaged items count as missing: they are recomputed "
            "when next asked for; `exca-lite compact --no-verify` drops them from a map cache "
            "now)",
            file=sys.stderr,
        )
    if damaged:
        return EXIT_DAMAGE
    codes = {code for _, code in unchecked}
    return min(codes) if codes else EXIT_OK


def _verify_one(path: Path) -> list[str]:
    """Check one cache, printing its outcome; the problems found (empty: healthy)."""
    summary = catalog.summarize(path)
    _progress(f"verifying {summary.items:,} item(s), {human_bytes(summary.bytes)} in {path}")
    with _heartbeat("verify"):
        problems = catalog.verify(path)
    if not problems:
        print(f"ok: {path}: {summary.items:,} item(s) checked, no damage")
        return problems
    for problem in problems:
        print(f"damaged: {problem}")
    print(f"{len(problems)} problem(s) found in {path}", file=sys.stderr)
    return problems


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
            f"{len(problems)} problem(s) found in {path}: not compacted; `exca-lite compact "
            "--no-verify` compacts it and drops the damaged items (they count as missing "
            "already, and are recomputed when next asked for)",
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
    caches, unreadable = catalog.caches_under(args.cache_dirs)
    codes: list[int] = []
    for message in unreadable:
        print(f"exca-lite clear: warning: {message} (skipped)", file=sys.stderr)
        codes.append(EXIT_PERMISSION)
    days: float | None = args.older_than
    chosen: list[catalog.CacheSummary] = []
    for path in caches:
        try:
            summary = catalog.summarize(path)
            if days is not None and catalog.last_write_age_s(summary) < days * _SECONDS_PER_DAY:
                continue
            refused = _refused(summary, args.force)
        except Exception as e:
            print(f"exca-lite clear: error: {_error_text(e, path)}", file=sys.stderr)
            codes.append(_error_code(e))
            continue
        if refused:
            codes.append(EXIT_BUSY)
        else:
            chosen.append(summary)
    if not chosen:
        older = f" unwritten for {days:g} day(s)" if days is not None else ""
        print(f"nothing cleared: no cache{older} to clear in {_joined(args.cache_dirs)}")
        return min(codes, default=EXIT_OK)
    if not args.yes and not _confirmed(chosen):
        print("not confirmed: nothing removed (--yes skips this question)", file=sys.stderr)
        return EXIT_DAMAGE
    freed_total, cleared = 0, 0
    for summary in chosen:
        try:
            # a writer may have started while the question waited: look again right before
            if not args.yes and _refused(summary, args.force, quiet_if_forced=True):
                codes.append(EXIT_BUSY)
                continue
            freed = catalog.clear(summary.path)
        except Exception as e:
            print(f"exca-lite clear: error: {_error_text(e, summary.path)}", file=sys.stderr)
            codes.append(_error_code(e))
            continue
        freed_total += freed
        cleared += 1
        print(f"cleared {summary.path}: {summary.items:,} item(s), {human_bytes(freed)} freed")
    if len(chosen) > 1:
        failed = f" ({len(chosen) - cleared} failed)" if cleared < len(chosen) else ""
        print(f"{cleared} cache(s) cleared{failed}, {human_bytes(freed_total)} freed")
    return min(codes, default=EXIT_OK)


def _refused(summary: catalog.CacheSummary, force: bool, quiet_if_forced: bool = False) -> bool:
    """Whether ``clear`` must leave this cache alone: a live process is writing it. The check is
    the store's writer locks, not an mtime: a writer may pause for hours between items."""
    reason = catalog.busy_reason(summary.path, summary.kind)
    if reason is None:
        return False
    if force:
        if not quiet_if_forced:
            print(f"{summary.path}: {reason}: cleared anyway (--force)", file=sys.stderr)
        return False
    print(
        f"refused: {summary.path}: {reason}; not cleared (clearing under a live writer loses "
        "what it writes); retry once it ends, or clear with --force",
        file=sys.stderr,
    )
    return True


def _confirmed(chosen: list[catalog.CacheSummary]) -> bool:
    if len(chosen) == 1:
        (summary,) = chosen
        what = f"the {summary.items:,} cached item(s)" if summary.kind == "map" else "the result"
        question = (
            f"remove {what} ({human_bytes(summary.bytes)}) of {summary.uid} in {summary.path}? "
        )
    else:
        for summary in chosen:
            print(f"  {summary.path}  {human_bytes(summary.bytes)}", file=sys.stderr)
        total = human_bytes(sum(summary.bytes for summary in chosen))
        question = f"remove the cached items of these {len(chosen)} caches ({total})? "
    print(question + "[y/N] ", end="", flush=True, file=sys.stderr)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _joined(paths: tp.Sequence[Path]) -> str:
    return ", ".join(map(str, paths))


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


def _error_code(error: BaseException) -> int:
    """The exit code of a failure that stopped one cache's check or clearing (never damage)."""
    if isinstance(error, PermissionError) or isinstance(error.__cause__, PermissionError):
        return EXIT_PERMISSION
    return EXIT_FILESYSTEM


def _error_text(error: BaseException, path: Path) -> str:
    """One line for a failure on the cache at ``path``, which it names."""
    if isinstance(error, PermissionError):
        text = _permission_message(error)
    elif isinstance(error.__cause__, PermissionError):
        text = f"permission denied: {error}"
    elif isinstance(error, ExcaLiteError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return text if str(path) in text else f"{text} ({path})"


def _non_negative_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not days >= 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"days must be >= 0, not {text}")
    return days


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
        "List every cache folder under FOLDER, one row each: its path (usable as CACHE_DIR by "
        "the other commands), kind (task/map), a task's status (completed, failed, running, not "
        "submitted), a map's items, size on disk, last write; sorted by uid. Unreadable "
        "sub-folders are skipped with a warning.",
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
        "check caches' integrity (exit 1 on damage)",
        "Check every index entry of each cache and the bytes it points to (checksums), or that "
        "a task's result parses. A root (a folder holding caches) checks every cache below it. "
        "Prints each problem and names each damaged cache; exit 0 when all are healthy, 1 on "
        "damage, 3 or 4 when a cache could not be checked (permission, filesystem), which is "
        "never reported as damage. Safe on a cache that is being written (a record still being "
        "written is not damage).",
    )
    verify.add_argument(
        "cache_dirs", type=Path, nargs="+", metavar="CACHE_DIR", help="cache folders or roots"
    )
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
        "remove the cached items of caches",
        "Remove every cached item (or a task's result, failure and job record) of each cache; "
        "config.json and uid.json stay. A root (a folder holding caches) takes every cache "
        "below it. Asks for confirmation unless --yes. Refuses (exit 5) a map cache that another "
        "process holds a writer of, or a task whose job is running, unless --force.",
    )
    clear.add_argument(
        "cache_dirs", type=Path, nargs="+", metavar="CACHE_DIR", help="cache folders or roots"
    )
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clear.add_argument(
        "--force",
        action="store_true",
        help="clear caches with an active writer or a running job too (they lose their items)",
    )
    clear.add_argument(
        "--older-than",
        type=_non_negative_days,
        metavar="DAYS",
        default=None,
        help="only the caches not written for DAYS days (fractions allowed), for shared roots",
    )
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
    except OSError as e:  # a full disk, an I/O error: the filesystem, not damage
        print(f"{prefix} {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FILESYSTEM
    except ExcaLiteError as e:  # a damaged store: one line, no traceback
        print(f"{prefix} {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_DAMAGE


__all__ = ["EPILOG", "build_parser", "main"]
