"""The map store: per-item results in append-only, memory-mapped shards that no two processes share.

Why this shape (see docs/design.md for the full protocol and its crash analysis):

- Each writer appends to its own shard/index pair, created under a fresh random name and never
  written by anyone else; it seals the pair when done. Correctness never rests on file locks
  (cluster filesystems often do not carry them across hosts): locks only save work.
- Data before index: a writer appends item bytes to its shard, then one self-checking record per
  flush to its index. A reader trusts only records it has checked, so a kill at any instant loses
  at most what was not yet published.
- Late visibility is not damage: a record naming bytes a reader cannot see yet (another host's,
  on a network filesystem) is left for the next look, not skipped and not warned about.
- Readers remember how far they read each index file and read only new bytes; items are served as
  read-only numpy views on a memory map of the shard (no copy, memory proportional to item count).
- Compaction folds sealed (or long abandoned) pairs into a new pair and removes them after
  publishing it: it never touches a pair a writer may still append to. Names are never reused (and
  each pair carries a random file id), so a reader holding old offsets never reads a wrong array.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import struct
import threading
import time
import typing as tp
import warnings
import weakref
import zlib
from pathlib import Path

import msgspec
import numpy as np

from ..errors import CacheFormatWarning, CorruptCacheWarning, StoreError
from . import encoding as enc
from . import format as sh
from . import locks
from . import segment as sg
from . import writer as wr
from .claims import Claim
from .encoding import CacheType
from .format import Durability
from .fs import NO_LOCK_ERRNOS, create_new, is_network_fs, store_error
from .writer import MapWriter

COMPACT_RECORD_ITEMS = 1 << 16
COPY_CHUNK_BYTES = 8 << 20
STACK_CHUNK_BYTES = 4 << 20
STACK_READ_BYTES = 64 << 10
"""stack() reads items this big with ``preadv`` straight into the output (one copy, no mapping);
smaller ones are gathered from the shard's memory map (one vectorized copy for many items)."""
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+

_COLS = 6  # index table columns: pair number, offset, nbytes, meta id, crc32, stamp
_READ_WINDOW = 64 << 10
"""Index bytes read at a time into one reused buffer (records longer than this grow it)."""
_CHECK_ROWS = 8192  # table rows checked at a time when a view takes in many
_FEW = 16  # records of at most this many entries are taken in with plain Python, not numpy
_ROW = struct.Struct(f"={_COLS}q")  # one row of the table (native int64, as numpy stores it)
LAG_WARN_S = float(os.environ.get("EXCA_LITE_LAG_WARN_S", "60"))
"""A record naming bytes a reader cannot see (late visibility on a network filesystem) is waited
for this long before it counts as damage (one warning, its items skipped and recomputed)."""
CHECK_YOUNG_NS = 600 * 10**9
"""Records of other processes published less than this long ago (by their stamp) have their bytes
checked against their checksums before a reader takes them in: late visibility can show a reader
zeros or stale pages at first. Older ones are settled: verify() checks those."""
SEGMENT_TAIL_CHECK = 1 << 18
"""A young writer segment on a local filesystem has the spans of this many last bytes checked."""
AUTO_FOLD_PAIRS = 16
"""A new writer pair in a folder holding more pairs than this folds the sealed ones (and small
compacted ones) into one: the number of files stays bounded whatever the history."""
AUTO_FOLD_MAX_ENTRIES = 1 << 20
"""A sealed writer pair whose segment holds this many entries is left out of automatic folds:
it is mapped already, and folding (say) 16 pairs of 4M entries would hold all their uids in
memory. A 100M-item cache thus keeps one pair per ``writer.ROTATE_ENTRIES`` entries until an
explicit ``compact()``."""
ROWS_INDEX_MIN = 1 << 14
ROWS_INDEX_MAX = 1 << 21
"""A view holding this many decoded rows (between the two), looked up in bulk by numbers
(``sg.DecimalUids``) while it does not change (a training loop's ``stack``), gets a hashed index
of them (``_RowsIndex``) once its dict lookups have cost about as much as building one."""


_open_stores: weakref.WeakSet[MapStore] = weakref.WeakSet()
_format_warned: set[str] = set()
"""Caches whose files of another format this process warned about (once each, not per reader)."""
_stamp_lock = threading.Lock()
_last_stamp = 0
"""The last record stamp this process gave: stamps of one process strictly increase."""


def _reset_locks_after_fork() -> None:
    # a thread of the parent (a writer's I/O thread ingesting its flush) may hold a store's lock
    # at the fork; in the child that thread does not exist, so the lock would never be released
    for store in list(_open_stores):
        store._lock = threading.RLock()
    global _stamp_lock
    _stamp_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)


class _StaleError(Exception):
    """A file this reader knew was replaced or removed (compaction, clear): re-read everything."""


class _Pair:
    """What a reader knows about one shard/index pair."""

    __slots__ = (
        "bad",
        "file_id",
        "index_path",
        "ino",
        "lag_pos",
        "lag_since",
        "max_end",
        "name",
        "number",
        "pos",
        "sealed",
        "spans",
        "warned",
    )

    def __init__(self, name: sh.DataName, number: int, index_path: str) -> None:
        self.name = name
        self.index_path = index_path
        self.number = number
        self.pos = 0
        self.ino = 0
        self.file_id: bytes | None = None
        self.warned = False
        self.bad = False
        self.sealed = False  # its writer closed it: nothing more will ever be appended
        # a record naming bytes not visible yet: where it is, and since when (monotonic)
        self.lag_pos = -1
        self.lag_since = 0.0
        # the highest shard byte any entry or span of this index points to, valid or not
        self.max_end = 0
        self.spans: list[tuple[int, int, int]] = []  # [start, end), checksum of its records' runs


class _Columns(tp.NamedTuple):
    """The entries of one index record, decoded and checked for shape (not yet for bounds)."""

    uids: list[str]
    offsets: np.ndarray
    nbytes: np.ndarray
    crcs: np.ndarray
    meta_ids: np.ndarray  # store-wide meta ids, one per entry
    stamps: int | np.ndarray  # one for a writer's record, one per entry for a compacted one
    low: int
    top: int
    spans: list[tuple[int, int, int]]
    end: int  # the shard byte its last entry or span ends at (entries are in file order)


class _RowsIndex:
    """An index of a view's rows dict for one state of it (``key``), for ``DecimalUids``: no
    string made and no dict probe per uid (~3 cache misses each). ``looked``: uids the dict
    served in this state, what pays for building it; -1: these rows get no index (a NUL, a long
    uid). Built (``_build``) as one of:

    - ``dense``: the rows of the uids that are canonical decimal texts (``str(v)``, ``|v| <
      DECIMAL_LIMIT``), by number (``dense[v - low]``, -1 for none), when they are dense (a
      dataset's indexes): a number's row is then one gather, exact by construction (a number's
      text is exactly one such uid; other uids are never ``str(v)``), no hash involved.
    - ``seg``: else, the rows laid out as a segment is (``sg.Segment`` built in memory, its
      ``offsets`` column holding table rows): numbers are found as in a mapped segment, each
      hit checked against the stored uid."""

    __slots__ = ("dense", "key", "looked", "low", "seg")

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self.looked = 0
        self.low = 0
        self.dense: np.ndarray | None = None
        self.seg: sg.Segment | None = None

    @property
    def built(self) -> bool:
        return self.dense is not None or self.seg is not None

    def build(self, rows: dict[str, int]) -> None:
        keys = list(rows)
        table_rows = np.fromiter(rows.values(), dtype=np.int64, count=len(keys))
        query = sg.Query(keys)  # the hashes and code points lookups use, computed the same way
        matrix = query.matrix
        if matrix is None or not matrix.shape[1]:
            return
        valid, numbers = sg.decimal_values(matrix)
        numbers, held = numbers[valid], table_rows[valid]
        low, high = (int(numbers.min()), int(numbers.max())) if len(numbers) else (0, -1)
        if high - low < 4 * len(keys):
            dense = np.full(high - low + 1, -1, dtype=np.int64)
            dense[numbers - low] = held
            self.low = low
            self.dense = dense  # complete before another thread can see it
        elif matrix.shape[1] <= sg.FIXED_MAX_CHARS:
            self.seg = _rows_segment(query, table_rows)

    def find(self, uids: sg.DecimalUids, rows: dict[str, int]) -> np.ndarray:
        """The table row of each number's uid, -1 where the rows hold none (``rows``: the dict,
        for numbers beyond what ``dense`` covers)."""
        values = uids.values
        n = len(values)
        if self.dense is None:
            seg = tp.cast(sg.Segment, self.seg)
            out = np.empty(n, dtype=np.int64)
            for lo in range(0, n, sg.HASH_CHUNK):
                pos = seg.find(sg.Query(uids[lo : lo + sg.HASH_CHUNK]))
                out[lo : lo + len(pos)] = np.where(pos >= 0, seg.offsets.take(pos), -1)
            return out
        limit = sg.DECIMAL_LIMIT
        small = (values > -limit) & (values < limit)
        inside = small & (values >= self.low) & (values < self.low + len(self.dense))
        at = np.where(inside, values - self.low, 0)  # (outside: any place, masked)
        out = np.where(inside, self.dense.take(at), -1)
        if not small.all():  # texts of 19 digits or more: not in ``dense``, asked of the dict
            big = np.flatnonzero(~small)
            texts = sg.DecimalUids(values[big]).texts()
            out[big] = np.fromiter(map(rows.get, texts, itertools.repeat(-1)), np.int64, len(big))
        return out


def _rows_segment(query: sg.Query, table_rows: np.ndarray) -> sg.Segment:
    """The rows whose uids ``query`` holds (their code points fitting a fixed-width column) as
    an in-memory segment whose ``offsets`` column holds their table rows."""
    matrix = tp.cast(np.ndarray, query.matrix)
    n, width = matrix.shape
    order = np.argsort(query.hashes, kind="stable")
    seg = sg.Segment()
    seg.count = n
    seg.hashes = query.hashes.take(order)
    seg.offsets = table_rows.take(order)
    seg.fixed = matrix.view(f"V{4 * width}").ravel().take(order).view(f"<U{width}")
    bits = n.bit_length()  # as sg.encode: 2**bits buckets, at most one entry each on average
    directory = np.empty((1 << bits) + 1, dtype=np.uint32)
    directory[-1] = n
    starts = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
    directory[:-1] = np.searchsorted(seg.hashes, starts)
    seg.directory, seg.shift = directory, np.uint64(64 - bits)
    return seg


class _Index:
    """One consistent view of the store; replaced as a whole (never patched) on a full reload, so a
    concurrent ``load`` never mixes rows of one view with pair numbers of another."""

    def __init__(self, compacted: frozenset[str]) -> None:
        self.compacted = compacted  # the compacted pairs listed when this view began
        self.listing: list[str] | None = None
        self.pairs: list[_Pair] = []
        self.by_stem: dict[str, _Pair] = {}
        self.retired: dict[str, int] = {}  # pair name -> index bytes a compacted pair holds
        self.maps: list[mmap.mmap | None] = []
        self.populated: dict[int, tuple[mmap.mmap, int, int]] = {}  # pair -> its map, span
        self.rows: dict[str, int] = {}
        self.table = np.zeros((1024, _COLS), dtype=np.int64)
        self.raw = self.table.data.cast("B")  # rows unpack faster with struct than numpy
        self.count = 0
        self.top = -1  # the greatest stamp of any entry in the table
        # mapped segments (pairs read through one instead of into rows), and their newest stamp.
        # ``rows`` only holds entries newer than any copy of theirs in a segment, so a uid found
        # there is served from there; segments are searched for the others
        self.segs: list[sg.Segment] = []
        self.seg_top = -1
        self.dropped: set[str] = set()  # damaged items found in segments: missing from now on
        self.seg_void = False  # a segment holds void entries (see enc.VOID)
        self.winners: tuple[tp.Any, list[np.ndarray]] | None = None  # see MapStore._winners
        self.rows_index: _RowsIndex | None = None  # see MapStore._rows_index
        # records this process's writers published since this view was last queried, and their
        # entry count: taken in as a block by the next query (``MapStore._fold_own``)
        self.own: list[tuple[_Pair, list[tp.Any], int]] = []
        self.own_count = 0

    def add_pair(self, name: sh.DataName, index_path: str) -> _Pair:
        pair = _Pair(name, len(self.pairs), index_path)
        self.pairs.append(pair)
        self.by_stem[name.stem] = pair
        self.maps.append(None)
        return pair

    def add_segment(self, seg: sg.Segment, pair: _Pair) -> None:
        seg.number = pair.number
        self.segs.append(seg)  # before any row goes: a concurrent load finds one or the other
        for rank, one in enumerate(sorted(self.segs, key=lambda g: self.pairs[g.number].name.stem)):
            one.rank = rank
        self.seg_top = max(self.seg_top, seg.top)
        if not self.rows:
            return
        keys = list(self.rows)
        rows = np.fromiter(self.rows.values(), dtype=np.int64, count=len(keys))
        stamps, numbers = self.table[rows, 5], self.table[rows, 0]
        cand = np.flatnonzero(stamps <= seg.top)
        if not len(cand):
            return
        sub = [keys[i] for i in cand.tolist()]
        pos = seg.find(sg.Query(sub))
        stem = pair.name.stem
        for i, p in zip(cand[pos >= 0].tolist(), pos[pos >= 0].tolist(), strict=True):
            stamp, theirs = int(seg.stamps[p]), int(stamps[i])
            if stamp > theirs or (
                stamp == theirs
                and int(numbers[i]) != pair.number
                and stem > self.pairs[int(numbers[i])].name.stem
            ):
                self.rows.pop(keys[i], None)

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more rows (grown by doubling, so appends are amortized O(1))."""
        need = self.count + extra
        if need > len(self.table):
            grown = np.empty((max(need, 2 * len(self.table)), _COLS), dtype=np.int64)
            grown[: self.count] = self.table[: self.count]
            self.table = grown
            self.raw = self.table.data.cast("B")

    def next_rows(self, n: int) -> np.ndarray:
        """The table rows the next ``n`` entries go to, to fill before ``append_rows``."""
        self.reserve(n)
        return self.table[self.count : self.count + n]

    def append_rows(self, uids: list[str], low: int, high: int) -> None:
        """Add entries whose rows are filled (``low``/``high``: their least and greatest stamp)."""
        n = len(uids)
        start = self.count
        need = start + n
        # rows are in place before the uids point at them: a concurrent load sees old or new, whole
        rows = self.rows
        if not rows:
            self.rows = dict(zip(uids, range(start, need), strict=True))  # faster than update
        elif low > self.top or rows.keys().isdisjoint(uids):
            # newer than every entry so far (a pair read in order), or no uid seen before: no
            # comparison needed (within a record, a later duplicate wins)
            rows.update(zip(uids, range(start, need), strict=True))
        else:
            newer = self.newer
            for row, uid in enumerate(uids, start):
                old = rows.get(uid)
                if old is None or newer(row, old):
                    rows[uid] = row
        self.count = need
        self.top = max(self.top, high)

    def newer(self, row: int, old: int) -> bool:
        """Whether entry ``row`` supersedes entry ``old`` of the same uid: the greater stamp
        wins, then the greater pair name, then (same pair) the later one in the file. Every
        reader orders any two entries the same way, whatever order it read the pairs in."""
        table = self.table
        stamp, old_stamp = int(table[row, 5]), int(table[old, 5])
        if stamp != old_stamp:
            return stamp > old_stamp
        number, old_number = int(table[row, 0]), int(table[old, 0])
        if number == old_number:
            return row > old
        return self.pairs[number].name.stem > self.pairs[old_number].name.stem


def _held(segs: list[sg.Segment], uids: tp.Sequence[str]) -> np.ndarray:
    """Whether some segment of ``segs`` holds each uid. Numbers (``sg.DecimalUids``) are looked
    up in the runs of segments that record them first; only the rest is hashed and found."""
    found = np.zeros(len(uids), dtype=bool)
    hashed = segs
    if isinstance(uids, sg.DecimalUids):
        values = uids.values
        hashed = []
        for seg in segs:
            held = seg.holds_numbers(values)
            if held is None:
                hashed.append(seg)
            else:
                found |= held
        limit = sg.DECIMAL_LIMIT
        if len(hashed) < len(segs) and bool(((values >= limit) | (values <= -limit)).any()):
            hashed = segs  # numbers beyond what runs record: by hash in every segment
    if not hashed:
        return found
    todo = np.flatnonzero(~found)
    if not len(todo):
        return found
    if len(todo) == len(uids):
        rest: tp.Sequence[str] = uids
    elif isinstance(uids, sg.DecimalUids):
        rest = sg.DecimalUids(uids.values[todo])
    else:
        rest = [uids[i] for i in todo.tolist()]
    query = sg.Query(rest)
    hit = hashed[0].find(query) >= 0
    for seg in hashed[1:]:
        hit |= seg.find(query) >= 0
    found[todo[hit]] = True
    return found


class MapStore:
    """Per-item storage of one map cache folder: see the module docstring and docs/design.md.

    Opening never writes anything and never creates the folder: a missing folder is an empty store,
    a read-only one is fully readable. ``load_index=False`` defers reading the index to the first
    query: a process that only writes (a worker) then never reads it (its writer creates a pair
    of its own and reads nothing).
    """

    _view: _Index

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        durability: Durability = "flush",
        load_index: bool = True,
    ) -> None:
        if durability not in ("flush", "fsync"):
            msg = f'durability must be "flush" or "fsync", got {durability!r}'
            raise ValueError(msg)
        self.folder = Path(folder)
        self.durability: Durability = durability
        self.paths = sh.StorePaths(self.folder)
        self._lock = threading.RLock()
        self._metas: list[tuple[int, np.dtype[tp.Any] | None, tuple[int, ...]]] = []
        self._meta_nbytes: list[int] = []  # per meta: an array's byte count, -1 for others
        self._meta_ids: dict[tuple[int, str | None, tuple[int, ...]], int] = {}
        # the meta id of void entries (enc.VOID), -1 until one is seen: until then no query
        # pays for telling them apart
        self._void_id = -1
        self._ix = _Index(frozenset())
        self._max_stamp = 0  # the greatest stamp this store has read or given
        self._park_key: tuple[str, str] | None = None  # (real folder path, durability)
        self._network: bool | None = None
        _open_stores.add(self)
        self._loaded = False
        if load_index:
            self.refresh()

    def __repr__(self) -> str:
        return f"MapStore({str(self.folder)!r}, items={len(self._ix.rows)})"

    @property
    def _ix(self) -> _Index:
        """The current view, with every record this process's writers published taken in: the
        writers only list their records (``_own_flush``), a query folds them in."""
        ix = self._view
        if ix.own:
            self._fold_own(ix)
        return ix

    @_ix.setter
    def _ix(self, ix: _Index) -> None:
        self._view = ix

    @property
    def network(self) -> bool:
        """Whether the folder is on a network (or FUSE) filesystem: writers then make bytes
        durable before publishing them (see ``fs.is_network_fs``)."""
        if self._network is None:
            self._network = is_network_fs(self.folder)
        return self._network

    # ----------------------------------------------------------------- reading the index

    def refresh(self, rebuild: bool = False) -> None:
        """Read the index bytes appended since the last call, and pick up new index files
        (``rebuild``: read a new view from scratch, mapping the segments there are now)."""
        with self._lock:
            # records this process's writers listed stay listed (``_fold_own``): the entries read
            # here are ordered against them by stamp and pair name, whichever is taken in first
            ix = _Index(frozenset()) if rebuild else self._view
            for attempt in range(50):
                try:
                    # a rebuilt view is published only once complete: threads reading without
                    # the lock (load, __contains__) see the old view or the new one, never a part
                    self._ix = self._refresh_once(ix)
                    self._loaded = True
                    return
                except _StaleError:
                    # files went away while reading (a compaction or clear): start over
                    ix = _Index(frozenset())
                    time.sleep(0.001 * attempt)
        msg = f"{self.folder}: the store's files keep being replaced; could not read a stable view"
        raise StoreError(msg)

    def _refresh_once(self, ix: _Index) -> _Index:
        """Bring ``ix`` up to date (appending only) or, if files were replaced, build a new view:
        the view to publish."""
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if names != ix.listing:
            pairs = sh.pairs_from_listing(names)
            sixes = {n[: -len(sg.SUFFIX)] for n in names if n.endswith(sg.SUFFIX)}
            compacted = frozenset(p.stem for p in pairs if p.is_compacted)
            stems = {p.stem for p in pairs}
            if compacted != ix.compacted or any(stem not in stems for stem in ix.by_stem):
                # a compaction or a clear happened: rows may point at retired pairs
                ix = _Index(compacted)
            # compacted pairs first, newest first: their first record names the pairs they hold
            ordered = [p for p in reversed(pairs) if p.is_compacted]
            ordered += [p for p in pairs if not p.is_compacted]
            for name in ordered:
                if name.stem in ix.by_stem:
                    continue
                folded = ix.retired.get(name.stem)
                if folded is not None and not name.is_writer:
                    continue  # a compacted pair another one holds whole
                pair = ix.add_pair(name, str(self.paths.index(name.stem)))
                if folded is not None:
                    # a writer pair folded up to there but not removed (yet): only what its
                    # writer appended after the fold is new
                    pair.pos = folded
                elif name.stem in sixes:
                    self._attach_segment(ix, pair)  # then only records past it are read
                self._read_new(ix, pair)
            ix.listing = names
        for pair in ix.pairs:
            self._read_new(ix, pair)
        return ix

    def _attach_segment(self, ix: _Index, pair: _Pair) -> bool:
        """Map the segment of ``pair`` if it is valid for it (its index's file id, covering no
        more than the index holds, naming no byte past the visible shard): the pair is then read
        on from the position the segment covers. False (nothing changed) otherwise."""
        try:
            fd = os.open(pair.index_path, os.O_RDONLY)
        except FileNotFoundError:
            raise _StaleError from None
        try:
            stat = os.fstat(fd)
            file_id = sh.parse_header(os.pread(fd, sh.INDEX_HEADER_BYTES, 0), sh.INDEX_MAGIC)
        finally:
            os.close(fd)
        if file_id is None:
            return False
        seg = sg.Segment.open(self.paths.segment(pair.name.stem), file_id, stat.st_size)
        if seg is None:
            return False
        if seg.max_end > _file_size(self.paths.shard(pair.name.stem)):
            return False  # late visibility: the records say when it can be read
        young = time.time_ns() - CHECK_YOUNG_NS
        if pair.name.is_writer and seg.top > young and not self._seg_ok(seg, whole=self.network):
            return False
        try:
            seg.meta_map = np.array([self._intern(m) for m in seg.metas] or [0], dtype=np.int64)
        except (ValueError, TypeError, IndexError, KeyError, SyntaxError):
            return False
        if self._void_id >= 0 and (seg.meta_map == self._void_id).any():
            ix.seg_void = True
        pair.file_id, pair.ino, pair.pos = file_id, stat.st_ino, seg.covered
        pair.sealed, pair.spans, pair.max_end = seg.sealed, list(seg.spans), seg.max_end
        for stem, folded in seg.retired:
            ix.retired[stem] = max(folded, ix.retired.get(stem, 0))
        self._max_stamp = max(self._max_stamp, seg.top)
        ix.add_segment(seg, pair)
        return True

    def _seg_ok(self, seg: sg.Segment, whole: bool) -> bool:
        """Whether the shard bytes of a young writer segment match their checksums (late
        visibility can show zeros or stale pages at first). ``whole`` (a network filesystem):
        its spans and large arrays, as readers check young records; else the spans of its last
        ``SEGMENT_TAIL_CHECK`` bytes only (bytes arriving late are the last written; a local
        filesystem shows every byte written before the segment, so this costs a fresh open of a
        big cache microseconds, not a read of its whole shard)."""
        if not whole:
            return self._seg_tail_ok(seg)
        try:
            with open(self.paths.shard(seg.path.name[: -len(sg.SUFFIX)]), "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return False
        with contextlib.closing(mm), memoryview(mm) as view:
            for start, stop, checksum in seg.spans:
                if stop > len(mm) or enc.word_checksum(view[start:stop]) != checksum:
                    return False
            arrays = np.array([m[0] == enc.ARRAY for m in seg.metas] or [False])
            for j in np.flatnonzero((seg.crcs != 0) & arrays[seg.meta_ids]).tolist():
                offset, size = int(seg.offsets[j]), int(seg.nbytes[j])
                data = view[offset : offset + size]
                ok = offset + size <= len(mm) and enc.word_checksum(data) == int(seg.crcs[j])
                data.release()
                if not ok:
                    return False
        return True

    def _seg_tail_ok(self, seg: sg.Segment) -> bool:
        """``_seg_ok`` of the spans ending in the last ``SEGMENT_TAIL_CHECK`` bytes, read with one
        ``pread`` (mapping them would cost a page fault per page in a fresh process)."""
        last = max((b for _, b, _ in seg.spans), default=0)
        spans = [span for span in seg.spans if span[1] > last - SEGMENT_TAIL_CHECK]
        if not spans:
            return True
        low = max(min(a for a, _, _ in spans), last - 4 * SEGMENT_TAIL_CHECK)
        spans = [span for span in spans if span[0] >= low] or [max(spans, key=lambda s: s[1])]
        low = min(low, min(a for a, _, _ in spans))
        try:
            fd = os.open(self.paths.shard(seg.path.name[: -len(sg.SUFFIX)]), os.O_RDONLY)
        except OSError:
            return False
        try:
            data = memoryview(sh.pread_all(fd, last - low, low))
        except OSError:
            return False
        finally:
            os.close(fd)
        if len(data) < last - low:
            return False
        return all(enc.word_checksum(data[a - low : b - low]) == c for a, b, c in spans)

    def _read_new(self, ix: _Index, pair: _Pair) -> None:
        path = pair.index_path
        try:
            stat = os.stat(path)  # the only system call when nothing changed
        except FileNotFoundError:
            raise _StaleError from None
        if pair.ino and stat.st_ino != pair.ino:
            raise _StaleError
        if (stat.st_size == pair.pos and pair.file_id is not None) or pair.bad:
            return  # (a pair taken up past a fold has its header read still: _map checks it)
        if stat.st_size < pair.pos:
            raise _StaleError
        if stat.st_size < sh.INDEX_HEADER_BYTES:
            return  # its header is not visible yet
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise _StaleError from None
        try:
            header = os.pread(fd, sh.INDEX_HEADER_BYTES, 0)
            if pair.file_id is None:
                file_id = sh.parse_header(header, sh.INDEX_MAGIC)
                if file_id is None:
                    if not any(header):
                        return  # zeros: the header is not visible yet (late visibility)
                    pair.bad = True
                    why = sh.header_problem(header, sh.INDEX_MAGIC)
                    if sh.header_version(header, sh.INDEX_MAGIC) is not None:
                        folder = str(self.folder)
                        if folder not in _format_warned:  # once per process and cache
                            _format_warned.add(folder)
                            warnings.warn(f"{path}: {why}", CacheFormatWarning, stacklevel=5)
                        return
                    self._warn(pair, f"{path}: not an index file ({why}); its items are ignored")
                    return
                pair.file_id = file_id
                pair.ino = stat.st_ino
            elif pair.file_id != sh.parse_header(header, sh.INDEX_MAGIC):
                # removed and re-created under the same name on a reused inode
                raise _StaleError
            start = max(pair.pos, sh.INDEX_HEADER_BYTES)
            end, damage, decoded = self._read_records(fd, start, stat.st_size, path, pair)
        finally:
            os.close(fd)
        if damage:
            where = ", ".join(f"offset {at} ({why})" for at, why in damage[:5])
            self._warn(pair, f"{path}: damaged index records skipped at {where}")
        # one table allocation for all of them (opening a big store reads ~1000 records at once)
        ix.reserve(sum(_entry_count(obj) for _, obj in decoded))
        records: list[_Columns] = []
        starts: list[int] = []  # the index offset of each record's frame
        for at, obj in decoded:
            try:
                if type(obj) is not list or not obj:
                    raise TypeError(f"a record holds {type(obj).__name__}, not a list")
                if obj[0] == sh.RECORD_RETIRE:
                    for stem, folded in obj[1]:
                        ix.retired[str(stem)] = max(int(folded), ix.retired.get(str(stem), 0))
                    continue
                if obj[0] == sh.RECORD_SEAL:
                    pair.sealed = True
                    continue
                records.append(self._columns(pair, obj))
                starts.append(at)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                pair.max_end = sh.FAR_END
                self._warn(pair, f"{path}: index record at offset {at} unreadable ({exc!r})")
        if records:
            shard_size = _file_size(self.paths.shard(pair.name.stem))
            visible, bad = self._visible(ix, pair, records, shard_size)
            if visible < len(records):
                # late visibility: wait for those bytes (this reader reads that record again
                # next time), unless it lasted too long to be a lag
                at = starts[visible]
                if pair.lag_pos != at:
                    pair.lag_pos, pair.lag_since = at, time.monotonic()
                if time.monotonic() - pair.lag_since < LAG_WARN_S:
                    if visible:
                        self._ingest(ix, pair, records[:visible], shard_size)
                    pair.sealed = False  # a seal after a record not taken in is not reached
                    pair.pos = at
                    return
                # damage, then: entries past the shard's end are dropped by _ingest (with a
                # warning), arrays whose bytes fail their checksum here
                pair.lag_pos = -1
                if bad:
                    shard = self.paths.shard(pair.name.stem)
                    some = ", ".join(repr(records[visible].uids[j]) for j in bad[:3])
                    self._warn(
                        pair,
                        f"{shard}: {len(bad)} arrays do not match their checksum (e.g. {some}); "
                        "they are ignored (recomputed)",
                    )
                    records[visible] = _without(records[visible], bad)
                self._ingest(ix, pair, records[: visible + 1], shard_size)
                pair.pos = starts[visible + 1] if visible + 1 < len(starts) else end
                self._read_new(ix, pair)  # the records after it
                return
            self._ingest(ix, pair, records, shard_size)
        pair.pos = end

    def _visible(
        self, ix: _Index, pair: _Pair, records: list[_Columns], shard_size: int
    ) -> tuple[int, list[int]]:
        """How many of ``records`` (in file order) name bytes this reader can see and trust: the
        shard is long enough, and for young records of a writer, their checksums hold (late
        visibility on a network filesystem can show zeros or stale pages at first). With the
        first record that fails, the entries of its arrays whose bytes fail their checksum."""
        young = time.time_ns() - CHECK_YOUNG_NS
        for k, rec in enumerate(records):
            if rec.end > shard_size:
                return k, []
            if pair.name.is_writer and rec.top > young:
                bad = self._failing(ix, pair, rec)
                if bad is not None:
                    return k, bad
        return len(records), []

    def _failing(self, ix: _Index, pair: _Pair, rec: _Columns) -> list[int] | None:
        """None if the shard bytes of ``rec`` match its checksums (its spans, for small items, and
        its large arrays' own word sums); else the entries of arrays in failing bytes. Other
        items are also checked at every load (their crc32)."""
        if not rec.spans and not rec.crcs.any():
            return None
        try:
            mm = ix.maps[pair.number]
            if mm is None or rec.end > len(mm):
                mm = self._map(ix, pair.number, rec.end)
        except _StaleError:
            return list(range(len(rec.uids)))  # missing, shorter, or its header not visible yet
        is_array = self._meta_nbytes_array()[rec.meta_ids] >= 0
        offsets, nbytes = rec.offsets, rec.nbytes
        failed = np.zeros(len(rec.uids), dtype=bool)
        whole = True
        with memoryview(mm) as view:
            for start, stop, checksum in rec.spans:
                if enc.word_checksum(view[start:stop]) != checksum:
                    whole = False
                    failed |= is_array & (offsets >= start) & (offsets + nbytes <= stop)
            for j in np.flatnonzero(rec.crcs.astype(bool) & is_array).tolist():
                offset, size = int(offsets[j]), int(nbytes[j])
                data = view[offset : offset + size]
                ok = enc.word_checksum(data) == int(rec.crcs[j])
                data.release()
                if not ok:
                    whole = False
                    failed[j] = True
        if whole:
            return None
        # a map can keep showing the stale pages it saw (FUSE, NFS) until the file is opened
        # again: the next look maps it afresh (arrays served from this map stay valid)
        ix.maps[pair.number] = None
        return np.flatnonzero(failed).tolist()

    def _meta_nbytes_array(self) -> np.ndarray:
        return np.array(self._meta_nbytes or [0], dtype=np.int64)

    def _read_records(
        self, fd: int, pos: int, size: int, path: str, pair: _Pair
    ) -> tuple[int, list[tuple[int, str]], list[tuple[int, tp.Any]]]:
        """Decode the valid records of index ``fd`` from ``pos`` on: where they end, the damage
        skipped, and the decoded records with their offsets.

        The bytes are read window by window into one reused buffer (decoding copies what it
        keeps): opening a big cache would otherwise read its index into as much fresh memory,
        whose first touch costs more than the read on these VMs. A window that holds no whole
        record (or no valid record after bad bytes) grows until it reaches the end of the file:
        then what is left is a tail being written or torn, left for the next read.
        """
        damage: list[tuple[int, str]] = []
        decoded: list[tuple[int, tp.Any]] = []
        window = _READ_WINDOW
        buf = bytearray(min(window, size - pos))
        while pos < size:
            want = min(window, size - pos)
            if len(buf) < want:
                buf = bytearray(want)
            view = memoryview(buf)[:want]
            got = os.preadv(fd, [view], pos)
            scan = sh.scan_records(view[:got], pos)
            damage.extend(scan.damage)
            for at, payload in scan.records:
                try:
                    decoded.append((at, sh.decode_payload(payload)))
                except msgspec.DecodeError as exc:
                    pair.max_end = sh.FAR_END
                    self._warn(pair, f"{path}: index record at offset {at} unreadable ({exc!r})")
            # the record the window ends in: read it whole next time (compacted records run to
            # megabytes), as far as its header can be trusted; else double the window
            following = sh.record_length(view[scan.end - pos : got])
            if scan.end > pos:
                pos, window = scan.end, max(_READ_WINDOW, following)
            elif got < want or pos + got >= size:
                break  # an incomplete record at the end: being written, or torn
            else:
                window = max(2 * window, following)  # a record, or bad bytes, past the window
        return pos, damage, decoded

    def _columns(self, pair: _Pair, obj: list[tp.Any]) -> _Columns:
        """The entries of one decoded record as columns (ValueError/TypeError if malformed)."""
        _, uids, offs_b, nbytes_b, crcs_b, mix_b, metas, spans = obj[:8]
        stamp = obj[8] if len(obj) > 8 else 0  # records of before stamps: older than any
        n = len(uids)
        offsets = np.frombuffer(offs_b, dtype="<i8")
        nbytes = np.frombuffer(nbytes_b, dtype="<i8")
        crcs = np.frombuffer(crcs_b, dtype="<u4")
        mix = np.frombuffer(mix_b, dtype="<u4")
        if not (len(offsets) == len(nbytes) == len(crcs) == len(mix) == n):
            raise ValueError("columns of different lengths")
        stamps: int | np.ndarray
        if type(stamp) is int:  # a writer's record: one stamp for its flush
            stamps = top = low = stamp
        elif (
            type(stamp) is bytes
        ):  # a compacted record: each entry keeps the stamp it was written with
            stamps = np.frombuffer(stamp, dtype="<i8")
            if len(stamps) != n:
                raise ValueError("columns of different lengths")
            top = int(stamps.max()) if n else 0
            low = int(stamps.min()) if n else 0
        else:
            raise TypeError(f"a stamp of type {type(stamp).__name__}")
        span_end = sh.referenced_end(offsets[:0], nbytes[:0], spans)
        checked = [(int(a), int(b), int(c)) for a, b, c in spans or ()]
        if n and (max(mix.tolist()) if n <= _FEW else int(mix.max())) >= len(metas):
            raise ValueError("meta index out of range")
        ids = [self._intern(m) for m in metas]
        meta_ids = (
            mix if ids == list(range(len(ids))) else np.array(ids or [0], dtype=np.int64)[mix]
        )
        end = span_end
        if n:  # entries of a record are in file order: the last one ends furthest
            end = max(end, int(offsets[-1]) + int(nbytes[-1]))
        pair.max_end = max(pair.max_end, span_end)
        pair.spans.extend(checked)
        return _Columns(uids, offsets, nbytes, crcs, meta_ids, stamps, low, top, checked, end)

    def _ingest(self, ix: _Index, pair: _Pair, records: list[_Columns], shard_size: int) -> None:
        """Add the entries of ``records`` (of one pair, in file order) to the view, as one block:
        the per-record work is the decoding, the checks and the table rows are done once."""
        if len(records) == 1 and len(records[0].uids) <= _FEW:
            self._ingest_few(ix, pair, records[0], shard_size)
            return
        if any(b.low < a.top for a, b in itertools.pairwise(records)):
            # stamps going back in file order (a clock stepped back): as one block, a later
            # entry would beat a newer one; record by record, stamps decide as for every reader
            for rec in records:
                self._ingest(ix, pair, [rec], shard_size)
            return
        # each record's columns go straight into the table's next rows; the checks then run on
        # those rows (no concatenated copies: on these VMs fresh memory costs more than the work)
        uids = (
            records[0].uids
            if len(records) == 1
            else list(itertools.chain.from_iterable(r.uids for r in records))
        )
        block = ix.next_rows(len(uids))
        at = 0
        for rec in records:
            rows = block[at : at + len(rec.uids)]
            rows[:, 1] = rec.offsets
            rows[:, 2] = rec.nbytes
            rows[:, 3] = rec.meta_ids
            rows[:, 4] = rec.crcs
            rows[:, 5] = rec.stamps
            at += len(rec.uids)
        block[:, 0] = pair.number
        low = min(r.low for r in records)
        top = max(r.top for r in records)
        meta_nbytes = np.array(self._meta_nbytes or [0], dtype=np.int64)
        ok = np.empty(len(block), dtype=bool)
        # in slices of rows: the temporaries then stay small, warm and reused (a million rows
        # at once made a dozen fresh 8 MB arrays, whose first touch costs more than the checks)
        for lo in range(0, len(block), _CHECK_ROWS):
            part = block[lo : lo + _CHECK_ROWS]
            offsets, nbytes = part[:, 1], part[:, 2]
            pair.max_end = max(pair.max_end, sh.referenced_end(offsets, nbytes, ()))
            # an array's byte count must be what its dtype and shape say, or a view would show
            # bytes of its neighbours: never a wrong array, even from a record that passed its
            # checksum
            expected = meta_nbytes[part[:, 3]]
            ok[lo : lo + len(part)] = (
                (offsets >= sh.SHARD_HEADER_BYTES)
                & (offsets % sh.ALIGN == 0)
                & (nbytes >= 0)
                & (nbytes <= shard_size)
                & (offsets <= shard_size - nbytes)
                & ((expected < 0) | (expected == nbytes))
            )
        if not ok.all():
            bad = np.flatnonzero(~ok)
            self._warn(
                pair,
                f"{self.paths.index(pair.name.stem)}: {len(bad)} entries point outside "
                f"{self.paths.shard(pair.name.stem)} ({shard_size} bytes), e.g. item "
                f"{uids[bad[0]]!r}; they are ignored",
            )
            keep = np.flatnonzero(ok)
            uids = [uids[i] for i in keep.tolist()]
            block[: len(keep)] = block[keep]  # the rows past them stay unused
        if ix.segs and low <= ix.seg_top:
            older = self._superseded(ix, pair, uids, block[: len(uids), 5])
            if older.any():  # a segment holds a newer copy: it is served from there
                keep = np.flatnonzero(~older)
                uids = [uids[i] for i in keep.tolist()]
                block[: len(keep)] = block[keep]
        if top > self._max_stamp:
            self._max_stamp = top
        ix.append_rows(uids, low, top)

    def _ingest_few(self, ix: _Index, pair: _Pair, rec: _Columns, shard_size: int) -> None:
        """``_ingest`` of one small record (a call with a few new items) in plain Python: the
        same checks, without the fixed cost of a dozen numpy calls."""
        offsets, nbytes = rec.offsets.tolist(), rec.nbytes.tolist()
        crcs, metas = rec.crcs.tolist(), rec.meta_ids.tolist()
        n = len(offsets)
        stamps = rec.stamps.tolist() if isinstance(rec.stamps, np.ndarray) else [rec.stamps] * n
        pair.max_end = max(pair.max_end, sh.referenced_end(rec.offsets, rec.nbytes, ()))
        meta_nbytes = self._meta_nbytes
        keep = [
            i
            for i, (offset, size, meta) in enumerate(zip(offsets, nbytes, metas, strict=True))
            if offset >= sh.SHARD_HEADER_BYTES
            and offset % sh.ALIGN == 0
            and 0 <= size <= shard_size
            and offset <= shard_size - size
            and meta_nbytes[meta] in (-1, size)
        ]
        uids = rec.uids
        if len(keep) < n:
            bad = next(i for i in range(n) if i not in keep)
            self._warn(
                pair,
                f"{self.paths.index(pair.name.stem)}: {n - len(keep)} entries point outside "
                f"{self.paths.shard(pair.name.stem)} ({shard_size} bytes), e.g. item "
                f"{uids[bad]!r}; they are ignored",
            )
        if ix.segs and rec.low <= ix.seg_top and keep:
            older = self._superseded(
                ix, pair, [uids[i] for i in keep], np.array([stamps[i] for i in keep])
            ).tolist()
            keep = [i for i, old in zip(keep, older, strict=True) if not old]
        if len(keep) < n:
            uids = [uids[i] for i in keep]
        ix.reserve(len(keep))
        raw, at, number = ix.raw, ix.count * _ROW.size, pair.number
        for i in keep:
            _ROW.pack_into(raw, at, number, offsets[i], nbytes[i], metas[i], crcs[i], stamps[i])
            at += _ROW.size
        if rec.top > self._max_stamp:
            self._max_stamp = rec.top
        ix.append_rows(uids, rec.low, rec.top)

    def _superseded(
        self, ix: _Index, pair: _Pair, uids: list[str], stamps: np.ndarray
    ) -> np.ndarray:
        """Which of these new entries of ``pair`` a segment holds a newer copy of (``newer``'s
        order: stamp, then pair name; a pair's own segment holds only earlier records)."""
        out = np.zeros(len(uids), dtype=bool)
        cand = np.flatnonzero(stamps <= ix.seg_top)
        if not len(cand):
            return out
        best, where = self._seg_find(ix, [uids[i] for i in cand.tolist()])
        stem = pair.name.stem
        for k in np.flatnonzero(best >= 0).tolist():
            seg = ix.segs[int(best[k])]
            theirs, mine = int(seg.stamps[where[k]]), int(stamps[cand[k]])
            if theirs > mine or (
                theirs == mine
                and seg.number != pair.number
                and ix.pairs[seg.number].name.stem > stem
            ):
                out[cand[k]] = True
        return out

    def _seg_find(self, ix: _Index, uids: tp.Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each uid, the segment (index in ``ix.segs``) holding its newest segment copy and
        its position there; -1 where no segment holds it (or it was found damaged)."""
        n = len(uids)
        best = np.full(n, -1, dtype=np.int64)
        where = np.full(n, -1, dtype=np.int64)
        segs = [(k, g) for k, g in enumerate(ix.segs) if g.count]
        if not segs or not n:
            return best, where
        if n <= _FEW:  # a few uids (a call with one new item): plain Python
            for i, uid in enumerate(uids):
                if uid in ix.dropped:
                    continue
                h = sg.hash_one(uid)
                newest: tuple[int, int] | None = None
                for k, seg in segs:
                    at = seg.find_one(uid, h)
                    if at >= 0 and (newest is None or (int(seg.stamps[at]), seg.rank) > newest):
                        newest = (int(seg.stamps[at]), seg.rank)
                        best[i], where[i] = k, at
            return best, where
        lowest = np.iinfo(np.int64).min
        for lo in range(0, n, sg.HASH_CHUNK):
            chunk = sg.Query(uids[lo : lo + sg.HASH_CHUNK])
            b, w = best[lo : lo + len(chunk)], where[lo : lo + len(chunk)]
            if len(segs) == 1:
                k, seg = segs[0]
                w[:] = seg.find(chunk)
                b[w >= 0] = k
                continue
            top = np.full(len(chunk), lowest, dtype=np.int64)
            rank = np.full(len(chunk), -1, dtype=np.int64)
            for k, seg in segs:
                pos = seg.find(chunk)
                found = pos >= 0
                stamps = np.where(found, seg.stamps[np.maximum(pos, 0)], lowest)
                better = found & ((stamps > top) | ((stamps == top) & (seg.rank > rank)))
                b[better], w[better] = k, pos[better]
                top[better], rank[better] = stamps[better], seg.rank
        if ix.dropped:
            for i in np.flatnonzero(best >= 0).tolist():
                if uids[i] in ix.dropped:
                    best[i] = where[i] = -1
        return best, where

    def _seg_rows(
        self, ix: _Index, best: np.ndarray, where: np.ndarray, columns: int = _COLS
    ) -> np.ndarray:
        """Table rows (pair number, offset, nbytes, meta id, crc32, stamp) of segment hits; only
        the first ``columns`` of them (4: what serving an item needs, each column a gather of
        scattered segment positions)."""
        out = np.empty((len(best), columns), dtype=np.int64)
        for k, seg in enumerate(ix.segs):
            sel: np.ndarray | slice = slice(None)  # one segment: every row
            if len(ix.segs) > 1:
                sel = np.flatnonzero(best == k)
                if not len(sel):
                    continue
            pos = where[sel]
            out[sel, 0] = seg.number
            out[sel, 1] = seg.offsets.take(pos)
            out[sel, 2] = seg.nbytes.take(pos)
            if len(seg.meta_map) == 1:  # one format in the segment (take would clip to it)
                out[sel, 3] = seg.meta_map[0]
            else:
                out[sel, 3] = seg.meta_map.take(seg.meta_ids.take(pos), mode="clip")
            if columns > 4:
                out[sel, 4] = seg.crcs.take(pos)
                out[sel, 5] = seg.stamps.take(pos)
        return out

    def _resolve(self, ix: _Index, uids: tp.Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The table rows of ``uids`` (the newest copy of each, from the rows or the segments;
        only their first 4 columns are set, what serving an item needs) and which were found:
        one vectorized pass over the segments for those not in rows. ``sg.DecimalUids`` are
        looked up from their numbers (made into strings only for the rows' dict)."""
        n = len(uids)
        if not ix.rows and ix.segs:  # every entry in segments (a cache opened, not written)
            best, where = self._seg_find(ix, uids)
            table = self._seg_rows(ix, best, where, 4)
            if ix.seg_void:
                return table, (best >= 0) & (table[:, 3] != self._void_id)
            return table, best >= 0
        rows = self._rows_of(ix, uids)
        table = ix.table.take(rows, axis=0)  # 8x faster than ix.table[rows] (numpy 1.26-2.x)
        missing = rows < 0
        if ix.segs and missing.any():
            idx = np.flatnonzero(missing)
            sub = uids if len(idx) == n else _subset(uids, idx)
            best, where = self._seg_find(ix, sub)
            found = best >= 0
            if found.any():
                table[idx[found], :4] = self._seg_rows(ix, best[found], where[found], 4)
                missing[idx[found]] = False
        if self._void_id >= 0:
            return table, ~missing & (table[:, 3] != self._void_id)
        return table, ~missing

    def _rows_of(self, ix: _Index, uids: tp.Sequence[str]) -> np.ndarray:
        """The table row of each uid in the rows' dict, -1 where it holds none."""
        n = len(uids)
        if isinstance(uids, sg.DecimalUids):
            index = self._rows_index(ix, n)
            if index is not None:
                return index.find(uids, ix.rows)
            uids = uids.texts()  # each made once, for the dict
        return np.fromiter(map(ix.rows.get, uids, itertools.repeat(-1)), dtype=np.int64, count=n)

    def _rows_index(self, ix: _Index, n: int) -> _RowsIndex | None:
        """The index of ``ix``'s rows (``_RowsIndex``) for a lookup of ``n`` numbers, built once
        the dict has served twice as many uids as it holds in its present state: a view looked
        up once (a call, an open) never pays for one, one read again and again (a training
        loop's ``stack``) pays about one more lookup for it."""
        size = len(ix.rows)
        if not ROWS_INDEX_MIN <= size <= ROWS_INDEX_MAX:
            return None
        key = (ix.count, size)
        state = ix.rows_index
        if state is None or state.key != key:
            state = ix.rows_index = _RowsIndex(key)
        if state.built:
            return state
        if state.looked < 0:
            return None
        state.looked += n
        if state.looked < 2 * size:
            return None
        with self._lock:  # writers' flushes add rows under it: a stable dict to copy
            if (ix.count, len(ix.rows)) != key:
                return None
            state.build(ix.rows)
        if not state.built:
            state.looked = -1
            return None
        return state

    def _winners(self, ix: _Index) -> list[np.ndarray]:
        """Per segment, the positions of the entries it serves: not superseded by a row, a
        newer copy in another segment, or found damaged."""
        key = (ix.count, len(ix.rows), len(ix.segs), len(ix.dropped))
        if ix.winners is not None and ix.winners[0] == key:
            return ix.winners[1]
        segs = ix.segs
        masks = [np.ones(seg.count, dtype=bool) for seg in segs]
        for uids in (list(ix.rows), list(ix.dropped)):
            if uids:
                for mask, seg in zip(masks, segs, strict=True):
                    pos = seg.lookup(uids)
                    mask[pos[pos >= 0]] = False
        for i, seg in enumerate(segs):
            others = [g for g in segs if g is not seg and g.count]
            if not others or not seg.count:
                continue
            cand = np.flatnonzero(np.isin(seg.hashes, np.concatenate([g.hashes for g in others])))
            if not len(cand):
                continue
            uids = seg.uids_at(cand)
            for g in others:
                pos = g.lookup(uids)
                found = pos >= 0
                theirs, mine = g.stamps[pos[found]], seg.stamps[cand[found]]
                lose = (theirs > mine) | ((theirs == mine) & (g.rank > seg.rank))
                masks[i][cand[found][lose]] = False
        winners = [np.flatnonzero(m) for m in masks]
        ix.winners = (key, winners)
        return winners

    def _entries(self, ix: _Index, with_uids: bool = True) -> tuple[list[str], np.ndarray]:
        """Every item of the view: its uid (if asked for) and its table row."""
        uids = list(ix.rows) if with_uids else []
        rows = np.fromiter(ix.rows.values(), dtype=np.int64, count=len(ix.rows))
        tables = [ix.table[rows]]
        for k, (seg, pos) in enumerate(zip(ix.segs, self._winners(ix), strict=True)):
            if with_uids:
                uids += seg.uids_at(pos)
            tables.append(self._seg_rows(ix, np.full(len(pos), k, dtype=np.int64), pos))
        return uids, np.concatenate(tables) if len(tables) > 1 else tables[0]

    def _array_nbytes(self, meta_id: int) -> int:
        """The byte count of an array of meta ``meta_id``, or -1 for other formats."""
        return self._meta_nbytes[meta_id]  # computed once, by _intern

    def _intern(self, meta: list[tp.Any]) -> int:
        fmt, descr, shape = meta
        key = (int(fmt), None if descr is None else str(descr), tuple(shape or ()))
        found = self._meta_ids.get(key)
        if found is not None:
            return found
        if key[0] not in (enc.ARRAY, enc.MSGPACK, enc.PICKLE, enc.VOID):
            raise ValueError(f"unknown format code {key[0]}")
        dtype = None if key[1] is None else enc.dtype_from_descr(key[1])
        if key[0] == enc.ARRAY and dtype is None:
            raise ValueError("array entry without dtype")
        nbytes = -1
        if key[0] == enc.ARRAY and dtype is not None:
            nbytes = int(np.prod(key[2], dtype=np.int64)) * dtype.itemsize
        self._metas.append((key[0], dtype, key[2]))
        self._meta_nbytes.append(nbytes)
        self._meta_ids[key] = len(self._metas) - 1
        if key[0] == enc.VOID:
            self._void_id = len(self._metas) - 1
        return len(self._metas) - 1

    def _warn(self, pair: _Pair, message: str) -> None:
        """One warning per pair and reader: damage is reported, never per read."""
        if not pair.warned:
            pair.warned = True
            warnings.warn(message, CorruptCacheWarning, stacklevel=4)

    # ----------------------------------------------------------------- queries

    def __contains__(self, item_uid: object) -> bool:
        if not self._loaded:
            self.refresh()
        ix = self._ix
        row = ix.rows.get(item_uid)  # type: ignore[call-overload]
        if row is not None:
            return self._void_id < 0 or int(ix.table[row, 3]) != self._void_id
        if not ix.segs or type(item_uid) is not str:
            return False
        try:
            self._entry(ix, item_uid)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        if not self._loaded:
            self.refresh()
        ix = self._ix
        if self._void_id >= 0:
            return int((self._entries(ix, with_uids=False)[1][:, 3] != self._void_id).sum())
        return len(ix.rows) + sum(len(w) for w in self._winners(ix))

    def item_uids(self) -> list[str]:
        if not self._loaded:
            self.refresh()
        uids, table = self._entries(self._ix)
        if self._void_id >= 0:
            keep = table[:, 3] != self._void_id
            if not keep.all():
                return [uids[i] for i in np.flatnonzero(keep).tolist()]
        return uids

    def missing(self, item_uids: tp.Iterable[str], *, distinct: bool = False) -> list[str]:
        """``refresh()``, then the uids not stored: deduplicated, in first-seen order
        (``distinct``: the caller knows no uid repeats, so none is hashed just to deduplicate:
        on a first fill, that pass was most of this call)."""
        self.refresh()
        ix = self._ix
        # dedup only what is missing (usually few): hashing every uid into a set costs as much
        # as the lookups themselves on a million items
        rows = ix.rows
        if rows and self._void_id >= 0:
            return list(dict.fromkeys(self._absent_with_voids(ix, item_uids)))
        if rows:
            rest = list(itertools.filterfalse(rows.__contains__, item_uids))
        else:
            rest = item_uids if isinstance(item_uids, list) else list(item_uids)
        if rest and ix.segs:  # one vectorized pass over the segments for the others
            absent = self._seg_absent(ix, rest)
            rest = [rest[i] for i in absent] if len(absent) < len(rest) else rest
        return list(rest) if distinct else list(dict.fromkeys(rest))

    def _absent_with_voids(self, ix: _Index, item_uids: tp.Iterable[str]) -> list[str]:
        """``missing`` (not deduplicated) once void entries exist: a uid whose row is void is
        missing whatever copy a segment holds (the row is newer than any of them)."""
        uids = item_uids if isinstance(item_uids, list) else list(item_uids)
        rows = np.fromiter(
            map(ix.rows.get, uids, itertools.repeat(-1)), dtype=np.int64, count=len(uids)
        )
        absent = (rows < 0) | (ix.table[rows, 3] == self._void_id)
        unknown = np.flatnonzero(rows < 0)
        if len(unknown) and ix.segs:
            rest = [uids[i] for i in unknown.tolist()]
            held = np.ones(len(rest), dtype=bool)
            held[self._seg_absent(ix, rest)] = False
            absent[unknown[held]] = False
        return [uids[i] for i in np.flatnonzero(absent).tolist()]

    def stores_all(self, item_uids: tp.Sequence[str]) -> bool:
        """``refresh()``, then whether every uid is stored: ``not missing(item_uids)`` without
        listing what is missing, so a first fill stops at its first uid. ``sg.DecimalUids`` are
        looked up from their numbers, a uid made only where no segment holds it."""
        self.refresh()
        ix = self._ix
        rows = ix.rows
        if ix.dropped or (rows and self._void_id >= 0):
            # damaged items found, or void rows (which hide segment copies): the general path
            return not self.missing(item_uids)
        n = len(item_uids)
        for lo, hi in itertools.pairwise([0, *range(min(n, 1), n, sg.HASH_CHUNK), n]):
            chunk = item_uids[lo:hi]
            absent = chunk if not ix.segs else sg.pick(chunk, self._seg_absent(ix, chunk))
            if not all(map(rows.__contains__, absent)):
                return False
        return True

    def _seg_absent(self, ix: _Index, uids: tp.Sequence[str]) -> list[int]:
        """The positions of the uids no segment holds (or found damaged): membership only, so
        no copy is ranked, and nothing is allocated per uid beyond a batch."""
        segs = [g for g in ix.segs if g.count]
        if len(uids) <= _FEW or not segs or ix.seg_void:
            # a void entry found must be the newest copy to count: ranked lookups then
            best, where = self._seg_find(ix, uids)
            unheld = best < 0
            if ix.seg_void and not unheld.all():
                hit = np.flatnonzero(~unheld)
                unheld[hit] = self._seg_rows(ix, best[hit], where[hit])[:, 3] == self._void_id
            return np.flatnonzero(unheld).tolist()
        absent: list[int] = []
        for lo in range(0, len(uids), sg.HASH_CHUNK):
            found = _held(segs, uids[lo : lo + sg.HASH_CHUNK])
            absent += (np.flatnonzero(~found) + lo).tolist()
        if ix.dropped:
            kept = set(absent)
            absent = [i for i, uid in enumerate(uids) if i in kept or uid in ix.dropped]
        return absent

    def load_many(
        self, item_uids: tp.Sequence[str], gone: tp.Callable[[str], Exception] | None = None
    ) -> tp.Iterator[tp.Any]:
        """``load`` of each uid in turn, lazily; their rows are found a batch at a time (one
        vectorized pass over the segments per batch), so each item costs little more than the
        view of its array. ``gone``: the exception to raise for a missing uid (else KeyError)."""
        if not self._loaded:
            self.refresh()
        if len(item_uids) <= _FEW:  # a call with a few items: no numpy round trip
            return map(self.load, item_uids) if gone is None else self._iter_few(item_uids, gone)
        # chain runs each batch's iterator in C: no generator frame resumed per item
        return itertools.chain.from_iterable(self._batches(item_uids, gone))

    def load_all(
        self, item_uids: tp.Sequence[str], gone: tp.Callable[[str], Exception] | None = None
    ) -> tp.Iterator[tp.Any] | None:
        """``refresh()``, then ``load_many`` of uids if every one is stored, else None: one
        lookup per uid serves both the check and the loads (a call whose items are all cached
        otherwise looks each up twice: ``missing``, then ``load_many``). What is found is kept
        as each batch's plan (for items a writer wrote in a row: where the run starts and its
        step), so the iterator returned holds little memory per item."""
        self.refresh()
        if item_uids and item_uids[0] not in self:  # a first fill, say: nothing to look up
            return None
        plans: list[tp.Callable[[], tp.Iterator[tp.Any]]] = []
        for lo in range(0, len(item_uids), sg.HASH_CHUNK):
            chunk = item_uids[lo : lo + sg.HASH_CHUNK]
            ix = self._ix
            table, found = self._resolve(ix, chunk)
            if not found.all():
                return None
            plans.append(self._plan(ix, chunk, table, found, gone))
        return itertools.chain.from_iterable(plan() for plan in plans)

    def _iter_few(
        self, item_uids: tp.Sequence[str], gone: tp.Callable[[str], Exception]
    ) -> tp.Iterator[tp.Any]:
        for uid in item_uids:
            yield self._load_or(uid, gone)

    def _load_or(self, item_uid: str, gone: tp.Callable[[str], Exception] | None) -> tp.Any:
        if gone is None:
            return self.load(item_uid)
        try:
            return self.load(item_uid)
        except KeyError:
            raise gone(item_uid) from None

    def _batches(
        self, item_uids: tp.Sequence[str], gone: tp.Callable[[str], Exception] | None
    ) -> tp.Iterator[tp.Iterator[tp.Any]]:
        """An iterator over the items of each batch of uids in turn, each batch's rows found
        when its turn comes."""
        step = 1 << 14
        for lo in range(0, len(item_uids), step):
            chunk = item_uids[lo : lo + step]
            ix = self._ix
            table, found = self._resolve(ix, chunk)
            yield self._plan(ix, chunk, table, found, gone)()

    def _plan(
        self,
        ix: _Index,
        chunk: tp.Sequence[str],
        table: np.ndarray,
        found: np.ndarray,
        gone: tp.Callable[[str], Exception] | None,
    ) -> tp.Callable[[], tp.Iterator[tp.Any]]:
        """A function making the iterator over the items of a batch whose rows were found:
        rows of one strided view of the shard's map when it allows (``_row_views``), else
        item by item (then missing or unmapped items go through ``load``)."""
        rows = self._row_views(ix, table, found)
        if rows is not None:
            return rows
        return lambda: self._items(ix, chunk, table, found, gone)

    def _items(
        self,
        ix: _Index,
        chunk: tp.Sequence[str],
        table: np.ndarray,
        found: np.ndarray,
        gone: tp.Callable[[str], Exception] | None,
    ) -> tp.Iterator[tp.Any]:
        metas = self._metas
        array = enc.ARRAY
        maps = ix.maps
        numbers, offsets, sizes, mids = (table[:, k].tolist() for k in range(4))
        for uid, ok, number, offset, nbytes, meta in zip(
            chunk, found.tolist(), numbers, offsets, sizes, mids, strict=True
        ):
            if ok:
                fmt, dtype, shape = metas[meta]
                mm = maps[number]
                if fmt == array and nbytes and mm is not None and offset + nbytes <= len(mm):
                    yield np.ndarray(shape, dtype, mm, offset)
                    continue
            yield self._load_or(uid, gone)

    def _row_views(
        self, ix: _Index, table: np.ndarray, found: np.ndarray
    ) -> tp.Callable[[], tp.Iterator[np.ndarray]] | None:
        """For a batch whose items are all found, arrays of one meta (not 0-d) in one mapped
        shard, at aligned offsets (a map's usual batch): a function iterating over rows of one
        strided view of the map, a row every ALIGN bytes, indexed in C (~4x cheaper per item
        than building each array from the map); items lying at one step in the order asked (a
        writer's run) are that view's slice, iterated by numpy (~2x cheaper again). None for
        any other batch: it is taken item by item."""
        if not len(table) or not found.all():
            return None
        number, meta = int(table[0, 0]), int(table[0, 3])
        fmt, dtype, shape = self._metas[meta]
        nbytes = self._meta_nbytes[meta]
        if fmt != enc.ARRAY or dtype is None or not shape or nbytes <= 0:
            return None
        numbers, offsets, sizes, metas = table[:, 0], table[:, 1], table[:, 2], table[:, 3]
        if (
            (numbers != number).any()
            or (metas != meta).any()
            or (sizes != nbytes).any()
            or (offsets % sh.ALIGN).any()
            or offsets.min() < 0
        ):
            return None
        mm = ix.maps[number]
        need = int(offsets.max()) + nbytes
        if mm is None or need > len(mm):  # not mapped yet (a store just opened), or grown
            try:
                mm = self._map(ix, number, need)
            except _StaleError:  # replaced (a compaction, a clear): item by item, via load
                return None
        # every row starts ALIGN bytes after the previous one and ends inside the map
        count = (len(mm) - nbytes) // sh.ALIGN + 1
        inner = np.empty(0, dtype).reshape((0, *shape)).strides[1:] if dtype.itemsize else ()
        view = np.ndarray((count, *shape), dtype, mm, 0, (sh.ALIGN, *inner))
        picks = offsets // sh.ALIGN
        if _is_stride(picks):
            first, n = int(picks[0]), len(picks)
            step = int(picks[1] - picks[0]) if n > 1 else 1
            run = view[first : first + step * (n - 1) + 1 : step]
            return lambda: iter(run)
        return lambda: map(view.__getitem__, picks.tolist())

    def load(self, item_uid: str) -> tp.Any:
        """The stored value; arrays are read-only views on the shard's memory map (KeyError if absent)."""
        ix = self._ix
        row = ix.rows.get(item_uid)
        if row is not None:
            # the hot path, inlined: an array in an already mapped part of its shard
            number, offset, nbytes, meta, _, _ = _ROW.unpack_from(ix.raw, row * _ROW.size)
            fmt, dtype, shape = self._metas[meta]
            mm = ix.maps[number]
            if fmt == enc.ARRAY and nbytes and mm is not None and offset + nbytes <= len(mm):
                return np.ndarray(shape, dtype, mm, offset)  # positional: faster than keywords
        elif not self._loaded:
            self.refresh()
        try:
            return self._load(self._ix, item_uid)
        except _StaleError:
            pass
        self.refresh()  # a compaction or clear replaced files: reload, then try once more
        ix = self._ix
        try:
            return self._load(ix, item_uid)
        except _StaleError:
            number = self._entry(ix, item_uid)[0]
            self._drop_damaged(ix, number, item_uid, "its shard is shorter than its index says")

    def _entry(self, ix: _Index, item_uid: str) -> tuple[int, int, int, int, int]:
        """(pair number, offset, nbytes, meta id, crc32) of the newest copy (KeyError if none)."""
        row = ix.rows.get(item_uid)
        if row is not None:
            number, offset, nbytes, meta, crc, _ = _ROW.unpack_from(ix.raw, row * _ROW.size)
            if meta == self._void_id:
                raise KeyError(item_uid)
            return number, offset, nbytes, meta, crc
        if ix.segs and item_uid not in ix.dropped:
            h = sg.hash_one(item_uid)
            best: tuple[tuple[int, int], sg.Segment, int] | None = None
            for seg in ix.segs:
                pos = seg.find_one(item_uid, h)
                if pos >= 0 and (best is None or (int(seg.stamps[pos]), seg.rank) > best[0]):
                    best = ((int(seg.stamps[pos]), seg.rank), seg, pos)
            if best is not None:
                _, seg, pos = best
                meta = int(seg.meta_map.take(int(seg.meta_ids[pos]), mode="clip"))
                if meta == self._void_id:
                    raise KeyError(item_uid)
                return (
                    seg.number,
                    int(seg.offsets[pos]),
                    int(seg.nbytes[pos]),
                    meta,
                    int(seg.crcs[pos]),
                )
        raise KeyError(item_uid)

    def _load(self, ix: _Index, item_uid: str) -> tp.Any:
        number, offset, nbytes, meta, crc = self._entry(ix, item_uid)
        fmt, dtype, shape = self._metas[meta]
        mm = ix.maps[number]
        if mm is None or offset + nbytes > len(mm):
            mm = self._map(ix, number, offset + nbytes)
        if fmt == enc.ARRAY:
            if nbytes == 0:
                empty = np.empty(shape, dtype=dtype)
                empty.flags.writeable = False
                return empty
            return np.ndarray(shape, dtype, mm, offset)  # positional: twice as fast as keywords
        with memoryview(mm) as view:
            data = view[offset : offset + nbytes]
            if zlib.crc32(data) != crc & 0xFFFFFFFF:
                data.release()
                self._drop_damaged(ix, number, item_uid, "its bytes do not match their checksum")
            try:
                return enc.decode_other(data, fmt)
            except Exception as exc:
                # its bytes passed their checksum: the code changed (a pickled class renamed,
                # moved or removed, a module gone), not the data
                hint = (
                    "was its class renamed, moved or removed? restore it, or clear the cache"
                    if fmt == enc.PICKLE
                    else "clear the cache"
                )
                msg = (
                    f"cannot decode item {item_uid!r} of {self.folder}: {type(exc).__name__}: "
                    f"{exc} ({hint})"
                )
                raise StoreError(msg) from exc
            finally:
                data.release()

    def _drop_damaged(self, ix: _Index, number: int, item_uid: str, why: str) -> tp.NoReturn:
        pair = ix.pairs[number]
        self._warn(
            pair,
            f"{self.paths.shard(pair.name.stem)}: item {item_uid!r} is damaged ({why}); it is "
            "treated as missing from now on (it will be recomputed)",
        )
        ix.rows.pop(item_uid, None)
        if ix.segs:
            ix.dropped.add(item_uid)  # an older copy in a segment must not come back
        raise KeyError(item_uid)

    def _map(self, ix: _Index, number: int, need: int) -> mmap.mmap:
        """Map (or re-map, once it grew) pair ``number``'s shard; checks it is the indexed one."""
        pair = ix.pairs[number]
        path = self.paths.shard(pair.name.stem)
        with self._lock:
            try:
                fd = os.open(path, os.O_RDONLY)  # not open(): no file object to build
            except FileNotFoundError:
                raise _StaleError from None
            try:
                size = os.fstat(fd).st_size
                if size < max(need, sh.SHARD_HEADER_BYTES):
                    # entries are checked against the size at ingest and shards never shrink
                    raise _StaleError
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            if sh.parse_header(mm[: sh.SHARD_HEADER_BYTES], sh.SHARD_MAGIC) != pair.file_id:
                raise _StaleError
            ix.maps[number] = mm
            return mm

    def stack(self, item_uids: tp.Sequence[str]) -> np.ndarray:
        """One new contiguous ``(n, *shape)`` array of stored arrays (all of one shape and dtype)."""
        if not self._loaded:
            self.refresh()
        try:
            return self._stack(self._ix, item_uids)
        except _StaleError:
            pass
        self.refresh()  # a compaction or clear replaced files: reload, then try once more
        try:
            return self._stack(self._ix, item_uids)
        except _StaleError:
            msg = f"{self.folder}: a shard is shorter than its index says; run verify()"
            raise StoreError(msg) from None

    def _stack(self, ix: _Index, item_uids: tp.Sequence[str]) -> np.ndarray:
        n = len(item_uids)
        if n == 0:
            msg = "stack() needs at least one item uid (the item shape is unknown otherwise)"
            raise StoreError(msg)
        table, found = self._resolve(ix, item_uids)
        if not found.all():
            raise KeyError(item_uids[int(np.flatnonzero(~found)[0])])
        metas = table[:, 3]
        first = int(metas[0])
        fmt, dtype, shape = self._metas[first]
        odd = np.flatnonzero(metas != first)
        if fmt != enc.ARRAY or dtype is None:
            msg = f"stack() needs arrays, but item {item_uids[0]!r} is not stored as an array"
            raise StoreError(msg)
        if len(odd):
            j = int(odd[0])
            ofmt, odtype, oshape = self._metas[int(metas[j])]
            what = "not an array" if ofmt != enc.ARRAY else f"dtype {odtype}, shape {oshape}"
            msg = (
                f"stack() needs items of one shape and dtype: item {item_uids[0]!r} has dtype "
                f"{dtype}, shape {shape} but item {item_uids[j]!r} (position {j}) is {what}"
            )
            raise StoreError(msg)
        nbytes = int(table[0, 2])
        out = np.empty((n, *shape), dtype=dtype)
        if nbytes == 0:
            return out
        flat = out.reshape(n, -1).view(np.uint8)
        numbers = table[:, 0]
        # one shard (a sort of every row number costs more than this comparison)
        one = int(numbers[0])
        distinct = [one] if (numbers == one).all() else np.unique(numbers).tolist()
        for number in distinct:
            select: np.ndarray | None = None
            offsets = table[:, 1]
            if len(distinct) > 1:
                select = np.flatnonzero(numbers == number)
                offsets = offsets[select]
            if nbytes >= STACK_READ_BYTES:
                self._read_into(ix, number, offsets, nbytes, flat, select)
                continue
            mm = ix.maps[number]
            need = int(offsets.max()) + nbytes
            if mm is None or need > len(mm):
                mm = self._map(ix, number, need)
            lowest = int(offsets.min())
            # map the whole span now rather than faulting it in page by page (when the items
            # fill most of it; else only ask for read-ahead)
            start = lowest - lowest % mmap.PAGESIZE
            span = min(need, len(mm)) - start
            dense = span <= 4 * nbytes * len(offsets)
            done = ix.populated.get(number)
            # a span this map had populated already is mapped still (unless the kernel took
            # pages back: they then fault in as read): asking again walks every page (~5 ms
            # for 100 MB), for nothing
            if not (
                dense and done and done[0] is mm and done[1] <= start < start + span <= done[2]
            ):
                try:
                    mm.madvise(_MADV_POPULATE_READ if dense else mmap.MADV_WILLNEED, start, span)
                    if dense:
                        ix.populated[number] = (mm, start, start + span)
                except OSError:  # kernels before 5.14 do not know MADV_POPULATE_READ
                    mm.madvise(mmap.MADV_WILLNEED, start, span)
            # one strided view of fixed-size records starting every 64 bytes (they overlap, which
            # is fine for reading): gathering rows of it is a single vectorized copy per shard
            count = (len(mm) - lowest - nbytes) // sh.ALIGN + 1
            records = np.ndarray(
                (count,),
                dtype=np.dtype((np.void, nbytes)),
                buffer=mm,
                offset=lowest,
                strides=(sh.ALIGN,),
            )
            picks = (offsets - lowest) // sh.ALIGN
            if select is None and _is_stride(picks):
                # the items lie at one stride in the order asked (as one writer wrote them, and
                # stacked in that order): one strided copy, at memcpy speed (a gather of
                # records goes through a temporary, and costs ~3x more)
                stride = int(picks[1] - picks[0]) * sh.ALIGN if len(picks) > 1 else nbytes
                rows = np.ndarray(
                    (n, nbytes), dtype=np.uint8, buffer=mm, offset=lowest, strides=(stride, 1)
                )
                flat[:] = rows
                continue
            # in chunks of a few MiB: the temporary of a fancy-index gather is then reused warm
            # memory, where one n-item temporary would cost a page fault per 4 KiB, twice
            step = max(1, STACK_CHUNK_BYTES // nbytes)
            for start in range(0, len(picks), step):
                part = records[picks[start : start + step]].view(np.uint8).reshape(-1, nbytes)
                if select is None:
                    flat[start : start + len(part)] = part
                else:
                    flat[select[start : start + len(part)]] = part
        return out

    def _read_into(
        self,
        ix: _Index,
        number: int,
        offsets: np.ndarray,
        nbytes: int,
        flat: np.ndarray,
        select: np.ndarray | None,
    ) -> None:
        """Read large items of pair ``number`` into rows of ``flat`` (``select``: which rows)."""
        pair = ix.pairs[number]
        try:
            fd = os.open(self.paths.shard(pair.name.stem), os.O_RDONLY)
        except FileNotFoundError:
            raise _StaleError from None
        try:
            header = os.pread(fd, sh.SHARD_HEADER_BYTES, 0)
            need = int(offsets.max()) + nbytes
            if sh.parse_header(header, sh.SHARD_MAGIC) != pair.file_id:
                raise _StaleError  # removed and re-created (clear, compaction)
            if os.fstat(fd).st_size < need:
                raise _StaleError
            rows = range(len(offsets)) if select is None else select.tolist()
            for row, offset in zip(rows, offsets.tolist(), strict=True):
                view = memoryview(flat[row])
                while view:  # a read may be short (signals, > 2 GiB): go on where it stopped
                    got = os.preadv(fd, [view], offset)
                    if got <= 0:
                        raise _StaleError  # cut while reading
                    view, offset = view[got:], offset + got
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- writing

    def writer(self, cache_type: CacheType = None) -> MapWriter:
        """A writer appending to a pair of files of its own (use it as a context manager).

        Leaving it keeps its pair, files and I/O thread open for the next writer of this folder
        in this process (the first ``writer()`` pays the set-up, later ones nothing); ``close()``
        seals and frees them (so do ``clear()`` and the end of the process).
        """
        writer = wr.take_parked(self)
        if writer is None:
            return MapWriter(self, cache_type)
        try:
            writer.configure(cache_type)
        except BaseException:
            writer._shutdown()
            raise
        return writer

    def close(self) -> None:
        """Seal and close the idle writers this process keeps for this folder (if any)."""
        wr.release_parked(self)

    def claim(
        self,
        item_uids: tp.Sequence[str],
        missing_as_of: object = None,
        adopt: str | None = None,
        adopt_pieces: bool = False,
    ) -> Claim:
        """Claim the missing items this caller should compute (use it as a context manager).

        ``missing_as_of``: a ``view_state()`` at which every one of ``item_uids`` was missing
        (as ``missing()`` found them): if the view has not changed since, the claim does not check
        them again. ``adopt``: the token of a claim whose items this one may take (a worker
        computing for the driver that claimed them); ``adopt_pieces``: see ``Claim``.
        """
        return Claim(self, item_uids, missing_as_of, adopt, adopt_pieces)

    def view_state(self) -> object:
        """A value equal to a later one only if no entry was added to this reader's view in
        between (entries are only ever added; a rebuilt view is a new object)."""
        with self._lock:  # not in the middle of a fold (counted twice)
            ix = self._view
            return (ix, ix.count + ix.own_count, len(ix.segs))

    def view_state_grown(self, state: object, entries: int) -> object:
        """The ``view_state()`` once ``entries`` more entries are added to the view of ``state``
        (a writer of this store publishing that many items): a later view equal to it grew by
        that many entries and nothing else."""
        ix, count, segs = tp.cast("tuple[_Index, int, int]", state)
        return (ix, count + entries, segs)

    def _next_stamp(self) -> int:
        """The stamp of a record about to be published: greater than any this process gave and
        any this store read (a copy written after reading another always supersedes it), and
        otherwise the wall clock in ns (so across processes, the newest wins)."""
        global _last_stamp
        with _stamp_lock:
            stamp = max(time.time_ns(), _last_stamp + 1, self._max_stamp + 1)
            _last_stamp = stamp
        return stamp

    def _pair_state(self, stem: str) -> _Pair | None:
        return self._ix.by_stem.get(stem)

    def _own_sealed(self) -> None:
        """A writer of this store sealed its pair into a segment: a new view maps the segment,
        and the rows this view took in from that writer's flushes are freed (``_own_flush``
        appends them as they come: without this, a process writing 100M items runs out of
        memory)."""
        if self._loaded:
            self.refresh(rebuild=True)

    def _own_flush(
        self, stem: str, start: int, end: int, obj: list[tp.Any], shard_size: int
    ) -> None:
        """A writer of this store published a record: listed, to take in without re-reading the
        file when a query needs it (``_fold_own``). Taking each record in as it came (a dict insert
        per item, in the writer's thread) was a fifth of a map's fill time, wasted on a fill
        nothing queries."""
        with self._lock:
            ix = self._view
            pair = ix.by_stem.get(stem)
            if pair is None or pair.pos != start:
                return  # this reader is behind or reloaded: the next refresh reads the file
            ix.own.append((pair, obj, shard_size))
            ix.own_count += len(obj[1])
            pair.pos = end
            stamp = obj[8]  # the newest entry of this store: the next stamp given is greater
            if stamp > self._max_stamp:
                self._max_stamp = stamp

    def _fold_own(self, ix: _Index) -> None:
        """Take in the records ``_own_flush`` listed, in the order they came: the records of each
        run of one pair as one block (``_ingest``). They leave the list only once their entries
        are in: a thread that finds it empty (without the lock) finds them."""
        with self._lock:
            own = ix.own
            while own:
                pair = own[0][0]
                end = 1
                while end < len(own) and own[end][0] is pair:
                    end += 1
                records = [self._columns(pair, obj) for _, obj, _ in own[:end]]
                self._ingest(ix, pair, records, own[end - 1][2])
                ix.own_count -= sum(len(rec.uids) for rec in records)
                del own[:end]

    # ----------------------------------------------------------------- maintenance

    def verify(self) -> list[str]:
        """Check every index record and the bytes each entry points to (checksums).

        Returns human-readable problems; an empty list means the store is healthy. Pairs of
        another format version are not damage (readers skip them): they are not reported.
        Never writes anything (works on a read-only mount).
        """
        problems: list[str] = []
        try:
            pairs = self.paths.list_pairs() or []
        except OSError as exc:
            raise store_error("listing", self.folder, exc) from exc
        retired: dict[str, int] = {}
        for name in [p for p in reversed(pairs) if p.is_compacted] + [
            p for p in pairs if p.is_writer
        ]:
            if name.is_compacted and name.stem in retired:
                continue
            try:
                problems.extend(self._verify_pair(name, retired))
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    continue  # removed by a concurrent compaction
                raise store_error("verifying", self.paths.index(name.stem), exc) from exc
        return problems

    def _verify_pair(self, name: sh.DataName, retired: dict[str, int]) -> list[str]:
        idx_path, bin_path = self.paths.index(name.stem), self.paths.shard(name.stem)
        try:
            data = idx_path.read_bytes()
        except FileNotFoundError:
            return []  # removed by a concurrent compaction
        file_id = sh.parse_header(data, sh.INDEX_MAGIC)
        if file_id is None:
            if sh.header_version(data, sh.INDEX_MAGIC) is not None or not any(data[:32]):
                return []  # another format (skipped by readers), or a header not visible yet
            return [f"{idx_path}: {sh.header_problem(data, sh.INDEX_MAGIC)}"]
        problems = []
        shard_id = sh.parse_header(
            sh.read_header(bin_path, sh.SHARD_HEADER_BYTES) or b"", sh.SHARD_MAGIC
        )
        if shard_id != file_id:
            problems.append(f"{bin_path}: missing, or its header does not match {idx_path.name}")
            return problems
        start = max(sh.INDEX_HEADER_BYTES, retired.get(name.stem, 0) if name.is_writer else 0)
        scan = sh.scan_records(data[start:], start)
        for at, why in scan.damage:
            problems.append(f"{idx_path}: damaged index record at offset {at} ({why})")
        lenient = name.is_writer and self.network
        # an incomplete record at the end is a writer appending, or one killed while publishing:
        # readers stop before it, compaction drops it; not damage
        with open(bin_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with contextlib.ExitStack() as stack:
            stack.callback(mm.close)
            view = stack.enter_context(memoryview(mm))
            for at, payload in scan.records:
                try:
                    obj = sh.decode_payload(payload)
                    if obj[0] == sh.RECORD_RETIRE:
                        for stem, folded in obj[1]:
                            retired[str(stem)] = max(int(folded), retired.get(str(stem), 0))
                        continue
                    if obj[0] == sh.RECORD_SEAL:
                        continue
                    found = self._verify_record(obj, view, size, idx_path, bin_path)
                    stamp = obj[8] if len(obj) > 8 else 0
                    if found and lenient and type(stamp) is int and _lagging(stamp):
                        # a network filesystem, published moments ago: its bytes may not be
                        # visible here yet, which readers wait out; not damage unless it lasts
                        # (a local filesystem shows every byte written before the record)
                        continue
                    problems.extend(found)
                except (msgspec.DecodeError, ValueError, TypeError, IndexError) as exc:
                    problems.append(f"{idx_path}: record at offset {at} unreadable ({exc!r})")
        problems.extend(self._verify_segment(name, file_id, len(data), size))
        return problems

    def _verify_segment(
        self, name: sh.DataName, file_id: bytes, index_size: int, shard_size: int
    ) -> list[str]:
        """Check that the pair's segment, if any, holds exactly the newest entry per uid of the
        index records it covers (readers serve it instead of them)."""
        path, idx_path = self.paths.segment(name.stem), self.paths.index(name.stem)
        if not path.exists():
            return []
        seg = sg.Segment.open(path, file_id, index_size)
        if seg is None:
            # a writer that went on (and parked) since the index was read writes a segment
            # covering more of it: checked against the index as it is now
            now = _file_size(idx_path)
            seg = sg.Segment.open(path, file_id, now) if now > index_size else None
            shard_size = max(shard_size, _file_size(self.paths.shard(name.stem)))
        if seg is None:
            return [f"{path}: not a valid segment of {idx_path.name} (readers ignore it)"]
        entries = sg.read_pair(idx_path, seg.covered, shard_size)
        if entries is None:
            return [f"{path}: the {seg.covered} index bytes it covers are not whole records"]
        uids = seg.all_uids()
        at = dict(zip(entries.uids, range(len(entries.uids)), strict=True))
        idx = np.fromiter(map(at.get, uids, itertools.repeat(-1)), dtype=np.int64, count=len(uids))
        if len(uids) != len(at) or (idx < 0).any():
            return [f"{path}: its items differ from those of {idx_path.name}"]
        keys: dict[tuple[tp.Any, ...], int] = {}
        ids = [keys.setdefault(sg._meta_key(m), len(keys)) for m in entries.metas]
        seg_ids = [keys.setdefault(sg._meta_key(m), len(keys)) for m in seg.metas]
        same = (
            np.array_equal(entries.offsets[idx], seg.offsets)
            and np.array_equal(entries.nbytes[idx], seg.nbytes)
            and np.array_equal(entries.stamps[idx], seg.stamps)
            and np.array_equal(entries.crcs[idx].astype(np.uint32), seg.crcs)
            and np.array_equal(
                np.array(ids or [0])[entries.meta_ids[idx]], np.array(seg_ids or [0])[seg.meta_ids]
            )
            and np.array_equal(sg.uid_hashes(uids), seg.hashes)
            and bool((np.diff(seg.hashes) >= 0).all())
        )
        if not same:
            return [f"{path}: its entries differ from those of {idx_path.name}"]
        return []

    def _verify_record(
        self, obj: list[tp.Any], view: memoryview, size: int, idx_path: Path, bin_path: Path
    ) -> list[str]:
        _, uids, offs_b, nbytes_b, crcs_b, mix_b, metas, spans = obj[:8]
        spans = [(int(a), int(b), int(c)) for a, b, c in spans or []]
        problems = []
        entries = zip(
            uids,
            np.frombuffer(offs_b, "<i8").tolist(),
            np.frombuffer(nbytes_b, "<i8").tolist(),
            np.frombuffer(crcs_b, "<u4").tolist(),
            np.frombuffer(mix_b, "<u4").tolist(),
            strict=True,
        )
        in_span: list[list[str]] = [[] for _ in spans]
        for uid, offset, nbytes, crc, mix in entries:
            meta_id = self._intern(metas[mix])
            fmt = self._metas[meta_id][0]
            expected = self._array_nbytes(meta_id)
            if offset < sh.SHARD_HEADER_BYTES or offset % sh.ALIGN or nbytes < 0:
                problems.append(f"{idx_path}: item {uid!r} has a bad offset {offset}")
            elif expected >= 0 and expected != nbytes:
                problems.append(
                    f"{idx_path}: item {uid!r} has {nbytes} bytes, its dtype and shape need "
                    f"{expected}"
                )
            elif offset + nbytes > size:
                problems.append(
                    f"{idx_path}: item {uid!r} points past the end of {bin_path.name}"
                    f" ({offset}+{nbytes} > {size})"
                )
            else:
                # arrays in a span are checked with it, large ones (outside spans) by their word
                # sum; other items by their own crc32
                inside = [k for k, (a, b, _) in enumerate(spans) if a <= offset <= b - nbytes]
                data = view[offset : offset + nbytes]
                if fmt == enc.ARRAY and inside:
                    if nbytes:
                        in_span[inside[0]].append(uid)
                elif (enc.word_checksum(data) if fmt == enc.ARRAY else zlib.crc32(data)) != crc:
                    problems.append(
                        f"{bin_path}: bytes of item {uid!r} at offset {offset} do not match "
                        "their checksum"
                    )
        for (start, end, crc), names in zip(spans, in_span, strict=True):
            if end > size:
                problems.append(f"{idx_path}: a record points past the end of {bin_path.name}")
            elif enc.word_checksum(view[start:end]) != crc:
                some = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
                problems.append(
                    f"{bin_path}: bytes {start}-{end} do not match their checksum: "
                    + (
                        f"{len(names)} arrays there may be damaged ({some})"
                        if names
                        else "only padding or already reported items are there"
                    )
                )
        return problems

    def compact(self) -> dict[str, int]:
        """Fold every pair no writer appends to any more into one contiguous pair, dropping
        duplicates, dead bytes and torn tails.

        Readers keep reading (old files stay valid for their maps until they reload) and writers
        keep writing: a pair whose writer is busy (its lock held) is left for next time; one that
        looks idle but may be written again (unsealed, recent) is copied and kept, readers taking
        in only what its writer appends after.
        """
        wr.release_parked(self)  # this process's idle writers are done: sealed, they fold too
        before = self._disk_bytes()
        items, dropped = self._fold(auto=False)
        return {
            "bytes_before": before,
            "bytes_after": self._disk_bytes(),
            "items": items,
            "dropped": dropped,
        }

    def fold_if_many(self) -> bool:
        """Fold sealed pairs (and small compacted ones) when the folder holds more than
        AUTO_FOLD_PAIRS pairs; skipped if another process is folding. Whether it folded."""
        listing = self._ix.listing
        if listing is None:
            try:
                listing = os.listdir(self.folder)
            except OSError:
                return False
        if sum(name.endswith(".idx") for name in listing) <= AUTO_FOLD_PAIRS:
            return False
        return self._fold(auto=True) != (0, 0)

    def _pair_added(self) -> None:
        """A writer of this process created a pair: keep the number of files bounded."""
        try:
            self.fold_if_many()
        except StoreError:
            pass  # folding only saves files; computing goes on (verify() reports damage)

    def _fold(self, auto: bool) -> tuple[int, int]:
        """Fold what can be folded: (items copied, damaged items dropped)."""
        try:
            self.paths.locks.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error("creating", self.paths.locks, exc) from exc
        lock = locks.FdLock(self.paths.compact_lock)
        try:
            # two compactions at once would only duplicate work (each writes its own files):
            # the lock saves that where locks work; elsewhere both go on, safely
            if not lock.acquire(blocking=not auto):
                return 0, 0
        except OSError as exc:
            if exc.errno not in NO_LOCK_ERRNOS:
                raise store_error("locking", self.paths.compact_lock, exc) from exc
        try:
            self.refresh()
            return self._fold_pairs(auto)
        except _StaleError:
            # another compaction (on a host whose locks do not reach here) removed a source
            # while this one read it: its new pair holds those items; nothing to do now
            return 0, 0
        except OSError as exc:
            raise store_error("compacting", self.folder, exc) from exc
        finally:
            lock.release()
            self.refresh()

    def _foldable(self, pair: _Pair, fs_now: float) -> str:
        """How much of ``pair`` compaction may take: "whole" (copied, then removed) when nobody
        will ever append to it again: compacted pairs; writer pairs that are sealed, or whose
        writer looks gone (its lock free or unknown) and left them untouched for STALE_WRITER_S
        (a live writer idle that long starts a new pair instead). "part" for a writer pair that
        looks idle but may be written again (its lock free or unknown: an idle writer kept by a
        live process, or a writer on a host whose locks do not reach here): its records read so
        far are copied and it stays, readers taking in only what follows. "" for the others."""
        if pair.bad or pair.file_id is None or pair.name.kind == "legacy":
            return ""
        if pair.name.is_compacted:
            return "whole"
        if pair.lag_pos >= 0:
            return ""  # waiting for bytes this reader cannot see yet
        if pair.sealed:
            return "whole"
        if locks.probe_lock(Path(pair.index_path)):
            return ""  # a writer is busy with it
        mtime = 0.0
        for path in (Path(pair.index_path), self.paths.shard(pair.name.stem)):
            with contextlib.suppress(FileNotFoundError):
                mtime = max(mtime, os.stat(path).st_mtime)
        if fs_now - mtime > wr.STALE_WRITER_S:
            return "whole"
        return "part"

    def _fold_pairs(self, auto: bool) -> tuple[int, int]:
        ix = self._ix
        name = sh.DataName.compacted(max((p.name.gen for p in ix.pairs), default=0) + 1)
        shard_path = self.paths.shard(name.stem)
        tmp = shard_path.with_name(f".{shard_path.name}.{os.getpid()}.new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fs_now = os.fstat(fd).st_mtime  # the filesystem's clock, which stamps the mtimes
            how = {p.number: self._foldable(p, fs_now) for p in ix.pairs}
            foldable = [
                p
                for p in ix.pairs
                if how[p.number] == "whole"
                # an idle pair only if it grew since it was last folded, and never automatically
                or (how[p.number] == "part" and not auto and p.pos > ix.retired.get(p.name.stem, 0))
            ]
            writers = [p for p in foldable if p.name.is_writer]
            if auto:
                big = {g.number for g in ix.segs if g.count >= AUTO_FOLD_MAX_ENTRIES}
                writers = [p for p in writers if p.number not in big]
                # size-tiered: a few sealed writer pairs fold into a new pair, together with the
                # compacted pairs not much bigger than them (big ones are left until many)
                small = 4 * sum(max(0, _file_size(self.paths.shard(p.name.stem))) for p in writers)
                compacted = [p for p in foldable if p.name.is_compacted]
                if len(compacted) <= 4:
                    compacted = [
                        p for p in compacted if _file_size(self.paths.shard(p.name.stem)) <= small
                    ]
                if len(writers) < 2:
                    return 0, 0
                foldable = writers + compacted
            if not foldable:
                return 0, 0
            sources = {p.number for p in foldable}
            uids, table = self._entries(ix)
            chosen = np.flatnonzero(np.isin(table[:, 0], np.array(sorted(sources))))
            voids = 0
            if self._void_id >= 0:
                void = table[chosen, 3] == self._void_id
                if all(how[p.number] == "whole" for p in ix.pairs) and len(foldable) == len(
                    ix.pairs
                ):
                    # every pair goes: no copy a void entry shadows survives it
                    chosen = chosen[~void]
                else:
                    voids = int(void.sum())
            # sequential reads of the old shards, in file order
            chosen = chosen[np.lexsort((table[chosen, 1], table[chosen, 0]))]
            # copying gives items fresh checksums: an item whose bytes do not match its checksum
            # now would come out looking healthy. It is dropped instead (recomputed next time)
            damaged = self._damaged(ix, table[chosen])
            if damaged.any():
                bad = [uids[i] for i in chosen[damaged][:3].tolist()]
                warnings.warn(
                    f"{self.folder}: compaction dropped {int(damaged.sum())} damaged item(s) "
                    f"(their bytes do not match their checksum), e.g. {', '.join(map(repr, bad))}; "
                    "they are missing now and will be recomputed",
                    CorruptCacheWarning,
                    stacklevel=4,
                )
                chosen = chosen[~damaged]
            # each source with how far this fold read its index: should a writer pair still grow
            # (its writer was alive after all), readers take in what follows that point
            retired = {p.name.stem: p.pos for p in foldable}
            for stem, folded in ix.retired.items():
                # pairs folded in part, or not removed by a fold that died: still there
                if stem in ix.by_stem or os.path.exists(self.paths.index(stem)):
                    retired.setdefault(stem, folded)
            if len(chosen):
                file_id = sh.new_file_id()
                new_offsets = self._copy_items(ix, table[chosen], fd, file_id)
                os.link(tmp, shard_path)  # never replaces: the name is fresh
                self._write_folded_index(
                    ix, name, file_id, uids, table, chosen, new_offsets, retired
                )
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # published: the sources' items are in the new pair (or superseded elsewhere); index
        # before shard, so a reader listing the folder never finds an index without its data
        for pair in foldable:
            if how[pair.number] != "whole":
                continue
            stem = pair.name.stem
            for path in (self.paths.segment(stem), Path(pair.index_path), self.paths.shard(stem)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return len(chosen) - voids, int(damaged.sum())

    def _write_folded_index(
        self,
        ix: _Index,
        name: sh.DataName,
        file_id: bytes,
        uids: list[str],
        table: np.ndarray,
        chosen: np.ndarray,
        new_offsets: np.ndarray,
        retired: dict[str, int],
    ) -> None:
        payloads = [
            sh.encode_payload([sh.RECORD_RETIRE, sorted([s, p] for s, p in retired.items())])
        ]
        metas = [self._meta_repr(i) for i in range(len(self._metas))]
        all_spans: list[list[int]] = []
        with open(self.paths.shard(name.stem), "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with contextlib.closing(data):
            for start in range(0, len(chosen), COMPACT_RECORD_ITEMS):
                part = chosen[start : start + COMPACT_RECORD_ITEMS]
                sub = table[part]
                first = int(new_offsets[start])
                last = int(new_offsets[start + len(part) - 1] + sub[-1, 2])
                spans = [[first, last, enc.word_checksum(data[first:last])]]
                all_spans += spans
                payloads.append(
                    sh.encode_payload(
                        [
                            sh.RECORD_ENTRIES,
                            [uids[i] for i in part.tolist()],
                            new_offsets[start : start + len(part)].astype("<i8").tobytes(),
                            sub[:, 2].astype("<i8").tobytes(),
                            sub[:, 4].astype("<u4").tobytes(),
                            sub[:, 3].astype("<u4").tobytes(),
                            metas,
                            spans,
                            sub[:, 5].astype("<i8").tobytes(),  # the stamps they were written with
                        ]
                    )
                )
        payloads.append(sh.encode_payload([sh.RECORD_SEAL]))
        content = sh.index_header(file_id) + b"".join(sh.frame(p) for p in payloads)
        # the index appears complete, after its shard is on disk, under a name never used before:
        # publishing is this one link; the sources are removed only after it
        create_new(self.paths.index(name.stem), content, fsync=True)
        if len(chosen):  # every compacted pair: readers map it rather than decode it
            sub = table[chosen]
            entries = sg.Entries(
                uids=[uids[i] for i in chosen.tolist()],
                offsets=new_offsets,
                nbytes=sub[:, 2],
                stamps=sub[:, 5],
                meta_ids=sub[:, 3],
                crcs=sub[:, 4],
                metas=metas,
                spans=all_spans,
                retired=sorted([s, p] for s, p in retired.items()),
                sealed=True,
            )
            max_end = sh.referenced_end(new_offsets, sub[:, 2], all_spans)
            sg.write(
                self.paths.segment(name.stem),
                sg.encode(entries, file_id, len(content), max_end),
                fsync=True,
            )

    def _damaged(self, ix: _Index, rows: np.ndarray) -> np.ndarray:
        """Which of these table rows' bytes do not match their checksum (a bool per row).

        The checks ``verify()`` does: arrays inside a span (a run of small items flushed together)
        by the span's word checksum (damage anywhere in a span condemns its arrays: the span is what the
        checksum covers), large arrays by their word sum, other items by their crc32.
        """
        bad = np.zeros(len(rows), dtype=bool)
        is_array = np.array([fmt == enc.ARRAY for fmt, _, _ in self._metas] or [False])
        for number in np.unique(rows[:, 0]).tolist():
            select = np.flatnonzero(rows[:, 0] == number)
            part = rows[select]
            try:
                mm = ix.maps[number]
                need = int((part[:, 1] + part[:, 2]).max())
                if mm is None or need > len(mm):
                    mm = self._map(ix, number, need)
            except _StaleError:
                if not os.path.exists(self.paths.shard(ix.pairs[number].name.stem)):
                    raise  # removed by another compaction meanwhile: this fold starts over
                bad[select] = True  # shorter than its index says: nothing to trust
                continue
            offsets, nbytes = part[:, 1].tolist(), part[:, 2].tolist()
            arrays = is_array[part[:, 3]].tolist()
            crcs = part[:, 4].tolist()
            spans = sorted(set(ix.pairs[number].spans))
            starts = [a for a, _, _ in spans]
            with memoryview(mm) as view:
                span_ok = [b <= len(mm) and enc.word_checksum(view[a:b]) == c for a, b, c in spans]
                # the span holding an array: the last one starting at or before it (spans of a
                # pair do not overlap); others, or none found, are checked by their own checksum
                first = np.searchsorted(np.array(starts, dtype=np.int64), part[:, 1], "right") - 1
                for j, k in enumerate(first.tolist()):
                    offset, size = offsets[j], nbytes[j]
                    if arrays[j]:
                        if size == 0:
                            continue
                        if k >= 0 and offset + size <= spans[k][1]:
                            bad[select[j]] = not span_ok[k]
                            continue
                    data = view[offset : offset + size]
                    got = enc.word_checksum(data) if arrays[j] else zlib.crc32(data)
                    data.release()
                    bad[select[j]] = got != crcs[j] & 0xFFFFFFFF
        return bad

    def _meta_repr(self, meta_id: int) -> list[tp.Any]:
        fmt, dtype, shape = self._metas[meta_id]
        descr = None if dtype is None else enc.dtype_descr(dtype)
        return [fmt, descr, list(shape)]

    def _copy_items(self, ix: _Index, rows: np.ndarray, fd: int, file_id: bytes) -> np.ndarray:
        """Copy the items of ``rows`` into the new shard open as ``fd``, contiguous, and fsync it:
        their new offsets."""
        new_offsets = np.empty(len(rows), dtype=np.int64)
        buf = bytearray(sh.shard_header(file_id))
        written = 0
        for k, (number, offset, nbytes) in enumerate(rows[:, :3].tolist()):
            mm = ix.maps[number]
            if mm is None or offset + nbytes > len(mm):
                mm = self._map(ix, number, offset + nbytes)
            new_offsets[k] = written + len(buf)
            buf += mm[offset : offset + nbytes]
            buf += sh.ZEROS[: -nbytes % sh.ALIGN]
            if len(buf) >= COPY_CHUNK_BYTES:
                sh.write_all(fd, buf)
                written += len(buf)
                buf.clear()
        sh.write_all(fd, buf)
        os.fsync(fd)
        return new_offsets

    def clear(self) -> None:
        """Remove every stored item and the store's files (writers busy now lose their items).

        Files of a newer format version are left alone (this exca_lite cannot know what they
        hold); files of older versions go.
        """
        wr.release_parked(self, segment=False)
        if not self.folder.is_dir():
            self._ix = _Index(frozenset())
            return
        # a compaction publishing after the clear would bring the cleared items back: exclude it
        # (where locks work; elsewhere, run clear when no compaction runs)
        lock = locks.FdLock(self.paths.compact_lock)
        try:
            self.paths.locks.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            if exc.errno not in NO_LOCK_ERRNOS:
                raise store_error("locking", self.paths.compact_lock, exc) from exc
        try:
            self._clear_files()
        finally:
            lock.release()
        for folder in (self.paths.claims, self.paths.locks):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a busy owner's lock file stays
        with self._lock:
            self._ix = _Index(frozenset())

    def _clear_files(self) -> None:
        try:
            for path in self.folder.iterdir():
                if _is_data_file(path.name) and not _is_newer_format(path):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            if self.paths.locks.is_dir():
                for path in self.paths.locks.glob("slot-*.lock"):  # writer slots of format 2
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            if self.paths.claims.is_dir():
                for owner in [
                    *self.paths.claims.glob("*.owner"),
                    *self.paths.claims.glob("*.owner-new"),
                ]:
                    if not locks.probe_lock(owner):  # a dead owner's claims (or birth)
                        with contextlib.suppress(FileNotFoundError):
                            owner.unlink()
            if self.paths.views.is_dir():
                for path in self.paths.views.glob("*.uids"):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        except OSError as exc:
            raise store_error("clearing", self.folder, exc) from exc

    def _disk_bytes(self) -> int:
        total = 0
        for name in self.paths.list_pairs() or []:
            total += _file_size(self.paths.index(name.stem)) + _file_size(
                self.paths.shard(name.stem)
            )
            total += max(0, _file_size(self.paths.segment(name.stem)))
        return total

    def stats(self) -> dict[str, tp.Any]:
        """Items, bytes on disk, shards (name -> bytes), dead bytes, busy writers, last write."""
        self.refresh()
        ix = self._ix
        shards: dict[str, int] = {}
        last_write: float | None = None
        writers = 0
        idle_here = wr.parked_stems(self)  # this process's idle writers are not writing
        for pair in ix.pairs:
            shards[pair.name.stem + ".bin"] = max(0, _file_size(self.paths.shard(pair.name.stem)))
            with contextlib.suppress(FileNotFoundError):
                mtime = os.stat(self.paths.index(pair.name.stem)).st_mtime
                last_write = mtime if last_write is None else max(last_write, mtime)
            if pair.name.is_writer and not pair.sealed and pair.name.stem not in idle_here:
                writers += bool(locks.probe_lock(Path(pair.index_path)))
        table = self._entries(ix, with_uids=False)[1]
        nbytes = table[:, 2]
        live = int(((nbytes + sh.ALIGN - 1) // sh.ALIGN * sh.ALIGN).sum())
        data = sum(max(0, size - sh.SHARD_HEADER_BYTES) for size in shards.values())
        voids = int((table[:, 3] == self._void_id).sum()) if self._void_id >= 0 else 0
        return {
            "items": len(nbytes) - voids,
            "bytes": self._disk_bytes(),
            "shards": shards,
            "dead_bytes": max(0, data - live),
            "writers": writers,
            "last_write": last_write,
        }


_TEMP_PAIR_FILE = re.compile(r"^\.(?:w|c)-[0-9a-f-]+\.(?:idx|bin|six)\.\d+(?:-[0-9a-f]+)?\.new$")


def _subset(uids: tp.Sequence[str], positions: np.ndarray) -> tp.Sequence[str]:
    """The uids at ``positions``: ``DecimalUids`` stay numbers (looked up from their digits)."""
    if isinstance(uids, sg.DecimalUids):
        return sg.DecimalUids(uids.values[positions])
    return [uids[i] for i in positions.tolist()]


def _is_stride(picks: np.ndarray) -> bool:
    """Whether ``picks`` go up by one constant step (one item, or items written in a row)."""
    if len(picks) < 2:
        return len(picks) == 1
    step = picks[1] - picks[0]
    return bool(step > 0) and bool((np.diff(picks) == step).all())


def _is_data_file(name: str) -> bool:
    """A shard, an index or a segment, or the temp file of one being created (``fs.create_new``,
    a compaction's shard: left behind if that process was killed). Not other dot-named temp
    files: another process may be writing its ``config.json``."""
    if name.startswith("."):
        return _TEMP_PAIR_FILE.match(name) is not None
    return name.endswith((".idx", ".bin", sg.SUFFIX))


def _lagging(stamp: int) -> bool:
    """Whether a record stamped ``stamp`` is recent enough that missing bytes are a lag."""
    return stamp > time.time_ns() - int(LAG_WARN_S * 1e9)


def _without(rec: _Columns, drop: list[int]) -> _Columns:
    """``rec`` without the entries ``drop``."""
    keep = np.setdiff1d(np.arange(len(rec.uids)), np.array(drop, dtype=np.int64))
    stamps = rec.stamps[keep] if isinstance(rec.stamps, np.ndarray) else rec.stamps
    return rec._replace(
        uids=[rec.uids[i] for i in keep.tolist()],
        offsets=rec.offsets[keep],
        nbytes=rec.nbytes[keep],
        crcs=rec.crcs[keep],
        meta_ids=rec.meta_ids[keep],
        stamps=stamps,
    )


def _is_newer_format(path: Path) -> bool:
    if path.name.endswith(sg.SUFFIX):
        head = sh.read_header(path, len(sg.MAGIC))
        found = None if head is None else sh.header_version(head, sg.MAGIC)
        return found is not None and found > sg.SEGMENT_VERSION
    magic = sh.INDEX_MAGIC if path.name.endswith(".idx") else sh.SHARD_MAGIC
    head = sh.read_header(path, len(magic))
    return head is not None and sh.is_newer_format(head, magic)


def _entry_count(obj: tp.Any) -> int:
    """How many entries a decoded record holds (0 for other records, or garbage)."""
    if type(obj) is list and len(obj) > 1 and obj[0] == sh.RECORD_ENTRIES and type(obj[1]) is list:
        return len(obj[1])
    return 0


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


__all__ = ["CacheType", "Claim", "Durability", "MapStore", "MapWriter"]
