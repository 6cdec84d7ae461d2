"""``feat.embed.view(items)``: a read-only sequence over cached outputs, to train from.

A view is a fixed list of item uids over the map's store: ``view[i]`` is ``store.load`` of one
(zero-copy), ``view[i:j]`` and ``view[index_array]`` are one ``store.stack``. It pickles as a
reference, never as data: the store folder and the name of a file holding the uids, written once
into the cache folder (``views/<content hash>.uids``). A process that did not create the view (a
spawned or forked DataLoader worker) opens the store itself on first use, and shares it with the
other views of that folder it reads; a forked child notices the fork and reopens rather than read
through its parent's store (whose locks and open state belong to the parent).

Why another process reads the uids from the mapped file rather than from a list: 100k ``str`` are
~8 MiB of objects per worker, and a forked worker touching its parent's list copies the pages
holding them one by one (a refcount is a write): the memory growth of persistent DataLoader
workers. The file's pages are shared by every worker (page cache); decoding a uid costs ~0.3 µs,
so the process that created the view keeps its list (it holds it already).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
import threading
import typing as tp
from pathlib import Path

import numpy as np

from ..errors import CacheMissError, StoreError
from ..store import Durability, MapStore
from ..store.format import VIEWS_DIR
from ..store.fs import create_new, store_error

R = tp.TypeVar("R")

_MAGIC = b"XLVIEW1\n"
_HEADER = struct.Struct("<8sQQQ")  # magic, item count, bytes of the uid blob, flags
_HAS_NUL = 1  # a flag: some uid holds a NUL byte
_PAIR = struct.Struct("<2q")  # where uid i and uid i + 1 start in the blob

Index: tp.TypeAlias = "int | np.integer[tp.Any] | slice | tp.Sequence[int] | np.ndarray"

# # # per process: the stores views opened, dropped in a forked child # # #

_generation = 0
"""Bumped in a forked child: a view opened under another generation reopens before reading."""
_stores: dict[tuple[str, str], MapStore] = {}
_stores_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _generation, _stores_lock
    _generation += 1
    _stores.clear()
    _stores_lock = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _shared_store(folder: str, durability: Durability) -> MapStore:
    """This process's store of ``folder`` for views (one index in memory, however many views)."""
    with _stores_lock:
        store = _stores.get((folder, durability))
        if store is None:
            store = _stores[folder, durability] = MapStore(folder, durability=durability)
        return store


# # # the uid file # # #


def write_uids(
    folder: str, uids: list[str], durability: Durability, read_only: bool = False
) -> str:
    """Write the uid file of a view into the cache ``folder`` (once: it is named by its content,
    and never replaced); its name. ``read_only`` (mode="read-only", which creates no file in a
    cache): a file the cache has already, else one in this user's temp folder, named by its
    absolute path.

    Layout: a header (magic, count, blob bytes, flags), ``count + 1`` little-endian int64 offsets,
    then the UTF-8 uids, each ended by a NUL byte: a batch of uids is then gathered with numpy
    and decoded and split in one call each (a Python slice per uid costs 3x more).
    """
    encoded = [uid.encode() + b"\0" for uid in uids]
    offsets = np.zeros(len(uids) + 1, dtype="<i8")
    np.cumsum(np.fromiter(map(len, encoded), np.int64, count=len(uids)), out=offsets[1:])
    blob = b"".join(encoded)
    # a uid holding a NUL itself (legal, if odd) cannot be split on NULs: read one by one
    flags = _HAS_NUL if blob.count(b"\0") != len(uids) else 0
    content = _HEADER.pack(_MAGIC, len(uids), len(blob), flags) + offsets.tobytes() + blob
    name = hashlib.sha256(content).hexdigest()[:32] + ".uids"
    views = Path(folder) / VIEWS_DIR
    path = views / name
    if path.is_file() and path.stat().st_size == len(content):
        return name  # the same items viewed before (here or by another process)
    if read_only:
        views = Path(tempfile.gettempdir()) / f"exca_lite-views-{os.getuid()}"
        path = views / name
        name = str(path)
        if path.is_file() and path.stat().st_size == len(content):
            return name
    try:
        views.mkdir(parents=True, exist_ok=True)
        create_new(path, content, fsync=durability == "fsync")
    except FileExistsError:
        pass  # another writer published the same content (the name is its hash) first
    except OSError as exc:
        raise store_error("writing the view file", path, exc) from exc
    return name


class _UidFile:
    """A view's uid file, mapped read-only: uids decoded on demand, nothing else in memory."""

    __slots__ = ("_blob", "_bytes", "_has_nul", "_mm", "_offsets", "count")

    def __init__(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            # clear() removes view files with the items they list
            raise CacheMissError(
                f"{path} is gone: the items of this view are no longer in the cache (was it "
                "cleared?); make the view again to compute them"
            ) from None
        except OSError as exc:
            raise store_error("opening the view file", path, exc) from exc
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else None
        finally:
            os.close(fd)
        header = b"" if mm is None else mm[: _HEADER.size]
        magic, count, blob_bytes, flags = (
            _HEADER.unpack(header) if len(header) == _HEADER.size else (b"", 0, 0, 0)
        )
        self._blob = _HEADER.size + 8 * (count + 1)  # where the uid bytes start
        if mm is None or magic != _MAGIC or size != self._blob + blob_bytes:
            raise StoreError(
                f"{path} is not a complete view file ({size} bytes): views made before its "
                "cache was cleared cannot be read; make the view again"
            )
        self._mm = mm
        self.count = count
        self._has_nul = bool(flags & _HAS_NUL)
        self._offsets = np.frombuffer(mm, dtype="<i8", count=count + 1, offset=_HEADER.size)
        self._bytes = np.frombuffer(mm, dtype=np.uint8)

    def __getitem__(self, position: int) -> str:
        start, end = _PAIR.unpack_from(self._mm, _HEADER.size + 8 * position)
        blob = self._blob
        return self._mm[blob + start : blob + end - 1].decode()

    def take(self, positions: np.ndarray) -> list[str]:
        if not len(positions):
            return []
        offsets = self._offsets
        starts = offsets[positions] + self._blob
        lengths = offsets[positions + 1] - offsets[positions]  # NUL included
        if self._has_nul:
            mm = self._mm
            pairs = zip(starts.tolist(), (starts + lengths - 1).tolist(), strict=True)
            return [mm[start:end].decode() for start, end in pairs]
        # every selected byte in one gather: byte k of the batch is at the start of its uid plus
        # its distance from the start of that uid in the batch
        ends = np.cumsum(lengths)
        gather = np.arange(int(ends[-1])) + np.repeat(starts - (ends - lengths), lengths)
        data: bytes = self._bytes[gather].tobytes()
        return data[:-1].decode().split("\0")

    def take_range(self, start: int, stop: int) -> list[str]:
        """The uids of positions ``start..stop-1`` (a slice of step 1: no gather)."""
        if self._has_nul or stop <= start:
            return self.take(np.arange(start, stop))
        first, last = int(self._offsets[start]), int(self._offsets[stop])
        blob = self._blob
        return self._mm[blob + first : blob + last - 1].decode().split("\0")


def _list_take(uids: list[str], positions: np.ndarray) -> list[str]:
    return list(map(uids.__getitem__, positions.tolist()))


# # # the view # # #


class MapView(tp.Generic[R]):
    """``feat.embed.view(items)``: ``len``, ``view[i]`` (one output, zero-copy), ``view[i:j]`` and
    ``view[index_array]`` (one stacked array); pickles as a reference to the cache.

    Usable as a ``torch.utils.data.Dataset`` as it is (``__getitems__`` serves a DataLoader's
    batch with one ``stack``). The items are fixed when the view is made: items computed later
    (here or by other processes) do not change it.
    """

    __slots__ = (
        "_count",
        "_durability",
        "_folder",
        "_generation",
        "_label",
        "_name",
        "_store",
        "_uids",
    )

    def __init__(
        self,
        folder: str,
        durability: Durability,
        name: str,
        count: int,
        label: str,
        store: MapStore | None = None,
        uids: list[str] | None = None,
    ) -> None:
        self._folder = folder
        self._durability: Durability = durability
        self._name = name  # the uid file under views/ (or its absolute path: read-only)
        self._count = count
        self._label = label  # the map's uid, for messages
        # None until opened (on first use, and again after a fork: another generation)
        self._store = tp.cast(MapStore, store)
        self._uids = tp.cast("list[str] | _UidFile", uids)
        self._generation = _generation if store is not None and uids is not None else -1

    @classmethod
    def create(
        cls, store: MapStore, uids: list[str], label: str, read_only: bool = False
    ) -> MapView[tp.Any]:
        """A view of ``uids`` (all stored) over ``store``, the store of its cache folder."""
        folder = str(store.folder)
        name = write_uids(folder, uids, store.durability, read_only)
        return cls(folder, store.durability, name, len(uids), label, store, uids)

    # # # opening (in a worker, or after a fork) # # #

    def _open(self) -> None:
        # a name, under the cache's views/; an absolute path for a read-only view's own file
        path = Path(self._folder) / VIEWS_DIR / self._name
        uids = _UidFile(path)
        if uids.count != self._count:
            raise StoreError(
                f"{path} holds {uids.count} item uids, the view {self._count}: make the view again"
            )
        self._uids = uids
        self._store = _shared_store(self._folder, self._durability)
        self._generation = _generation

    def __reduce__(self) -> tuple[tp.Any, ...]:
        # a reference: where the cache is and which uid file, never the outputs nor the uids
        args = (self._folder, self._durability, self._name, self._count, self._label)
        return (MapView, args)

    # # # reading # # #

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"MapView({self._label!r}, items={self._count})"

    @tp.overload
    def __getitem__(self, index: int | np.integer[tp.Any]) -> R: ...
    @tp.overload
    def __getitem__(self, index: slice | tp.Sequence[int] | np.ndarray) -> np.ndarray: ...

    def __getitem__(self, index: Index) -> R | np.ndarray:
        """One output (``int``), or one stacked array (a slice, or an array or list of ints or a
        boolean mask); negative positions count from the end, others raise ``IndexError``."""
        if self._generation != _generation:
            self._open()
        if type(index) is int or isinstance(index, np.integer):
            # the hot path of a per-item Dataset: kept to one bounds check and one load
            position = int(index)
            if position < 0:
                position += self._count
            if not 0 <= position < self._count:
                raise IndexError(f"view index {index} out of range for {self._count} items")
            uid = self._uids[position]
            try:
                return tp.cast(R, self._store.load(uid))
            except KeyError:
                return self._load_again(uid)
        if isinstance(index, slice):
            span = range(self._count)[index]
            if span.step == 1:
                uids = self._uids
                if isinstance(uids, list):
                    return self._stack(uids[span.start : span.stop])
                return self._stack(uids.take_range(span.start, span.stop))
            return self._stack(self._take(np.arange(span.start, span.stop, span.step)))
        return self._stack(self._take(self._positions(index)))

    def __getitems__(self, indices: tp.Sequence[int]) -> list[R]:
        """A batch as a list of outputs: what a torch DataLoader asks a dataset defining it for,
        instead of one ``__getitem__`` per index. Rows of one ``stack`` when the outputs are arrays
        of one shape and dtype; else the outputs one by one (a custom ``collate_fn`` pads them)."""
        try:
            return list(self[indices])
        except StoreError:  # not arrays, or of several shapes or dtypes: stack() cannot
            return [self[i] for i in indices]

    def __iter__(self) -> tp.Iterator[R]:
        for position in range(self._count):
            yield self[position]

    def _positions(self, index: tp.Any) -> np.ndarray:
        """Non-negative int64 positions from an index array, list of ints or boolean mask."""
        count = self._count
        positions = np.asarray(index)
        if positions.dtype == np.bool_:
            if positions.shape != (count,):
                raise IndexError(
                    f"a boolean mask of a view needs shape ({count},), got {positions.shape}"
                )
            return np.flatnonzero(positions)
        if positions.size == 0:
            return np.zeros(0, dtype=np.int64)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise IndexError(
                "a view is indexed by an int, a slice, or a 1-d array or list of ints (or a "
                f"boolean mask); got {positions.dtype} of shape {positions.shape}"
            )
        positions = positions.astype(np.int64, copy=False)
        low, high = int(positions.min()), int(positions.max())
        if low < -count or high >= count:
            bad = low if low < -count else high
            raise IndexError(f"view index {bad} out of range for {count} items")
        if low < 0:
            positions = np.where(positions < 0, positions + count, positions)
        return positions

    def _take(self, positions: np.ndarray) -> list[str]:
        uids = self._uids
        if isinstance(uids, list):
            return _list_take(uids, positions)
        return uids.take(positions)

    def _load_again(self, uid: str) -> R:
        # this process's store was opened before the item was computed (another view of the
        # same folder opened it): read the index bytes written since, once
        self._store.refresh()
        try:
            return tp.cast(R, self._store.load(uid))
        except KeyError:
            raise self._gone([uid]) from None

    def _stack(self, uids: list[str]) -> np.ndarray:
        if not uids:
            # an empty selection: zero items shaped like the others
            if not self._count:
                return np.empty(0)
            first = np.asarray(self[0])
            return np.empty((0, *first.shape), dtype=first.dtype)
        store = self._store
        try:
            return store.stack(uids)
        except KeyError:
            store.refresh()  # as in _load_again
            try:
                return store.stack(uids)
            except KeyError:
                raise self._gone(store.missing(uids)) from None

    def _gone(self, missing: list[str]) -> CacheMissError:
        return CacheMissError(
            f"{self._label}: {len(missing)} item(s) of this view are no longer in the cache "
            f"{self._folder} (was it cleared, or were outputs taken back?); make the view again "
            f"to compute them: "
            f"{missing[:10]}" + (" ..." if len(missing) > 10 else "")
        )


__all__ = ["MapView", "VIEWS_DIR", "write_uids"]
