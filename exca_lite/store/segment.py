"""Segments: a pair's index, folded into sorted columns that a reader maps instead of decoding.

Opening a store by decoding its index records costs time and private memory per item (a Python
dict entry and a table row each: ~200 bytes, in every process that opens it). A *segment*
``{stem}.six`` holds the newest entry per uid of a pair's index up to a byte position, as column
arrays sorted by a 64-bit hash of the uid: a reader maps it (shared page cache, no private memory)
and looks uids up with ``np.searchsorted``, vectorized over a batch. Hits are checked against the
stored uid, so a hash collision costs a little time and never serves another item.

Only a pair's own writer (when it seals its pair, or parks a big one) and compaction (for the
pairs it writes, fsynced) build segments, from index records they wrote themselves; a segment is
created complete (``fs.create_new``) and never modified. A reader that finds a segment whose header,
file id, covered position or size does not match its pair ignores it and reads the pair's index
records the old way: a segment only ever saves work.

File format (little endian, every column 8-byte aligned)::

    header(64) = b"XLSIX\\0" version(u16) file_id(16) covered(u64) count(u64) meta_len(u64)
                 uid_width(u32) meta_crc(u32) dir_bits(u64)
    meta       = msgpack {metas, spans, retired, sealed, max_end, top, blob}  (padded to 8)
    columns    = hashes u8[n] offsets i8[n] nbytes i8[n] stamps i8[n] meta_ids u4[n] crcs u4[n]
                 directory u4[2**dir_bits + 1] (padded to 8)
    uids       = <U{uid_width}[n] (uid_width > 0: short uids without NUL) or
                 uid_offsets u8[n+1] utf-8 blob (uid_width == 0)

The directory makes a lookup O(1) rather than a binary search (whose cache misses cost ~0.6 µs
per uid at a million): ``directory[b]`` is the first position whose hash's top ``dir_bits`` bits
are ``b`` or more, so uid hash ``h`` can only be in ``[directory[b], directory[b + 1])`` for
``b = h >> (64 - dir_bits)``, which holds one entry or less on average.

``covered`` is the index byte position the segment holds every record before (a record boundary):
readers read that pair's index on from there. ``meta_ids`` index the segment's own ``metas``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import typing as tp
import zlib
from pathlib import Path

import msgspec
import numpy as np

from . import encoding as enc
from . import format as sh
from .fs import create_new

SEGMENT_VERSION = 1
MAGIC = b"XLSIX\x00" + SEGMENT_VERSION.to_bytes(2, "little")
HEADER = struct.Struct("<8s16sQQQIIQ")
HEADER_BYTES = HEADER.size  # 64
SUFFIX = ".six"
FIXED_MAX_CHARS = 32
"""Uids up to this many characters (and no NUL) are stored as a fixed-width column: hits are
then checked with one vectorized comparison. Longer ones go to a utf-8 blob, checked one by one."""
MIN_ENTRIES = int(os.environ.get("EXCA_LITE_SEGMENT_MIN", "1024"))
"""A sealed writer pair gets a segment if it holds at least this many entries (compacted pairs
always get one):
below that, decoding its records costs less than mapping one more file."""
PARK_MIN_ENTRIES = int(os.environ.get("EXCA_LITE_SEGMENT_PARK_MIN", str(1 << 17)))
"""A writer parked with at least this many entries not in a segment yet (and as many as the
segment it has holds) writes one: a notebook's writer stays unsealed for hours while other
processes open its cache."""
MAX_ENTRIES = 1 << 23
"""Pairs of more entries are not folded into a segment by their writer (building one holds the
decoded uids in memory)."""
MAX_RUNS = 4096
"""A segment whose decimal uids form at most this many runs of consecutive numbers records them
(``Segment.runs``)."""
DECIMAL_LIMIT = 10**18
"""Runs cover the uids ``str(v)`` of the numbers ``-DECIMAL_LIMIT < v < DECIMAL_LIMIT`` (at most
18 digits: parsed without overflow)."""
_HASH_CHUNK = 1 << 16
_COLUMNS = (("hashes", "<u8"), ("offsets", "<i8"), ("nbytes", "<i8"), ("stamps", "<i8"))
_SMALL_COLUMNS = (("meta_ids", "<u4"), ("crcs", "<u4"))

_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder: msgspec.msgpack.Decoder[tp.Any] = msgspec.msgpack.Decoder()


def _multipliers(count: int) -> np.ndarray:
    """Fixed pseudo-random odd 64-bit multipliers, one per character position (splitmix64)."""
    out = np.empty(count, dtype=np.uint64)
    state = 0x243F6A8885A308D3
    mask = (1 << 64) - 1
    for i in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out[i] = (z ^ (z >> 31)) | 1
    return out


_MULTS = _multipliers(256)
_MULT_INTS = [int(m) for m in _MULTS]


def hash_array(arr: np.ndarray) -> np.ndarray:
    """The 64-bit hashes of a ``<U`` array of uids: a sum of code points times per-position
    multipliers (trailing padding adds nothing, so the width of the batch does not matter),
    mixed. Vectorized: one matrix product per batch."""
    global _MULTS
    n = len(arr)
    width = arr.dtype.itemsize // 4
    if n == 0 or width == 0:
        return np.zeros(n, dtype=np.uint64)
    if width > len(_MULTS):
        _MULTS = _multipliers(max(width, 2 * len(_MULTS)))
    codes = arr.view(np.uint32).reshape(n, width)
    h: np.ndarray = codes.astype(np.uint64) @ _MULTS[:width]
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xD6E8FEB86659FD93)
    h ^= h >> np.uint64(32)
    return h


_MASK = (1 << 64) - 1


def hash_one(uid: str) -> int:
    """``hash_array`` of one uid, in plain Python (a numpy round trip costs more for one)."""
    if len(uid) > len(_MULT_INTS):
        return int(uid_hashes([uid])[0])
    h = sum(map(int.__mul__, map(ord, uid), _MULT_INTS)) & _MASK
    h ^= h >> 31
    h = (h * 0xD6E8FEB86659FD93) & _MASK
    return h ^ (h >> 32)


def uid_array(uids: tp.Sequence[str]) -> np.ndarray:
    arr = np.array(uids, dtype=str) if len(uids) else np.zeros(0, dtype="<U1")
    return arr


def uid_hashes(uids: tp.Sequence[str]) -> np.ndarray:
    """``hash_array`` of a list of uids, in chunks (one long uid widens only its chunk)."""
    out = np.empty(len(uids), dtype=np.uint64)
    for lo in range(0, len(uids), _HASH_CHUNK):
        out[lo : lo + _HASH_CHUNK] = hash_array(uid_array(uids[lo : lo + _HASH_CHUNK]))
    return out


HASH_CHUNK = _HASH_CHUNK


def has_nul(uids: tp.Sequence[str]) -> bool:
    """Whether any uid holds a NUL (numpy's ``<U`` drops trailing ones: compare in Python)."""
    return "\x00" in "".join(uids)


def hash_codes(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """``hash_array`` of uids given as one column of code points (``codes[starts[i]:ends[i]]``
    is uid ``i``, ``codes[ends[i]]`` a 0, ``width`` the longest): one gather per character
    position. A ``(n, width)`` matrix of the code points (what ``hash_array`` takes) costs twice
    as much to build from Python strings, and so does summing per-code products with reduceat."""
    global _MULTS
    if width >= len(_MULTS):
        _MULTS = _multipliers(max(width + 1, 2 * len(_MULTS)))
    h = np.zeros(len(starts), dtype=np.uint64)
    at = starts.copy()
    for j in range(width):  # past its end, a uid reads its terminating 0: it adds nothing
        h += codes.take(at).astype(np.uint64) * _MULTS[j]
        at += 1
        np.minimum(at, ends, out=at)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xD6E8FEB86659FD93)
    h ^= h >> np.uint64(32)
    return h


class DecimalUids(tp.Sequence[str]):
    """The uids ``str(v)`` of int64 numbers, each string made only when asked for: a ``Query`` of
    them is built from the numbers' digits, vectorized (a ``str`` call per number costs ~120 ns,
    more than the whole lookup of its uid)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.values)

    @tp.overload
    def __getitem__(self, index: int) -> str: ...

    @tp.overload
    def __getitem__(self, index: slice) -> DecimalUids: ...

    def __getitem__(self, index: int | slice) -> str | DecimalUids:
        if isinstance(index, slice):
            return DecimalUids(self.values[index])
        return str(int(self.values[index]))

    def __iter__(self) -> tp.Iterator[str]:
        return iter(self.texts())

    def texts(self) -> list[str]:
        """The uids as strings: numpy makes them from the digit matrix ~3x faster than ``str``."""
        matrix = _decimal(self.values, hashed=False)[1]
        return matrix.view(f"<U{matrix.shape[1]}").ravel().tolist() if len(matrix) else []

    def pick(self, positions: tp.Sequence[int]) -> list[str]:
        """The uids at ``positions``, as strings."""
        return DecimalUids(self.values[np.asarray(positions, dtype=np.intp)]).texts()


def pick(uids: tp.Sequence[str], positions: tp.Sequence[int]) -> list[str]:
    """``[uids[i] for i in positions]``, ``DecimalUids`` made into strings at once."""
    if isinstance(uids, DecimalUids):
        return uids.pick(positions)
    return [uids[i] for i in positions]


def decimal_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``hash_codes`` of the uids ``str(v)`` of int64 ``values``, and their matrix of code points
    (a row per uid, left-aligned, 0-padded, as wide as the longest), from the digits: rows of one
    length and sign at a time, so that every digit has a fixed column and multiplier."""
    return _decimal(values, hashed=True)


def _decimal(values: np.ndarray, hashed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``decimal_codes``; ``hashed=False``: the matrix only (the hashes are left unmixed)."""
    n = len(values)
    neg = values < 0
    mag = values.view(np.uint64).copy()
    np.negative(mag, out=mag, where=neg)  # two's complement: -v, also for the most negative
    top = int(mag.max()) if n else 0
    if top < 1 << 32:  # 4-byte digits divide (by a constant: libdivide) 5x faster
        mag = mag.astype(np.uint32)
    key = np.ones(n, dtype=np.uint8)  # digit count, +32 for a minus sign
    power = 10
    while power <= top:
        key += mag >= power
        power *= 10
    key[neg] += 32
    order = None
    if n > 1 and bool((key[1:] < key[:-1]).any()):
        order = np.argsort(key, kind="stable")  # a radix sort for bytes: linear
        key, mag = key[order], mag[order]
    hashes = np.empty(n, dtype=np.uint64)
    counts = np.bincount(key, minlength=64)
    classes = np.flatnonzero(counts).tolist()
    width = max((c // 32 + c % 32 for c in classes), default=0)
    matrix = np.zeros((n, width), dtype=np.uint32)
    lo = 0
    for cls in classes:
        hi = lo + int(counts[cls])
        sign, digits = cls >= 32, cls % 32
        mults = [int(m) for m in _MULTS[: sign + digits]]
        # every digit adds (48 + d) * mult: the 48s are one constant per class
        start = (45 * mults[0] if sign else 0) + 48 * sum(mults[sign:])
        h = hashes[lo:hi]
        h[:] = start & _MASK
        rows = matrix[lo:hi]
        if sign:
            rows[:, 0] = 45
        m = mag[lo:hi]
        for k in range(digits):  # the k-th digit from the right
            q = m // 10
            d = m - q * 10
            col = sign + digits - 1 - k
            rows[:, col] = d + 48
            if hashed:
                h += d * np.uint64(mults[col])
            m = q
        lo = hi
    if hashed:
        hashes ^= hashes >> np.uint64(31)
        hashes *= np.uint64(0xD6E8FEB86659FD93)
        hashes ^= hashes >> np.uint64(32)
    if order is not None:
        hashes[order], matrix[order] = hashes.copy(), matrix.copy()
    return hashes, matrix


class Query:
    """Uids to look up, hashed once for every segment. Without a NUL in any uid, they are also
    a matrix of code points (a row per uid, 0-padded, as many columns as the widest fixed-width
    segment can need), so hits are checked against the stored uids with integer comparisons;
    else one by one."""

    __slots__ = ("hashes", "matrix", "uids")

    def __init__(self, uids: tp.Sequence[str]) -> None:
        self.uids = uids
        self.matrix: np.ndarray | None = None
        n = len(uids)
        if n == 0:
            self.hashes = np.zeros(0, dtype=np.uint64)
            return
        if isinstance(uids, DecimalUids):  # at most 20 characters: no NUL, never too wide
            self.hashes, self.matrix = decimal_codes(uids.values)
            return
        # a join and one encode run in C: ~8x cheaper than numpy building a <U array of the uids
        joined = "\x00".join([*uids, ""]).encode("utf-32-le", "surrogatepass")
        codes = np.frombuffer(joined, dtype="<u4")
        ends = np.flatnonzero(codes == 0)
        if len(ends) != n:  # some uid holds a NUL: its end is not the first 0 after its start
            self.hashes = uid_hashes(uids)
            return
        starts = np.empty(n, dtype=np.intp)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        width = int((ends - starts).max())
        self.hashes = hash_codes(codes, starts, ends, width)
        # a fixed-width column is FIXED_MAX_CHARS wide at most: one more column tells a longer
        # query from the stored uid it starts with
        self.matrix = matrix = np.zeros((n, min(width, FIXED_MAX_CHARS + 1)), dtype=np.uint32)
        at = starts
        for j in range(matrix.shape[1]):
            matrix[:, j] = codes.take(at)
            at = np.minimum(at + 1, ends)  # past its end a uid reads its 0: padding

    def __len__(self) -> int:
        return len(self.uids)

    def same_as(self, fixed: np.ndarray, pos: np.ndarray, query: np.ndarray | None) -> np.ndarray:
        """Whether the stored uids ``fixed[pos]`` (a ``<U`` column without NULs) are the uids of
        queries ``query`` (None: every query, in order); requires ``self.matrix``."""
        width = fixed.itemsize // 4
        # rows as one opaque item each: np.take gathers them 3x faster than 2-d indexing
        stored = fixed.view(f"V{fixed.itemsize}").take(pos).view(np.uint32)
        stored = stored.reshape(len(pos), width)
        theirs = tp.cast(np.ndarray, self.matrix)
        if query is not None:
            theirs = _take_rows(theirs, query)
        common = min(width, theirs.shape[1])
        same = np.ones(len(pos), dtype=bool) if not common else stored[:, 0] == theirs[:, 0]
        for j in range(1, common):  # column by column: all(axis=1) costs 3x more
            same &= stored[:, j] == theirs[:, j]
        for j in range(common, width):  # the stored uid goes on: the query must not
            same &= stored[:, j] == 0
        if theirs.shape[1] > width:  # the query goes on: the stored uid must not
            same &= theirs[:, width] == 0
        return same


def _take_rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix[rows]`` of a 2-d array, gathered as one opaque item per row (3x faster)."""
    if not matrix.shape[1]:
        return matrix[: len(rows)]
    flat = matrix.view(f"V{matrix.itemsize * matrix.shape[1]}").ravel()
    return flat.take(rows).view(matrix.dtype).reshape(len(rows), matrix.shape[1])


def _align8(size: int) -> int:
    return (size + 7) // 8 * 8


# --------------------------------------------------------------------------- reading


class Segment:
    """A mapped segment (read-only views; the pages are the shared page cache)."""

    __slots__ = (
        "count",
        "covered",
        "crcs",
        "directory",
        "file_id",
        "fixed",
        "hashes",
        "max_end",
        "meta_ids",
        "meta_map",
        "metas",
        "mm",
        "nbytes",
        "number",
        "offsets",
        "path",
        "rank",
        "retired",
        "runs",
        "sealed",
        "shift",
        "spans",
        "stamps",
        "top",
        "uid_blob",
        "uid_offsets",
    )

    count: int
    covered: int
    directory: np.ndarray
    shift: np.uint64
    crcs: np.ndarray
    file_id: bytes
    hashes: np.ndarray
    max_end: int
    meta_ids: np.ndarray
    metas: list[list[tp.Any]]
    mm: tp.Any
    nbytes: np.ndarray
    offsets: np.ndarray
    path: Path
    retired: list[tuple[str, int]]
    sealed: bool
    spans: list[tuple[int, int, int]]
    stamps: np.ndarray
    top: int

    def __init__(self) -> None:
        self.number = -1  # the pair number in the reader's view
        self.rank = 0  # order of its pair name among the view's segments (ties of stamps)
        self.meta_map = np.zeros(1, dtype=np.int64)  # segment meta id -> store meta id
        self.fixed: np.ndarray | None = None
        self.uid_offsets: np.ndarray | None = None
        self.uid_blob: memoryview | None = None
        self.runs: np.ndarray | None = None

    @classmethod
    def open(cls, path: Path, file_id: bytes, index_size: int) -> Segment | None:
        """The segment at ``path`` if it is one of the pair of index ``file_id`` (``index_size``
        bytes now), complete and consistent; None otherwise (missing, short, another pair's,
        another version, damaged meta): the caller then reads the pair's index records."""
        import mmap

        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                return None
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        try:
            # None if anything does not match (the map goes with the arrays made of it)
            return cls._parse(mm, path, file_id, index_size)
        except (ValueError, TypeError, KeyError, IndexError, msgspec.DecodeError):
            return None

    @classmethod
    def _parse(cls, mm: tp.Any, path: Path, file_id: bytes, index_size: int) -> Segment | None:
        magic, fid, covered, count, meta_len, width, meta_crc, bits = HEADER.unpack_from(mm, 0)
        if magic != MAGIC or fid != file_id or covered > index_size or bits > 40:
            return None
        meta_end = HEADER_BYTES + meta_len
        if meta_end > len(mm):
            return None
        raw = mm[HEADER_BYTES:meta_end]
        if zlib.crc32(raw) != meta_crc:
            return None
        meta = _meta_decoder.decode(raw)
        at = _align8(meta_end)
        seg = cls()
        seg.mm, seg.path, seg.file_id = mm, path, fid
        seg.covered, seg.count = int(covered), int(count)
        n = seg.count
        for name, dtype in _COLUMNS + _SMALL_COLUMNS:
            nbytes = n * np.dtype(dtype).itemsize
            if at + nbytes > len(mm):
                return None
            setattr(seg, name, np.frombuffer(mm, dtype=dtype, count=n, offset=at))
            at += nbytes
        if at + 4 * ((1 << bits) + 1) > len(mm):
            return None
        seg.directory = np.frombuffer(mm, dtype="<u4", count=(1 << bits) + 1, offset=at)
        seg.shift = np.uint64(64 - bits)
        at = _align8(at + 4 * ((1 << bits) + 1))
        if width:
            need = n * 4 * width
            if at + need != len(mm):
                return None
            seg.fixed = np.frombuffer(mm, dtype=f"<U{width}", count=n, offset=at)
        else:
            blob = int(meta["blob"])
            if at + 8 * (n + 1) + blob != len(mm):
                return None
            seg.uid_offsets = np.frombuffer(mm, dtype="<u8", count=n + 1, offset=at)
            seg.uid_blob = memoryview(mm)[at + 8 * (n + 1) : at + 8 * (n + 1) + blob]
        seg.metas = [list(m) for m in meta["metas"]]
        seg.spans = [(int(a), int(b), int(c)) for a, b, c in meta["spans"]]
        seg.retired = [(str(s), int(p)) for s, p in meta["retired"]]
        seg.sealed = bool(meta["sealed"])
        seg.max_end = int(meta["max_end"])
        seg.top = int(meta["top"])
        runs = meta.get("runs")  # absent from segments of exca_lite before 0.x: None
        if isinstance(runs, bytes) and len(runs) % 16 == 0:
            seg.runs = np.frombuffer(runs, dtype="<i8").reshape(-1, 2)
        return seg

    def uid_at(self, i: int) -> str:
        if self.fixed is not None:
            return str(self.fixed[i])
        offs = tp.cast(np.ndarray, self.uid_offsets)
        blob = tp.cast(memoryview, self.uid_blob)
        return bytes(blob[int(offs[i]) : int(offs[i + 1])]).decode("utf-8", "surrogatepass")

    def uids_at(self, positions: np.ndarray) -> list[str]:
        if self.fixed is not None:
            return tp.cast(list[str], self.fixed[positions].tolist())
        return [self.uid_at(i) for i in positions.tolist()]

    def all_uids(self) -> list[str]:
        if self.fixed is not None:
            return tp.cast(list[str], self.fixed.tolist())
        return self.uids_at(np.arange(self.count))

    def find(self, q: Query) -> np.ndarray:
        """The position of each uid of ``q`` in this segment, -1 where absent.

        Hashes first: each query moves along its bucket (sorted by hash) to the first entry whose
        hash is not smaller, the queries still behind one more step per round (a bucket holds one
        entry or less on average). Then the stored uids of the equal hashes are checked in one
        pass; a mismatch (a hash collision) goes on to the next entries of the same hash."""
        hashes = q.hashes
        n = len(hashes)
        out = np.full(n, -1, dtype=np.int64)
        if self.count == 0 or n == 0:
            return out
        table = self.hashes
        bucket = (hashes >> self.shift).astype(np.intp)
        pos = self.directory.take(bucket).astype(np.intp)  # take: faster than indexing
        bucket += 1
        end = self.directory.take(bucket).astype(np.intp)
        # clip: an empty bucket at the very end starts past the table (masked by pos < end)
        found = table.take(pos, mode="clip")
        behind = np.flatnonzero((found < hashes) & (pos < end))
        if len(behind):
            while len(behind):
                pos[behind] += 1
                at = pos.take(behind)
                ahead = (table.take(at, mode="clip") < hashes.take(behind)) & (
                    at < end.take(behind)
                )
                behind = behind[ahead]
            found = table.take(pos, mode="clip")
        equal = (found == hashes) & (pos < end)
        same_uids = self._uid_checker(q)
        if equal.all():  # every query, in order: no gather of their rows
            match = same_uids(pos, None)
            if match.all():
                out[:] = pos
                return out
            cand = np.arange(n)
        else:
            cand = np.flatnonzero(equal)
            match = same_uids(pos.take(cand), cand) if len(cand) else equal[:0]
        while len(cand):
            hit = cand[match]
            out[hit] = pos.take(hit)
            cand = cand[~match]  # another uid of the same hash: the next entries of that hash
            if not len(cand):
                break
            pos[cand] += 1
            at = pos.take(cand)
            more = (at < end.take(cand)) & (table.take(at, mode="clip") == hashes.take(cand))
            cand = cand[more]
            if len(cand):
                match = same_uids(pos.take(cand), cand)
        return out

    def _uid_checker(self, q: Query) -> tp.Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
        """A function telling, for segment positions and query numbers (None: every query, in
        order), whether the stored uid is the query's: code points compared as integer columns
        when both are fixed-width (a string comparison costs 5x more), else one by one."""
        fixed = self.fixed
        if q.matrix is None or fixed is None:
            uids = q.uids

            def one_by_one(pos: np.ndarray, query: np.ndarray | None) -> np.ndarray:
                numbers = range(len(pos)) if query is None else query.tolist()
                pairs = zip(pos.tolist(), numbers, strict=True)
                return np.array([self.uid_at(p) == uids[q] for p, q in pairs], dtype=bool)

            return one_by_one
        return lambda pos, query: q.same_as(fixed, pos, query)

    def find_one(self, uid: str, h: int) -> int:
        """The position of ``uid`` (whose hash is ``h``), -1 if absent."""
        if not self.count:
            return -1
        bucket = h >> int(self.shift)
        at, end = int(self.directory[bucket]), int(self.directory[bucket + 1])
        hashes = self.hashes
        while at < end:
            found = int(hashes[at])
            if found > h:
                break
            if found == h and self.uid_at(at) == uid:
                return at
            at += 1
        return -1

    def holds_numbers(self, values: np.ndarray) -> np.ndarray | None:
        """Whether this segment holds the uid ``str(v)`` of each int64 value, from its ``runs``
        alone (no hash, no uid read: the runs were parsed from the stored uids themselves);
        None without runs. Exact for ``|v| < DECIMAL_LIMIT``, False beyond (ask ``find``)."""
        runs = self.runs
        if runs is None:
            return None
        if not len(runs):
            return np.zeros(len(values), dtype=bool)
        at = np.searchsorted(runs[:, 0], values, side="right") - 1
        return (at >= 0) & (values <= runs[:, 1].take(np.maximum(at, 0)))

    def lookup(self, uids: tp.Sequence[str]) -> np.ndarray:
        """``find`` for any number of uids (hashed in chunks)."""
        out = np.empty(len(uids), dtype=np.int64)
        for lo in range(0, len(uids), _HASH_CHUNK):
            chunk = uids[lo : lo + _HASH_CHUNK]
            out[lo : lo + len(chunk)] = self.find(Query(chunk))
        return out


# --------------------------------------------------------------------------- building


class Entries(tp.NamedTuple):
    """The newest entry per uid of a pair (columns in any order), and what the pair says."""

    uids: list[str]
    offsets: np.ndarray
    nbytes: np.ndarray
    stamps: np.ndarray
    meta_ids: np.ndarray
    crcs: np.ndarray
    metas: list[list[tp.Any]]
    spans: list[list[int]]
    retired: list[list[tp.Any]]
    sealed: bool


def _meta_key(meta: tp.Any) -> tuple[int, str | None, tuple[int, ...]]:
    fmt, descr, shape = meta
    return int(fmt), None if descr is None else str(descr), tuple(int(s) for s in shape or ())


def _meta_nbytes(key: tuple[int, str | None, tuple[int, ...]]) -> int:
    if key[0] == enc.ARRAY and key[1] is not None:
        return int(np.prod(key[2], dtype=np.int64)) * enc.dtype_from_descr(key[1]).itemsize
    return -1


def read_pair(index_path: Path, end: int, shard_size: int) -> Entries | None:
    """The entries of the index records before ``end`` (a record boundary), newest per uid, with
    the checks readers make at ingest; None if those bytes are not exactly whole valid records."""
    with open(index_path, "rb") as f:
        data = sh.pread_all(f.fileno(), end, 0)
    if len(data) != end or sh.parse_header(data, sh.INDEX_MAGIC) is None:
        return None
    scan = sh.scan_records(memoryview(data)[sh.INDEX_HEADER_BYTES :], sh.INDEX_HEADER_BYTES)
    if scan.damage or scan.end != end:
        return None
    uids: list[str] = []
    cols: list[list[np.ndarray]] = [[], [], [], [], []]  # offsets, nbytes, stamps, metas, crcs
    metas: list[list[tp.Any]] = []
    meta_ids: dict[tuple[int, str | None, tuple[int, ...]], int] = {}
    spans: list[list[int]] = []
    retired: list[list[tp.Any]] = []
    sealed = False
    for _, payload in scan.records:
        obj = sh.decode_payload(payload)
        if obj[0] == sh.RECORD_RETIRE:
            retired.extend([str(s), int(p)] for s, p in obj[1])
            continue
        if obj[0] == sh.RECORD_SEAL:
            sealed = True
            continue
        _, ruids, offs_b, nbytes_b, crcs_b, mix_b, rmetas, rspans = obj[:8]
        stamp = obj[8] if len(obj) > 8 else 0
        n = len(ruids)
        offsets = np.frombuffer(offs_b, dtype="<i8")
        nbytes = np.frombuffer(nbytes_b, dtype="<i8")
        crcs = np.frombuffer(crcs_b, dtype="<u4")
        mix = np.frombuffer(mix_b, dtype="<u4")
        if not (len(offsets) == len(nbytes) == len(crcs) == len(mix) == n):
            return None
        if type(stamp) is int:
            stamps = np.full(n, stamp, dtype=np.int64)
        elif type(stamp) is bytes:
            stamps = np.frombuffer(stamp, dtype="<i8")
        else:
            return None
        if len(stamps) != n:
            return None
        local = []
        for meta in rmetas:
            key = _meta_key(meta)
            found = meta_ids.get(key)
            if found is None:
                found = meta_ids[key] = len(metas)
                metas.append([key[0], key[1], list(key[2])])
            local.append(found)
        if n and int(mix.max()) >= len(local):
            return None
        uids.extend(ruids)
        cols[0].append(offsets)
        cols[1].append(nbytes)
        cols[2].append(stamps)
        cols[3].append(np.array(local or [0], dtype=np.int64)[mix])
        cols[4].append(crcs)
        spans.extend([int(a), int(b), int(c)] for a, b, c in rspans or ())
    if not uids:
        empty = np.zeros(0, dtype=np.int64)
        return Entries([], empty, empty, empty, empty, empty, metas, spans, retired, sealed)
    offsets, nbytes, stamps, mids, crcs = (np.concatenate(c) for c in cols)
    # newest per uid: the greatest stamp, then the later in the file (as readers order them)
    order = None
    if len(stamps) > 1 and bool((np.diff(stamps) < 0).any()):
        order = np.lexsort((np.arange(len(stamps)), stamps))
        last = dict(zip([uids[i] for i in order.tolist()], order.tolist(), strict=True))
    else:
        last = dict(zip(uids, range(len(uids)), strict=True))
    keep = np.fromiter(last.values(), dtype=np.int64, count=len(last))
    kept_uids = list(last)
    offsets, nbytes, stamps, mids, crcs = (c[keep] for c in (offsets, nbytes, stamps, mids, crcs))
    expected = np.array([_meta_nbytes(_meta_key(m)) for m in metas] or [0], dtype=np.int64)
    ok = (
        (offsets >= sh.SHARD_HEADER_BYTES)
        & (offsets % sh.ALIGN == 0)
        & (nbytes >= 0)
        & (nbytes <= shard_size)
        & (offsets <= shard_size - nbytes)
        & ((expected[mids] < 0) | (expected[mids] == nbytes))
    )
    if not ok.all():
        good = np.flatnonzero(ok)
        kept_uids = [kept_uids[i] for i in good.tolist()]
        offsets, nbytes, stamps, mids, crcs = (
            c[good] for c in (offsets, nbytes, stamps, mids, crcs)
        )
    return Entries(kept_uids, offsets, nbytes, stamps, mids, crcs, metas, spans, retired, sealed)


def decimal_values(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a code point matrix (a uid per row, without NUL, 0-padded) are the text
    ``str(v)`` of a number ``|v| < DECIMAL_LIMIT`` (canonical: 1 to 18 digits, no leading 0 but
    "0" itself, no "+", no "-0"), and those numbers (meaningless where not)."""
    n, width = matrix.shape
    if n == 0 or width == 0:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    minus = matrix[:, 0] == 45
    length = (matrix != 0).sum(axis=1)  # uids hold no NUL: their padding is 0s at the end
    digits = length - minus
    lead = _take_cols(matrix, np.minimum(minus, width - 1))  # the first digit
    valid = (digits >= 1) & (digits <= 18) & ((lead != 48) | ((digits == 1) & ~minus))
    value = np.zeros(n, dtype=np.int64)
    for j in range(min(width, 19)):
        c = matrix[:, j].astype(np.int64) - 48
        is_digit = (c >= 0) & (c <= 9)
        inside = j < length
        valid &= ~inside | is_digit | ((j == 0) & minus)
        np.copyto(value, value * 10 + c, where=is_digit & inside)
    return valid, np.where(minus, -value, value)


def decimal_runs(column: np.ndarray) -> np.ndarray | None:
    """The runs ``[first, last]`` (int64 rows, sorted, disjoint) of the numbers ``v`` whose uid
    ``str(v)`` is in ``column`` (a ``<U`` array of distinct uids without NUL), for
    ``|v| < DECIMAL_LIMIT``; None if there are more than ``MAX_RUNS``.

    A membership test of int items named by ``str`` (the usual dataset indexes) then costs a
    ``searchsorted`` over the runs instead of hashing each number's digits and checking the
    stored uid of each hit: a fill of ``range(n)`` leaves one run."""
    n = len(column)
    width = column.dtype.itemsize // 4
    valid, numbers = decimal_values(column.view(np.uint32).reshape(n, width))
    values = np.sort(numbers[valid])
    if not len(values):
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(values) != 1)
    if len(breaks) >= MAX_RUNS:
        return None
    runs = np.empty((len(breaks) + 1, 2), dtype=np.int64)
    runs[0, 0], runs[-1, 1] = values[0], values[-1]
    runs[1:, 0] = values[breaks + 1]
    runs[:-1, 1] = values[breaks]
    return runs


def _take_cols(matrix: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[i, cols[i]]`` for each row ``i``."""
    flat: np.ndarray = matrix.reshape(-1)
    return tp.cast(np.ndarray, flat.take(np.arange(len(matrix)) * matrix.shape[1] + cols))


def encode(entries: Entries, file_id: bytes, covered: int, max_end: int) -> bytes:
    """The bytes of a segment holding ``entries`` (one per uid)."""
    uids = entries.uids
    n = len(uids)
    hashes = uid_hashes(uids)
    order = np.argsort(hashes, kind="stable")
    width = max(map(len, uids), default=0)
    fixed = 0 < width <= FIXED_MAX_CHARS and not has_nul(uids)
    uid_part: list[bytes] = []
    blob_len = 0
    sorted_uids = [uids[i] for i in order.tolist()]
    runs: np.ndarray | None = None
    if fixed:
        column = np.array(sorted_uids, dtype=f"<U{width}")
        runs = decimal_runs(column)
        uid_part.append(column.tobytes())
    else:
        width = 0
        encoded = [u.encode("utf-8", "surrogatepass") for u in sorted_uids]
        offs = np.zeros(n + 1, dtype="<u8")
        if n:
            np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offs[1:])
        blob = b"".join(encoded)
        blob_len = len(blob)
        uid_part += [offs.tobytes(), blob]
    meta = _meta_encoder.encode(
        {
            "metas": entries.metas,
            "spans": entries.spans,
            "retired": entries.retired,
            "sealed": entries.sealed,
            "max_end": max_end,
            "top": int(entries.stamps.max()) if n else 0,
            "blob": blob_len,
            "runs": None if runs is None else runs.astype("<i8").tobytes(),
        }
    )
    hashes = hashes[order]
    bits = n.bit_length()  # 2**bits buckets: at most one entry each on average
    directory = np.zeros((1 << bits) + 1, dtype="<u4")
    directory[-1] = n
    if bits:
        starts = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
        directory[:-1] = np.searchsorted(hashes, starts)
    parts = [
        HEADER.pack(MAGIC, file_id, covered, n, len(meta), width, zlib.crc32(meta), bits),
        meta,
        bytes(-len(meta) % 8),
        hashes.astype("<u8").tobytes(),
        entries.offsets[order].astype("<i8").tobytes(),
        entries.nbytes[order].astype("<i8").tobytes(),
        entries.stamps[order].astype("<i8").tobytes(),
        entries.meta_ids[order].astype("<u4").tobytes(),
        entries.crcs[order].astype("<u4").tobytes(),
        directory.tobytes(),
    ]
    parts.append(bytes(-sum(map(len, parts)) % 8))
    return b"".join(parts + uid_part)


def write(path: Path, content: bytes, *, fsync: bool) -> bool:
    """Create the segment file (never replacing one); whether it was created."""
    try:
        create_new(path, content, fsync=fsync)
    except OSError:
        return False  # a segment only saves work: its pair stays readable without it
    return True


def build_for_pair(
    paths: sh.StorePaths, stem: str, file_id: bytes, end: int, *, fsync: bool, replace: bool
) -> bool:
    """Build the segment of this process's own pair ``stem`` covering its index up to ``end``.

    ``replace``: remove a segment of the pair that exists (this process wrote it, covering less).
    Never raises: a pair without a segment is read the old way."""
    try:
        shard_size = os.stat(paths.shard(stem)).st_size
        entries = read_pair(paths.index(stem), end, shard_size)
        if entries is None or len(entries.uids) < MIN_ENTRIES:
            return False
        max_end = sh.referenced_end(entries.offsets, entries.nbytes, entries.spans)
        content = encode(entries, file_id, end, max_end)
        path = paths.segment(stem)
        if replace:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return write(path, content, fsync=fsync)
    except (OSError, ValueError, TypeError, IndexError, KeyError, MemoryError):
        return False
    except msgspec.DecodeError:
        return False


__all__ = [
    "MAGIC",
    "DecimalUids",
    "MIN_ENTRIES",
    "PARK_MIN_ENTRIES",
    "SUFFIX",
    "Entries",
    "Segment",
    "build_for_pair",
    "decimal_codes",
    "decimal_runs",
    "decimal_values",
    "encode",
    "Query",
    "has_nul",
    "hash_array",
    "hash_codes",
    "pick",
    "read_pair",
    "uid_array",
    "uid_hashes",
]
