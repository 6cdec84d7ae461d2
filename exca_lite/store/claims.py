"""Claims: processes, threads and hosts asking for overlapping items compute each one once.

A claim owner is a random token with its own file ``{token}.owner``, locked for the claim's life:
the owner is alive exactly as long as that lock is held, which anyone can test by trying it (the OS
drops the lock of a dead process, so no heartbeat, pid or hostname is needed, and it works across
hosts on a shared filesystem with working locks). The owner appends the uids it claims to that same
file, through the descriptor holding the lock (one ``write``, no file to open).

Claiming happens under one global lock (``claims/claims.lock``), held for milliseconds: refresh the
store, read the live owners' claim files, take the free uids, and delete the files of dead owners
(takeover). Computing and waiting happen outside it, so a process computes its own unclaimed items
at once and only then waits for the others' (``wait_others``), polling the index incrementally with
backoff and taking over the items of owners that die meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import types
import typing as tp
import uuid
from pathlib import Path

import msgspec

from ..errors import StoreError
from . import format as sh
from . import locks
from .fs import NO_LOCK_ERRNOS, store_error
from .writer import flush_thread_writers

if tp.TYPE_CHECKING:
    from .mapstore import MapStore

logger = logging.getLogger("exca_lite")
_TAKE_WINDOW = 4096  # uids looked up at once by take()
_process_claims_lock = threading.Lock()
"""Threads of this process queue here before the file lock: correct even where flock is per
process (NFS), and cheaper than contending on the file."""


class Claim:
    """The items a caller must compute, and a way to wait for those others are computing.

    Use as a context manager: ``mine`` is set on entry, the claims are released on exit.
    """

    def __init__(
        self,
        store: MapStore,
        item_uids: tp.Sequence[str],
        missing_as_of: object = None,
        adopt: str | None = None,
        adopt_pieces: bool = False,
    ) -> None:
        self.store = store
        self.item_uids = list(item_uids)
        self._missing_as_of = missing_as_of
        # a worker computing for a driver: items the driver claimed are the worker's to take (the
        # worker then holds them too, so they stay held if the driver dies)
        self._adopt = adopt
        # the driver adopted from claims only the pieces it hands to running workers: its other
        # items are being computed by them, and a nested call here may wait for those. A driver
        # that claimed every chunk up front (mode="force", job arrays) may hold chunks no worker
        # runs yet, which could wait on this one: its items count as this computation's own
        self._adopt_pieces = adopt_pieces
        # made by a call nested in a computation of this thread (a map method asking its own
        # cache): its items are computed inline, in that computation's process
        self.nested = is_computing()
        self.token = uuid.uuid4().hex
        self.mine: list[str] = []
        # mine, as a set (take() skips what this claim holds): built when a take needs it (a
        # driver passing only what it has not taken never does: a hash pass per item saved)
        self._taken: set[str] | None = None
        self._locks_work = True
        self._others: dict[str, str] = {}  # uid -> owner token
        self._owner: locks.FdLock | None = None
        self._lock_path = store.paths.owner_lock(self.token)

    def __repr__(self) -> str:
        return f"Claim(mine={len(self.mine)}, others={len(self._others)}, token={self.token!r})"

    @property
    def others(self) -> list[str]:
        """Uids claimed by other live owners when last looked at."""
        return list(self._others)

    def __enter__(self) -> Claim:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.release()

    @contextlib.contextmanager
    def _globally(self) -> tp.Iterator[None]:
        with _process_claims_lock, locks.FdLock(self.store.paths.claims_lock):
            yield

    def acquire(self) -> None:
        try:
            self._acquire()
        except StoreError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno in NO_LOCK_ERRNOS):
                raise
            # a filesystem without locks: nobody can hold items for others, so this caller
            # computes everything missing. Two processes may then compute an item twice, never
            # harmfully: each writes its own files, and every reader serves the same copy
            _warn_no_locks(self.store.paths.claims, cause)
            self.mine, self._others = self.store.missing(self.item_uids), {}
            self._taken = None
            self._locks_work = False

    def _acquire(self) -> None:
        paths = self.store.paths
        # live before its file exists: a thread of this process must never probe it (on NFS,
        # closing the probe's descriptor would drop this process's lock)
        locks.live_tokens.add(self.token)
        # the owner file is born locked: created and locked under a name no reader looks at, then
        # renamed (a reader that found it unlocked would take it for a dead owner's and remove it)
        owner = locks.FdLock(paths.owner_lock_new(self.token))
        try:
            try:
                owner.acquire(blocking=False)  # a fresh token: nobody else knows this file
            except FileNotFoundError:  # the first claim in this folder (or after a clear)
                paths.claims.mkdir(parents=True, exist_ok=True)
                owner.acquire(blocking=False)
            if owner.fd < 0:
                raise OSError(f"{owner.path} is locked by someone else")
            os.rename(owner.path, self._lock_path)
            owner.path = self._lock_path
        except OSError as exc:
            owner.release()
            for path in (paths.owner_lock_new(self.token), self._lock_path):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # born but never locked (no locks here): not a claim
            locks.live_tokens.discard(self.token)
            raise store_error("claiming items in", paths.claims, exc) from exc
        self._owner = owner
        try:
            with self._globally():
                store = self.store
                if self._adopt is not None and self._is_live(self._adopt):
                    # a worker taking over its live driver's items: the driver found them missing
                    # moments ago, and a worker must not read the whole index to check again
                    # (a dead driver's items may have been computed by a rerun since: checked)
                    wanted = list(dict.fromkeys(self.item_uids))
                else:
                    store.refresh()  # under the lock: what others published until now
                    if (
                        self._missing_as_of is not None
                        and store.view_state() == self._missing_as_of
                    ):
                        wanted = self.item_uids  # all missing, and nothing was added since
                    else:
                        wanted = store.missing(self.item_uids)
                claimed = self._read_claims()
                if self._adopt is not None:
                    claimed = {u: t for u, t in claimed.items() if t != self._adopt}
                self.mine = self._split(wanted, claimed)
                self._taken = None
                self._append(self.mine)
        except OSError as exc:
            self.release()  # a claim that failed to form holds nothing
            raise store_error("claiming items in", paths.claims, exc) from exc
        except BaseException:
            self.release()
            raise

    def _split(self, wanted: list[str], claimed: dict[str, str]) -> list[str]:
        """Under the global lock: the wanted uids free for this claim; sets ``_others`` to those
        other live owners hold (raising if this very thread's computation holds some)."""
        if claimed:
            free = [uid for uid in wanted if uid not in claimed]
            self._others = {uid: claimed[uid] for uid in wanted if uid in claimed}
        else:
            free, self._others = wanted, {}
        if _nested(self._others):
            # this thread's own computation may have written them already, unpublished
            flush_thread_writers()
            self.store.refresh()
            still = set(self.store.missing(list(self._others)))
            self._others = {u: t for u, t in self._others.items() if u in still}
        _refuse_nested(self._others)
        return free

    def take(
        self,
        item_uids: tp.Sequence[str],
        limit: int,
        missing_as_of: object = None,
        untaken: bool = False,
    ) -> list[str]:
        """Claim up to ``limit`` more of ``item_uids`` (in order): those not stored, not held by
        another live owner and not already this claim's. Returns them (also added to ``mine``);
        ``others`` becomes what other owners hold among ``item_uids``.

        A driver takes one piece of work at a time, just before running it: a process started
        later on the same items finds the rest free and computes a share of it, instead of
        waiting for one owner holding everything. ``missing_as_of``: as for the constructor.
        ``untaken``: the caller passes only uids this claim has not taken (a driver's remaining
        items), which are then not looked up among those taken.
        """
        if limit <= 0:
            return []
        if not self._locks_work or self._owner is None:
            # no locks here (or no claim): nobody holds anything for anyone
            piece = self._first_free(item_uids, limit, missing_as_of, {}, untaken)
        else:
            try:
                with self._globally():
                    claimed = self._read_claims()
                    piece = self._first_free(item_uids, limit, missing_as_of, claimed, untaken)
                    self._append(piece)
            except OSError as exc:
                raise store_error("claiming items in", self.store.paths.claims, exc) from exc
        self.mine.extend(piece)
        if self._taken is not None:
            self._taken.update(piece)
        return piece

    def _first_free(
        self,
        item_uids: tp.Sequence[str],
        limit: int,
        missing_as_of: object,
        claimed: dict[str, str],
        untaken: bool = False,
    ) -> list[str]:
        """The first ``limit`` uids not stored, not in ``claimed`` and not this claim's, looked up
        window by window: a piece costs about its own size, not a pass over every item. Sets
        ``_others`` to the claimed uids among those looked at: all of them when fewer than
        ``limit`` are free (a driver's last take, before it waits for the others)."""
        store = self.store
        store.refresh()
        trusted = missing_as_of is not None and store.view_state() == missing_as_of
        taken: tp.Collection[str] = ()
        if not untaken and self.mine:
            if self._taken is None:
                self._taken = set(self.mine)
            taken = self._taken
        piece: list[str] = []
        others: dict[str, str] = {}
        window = max(limit, _TAKE_WINDOW)
        for start in range(0, len(item_uids), window):
            chunk = item_uids[start : start + window]
            wanted = list(chunk) if trusted else store.missing(chunk)
            if taken:
                wanted = [u for u in wanted if u not in taken]
            free = self._split(wanted, claimed)
            others.update(self._others)
            piece.extend(free[: limit - len(piece)])
            if len(piece) >= limit:
                break
        self._others = others
        return piece

    @contextlib.contextmanager
    def computing(self) -> tp.Iterator[None]:
        """Mark this thread as computing this claim's items: a call nested in that computation
        (the map method asking its own cache for items) that needs some of them is an error,
        where waiting for them would wait for itself forever."""
        stack = _computing_stack()
        held = [self.token]
        if self._adopt is not None and not self._adopt_pieces:
            held.append(self._adopt)
        stack.extend(held)
        try:
            yield
        finally:
            for token in held:
                stack.remove(token)

    def _read_claims(self) -> dict[str, str]:
        """uid -> token of every live owner's claims; deletes the claim files of dead owners."""
        paths = self.store.paths
        claimed: dict[str, str] = {}
        # an item listed by several live owners (a driver and the worker computing it) is named
        # after the owner this very thread computes for, if any: a nested call then knows it
        # holds it (an error), whichever file is read first
        computing = set(getattr(_computing, "tokens", None) or ())
        for entry in os.scandir(paths.claims):
            if not entry.name.endswith(".owner"):
                continue
            token = entry.name[: -len(".owner")]
            if token == self.token:
                continue
            if not self._is_live(token):
                # takeover: the owner died (its lock is free; owner files are born locked)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            try:
                with open(entry.path, "rb") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                with contextlib.suppress(msgspec.DecodeError):
                    uids = msgspec.json.decode(line, type=list[str])
                    if token in computing:
                        claimed.update(dict.fromkeys(uids, token))
                    else:
                        for uid in uids:
                            claimed.setdefault(uid, token)
        return claimed

    def _is_live(self, token: str) -> bool:
        if token in locks.live_tokens:
            return True
        return bool(locks.probe_lock(self.store.paths.owner_lock(token)))

    def _append(self, uids: list[str]) -> None:
        if not uids:
            return
        # one JSON line per append, written whole while the global lock is held: readers of the
        # file also hold it, so they never see half a line
        owner = tp.cast(locks.FdLock, self._owner)
        sh.write_all(owner.fd, msgspec.json.encode(uids) + b"\n")

    def wait_others(self, poll_max_s: float = 0.5) -> list[str]:
        """Wait until every item claimed by others is stored or its owner died.

        Returns the items whose owner died before storing them: they are now claimed by this
        claim, and the caller computes them.
        """
        freed: list[str] = []
        if not self._others:
            return freed  # nobody else claimed any of these items: nothing to wait for
        delay_s = 0.01
        while True:
            self.store.refresh()
            store = self.store
            pending = {uid: t for uid, t in self._others.items() if uid not in store}
            self._others = pending
            if not pending:
                return freed
            if all(self._is_live(token) for token in set(pending.values())):
                time.sleep(delay_s)
                delay_s = min(delay_s * 1.5, poll_max_s)
                continue
            with self._globally():
                store.refresh()
                claimed = self._read_claims()
                taken = []
                for uid in list(self._others):
                    owner = claimed.get(uid)
                    if uid in store:
                        del self._others[uid]
                    elif owner is None:
                        taken.append(uid)
                        del self._others[uid]
                    else:
                        self._others[uid] = owner  # another waiter took it over first
                self._append(taken)
            self.mine.extend(taken)
            if self._taken is not None:
                self._taken.update(taken)
            freed.extend(taken)
            delay_s = 0.01

    def release(self) -> None:
        """Give up this owner's claims (items not stored by now are free for others)."""
        if self._owner is None:
            return
        # the file goes while its lock is still held (a prober finding no file knows the owner is
        # gone), and under the global lock (a reader never finds it half gone)
        try:
            with self._globally(), contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path)
        except OSError:
            pass  # the folder went away (removed underneath): nothing left to release
        self._owner.release()
        self._owner = None
        locks.live_tokens.discard(self.token)


_computing = threading.local()


def _computing_stack() -> list[str]:
    stack: list[str] | None = getattr(_computing, "tokens", None)
    if stack is None:
        stack = _computing.tokens = []
    return stack


def is_computing() -> bool:
    """Whether this thread runs inside the computation of claimed items (a nested map call)."""
    return bool(getattr(_computing, "tokens", None))


def _nested(others: dict[str, str]) -> list[str]:
    """The items held by a computation this very thread is in."""
    stack = getattr(_computing, "tokens", None)
    if not stack or not others:
        return []
    mine = set(stack)
    return [uid for uid, token in others.items() if token in mine]


def _refuse_nested(others: dict[str, str]) -> None:
    """Raise if items held by another owner are held by a computation this very thread is in."""
    nested = _nested(others)
    if nested:
        shown = ", ".join(map(repr, nested[:5])) + (" ..." if len(nested) > 5 else "")
        raise RuntimeError(
            f"a map call nested in the computation of its own items needs {len(nested)} "
            f"item(s) that this computation holds and has not stored yet ({shown}): waiting "
            "for them would wait forever. Compute them first, in an earlier call (or order "
            "the items so that each one's inputs come earlier in a previous call)"
        )


_warned_no_locks: set[str] = set()


def _warn_no_locks(where: Path, exc: OSError) -> None:
    """Say once per folder that claims are off there (logged: not an error, and not damage)."""
    if str(where) not in _warned_no_locks:
        _warned_no_locks.add(str(where))
        logger.info(
            "%s: no file locks on this filesystem (%s): items are computed without claims, so "
            "processes working on the same items at once may compute some twice",
            where,
            exc.strerror,
        )


__all__ = ["Claim", "is_computing"]
