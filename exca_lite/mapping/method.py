"""``@MapInfra.apply``: one cached output per item, computed only for missing items.

``feat.embed`` is a ``BoundMap`` stored in the instance's ``__dict__`` on first access; it keeps its
``MapStore`` open, so a later call reads only the index bytes written since the last one.

A call: name the items (``item_uid``), ask the store which are missing, claim them (other processes
computing the same items are waited for, not duplicated), compute the claimed ones in chunks (here,
in a thread/process pool, or as one submitit job array) where each worker writes into the store
itself, then yield every output from the store in input order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import itertools
import logging
import operator
import os
import time
import traceback
import typing as tp
import uuid
from pathlib import Path

import numpy as np

from ..bound import BoundMethod, InfraMethod, find_method, refuse_read_only_clear
from ..errors import CacheMissError, JobError
from ..pools import (
    StopFlag,
    available_cpus,
    check_importable,
    init_worker,
    process_context,
    working,
)
from ..store import CacheType, Durability, MapStore, MapWriter
from ..store.claims import Claim, is_computing
from ..store.segment import DecimalUids
from ..taskcache import TaskPaths
from ..uid import item_uid_name
from . import jobs
from .view import MapView

if tp.TYPE_CHECKING:
    from .infra import MapInfra

logger = logging.getLogger("exca_lite")

Own = tp.TypeVar("Own")
X = tp.TypeVar("X")
R = tp.TypeVar("R")

PROGRESS_MIN_ITEMS = 1000
ITEM_UID_MAX_CHARS = 128  # longer item uids keep their head and get a hash of the whole
_POLL_MAX_S = 0.5
_WRITE_STEP = 1024  # items per write_many call of a compute loop
_ALL_HITS_MIN = 17
"""Calls of this many items or more try the all-cached path first (``_all_hits``); fewer take
the per-item path, cheaper for one or two items."""


class MapMethod(InfraMethod["BoundMap[tp.Any, tp.Any, tp.Any]"], tp.Generic[Own, X, R]):
    """The descriptor ``@infra.apply(item_uid=...)`` puts on the class."""

    def __init__(
        self,
        infra: MapInfra,
        func: tp.Callable[[Own, tp.Sequence[X]], tp.Iterable[R]],
        item_uid: tp.Callable[[tp.Any], str],
        exclude: tuple[str, ...],
        cache_type: CacheType,
    ) -> None:
        super().__init__(infra, func, exclude)
        self.item_uid = item_uid
        self.cache_type = cache_type
        # str()/repr() of a numpy array elides its middle and rounds its values: two arrays would
        # share an item uid (checked on each call, on the first and last items)
        self.item_uid_is_str = item_uid in (str, repr)
        self.items_param = _items_param(func)

    def new_bound(self, obj: tp.Any) -> BoundMap[tp.Any, tp.Any, tp.Any]:
        return BoundMap(self, obj)

    @tp.overload
    def __get__(self, obj: None, objtype: type | None = None) -> MapMethod[Own, X, R]: ...
    @tp.overload
    def __get__(self, obj: Own, objtype: type | None = None) -> BoundMap[Own, X, R]: ...

    def __get__(
        self, obj: Own | None, objtype: type | None = None
    ) -> MapMethod[Own, X, R] | BoundMap[Own, X, R]:
        if obj is None:
            return self
        return tp.cast("BoundMap[Own, X, R]", self.bind(obj))


class BoundMap(BoundMethod, tp.Generic[Own, X, R]):
    """``feat.embed``: call it on items; inspect and manage its cache."""

    _infra: MapInfra
    _store: MapStore | None

    def __init__(self, method: MapMethod[Own, X, R], owner: Own) -> None:
        super().__init__(method, owner)
        self._map_method = method
        self._forced: set[str] = set()
        self._ram: dict[str, tp.Any] = {}  # folder=None only

    def _prepare_more(self) -> None:
        store = (
            None
            if self._paths is None
            else MapStore(self._paths.base, durability=self._infra.durability)
        )
        # threads preparing one bound object at once keep the first store: a thread switched to
        # another store after its call refreshed this one would miss the items just computed
        self._store = self.__dict__.setdefault("_store", store)

    @property
    def infra(self) -> MapInfra:
        """The infra in effect: the instance's, completed by the class default."""
        self._prepare()
        return self._infra

    # # # naming items # # #

    def _decimal_uids(self, items: tp.Sequence[X]) -> DecimalUids | None:
        """The uids of int items named by ``str``, as numbers (``DecimalUids``: the store looks
        them up from their digits, no string made per item); None for other items."""
        if self._map_method.item_uid is str and _maybe_ints(items):
            values = _int_values(items)
            if values is not None:
                return DecimalUids(values)
        return None

    def _item_uids(self, items: tp.Sequence[X], decimal: DecimalUids | None = None) -> list[str]:
        return self._name_items(items, decimal)[0]

    def _name_items(
        self, items: tp.Sequence[X], decimal: DecimalUids | None = None
    ) -> tuple[list[str], bool]:
        """The uids of ``items``, and whether they are known distinct (ints in increasing order,
        a range say): looking up which are missing then needs no pass to deduplicate them.
        ``decimal``: ``_decimal_uids`` of the items, found already."""
        method = self._map_method
        if decimal is None:
            decimal = self._decimal_uids(items)
        if decimal is not None:  # made from their digits, valid text
            values = decimal.values
            return decimal.texts(), bool((values[1:] > values[:-1]).all())
        if method.item_uid_is_str and items:
            _refuse_str_of_arrays(method, items)
        uids = list(map(method.item_uid, items))
        if not uids:
            return uids, True
        # this runs on every call, cache hits included: checked in C-level passes
        try:
            longest = _longest(uids)
        except TypeError:
            i = next(k for k, uid in enumerate(uids) if not isinstance(uid, str))
            raise TypeError(
                f"item_uid must return a str, got {type(uids[i]).__name__} for item #{i} "
                f"({items[i]!r:.80})"
            ) from None
        except UnicodeEncodeError:
            i = next(k for k, uid in enumerate(uids) if not _is_text(uid))
            raise ValueError(
                f"item_uid returned {uids[i]!r:.80} for item #{i}, which is not valid text (a "
                "lone surrogate: str() of a path whose name is not UTF-8 gives these); return "
                "a text name instead, e.g. os.fsencode(path).hex(), or "
                "os.fsencode(path).decode('utf-8', 'backslashreplace')"
            ) from None
        if longest > ITEM_UID_MAX_CHARS:  # maybe: each uid tells
            uids = [u if len(u) <= ITEM_UID_MAX_CHARS else item_uid_name(u) for u in uids]
        return uids, False

    # # # public calls # # #

    def __call__(
        self, items: tp.Iterable[X] | None = None, /, **named: tp.Iterable[X]
    ) -> tp.Iterator[R]:
        """Outputs for every item, in input order (duplicates included), computing missing ones.

        The items may be passed by the method's own parameter name (``embed(texts=...)``).
        """
        if named or items is None:
            items = self._named_items(items, named)
        seq = items if isinstance(items, tp.Sequence) else list(items)
        decimal = self._decimal_uids(seq)
        uids = self._item_uids(seq) if decimal is None else None
        if len(seq) >= _ALL_HITS_MIN:
            hits = self._all_hits(decimal if decimal is not None else uids)
            if hits is not None:
                return hits
        if uids is None:
            uids = self._item_uids(seq, decimal)
        self._ensure(seq, uids)
        if self._store is None:
            ram = self._ram
            return (ram[uid] for uid in uids)
        return self._store.load_many(uids, self._gone)

    def _all_hits(self, uids: tp.Sequence[str] | None) -> tp.Iterator[R] | None:
        """The outputs of items all cached already (one lookup per item serves both the check
        and the loads; ``DecimalUids`` are looked up from their numbers, never named one by
        one), else None: the caller then computes what is missing, as for any call."""
        self._prepare_to_run()
        store = self._store
        if store is None or uids is None or self._infra.mode == "force":
            return None
        self._check_configs()  # a cache hit too must be this config's
        return store.load_all(uids, self._gone)

    def _gone(self, uid: str) -> CacheMissError:
        """An item computed (or found) by this call, no longer stored when it is read."""
        return CacheMissError(
            f"{self._uid}: item {uid!r} left the cache while this call read it (another process "
            "cleared it, or took back outputs of a method that miscounted them): call again to "
            "compute it"
        )

    def _named_items(
        self, items: tp.Iterable[X] | None, named: dict[str, tp.Iterable[X]]
    ) -> tp.Iterable[X]:
        param = self._map_method.items_param
        accepted = {param, "items"}
        if items is None and len(named) == 1 and next(iter(named)) in accepted:
            return next(iter(named.values()))
        qualname = f"{type(self._owner).__qualname__}.{self._method.name}"
        raise TypeError(
            f"{qualname}() takes one sequence of items, positionally or as {param}=...; got "
            + (f"{len(named) + (items is not None)} arguments" if named else "none")
            + (f" ({', '.join(sorted(named))}=...)" if named else "")
        )

    def stack(self, items: tp.Iterable[X]) -> tp.Any:
        """One contiguous array ``(len(items), *item_shape)``, computing missing items first."""
        seq = items if isinstance(items, tp.Sequence) else list(items)
        decimal = self._decimal_uids(seq)
        uids = self._item_uids(seq) if decimal is None else None
        keys: tp.Sequence[str] = decimal if decimal is not None else tp.cast(list[str], uids)
        if self._checked and self._store is not None and self._infra.mode != "force":
            # every item already in this reader's view (the hot loop of a training, say): one
            # lookup per item, no separate missing() pass (_checked: prepared, and the folder's
            # configs checked; int items looked up from their numbers, not named). The refresh
            # (~10 us when nothing changed) picks up what other processes published since: a
            # newer copy (mode="force"), a clear
            try:
                self._store.refresh()
                return self._store.stack(keys)
            except KeyError:
                pass  # some are missing: compute them, as below
        if uids is None:
            uids = self._item_uids(seq, decimal)
        self._ensure(seq, uids)
        if self._store is None:
            return np.stack([self._ram[uid] for uid in uids])
        try:
            return self._store.stack(uids)
        except KeyError as exc:
            raise self._gone(exc.args[0]) from None

    def view(self, items: tp.Iterable[X]) -> MapView[R]:
        """A read-only sequence over the outputs of ``items`` (missing ones computed first): ``len``,
        ``view[i]`` (zero-copy), ``view[i:j]`` and ``view[index_array]`` (one stacked array). It
        pickles as a reference to the cache, for worker processes (``mapping/view.py``)."""
        self._prepare()
        if self._store is None:
            raise ValueError(
                f"{self._uid}: view() reads its items from the cache folder, and this MapInfra "
                "has none: set MapInfra(folder=...)"
            )
        seq = items if isinstance(items, tp.Sequence) else list(items)
        uids = self._item_uids(seq)
        self._ensure(seq, uids)
        return MapView.create(
            self._store, uids, self._uid, read_only=self._infra.mode == "read-only"
        )

    def compute(self, items: tp.Iterable[X]) -> int:
        """Make sure every item is cached (loading nothing); returns how many were computed."""
        seq = items if isinstance(items, tp.Sequence) else list(items)
        decimal = self._decimal_uids(seq)  # found once: the check and the naming both use it
        if decimal is not None and self._all_cached(decimal):
            return 0
        return self._ensure(seq, *self._name_items(seq, decimal))

    def _all_cached(self, decimal: DecimalUids) -> bool:
        """Whether every item (int items named by ``str``) is known cached without naming them
        one by one: looked up from their numbers, since ``str`` of a million ints costs more than
        their lookup. False also means "not known": the caller then takes the general path."""
        self._prepare()
        store = self._store
        if store is None or self._infra.mode == "force":
            return False
        self._check_configs()  # a cache hit too must be this config's
        # a first fill, say: no need to look at every item (a view not refreshed may miss it:
        # then the general path, which refreshes, decides; stores_all refreshes too)
        if decimal[0] not in store:
            return False
        return store.stores_all(decimal)

    def cached_uids(self) -> list[str]:
        self._prepare()
        if self._store is None:
            return list(self._ram)
        self._store.refresh()
        return self._store.item_uids()

    def iter_cached(self) -> tp.Iterator[Own]:
        """The owner of every cache of this method and version under ``folder``, rebuilt from its
        config.json with this owner's infra, whatever its other fields; folders that are not
        readable caches of this class are skipped, with one warning naming them."""
        return iter(self._cached_owners())

    def clear(self) -> None:
        """Remove every cached item of this method and config."""
        self._prepare()
        refuse_read_only_clear(self._infra.mode, self._uid, self._paths)
        self._ram.clear()
        if self._store is not None:
            self._store.clear()

    # # # computing what is missing # # #

    def _ensure(self, items: tp.Sequence[X], uids: list[str], distinct: bool = False) -> int:
        """Compute the items not cached, returning how many (``distinct``: the uids are known
        not to repeat)."""
        self._prepare_to_run()
        self._check_configs()  # once per bound object: a cache hit too must be this config's
        infra = self._infra
        if infra.mode == "force":
            unique = list(dict.fromkeys(uids))
            todo = [u for u in unique if u not in self._forced]
            if self._store is not None and len(todo) < len(unique):
                # forced before by this object: again only if no longer stored (another process
                # cleared them, or took back outputs of a method that miscounted them)
                fresh = set(todo)
                todo += [u for u in self._store.missing(unique) if u not in fresh]
            self._forced.update(todo)
            if todo:
                logger.debug("%s: mode='force' recomputes %d items", self._uid, len(todo))
        else:
            todo = self._missing(uids, distinct)
        as_of = None if self._store is None or infra.mode == "force" else self._store.view_state()
        if not todo:
            return 0
        if infra.mode == "read-only":
            raise CacheMissError(
                f"{self._uid}: {len(todo)} of {len(uids)} items are not cached and "
                f"mode='read-only' never computes; missing item uids: {todo[:10]}"
                + (" ..." if len(todo) > 10 else "")
            )
        if infra.forbid_single_item_computation and len(todo) == 1:
            raise RuntimeError(
                f"{self._uid}: exactly one item is missing ({todo[0]!r}) and "
                "forbid_single_item_computation=True (computing a cache item by item is slow): "
                "compute items in batches, or set forbid_single_item_computation=False"
            )
        by_uid: dict[str, X] = {}
        after = 0 if type(items) in (list, tuple) else -1  # where the last run of uids ended

        def items_of(subset: list[str]) -> list[X]:
            nonlocal after
            if subset == uids:  # every item, in order (compared by identity first: cheap)
                return list(items)
            if after >= 0 and subset:
                # a piece is usually a run of the call's uids, after the previous one's (cached
                # items skipped): its items are sliced, not looked up by uid (a dict of every
                # item cost more than the writes). index() compares by identity first: cheap
                try:
                    start = uids.index(subset[0], after)
                except ValueError:
                    start = -1
                end = start + len(subset)
                if start >= 0 and uids[start:end] == subset:
                    after = end
                    return list(items[start:end])
                after = -1  # not runs: looked up from now on
            if not by_uid:
                by_uid.update(zip(uids, items, strict=True))
            return [by_uid[u] for u in subset]

        if self._store is None:
            self._run_inline_ram(items_of(todo), todo)
            return len(todo)
        self._write_configs()
        store = self._store
        if infra.mode == "force":
            computed = self._compute_forced(todo, items_of, as_of)
        else:
            computed = 0
            while todo:
                # items that live jobs of an earlier submission (its driver maybe dead) will
                # compute: waited for, never submitted again
                # (not from inside a computation: a job's nested call must not wait for the
                # items its own job holds; its claims say which those are)
                held = {} if is_computing() else jobs.live_holders(store.folder, todo)
                free = [u for u in todo if u not in held] if held else todo
                if free:
                    computed += self._compute_free(free, items_of, as_of if not held else None)
                if not held:
                    break
                logger.warning(  # shown by default: queued jobs may take hours to run
                    "%s: waiting for %d items that live jobs of an earlier submission compute "
                    "(jobs %s; interrupting this wait leaves them running)",
                    self._uid,
                    len(held),
                    ", ".join(sorted({str(getattr(j, "job_id", j)) for j in held.values()})[:5]),
                )
                jobs.wait_for(held, store.missing, _POLL_MAX_S)
                todo, as_of = store.missing(todo), None  # a dead job's items are free again
                if not todo:  # all stored
                    jobs.drop_ended(store.folder)
        if infra.cluster is not None:
            # workers wrote through their own writers: read their index records (inline, this
            # store's writer handed its records to the store as it published them)
            store.refresh()
        return computed

    def _compute_free(
        self,
        todo: list[str],
        items_of: tp.Callable[[list[str]], list[X]],
        as_of: object,
    ) -> int:
        """Compute the items of ``todo`` no live owner holds, claimed piece by piece as each piece
        starts, then wait for those others hold (taking over the items of owners that die)."""
        store = tp.cast(MapStore, self._store)
        computed = 0
        with store.claim((), missing_as_of=as_of) as claim:  # an owner, holding nothing yet
            with claim.computing():  # a nested call needing these items is an error
                computed += self._run_pieces(claim, todo, items_of, as_of)
            computed += self._wait_and_take_over(claim, items_of)
        return computed

    def _compute_forced(
        self, todo: list[str], items_of: tp.Callable[[list[str]], list[X]], as_of: object
    ) -> int:
        """mode="force": compute every item once more, holding them all meanwhile."""
        store = tp.cast(MapStore, self._store)
        with store.claim(todo, missing_as_of=as_of) as claim:
            with claim.computing():
                self._run(items_of(todo), todo, claim.token, inline=claim.nested)
            return len(todo) + self._wait_and_take_over(claim, items_of)

    def _wait_and_take_over(self, claim: Claim, items_of: tp.Callable[[list[str]], list[X]]) -> int:
        computed = 0
        while True:
            freed = claim.wait_others(poll_max_s=_POLL_MAX_S)
            if not freed:
                return computed
            logger.info("%s: taking over %d items of a dead process", self._uid, len(freed))
            with claim.computing():
                self._run(items_of(freed), freed, claim.token, inline=claim.nested)
            computed += len(freed)

    def _run_pieces(
        self,
        claim: Claim,
        todo: list[str],
        items_of: tp.Callable[[list[str]], list[X]],
        as_of: object,
    ) -> int:
        """Claim and compute the free items of ``todo``: one job array for submitit clusters;
        piece by piece inline and in pools (each piece claimed when it starts)."""
        from ..execution import piece_size

        infra = self._infra
        cluster = None if claim.nested else infra.cluster
        if cluster not in (None, "threadpool", "processpool"):
            mine = claim.take(todo, len(todo), missing_as_of=as_of)
            if mine:
                self._run(items_of(mine), mine, claim.token, inline=claim.nested)
            return len(mine)
        workers = 1 if cluster is None else self._max_jobs()
        size = piece_size(len(todo), workers, infra.min_samples_per_job)
        remaining = todo
        next_as_of = [as_of]  # the first take may trust the caller's view of what is missing
        computed = 0
        store = tp.cast(MapStore, self._store)

        def next_piece() -> list[str]:
            nonlocal remaining, computed
            if not remaining:  # all taken by this call: no need to ask again (a lock round)
                return []
            trusted = next_as_of.pop() if next_as_of else None
            piece = claim.take(
                remaining,
                size,
                missing_as_of=trusted,
                untaken=True,  # remaining: what this call has not taken
            )
            # inline, this store takes in the piece's entries as its writer publishes them: the
            # next take may trust this view grown by exactly those (grown by anything else, the
            # next take looks its items up, and so do all later ones)
            if piece and cluster is None and trusted is not None and store.view_state() == trusted:
                next_as_of.append(store.view_state_grown(trusted, len(piece)))
            if piece:
                if remaining[: len(piece)] == piece:  # the usual case: nobody else holds any
                    remaining = remaining[len(piece) :]
                else:
                    taken = set(piece)
                    remaining = [u for u in remaining if u not in taken]
                computed += len(piece)
            return piece

        if cluster is None:
            # one bar for the call, not one per piece
            big = len(todo) >= PROGRESS_MIN_ITEMS
            with _progress(len(todo), self._method.name) if big else _NoBar() as bar:
                while piece := next_piece():
                    self._run(items_of(piece), piece, bar=bar, inline=True)
        else:
            n_pieces = -(-len(todo) // size)
            pieces = self._pool_args(next_piece, items_of, claim.token)
            self._run_pool(pieces, n_pieces, piecewise=True)
        return computed

    def _pool_args(
        self,
        next_piece: tp.Callable[[], list[str]],
        items_of: tp.Callable[[list[str]], list[X]],
        token: str,
    ) -> tp.Iterator[tuple[tp.Any, ...]]:
        """The arguments of ``run_map_chunk`` for each piece, claimed only when pulled."""
        infra = self._infra
        folder = tp.cast(TaskPaths, self._paths).base
        while piece := next_piece():
            items = items_of(piece)
            yield (
                self._owner,
                self._ref,
                folder,
                items,
                piece,
                infra.durability,
                False,
                None,
                token,
            )

    def _missing(self, uids: list[str], distinct: bool = False) -> list[str]:
        if self._store is None:
            ram = self._ram
            return [u for u in dict.fromkeys(uids) if u not in ram]
        return self._store.missing(uids, distinct=distinct)

    def _run_inline_ram(self, items: list[X], uids: list[str]) -> None:
        outputs = iter(self._map_method.func(self._owner, items))
        ram = self._ram
        n = 0
        for uid, output in zip(uids, outputs, strict=False):
            ram[uid] = output
            n += 1
        error = _output_count_error(self._map_method, self._owner, outputs, n, len(items))
        if error is not None:
            for uid in uids[:n]:  # they may belong to other items
                ram.pop(uid, None)
            raise error

    def _run(
        self,
        items: list[X],
        uids: list[str],
        token: str | None = None,
        bar: tp.Any = None,
        inline: bool = False,
    ) -> None:
        """Compute these items (in this process, a pool or jobs); ``token``: the caller's claim,
        which each worker adopts, so its items stay held by the worker if the caller dies;
        ``bar``: inline, the progress bar of the whole call (else one for these items);
        ``inline``: in this process whatever the cluster (a call nested in a computation: a
        pool or a job array per nested call would cost seconds per item)."""
        from ..execution import chunk_sizes, chunks

        infra = self._infra
        folder = tp.cast(TaskPaths, self._paths).base
        if inline or infra.cluster is None:
            # inline: reuse this caller's open store rather than re-reading the whole index
            run_map_chunk(
                self._owner,
                self._ref,
                folder,
                items,
                uids,
                infra.durability,
                progress=True,
                store=self._store,
                bar=bar,
            )
            return
        sizes = chunk_sizes(len(items), self._max_jobs(), infra.min_samples_per_job)
        item_chunks, uid_chunks = chunks(items, sizes), chunks(uids, sizes)
        logger.info(
            "%s: computing %d items in %d %s jobs (sizes %d..%d)",
            self._uid,
            len(items),
            len(sizes),
            infra.cluster,
            min(sizes),
            max(sizes),
        )
        args = [
            (self._owner, self._ref, folder, c_items, c_uids, infra.durability, False, None, token)
            for c_items, c_uids in zip(item_chunks, uid_chunks, strict=True)
        ]
        if infra.cluster in ("threadpool", "processpool"):
            self._run_pool(iter(args), len(args))
        else:
            self._run_submitit(args)

    def _max_jobs(self) -> int:
        """``max_jobs``, or if unset: one worker per CPU for pools, 128 jobs for a job array."""
        infra = self._infra
        if infra.max_jobs is not None:
            return infra.max_jobs
        return available_cpus() if infra.cluster in ("threadpool", "processpool") else 128

    def _run_pool(
        self, pieces: tp.Iterator[tuple[tp.Any, ...]], n_pieces: int, piecewise: bool = False
    ) -> None:
        """Run ``run_map_chunk`` on each piece's arguments in a pool, pulling the next piece only
        when a worker is free: a piece is claimed when it starts, not before. ``piecewise``: the
        driver claimed only the pieces handed out (else every chunk, up front)."""
        infra = self._infra
        workers = min(self._max_jobs(), n_pieces)
        pool: concurrent.futures.Executor
        stop: StopFlag | None = None
        if infra.cluster == "threadpool":
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
            stop = StopFlag()
        else:
            # the same start method every time (forkserver): the workers never depend on which
            # threads this process runs; each watches this process and ends after its chunk if
            # this process dies (its items stay held by it meanwhile)
            check_importable(self._owner)
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=process_context(),
                initializer=init_worker,
                initargs=(os.getpid(),),
            )
        errors: list[str] = []
        n_run = 0
        with pool:
            futures: dict[concurrent.futures.Future[int], tuple[int, int]] = {}

            def submit_next() -> bool:
                nonlocal n_run
                args = next(pieces, None)
                if args is None:
                    return False
                if stop is not None:
                    args = (*args, stop)
                run: tp.Callable[..., int] = run_piece if piecewise else run_map_chunk
                future = pool.submit(run, *args)
                futures[future] = (n_run, len(args[4]))
                n_run += 1
                return True

            try:
                with _progress(n_pieces, f"{self._method.name} jobs") as bar:
                    while len(futures) < workers and submit_next():
                        pass
                    while futures:
                        done, _ = concurrent.futures.wait(
                            futures, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        for future in done:
                            k, n_items = futures.pop(future)
                            exc = future.exception()
                            if exc is not None:
                                errors.append(f"job {k} ({n_items} items): {exc}")
                            bar.update(1)
                        while len(futures) < workers and submit_next():
                            pass
            except BaseException:
                # interrupted (Ctrl-C): threads stop at their next item, no further piece
                # starts, process workers got the same SIGINT from the terminal
                if stop is not None:
                    stop.set()
                for future in futures:
                    future.cancel()
                raise
        if errors:
            raise JobError(
                f"{self._uid}: {len(errors)} of {n_run} {infra.cluster} jobs failed (items "
                f"completed before the failure stay cached{_UNLESS_NOT_KEPT}):\n"
                + "\n".join(errors)
            )

    def _run_submitit(self, args: list[tuple[tp.Any, ...]]) -> None:
        from ..execution import make_executor

        infra = self._infra
        name = infra.job_name or f"{type(self._owner).__name__}.{self._method.name}"
        executor = make_executor(infra, name)
        calls: list[tuple[tp.Any, ...]] = [(run_map_chunk, *a) for a in args]
        if infra.workdir is not None and executor.cluster != "debug":
            from ..workdir import snapshot, snapshot_call

            copy = snapshot(infra.workdir, tp.cast(Path, infra.folder))  # one for the array
            calls = [snapshot_call(copy, call) for call in calls]
        with executor.batch():
            submitted = [executor.submit(*call) for call in calls]
        record = None
        if executor.cluster != "debug":  # debug jobs run in this process, inside result()
            # before waiting: if this process dies, a rerun learns from the record which items
            # the jobs (queued ones too, which hold no claim yet) will compute
            record = jobs.record_path(tp.cast(TaskPaths, self._paths).base, uuid.uuid4().hex)
            jobs.save(record, submitted, [a[4] for a in args])
        try:
            self._wait_jobs(executor, submitted, args)
        except JobError:  # raised once every job ended
            if record is not None:
                jobs.remove(record)
            raise
        # (interrupted, the record stays: the jobs run on, holding their items for a rerun;
        # readers remove it once they all ended)
        if record is not None:
            jobs.remove(record)

    def _wait_jobs(
        self, executor: tp.Any, jobs: list[tp.Any], args: list[tuple[tp.Any, ...]]
    ) -> None:
        from ..execution import closing_debug_log_handlers, is_alive, job_failure_text

        logger.info(
            "%s: submitted %d jobs to %s (first id %s)",
            self._uid,
            len(jobs),
            executor.cluster,
            jobs[0].job_id,
        )
        errors: list[str] = []
        pending = list(range(len(jobs)))
        delay = 0.005
        with _progress(len(jobs), f"{self._method.name} jobs") as bar:
            while pending:
                still = []
                for k in pending:
                    job = jobs[k]
                    if executor.cluster == "debug" or not is_alive(job):
                        where = f"job {job.job_id} ({len(args[k][3])} items)"
                        if executor.cluster != "debug" and not job.paths.result_pickle.exists():
                            # ended without a result file (cancelled, killed, timed out):
                            # job.result() would wait 15 s for one, then say less than this
                            errors.append(f"{where}: {job_failure_text(job)}")
                        else:
                            try:
                                with closing_debug_log_handlers(job):
                                    job.result()
                            except Exception as e:  # the job's error, with its traceback
                                errors.append(f"{where}: {e}")
                        bar.update(1)
                    else:
                        still.append(k)
                pending = still
                if pending:
                    time.sleep(delay)
                    delay = min(delay * 1.5, _POLL_MAX_S)
        if errors:
            raise JobError(
                f"{self._uid}: {len(errors)} of {len(jobs)} jobs failed (items completed before "
                f"the failure stay cached{_UNLESS_NOT_KEPT}):\n" + "\n".join(errors)
            )


def _items_param(func: tp.Callable[..., tp.Any]) -> str:
    """The name of the method's items parameter (its second one, after self)."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return "items"
    return params[1] if len(params) > 1 else "items"


def _longest(uids: list[str]) -> int:
    """At least the length of the longest uid (the most UTF-8 bytes of one: the same for ASCII
    uids); TypeError if one is not a str. Joined with NULs and encoded (C loops), the uids'
    sizes are the gaps between the NULs: 3-4x cheaper than a ``len`` call per uid."""
    if len(uids) <= 32:  # a few uids (one new item, say): plain calls beat numpy's fixed costs
        "\x00".join(uids).encode("utf-8")  # the TypeError / UnicodeEncodeError below
        return max(map(len, uids))
    longest = 0
    step = 1 << 16  # bounded temporaries, whatever the uids
    for lo in range(0, len(uids), step):
        chunk = uids[lo : lo + step]
        # strict: a lone surrogate (no UTF-8 form) is refused here, not deep in the store
        raw = np.frombuffer("\x00".join(chunk).encode("utf-8"), np.uint8)
        ends = np.flatnonzero(raw == 0)
        if len(ends) != len(chunk) - 1:  # a uid holds a NUL
            longest = max(longest, max(map(str.__len__, chunk)))
        else:
            gaps = np.diff(ends, prepend=-1, append=len(raw))
            longest = max(longest, int(gaps.max()) - 1)
    return longest


_INT_VALUES_MIN = 64
"""Fewer items are named one by one: their ``str`` costs less than numpy's fixed costs."""


def _maybe_ints(items: tp.Iterable[tp.Any]) -> tp.TypeGuard[tp.Sequence[tp.Any]]:
    """Whether ``_int_values`` may find ints (a cheap look at the container and its first item)."""
    if isinstance(items, np.ndarray):
        return items.ndim == 1 and items.dtype.kind in "iu" and len(items) >= _INT_VALUES_MIN
    return (
        isinstance(items, tp.Sequence) and len(items) >= _INT_VALUES_MIN and type(items[0]) is int
    )


def _int_values(items: tp.Sequence[tp.Any]) -> np.ndarray | None:
    """The items as int64 if each is an int whose ``str`` is its decimal text (a plain ``int``
    or a numpy integer of a 1-d array, not a bool nor an int subclass), else None."""
    if isinstance(items, np.ndarray):
        if items.dtype == np.uint64 and int(items.max()) >= 1 << 63:
            return None
        return items.astype(np.int64, copy=False)
    if type(items) is range:
        if not -(1 << 63) <= min(items[0], items[-1]) <= max(items[0], items[-1]) < 1 << 63:
            return None
        return np.arange(items.start, items.stop, items.step, dtype=np.int64)
    # exact type: np.fromiter would take bools, int subclasses (own __str__) and floats (1.5 -> 1)
    if operator.countOf(map(type, items), int) != len(items):
        return None
    try:
        return np.fromiter(items, dtype=np.int64, count=len(items))
    except OverflowError:  # beyond int64
        return None


def _is_text(uid: str) -> bool:
    try:
        uid.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_str_of_arrays(
    method: MapMethod[tp.Any, tp.Any, tp.Any], items: tp.Sequence[tp.Any]
) -> None:
    for position in (0, len(items) - 1):
        if isinstance(items[position], np.ndarray):
            name = getattr(method.item_uid, "__name__", "str")
            raise TypeError(
                f"{method.name}: item_uid={name} on numpy array items (item #{position}): "
                f"{name}() elides the middle of large arrays and rounds values, so different "
                "arrays would share an item uid and one's output would be served for another. "
                "Name items by their content, e.g. item_uid=lambda a: hashlib.sha256("
                "np.ascontiguousarray(a).tobytes() + str((a.shape, a.dtype)).encode()).hexdigest(), "
                "or by an id (pass ids as items and load the arrays in the method)"
            )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, desc: str) -> tp.Any:
    """A tqdm bar for long work when tqdm is installed; silent otherwise."""
    if total < 2:
        return _NoBar()
    global _BAR_CLASS
    if _BAR_CLASS is None:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()

        class _Bar(tqdm):  # type: ignore[misc]
            # no monitor thread: it would outlive the bar, and a process with a second thread
            # cannot fork its pool workers safely (a subclass attribute: tqdm itself is untouched)
            monitor_interval = 0

        _BAR_CLASS = _Bar
    return _BAR_CLASS(total=total, desc=desc, leave=False, mininterval=0.5)


_BAR_CLASS: tp.Any = None


_END = object()
_UNLESS_NOT_KEPT = ", unless a job below says its outputs are not kept"


def _output_count_error(
    method: MapMethod[tp.Any, tp.Any, tp.Any],
    owner: tp.Any,
    outputs: tp.Iterator[tp.Any],
    n: int,
    n_items: int,
) -> RuntimeError | None:
    """A RuntimeError naming the counts unless the method, which gave ``n`` outputs for
    ``n_items`` items (consumed by zipping them with the items), yields nothing more.

    The caller takes back the ``n`` outputs it kept: once one item was skipped (or an output
    added), each later output may belong to another item, and serving it would be a silent
    wrong result."""
    if n == n_items and next(outputs, _END) is _END:
        return None
    name = f"{type(owner).__qualname__}.{method.name}"
    dropped = (
        f" The {n} outputs it gave are not kept (they may belong to other items), nor any copy "
        "stored before for those items: they are computed again once the method is fixed."
        if n
        else ""
    )
    if n == n_items:
        return RuntimeError(  # not drained further: each output may cost a computation
            f"{name} yielded more than {n_items} outputs (at least {n_items + 1}) for the "
            f"{n_items} items it was given: a map method must yield exactly one output per item, "
            f"in order.{dropped}"
        )
    return RuntimeError(
        f"{name} yielded {n} outputs for {n_items} items: a map method must yield exactly one "
        f"output per item, in order.{dropped}"
    )


def _take_back(writer: MapWriter, uids: list[str], error: RuntimeError) -> RuntimeError:
    """Void the entries ``writer`` gave ``uids`` (see ``MapWriter.retract``); ``error`` to raise,
    saying what to do if that failed too."""
    try:
        writer.retract(uids)
    except Exception as exc:
        return RuntimeError(
            f"{error} Taking them back failed ({type(exc).__name__}: {exc}): they are cached "
            "under the wrong uids; after fixing the method, clear this cache (exca-lite clear "
            f"{writer.store.folder})."
        )
    return error


def run_map_chunk(
    owner: tp.Any,
    method_name: str,
    folder: str,
    items: list[tp.Any],
    uids: list[str],
    durability: Durability,
    progress: bool = False,
    store: MapStore | None = None,
    adopt: str | None = None,
    stop: StopFlag | None = None,
    *,
    bar: tp.Any = None,
    adopt_pieces: bool = False,
) -> int:
    """What a worker runs: compute a chunk and write each output into the store itself.

    Outputs are published as they come (the writer flushes in batches), so a failure or a kill
    keeps every item completed before it. ``adopt``: the driver's claim token; the worker claims
    the chunk's items itself (they stay held while it lives, even if the driver dies) and
    computes only those no other live process holds (``adopt_pieces``: the driver holds only
    pieces handed to running workers, see ``Claim``). ``stop``: set when the caller is
    interrupted (thread pools): the worker stops at the next item. ``bar``: a progress bar the
    caller shows for more than this chunk (inline pieces).
    """
    method = find_method(type(owner), method_name)
    if not isinstance(method, MapMethod):
        raise TypeError(f"{type(owner).__qualname__}.{method_name} is not a MapInfra method")
    worker = store is None
    if store is None:  # a worker: it only writes, so it never needs to read the whole index
        store = MapStore(folder, durability=durability, load_index=False)
    n = 0
    try:
        with contextlib.ExitStack() as stack:
            if worker:
                stack.enter_context(working())  # an orphaned process worker ends after this
                stack.callback(store.close)  # seal this worker's files when the chunk is done
            if adopt is not None:
                claim = stack.enter_context(
                    store.claim(uids, adopt=adopt, adopt_pieces=adopt_pieces)
                )
                stack.enter_context(claim.computing())
                if len(claim.mine) < len(uids):  # others (alive) compute the rest meanwhile
                    keep = set(claim.mine)
                    picked = [(i, u) for i, u in zip(items, uids, strict=True) if u in keep]
                    items, uids = [i for i, _ in picked], [u for _, u in picked]
            if not uids:
                return 0
            if bar is None:
                bar = stack.enter_context(
                    _progress(len(uids), method_name)
                    if progress and len(uids) >= PROGRESS_MIN_ITEMS
                    else _NoBar()
                )
            writer = stack.enter_context(store.writer(method.cache_type))
            write = writer.write
            outputs = iter(method.func(owner, items))
            # zip pulls a uid before an output: a method yielding too many is caught below
            if stop is None:
                # the writer's own loop, a step of items at a time (for the bar)
                pairs = zip(uids, outputs, strict=False)
                start = writer.written
                try:
                    if len(uids) <= _WRITE_STEP:  # one call (a few new items: no islice)
                        bar.update(writer.write_many(pairs))
                    else:
                        while done := writer.write_many(itertools.islice(pairs, _WRITE_STEP)):
                            bar.update(done)
                finally:
                    n = writer.written - start
            else:
                for uid, output in zip(uids, outputs, strict=False):
                    write(uid, output)
                    n += 1
                    stop.check()
            error = _output_count_error(method, owner, outputs, n, len(items))
            if error is not None:
                raise _take_back(writer, uids[:n], error)
    except Exception as e:
        if progress:  # in this process: the caller gets the original exception
            raise
        env = os.environ
        job_id = env.get("SLURM_JOB_ID", "")
        if env.get("SLURM_ARRAY_JOB_ID"):  # the array task, as squeue and sacct name it
            job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        raise JobError(
            f"{type(e).__name__}: {e} (after {n} of {len(uids)} items, job {job_id or os.getpid()})\n"
            f"--- traceback of the job ---\n{traceback.format_exc()}"
        ) from None
    return n


def run_piece(*args: tp.Any) -> int:
    """``run_map_chunk`` for a piece a driver claimed as it handed it to this worker."""
    return run_map_chunk(*args, adopt_pieces=True)


__all__ = ["BoundMap", "MapMethod", "run_map_chunk", "run_piece"]
