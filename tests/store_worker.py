"""A subprocess for the map store tests: real processes writing, claiming and reading one store.

``python tests/store_worker.py MODE FOLDER [ARGS...]``; every mode prints progress lines on stdout
(flushed at once) so the parent can tell what was published before it killed the process.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from exca_lite.store import MapStore


def value_of(uid: str) -> object:
    """The value every test stores for ``uid``: arrays for most, other formats for some."""
    number = int(uid.rsplit("-", 1)[1])
    if number % 50 == 49:
        return np.full(40_000, number, dtype=np.float64)  # large: written straight from memory
    if number % 7 == 3:
        return {"uid": uid, "n": number, "t": (number, "x")}  # pickle
    if number % 7 == 5:
        return {"uid": uid, "n": [number, float(number)]}  # msgpack
    return np.full(32 + number % 5, number, dtype=np.float32 if number % 2 else ">i8")


def check(store: MapStore, uid: str) -> None:
    expected, got = value_of(uid), store.load(uid)
    if isinstance(expected, np.ndarray):
        ok = got.dtype == expected.dtype and np.array_equal(got, expected)
    else:
        ok = got == expected and type(got) is type(expected)
    if not ok:
        raise SystemExit(f"wrong value for {uid}: {got!r}")


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write(
    folder: str, start: int, stop: int, flush_every: int, sleep_s: float, lazy: bool = False
) -> None:
    """Write items start..stop-1; after each flush print 'published <last index>'.

    ``lazy``: open the store without reading its index, as a worker that only writes does.
    """
    store = MapStore(folder, load_index=not lazy)
    with store.writer() as w:
        out(f"pair {w.stem}")
        for i in range(start, stop):
            w.write(f"item-{i}", value_of(f"item-{i}"))
            if (i - start + 1) % flush_every == 0:
                w.flush()
                out(f"published {i}")
            if sleep_s:
                time.sleep(sleep_s)
    out("done")


def claim(folder: str, first: int, last: int, side_file: str, work_s: float, go_file: str) -> None:
    """Claim items first..last-1, compute ours (one O_APPEND line each), wait for the others."""
    while go_file != "-" and not os.path.exists(go_file):
        time.sleep(0.001)
    uids = [f"item-{i}" for i in range(first, last)]
    store = MapStore(folder)
    t0 = time.monotonic()

    def compute(todo: list[str]) -> None:
        with store.writer() as w:
            for uid in todo:
                fd = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, f"{uid} {os.getpid()}\n".encode())
                os.close(fd)
                time.sleep(work_s)
                w.write(uid, value_of(uid))

    with store.claim(uids) as c:
        out(f"mine {len(c.mine)}")
        compute(c.mine)
        out(f"computed_own {time.monotonic() - t0:.3f}")
        freed = c.wait_others(poll_max_s=0.05)
        out(f"freed {len(freed)}")
        compute(freed)
    missing = store.missing(uids)
    for uid in uids:
        check(store, uid)
    out(f"done {len(missing)} {time.monotonic() - t0:.3f}")


def read_loop(folder: str, seconds: float) -> None:
    """Load and check every item seen, again and again, for ``seconds``."""
    store = MapStore(folder)
    deadline = time.monotonic() + seconds
    loops = checked = 0
    while time.monotonic() < deadline:
        store.refresh()
        for uid in store.item_uids():
            check(store, uid)
            checked += 1
        loops += 1
    out(f"done {loops} {checked}")


def main() -> None:
    mode, folder, *args = sys.argv[1:]
    if mode == "write":
        lazy = len(args) > 4 and args[4] == "lazy"
        write(folder, int(args[0]), int(args[1]), int(args[2]), float(args[3]), lazy)
    elif mode == "claim":
        claim(folder, int(args[0]), int(args[1]), args[2], float(args[3]), args[4])
    elif mode == "read":
        read_loop(folder, float(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
