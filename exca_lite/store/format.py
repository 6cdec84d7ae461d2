"""Append-only shard and index files: bytes, offsets and framing, not items.

The map store keeps item bytes in *shard* files (``.bin``) and publishes them through *index* files
(``.idx``). This module owns everything about those two file formats, and the names of every file
the store puts in its folder, so that ``mapstore`` can think in items only.

Why framed records rather than one line per item: an index record carries a whole flush (often a
thousand items), so opening a store of a million items decodes about a thousand records; and
each record checks itself (magic, length, crc32 of the payload), so a reader can tell a torn tail
(a writer is appending, or died mid-append: stop before it) from damage in the
middle (skip it, warn once, resynchronise on the next magic).

File formats (little endian)::

    index  = header(32) record*
    header = b"XLIDX\\0" version(u16) file_id(16) reserved(8)
    record = b"XLR1" payload_len(u32) crc32(payload)(u32) payload
    shard  = header(64) item bytes at 64-aligned offsets (garbage between items is dead bytes)
    header = b"XLSHD\\0" version(u16) file_id(16) zeros(40)

The shard and the index of one pair share a random ``file_id``: a reader that maps a shard checks it,
so a pair deleted and re-created under the same name is never mixed with the old one.

No file is ever written by two processes: a writer's pair is named ``w-{token}`` with a fresh random
token and created with ``os.link`` (which never replaces an existing file), a compaction's pair
``c-{generation}-{token}`` likewise. Safety therefore never rests on file locks, which cluster
filesystems often do not carry across hosts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import typing as tp
import uuid
import zlib
from pathlib import Path

import msgspec

ALIGN = 64
"""Item offsets in a shard are multiples of this: arrays are aligned for any dtype and SIMD."""
PAGE = 4096
"""Large items (written straight from their memory) start at multiples of this."""

FORMAT_VERSION = 3
"""Bytes 6-7 of both headers. 3: one pair per writer, never shared (2: writer slots shared through
locks; 1: crc32 span checksums)."""
INDEX_MAGIC = b"XLIDX\x00" + FORMAT_VERSION.to_bytes(2, "little")
SHARD_MAGIC = b"XLSHD\x00" + FORMAT_VERSION.to_bytes(2, "little")
RECORD_MAGIC = b"XLR1"
INDEX_HEADER_BYTES = 32
SHARD_HEADER_BYTES = 64
RECORD_HEADER = struct.Struct("<4sII")
MAX_RECORD_BYTES = 1 << 31
"""A length field above this is damage, not a record (flushes are capped far below)."""

Durability = tp.Literal["flush", "fsync"]
"""``"flush"``: data, then index, handed to the OS in order (survives a killed process);
``"fsync"``: each fsynced before the next step (survives power loss)."""

RECORD_ENTRIES = 0
"""Payload ``[0, uids, offsets, nbytes, crc32s, meta indexes, metas, spans, stamp]``: published
items (the stamp orders copies of one item: an int, or one per entry in a compacted pair)."""
RECORD_RETIRE = 1
"""Payload ``[1, [[pair name, index bytes folded], ...]]``: first record of a compacted index, the
pairs it holds the entries of, each up to where it read that pair's index (a reader reads a
retired writer pair only past that point, should it still exist and have grown)."""
RECORD_SEAL = 2
"""Payload ``[2]``: the writer closed its pair; nothing is ever appended after it."""
ZEROS = bytes(ALIGN)
"""Padding up to the next aligned offset."""

_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoder: msgspec.msgpack.Decoder[tp.Any] = msgspec.msgpack.Decoder()


def encode_payload(obj: list[tp.Any]) -> bytes:
    return _payload_encoder.encode(obj)


def decode_payload(payload: memoryview | bytes) -> tp.Any:
    """The decoded payload of a record (msgspec.DecodeError if it is not msgpack)."""
    return _payload_decoder.decode(payload)


_DATA_NAME = re.compile(r"^(?:w-([0-9a-f]{16,})|c-(\d{6,})-([0-9a-f]{16,}))$")
_LEGACY_NAME = re.compile(r"^(?:w\d{3,}|c)-g\d{6,}$")
"""Pair names of format 2 (writer slots): listed so that readers say why they skip them."""


def align_up(size: int) -> int:
    """The first 64-aligned offset at or after ``size``."""
    return (size + ALIGN - 1) // ALIGN * ALIGN


@dataclasses.dataclass(frozen=True)
class DataName:
    """A shard/index pair name: ``w-{token}`` (one writer's), ``c-{gen}-{token}`` (a compaction's),
    or a name of an older format (``legacy``: read only to say it is skipped)."""

    stem: str
    kind: tp.Literal["w", "c", "legacy"]
    gen: int

    @property
    def is_writer(self) -> bool:
        return self.kind == "w"

    @property
    def is_compacted(self) -> bool:
        return self.kind == "c"

    @classmethod
    def parse(cls, stem: str) -> DataName | None:
        """The pair name of a file stem, or None if the stem is not one of the store's pairs."""
        match = _DATA_NAME.match(stem)
        if match is not None:
            if match.group(1) is not None:
                return cls(stem=stem, kind="w", gen=0)
            return cls(stem=stem, kind="c", gen=int(match.group(2)))
        if _LEGACY_NAME.match(stem):
            return cls(stem=stem, kind="legacy", gen=0)
        return None

    @classmethod
    def writer(cls) -> DataName:
        return cls(stem=f"w-{new_token()}", kind="w", gen=0)

    @classmethod
    def compacted(cls, gen: int) -> DataName:
        return cls(stem=f"c-{gen:06d}-{new_token()}", kind="c", gen=gen)


def new_token() -> str:
    """A name part no other process will ever pick (128 random bits)."""
    return uuid.uuid4().hex


VIEWS_DIR = "views"


class StorePaths:
    """Every path inside a store folder, in one place (nothing else builds store file names)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.real: str | None = None  # its realpath, once asked for (storelocks)
        self.locks = self.folder / "locks"
        self.claims = self.folder / "claims"
        # uid lists of views (mapping/view.py): derived from the items, cleared with them
        self.views = self.folder / VIEWS_DIR
        self.compact_lock = self.locks / "compact.lock"
        self.claims_lock = self.claims / "claims.lock"
        # paths are asked for on every call of a map (a pathlib join costs microseconds): built
        # once per name
        self._index: dict[str, Path] = {}
        self._shard: dict[str, Path] = {}

    def index(self, stem: str) -> Path:
        return self._named(self._index, stem, ".idx")

    def shard(self, stem: str) -> Path:
        return self._named(self._shard, stem, ".bin")

    def segment(self, stem: str) -> Path:
        """The pair's segment (``segment.py``): its index folded into mapped sorted columns."""
        return self.folder / f"{stem}.six"

    def _named(self, cache: dict[str, Path], stem: str, suffix: str) -> Path:
        """``folder/{stem}{suffix}``, built once (paths are asked for on every read)."""
        path = cache.get(stem)
        if path is None:
            if len(cache) > 1000:  # names of retired generations, in a long-lived process
                cache.clear()
            path = cache[stem] = self.folder / f"{stem}{suffix}"
        return path

    def owner_lock(self, token: str) -> Path:
        return self.claims / f"{token}.owner"

    def owner_lock_new(self, token: str) -> Path:
        """Where an owner file is created and locked before it is renamed to ``owner_lock``."""
        return self.claims / f"{token}.owner-new"

    def list_pairs(self) -> list[DataName] | None:
        """The pairs whose index file exists, sorted (compacted first); None if no folder."""
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return pairs_from_listing(names)


def pairs_from_listing(names: list[str]) -> list[DataName]:
    """Pair names of the ``.idx`` files in a folder listing, compacted pairs first."""
    pairs = []
    for name in names:
        if name.endswith(".idx"):
            pair = DataName.parse(name[:-4])
            if pair is not None:
                pairs.append(pair)
    pairs.sort(key=lambda p: (p.kind != "c", p.stem))
    return pairs


def new_file_id() -> bytes:
    return uuid.uuid4().bytes


def index_header(file_id: bytes) -> bytes:
    return INDEX_MAGIC + file_id + bytes(INDEX_HEADER_BYTES - len(INDEX_MAGIC) - len(file_id))


def shard_header(file_id: bytes) -> bytes:
    return SHARD_MAGIC + file_id + bytes(SHARD_HEADER_BYTES - len(SHARD_MAGIC) - len(file_id))


def parse_header(data: bytes | memoryview, magic: bytes) -> bytes | None:
    """The file id in an index or shard header, or None if the header is not one."""
    if len(data) < len(magic) + 16 or data[: len(magic)] != magic:
        return None
    return bytes(data[len(magic) : len(magic) + 16])


def header_version(data: bytes | memoryview, magic: bytes) -> int | None:
    """The format version of a header of this kind (any version), None if it is not one."""
    if len(data) >= len(magic) and data[:6] == magic[:6]:
        return int.from_bytes(data[6:8], "little")
    return None


def header_problem(data: bytes | memoryview, magic: bytes) -> str:
    """Why ``data`` does not start with a header of this format: another version, or damage."""
    found = header_version(data, magic)
    if found is not None and found > FORMAT_VERSION:
        return (
            f"written in cache format {found} by a newer exca_lite (this one reads format "
            f"{FORMAT_VERSION}): skipped, never modified or removed"
        )
    if found is not None and found != FORMAT_VERSION:
        return (
            f"written in cache format {found} by an older exca_lite (this one reads format "
            f"{FORMAT_VERSION}): its items are recomputed; `exca-lite clear` removes these files"
        )
    return "bad header"


def is_newer_format(data: bytes | memoryview, magic: bytes) -> bool:
    found = header_version(data, magic)
    return found is not None and found > FORMAT_VERSION


def read_header(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of ``path`` (fewer if it is shorter), None if there is no file:
    give them to ``parse_header``, and to ``header_problem`` to say why they are not a header."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except FileNotFoundError:
        return None


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until everything is written (a write may be short, e.g. above 2 GiB)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``os.pwrite`` until everything is written at ``offset``."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` until ``size`` bytes are read at ``offset`` (one call reads at most ~2 GiB)."""
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        part = os.pread(fd, size - got, offset + got)
        if not part:
            break  # the file is shorter than its size said: read what is there
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def frame(payload: bytes) -> bytes:
    """One self-checking index record around ``payload``."""
    return RECORD_HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclasses.dataclass
class Scan:
    """What ``scan_records`` found in a chunk of index bytes.

    ``records`` are (file offset, payload) of valid records; ``end`` is the file offset just past
    the last byte that is settled (valid records and skipped damage), where the next read starts
    ``damage`` lists (file offset, reason) of skipped bytes.
    """

    records: list[tuple[int, memoryview]]
    end: int
    damage: list[tuple[int, str]]


def _record_at(data: memoryview, at: int) -> tuple[int, str]:
    """Check the record at ``at``: (its total length, "") or (0, why it is not one).

    ``"short"`` means the bytes end before the record does: a tail still being written, or torn.
    """
    if len(data) - at < RECORD_HEADER.size:
        return 0, "short"
    magic, length, crc = RECORD_HEADER.unpack_from(data, at)
    if magic != RECORD_MAGIC:
        return 0, "bad magic"
    if length > MAX_RECORD_BYTES:
        return 0, "bad length"
    stop = at + RECORD_HEADER.size + length
    if stop > len(data):
        return 0, "short"
    if zlib.crc32(data[at + RECORD_HEADER.size : stop]) != crc:
        return 0, "bad checksum"
    return stop - at, ""


def record_length(data: memoryview) -> int:
    """The whole length of the record whose header starts ``data`` (0 if it is not a header)."""
    if len(data) < RECORD_HEADER.size:
        return 0
    magic, length, _ = RECORD_HEADER.unpack_from(data, 0)
    if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES:
        return 0
    return int(RECORD_HEADER.size + length)


def scan_records(data: bytes | memoryview, base: int) -> Scan:
    """Split index bytes (starting at file offset ``base``) into valid records.

    Bad bytes followed by a valid record are damage: skipped up to that record (a tail still being
    written never has a valid record after it, so this cannot skip a record in progress). Bad bytes
    with nothing valid after them stop the scan: they are a tail being written, or torn by a crash,
    and must not be skipped (the next read retries them).
    """
    view = memoryview(data).cast("B")
    records: list[tuple[int, memoryview]] = []
    damage: list[tuple[int, str]] = []
    at = 0
    while at < len(view):
        size, why = _record_at(view, at)
        if size:
            header = RECORD_HEADER.size
            records.append((base + at, view[at + header : at + size]))
            at += size
            continue
        resync = _next_valid(view, at + 1)
        if resync < 0:
            break
        damage.append((base + at, why))
        at = resync
    return Scan(records=records, end=base + at, damage=damage)


FAR_END = 1 << 62
"""The referenced end of an entry whose offset or size is nonsense: past any real shard."""


def referenced_end(offsets: tp.Any, nbytes: tp.Any, spans: tp.Any) -> int:
    """The highest shard byte (exclusive) a record's entries or spans point to.

    ``offsets`` and ``nbytes`` are int64 numpy columns. Garbage that passed a checksum (negative
    or huge values) counts as ``FAR_END``: such a shard must never be appended to again.
    """
    end = 0
    if 0 < len(offsets) <= 16 and len(nbytes) == len(offsets):
        # a record of a few items (a call with one new item): Python ints, not five reductions
        offs, sizes = offsets.tolist(), nbytes.tolist()
        if min(offs) < 0 or min(sizes) < 0:
            return FAR_END
        if max(offs) >= FAR_END or max(sizes) >= FAR_END:
            return FAR_END
        end = max(o + n for o, n in zip(offs, sizes, strict=True))
    elif len(offsets):
        if int(offsets.min()) < 0 or int(nbytes.min()) < 0:
            return FAR_END
        if int(offsets.max()) >= FAR_END or int(nbytes.max()) >= FAR_END:
            return FAR_END
        end = int((offsets + nbytes).max())
    for span in spans or ():
        try:
            stop = int(span[1])
        except (TypeError, ValueError, IndexError):
            return FAR_END
        end = max(end, min(stop, FAR_END))
    return end


def _next_valid(view: memoryview, start: int) -> int:
    """Offset of the next complete valid record at or after ``start``, or -1."""
    raw = view.obj if isinstance(view.obj, bytes) and len(view.obj) == len(view) else bytes(view)
    at = start
    while True:
        at = raw.find(RECORD_MAGIC, at)
        if at < 0:
            return -1
        size, _ = _record_at(view, at)
        if size:
            return at
        at += 1


__all__ = [
    "ALIGN",
    "PAGE",
    "RECORD_ENTRIES",
    "RECORD_RETIRE",
    "ZEROS",
    "Durability",
    "decode_payload",
    "encode_payload",
    "INDEX_HEADER_BYTES",
    "SHARD_HEADER_BYTES",
    "DataName",
    "Scan",
    "StorePaths",
    "align_up",
    "frame",
    "index_header",
    "new_file_id",
    "pairs_from_listing",
    "header_problem",
    "record_length",
    "parse_header",
    "pread_all",
    "pwrite_all",
    "read_header",
    "scan_records",
    "shard_header",
    "RECORD_SEAL",
    "header_version",
    "is_newer_format",
    "new_token",
    "referenced_end",
    "FAR_END",
    "write_all",
]
