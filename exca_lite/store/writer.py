"""The writer of the map store: appends items to its own shard and index, which no one else writes.

Why it looks like this (docs/design.md has the protocol and the crash analysis):

- Each writer creates a pair of files under a fresh random name (never replacing a file) and is
  the only process that ever appends to them; it seals them when it is done. Two writers can thus
  never mix their bytes, whatever the filesystem's locks do (cluster filesystems often do not
  carry them across hosts). A closed writer is kept (parked) for the next writer of the same
  folder in this process, so a call with one new item creates no file.
- ``write`` must cost microseconds: small items are copied into a buffer, no system call; full
  buffers are written, then the index record naming their items (by the producer's thread when
  the I/O thread is idle and nothing needs syncing, else by a background I/O thread, in order),
  so the shard bytes of an item always reach the OS before its entry is published.
- Large items are written in the calling thread straight from their own memory (no copy), at an
  offset past every buffer given to the I/O thread, so both write at once.
- Items a stalled producer left buffered are published by the I/O thread after about a second, so
  a process waiting for them (claims) or a crash loses little.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import io
import os
import queue
import struct
import threading
import time
import types
import typing as tp
import zlib

import numpy as np

from ..errors import StoreError
from . import encoding as enc
from . import format as sh
from . import locks
from . import segment as sg
from .fs import create_new, store_error

if tp.TYPE_CHECKING:
    from .mapstore import MapStore

FLUSH_MAX_BYTES = 8 << 20
FLUSH_MAX_ITEMS = 1000
FLUSH_MAX_AGE_S = 1.0
SLOW_PRODUCER_S = 0.1
"""A write() arriving this long after the previous one is published at once: the producer is slow,
so batching saves nothing while a process waiting for the item would wait one more item."""
CLOCK_EVERY = 16
"""Items of a fast producer's run between clock reads (``write_many``): a producer turning slow is
seen at most this many items late (the I/O thread publishes what waits over FLUSH_MAX_AGE_S)."""
_FEW = 16
LARGE_ITEM_BYTES = 256 << 10
"""Items this big skip the write buffer and go to the shard straight from their own memory."""
SUM_READ_BYTES = 8 << 20
"""Piece size in which the I/O thread reads a large item back to checksum it."""
_monotonic = time.monotonic
ROTATE_IDLE_S = 600.0
"""A writer idle this long starts a new pair at its next write instead of appending to its old
one: compaction folds and removes a pair whose writer looks dead (lock free or unknown, idle for
``STALE_WRITER_S``), which must never be one its writer still appends to."""
STALE_WRITER_S = float(os.environ.get("EXCA_LITE_STALE_WRITER_S", "3600"))
"""An unsealed pair not written for this long (by the filesystem's clock) counts as abandoned by
compaction, well past ``ROTATE_IDLE_S``."""
ROTATE_ENTRIES = int(os.environ.get("EXCA_LITE_ROTATE_ENTRIES", str(1 << 22)))
"""A writer past this many entries seals its pair (which gets a segment: below
``sg.MAX_ENTRIES``) and goes on in a new one, and its store maps that segment instead of holding
the pair's entries in memory (~500 bytes each: ~2 GiB at most): a process writing 100M items
keeps a bounded view of them."""
IDLE_SEGMENT_S = float(os.environ.get("EXCA_LITE_IDLE_SEGMENT_S", "1.0"))
"""A parked writer not written to for this long folds its pair's index into a segment, in its I/O
thread, once the pair holds ``sg.MIN_ENTRIES`` entries no segment covers (and at least as many as
its segment covers: rebuilt only once doubled). Other processes opening the cache meanwhile (a
notebook's writer stays parked for hours, a benchmark's for its whole run) then map the pair instead
of decoding every record: ~5 ms per 20k entries at each open."""
PARK_MAX = 4
"""Idle writers kept per folder in this process (one per thread of a thread pool, typically)."""


_parked_lock = threading.Lock()
_parked: dict[tuple[str, str], list[MapWriter]] = {}
"""Idle writers kept between uses, up to PARK_MAX per (folder, durability) in this process: they
keep their open pair (unsealed), their liveness lock and their I/O thread. The next
``store.writer()`` of that folder goes on appending to the same pair: no file created, no index
read, no thread start. ``MapStore.close()``, ``clear()`` and the end of the process seal them."""


def _forget_parked_after_fork() -> None:
    # a forked child holds none of these (no I/O thread; the pair belongs to the parent)
    global _parked_lock
    _parked_lock = threading.Lock()
    _parked.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parked_after_fork)


def _park_key(store: MapStore) -> tuple[str, str]:
    key = store._park_key
    if key is None:  # realpath costs tens of microseconds: once per store
        key = store._park_key = (os.path.realpath(store.folder), store.durability)
    return key


def take_parked(store: MapStore) -> MapWriter | None:
    """An idle writer of ``store``'s folder, if any, now owned by the caller (and ``store``)."""
    if not _parked:
        return None
    with _parked_lock:
        idle = _parked.get(_park_key(store))
        writer = idle.pop() if idle else None
    if writer is not None:
        writer.store = store
    return writer


def release_all_parked() -> None:
    """Seal and close every idle writer of this process (and their I/O threads), e.g. before
    forking, and at exit."""
    with _parked_lock:
        writers = [w for idle in _parked.values() for w in idle]
        _parked.clear()
    for writer in writers:
        writer._shutdown()


def release_parked(store: MapStore, segment: bool = True) -> None:
    """Seal and close the idle writers of ``store``'s folder (any durability), if any
    (``segment``: and fold their pairs into segments; not when they are about to be removed)."""
    if not _parked:
        return
    folder = _park_key(store)[0]
    with _parked_lock:
        writers = [w for key in list(_parked) if key[0] == folder for w in _parked.pop(key)]
    for writer in writers:
        writer._shutdown(segment)


def parked_stems(store: MapStore) -> set[str]:
    """The pairs of this process's idle writers of ``store``'s folder (not writing now)."""
    if not _parked:
        return set()
    folder = _park_key(store)[0]
    with _parked_lock:
        return {w.stem for key, idle in _parked.items() if key[0] == folder for w in idle}


atexit.register(release_all_parked)

_in_thread = threading.local()
"""The writers each thread has open (between open() and close())."""


def _thread_writers() -> list[MapWriter]:
    found: list[MapWriter] | None = getattr(_in_thread, "writers", None)
    if found is None:
        found = _in_thread.writers = []
    return found


def flush_thread_writers() -> None:
    """Publish what the writers open in this thread buffered: a call nested in a computation
    then finds the items that computation wrote already."""
    for writer in list(_thread_writers()):
        writer.flush()


class MapWriter:
    """Appends items to its own shard and publishes them in batches to its own index.

    ``write`` only buffers (no system call for small items); full buffers go to a background I/O
    thread, which writes the data bytes, then one index record holding all their entries. ``flush``
    returns once everything written so far is published.
    """

    def __init__(self, store: MapStore, cache_type: enc.CacheType = None) -> None:
        self.store = store
        self.configure(cache_type)
        self._idle = False  # closed by its user, files and thread kept for the next one (parked)
        self._parked_size = -1  # the shard's size when parked: anyone appending changes it
        self._ref_end = 0  # the highest shard byte an item written by this writer ends at
        self._fsync = store.durability == "fsync"
        # on a network filesystem, the shard's bytes are made durable before the record naming
        # them: another host must never see a record before its data
        self._sync_data = not self._fsync and store.network
        self._inline_io = not (self._fsync or self._sync_data)  # see _publish_batch
        self._active = False  # between open() and close()
        self.written = 0  # items write_many() took, since this writer was created
        self._rotate = False  # idle too long: the next write starts a new pair (ROTATE_IDLE_S)
        self._bin_fd = -1
        self._idx_fd = -1
        self._stem = ""
        self._idx_end = 0
        self._file_id = b""
        self._entries = 0  # entries published to this pair (duplicates included)
        self._covered = 0  # ... of which the pair's segment holds (a parked writer's)
        # the pending items' bytes (the first tell() of them): a BytesIO, so that a buffer this
        # thread wrote out itself is reused (bytearrays grow by reallocating, which cost a
        # quarter of a small item's copy), while one handed to the I/O thread is left to it
        self._buf = io.BytesIO()
        self._buf_start = 0  # shard offset of the buffer's first byte; always 64-aligned
        self._uids: list[str] = []
        self._offsets: list[int] = []
        self._nbytes: list[int] = []
        self._crcs: list[int] = []
        self._mix: list[int] = []
        # the entries of the pending items, as column arrays (offsets, nbytes, crcs, metas) in
        # item order: runs of the hot path, and the listed entries above once sealed
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._metas: list[list[tp.Any]] = []
        self._meta_of: dict[tp.Any, tuple[int, bool]] = {}
        self._direct_bytes = 0  # bytes of the pending large items (written, not yet published)
        self._first_t = 0.0  # when the pending batch began (the last hand-over or open)
        self._last_t = 0.0
        self._span_start = -1  # the run of buffers being written since the last index record
        self._span_end = 0
        self._span_sum = 0
        self._spans: list[list[int]] = []  # closed runs: [start, end, word checksum]
        # large items of the pending batch whose checksum the I/O thread computes: (entry, offset,
        # nbytes), and its read buffer
        self._pending_sums: list[tuple[int, int, int]] = []
        self._scratch = bytearray()
        # guards the buffer against the I/O thread publishing stale items (see _publish_if_stale)
        self._buffer_lock = threading.Lock()
        # one segment build at a time: closing (_park_segment) and the idle I/O thread both build
        self._segment_lock = threading.Lock()
        self._jobs: queue.Queue[tp.Any] = queue.Queue(maxsize=4)  # backpressure: 4 buffers
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def configure(self, cache_type: enc.CacheType) -> None:
        if cache_type is not None and cache_type not in enc.FORMAT_NAMES:
            msg = f"cache_type must be one of None, {', '.join(map(repr, enc.FORMAT_NAMES))}; got {cache_type!r}"
            raise ValueError(msg)
        self.cache_type = cache_type
        self._forced = None if cache_type is None else enc.FORMAT_NAMES[cache_type]
        # the hot run (see write): the array meta its items share, and where it began
        self._hot_dtype: np.dtype[tp.Any] | None = None
        self._hot_shape: tuple[int, ...] = ()
        self._hot_pad = b""
        self._run_nbytes = 0
        self._run_mix = 0
        self._run_from = 0  # index in self._uids of the run's first item
        self._run_offset = 0  # shard offset of the run's first item

    @property
    def stem(self) -> str:
        """The name of this writer's pair (``w-{token}``), "" before it is opened."""
        return self._stem

    def __enter__(self) -> MapWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        if self._active:
            return
        if self._idle:
            self._idle = False
            if self._still_good():
                self._active = True
                _thread_writers().append(self)
                self._last_t = self._first_t = time.monotonic()
                self._lock_pair()
                return
            # removed (clear), cut, failed or idle too long meanwhile: seal it, start afresh
            self._shutdown()
            self._reset()
        self._open_pair()
        self._active = True
        _thread_writers().append(self)
        self._last_t = self._first_t = time.monotonic()
        self._start_io_thread()
        self.store._pair_added()

    def _reset(self) -> None:
        """Forget the previous pair's state (items a failed writer had not published are lost:
        its user was told so)."""
        self._failed = None
        self._rotate = False
        self._span_start, self._span_sum, self._spans = -1, 0, []
        self._buf = io.BytesIO()
        self._uids, self._offsets, self._nbytes, self._crcs, self._mix = [], [], [], [], []
        self._parts, self._pending_sums, self._metas, self._meta_of = [], [], [], {}
        self._hot_dtype = None
        self._direct_bytes = 0
        self._ref_end = 0
        self._entries = self._covered = 0

    def _still_good(self) -> bool:
        """Whether a parked writer can go on with its pair: nobody removed it (clear) or cut it
        (external damage), it was not idle too long, and its I/O thread is fine."""
        if self._failed is not None or self._thread is None or not self._thread.is_alive():
            return False
        if self._rotate:
            return False
        try:
            idx, shard = os.fstat(self._idx_fd), os.fstat(self._bin_fd)
        except OSError:
            return False
        return (
            idx.st_nlink > 0
            and shard.st_nlink > 0
            and idx.st_size == self._idx_end
            and shard.st_size == self._parked_size
            and shard.st_size >= self._ref_end
        )

    def _open_pair(self) -> None:
        """Create this writer's own pair (shard first: an index never names a missing file)."""
        paths = self.store.paths
        sync = self._fsync or self._sync_data
        while True:
            name = sh.DataName.writer()
            idx_path, bin_path = paths.index(name.stem), paths.shard(name.stem)
            file_id = sh.new_file_id()
            path = paths.folder
            try:
                paths.folder.mkdir(parents=True, exist_ok=True)
                path = bin_path
                create_new(bin_path, sh.shard_header(file_id), fsync=sync)
                path = idx_path
                create_new(idx_path, sh.index_header(file_id), fsync=sync)
                # read too: the I/O thread checksums large items from the shard (_write_direct)
                path = bin_path
                self._bin_fd = os.open(bin_path, os.O_RDWR)
                path = idx_path
                self._idx_fd = os.open(idx_path, os.O_WRONLY | os.O_APPEND)
            except FileExistsError:  # 128 random bits collided: impossible in practice
                self._close_files()
                continue
            except OSError as exc:
                self._close_files()
                raise store_error("creating", path, exc) from exc
            break
        self._lock_pair()
        self._stem = name.stem
        self._file_id = file_id
        self._idx_end = sh.INDEX_HEADER_BYTES
        self._buf_start = sh.align_up(sh.SHARD_HEADER_BYTES)
        if self.store._loaded:
            # registers the new pair, so this store takes in its own flushes without re-reading
            self.store.refresh()

    def write(self, item_uid: str, value: tp.Any) -> None:
        """Buffer one item (published by the next ``flush``, automatic every ~1000 items/8 MiB/1 s)."""
        # the hot path: a small array of the previous item's dtype and shape (items of a map mostly
        # share one; numpy reuses its builtin dtype objects). It only copies the bytes and the uid:
        # such items form a "run" whose offsets, sizes and meta follow from its first one, written
        # out by _end_run. _hot_dtype is None unless the last item of this record started a run
        if (
            type(value) is np.ndarray
            and value.dtype is self._hot_dtype
            and value.shape == self._hot_shape
        ):
            with self._buffer_lock:
                if value.dtype is self._hot_dtype:  # not handed over by the I/O thread meanwhile
                    buf: tp.Any = self._buf  # its write() takes arrays (buffers)
                    try:
                        buf.write(value)  # C-contiguous arrays only: others raise ValueError
                    except (TypeError, ValueError, BufferError):
                        pass  # the general path below copies it
                    else:
                        buf.write(self._hot_pad)
                        uids = self._uids
                        uids.append(item_uid)
                        now = _monotonic()
                        last, self._last_t = self._last_t, now
                        if (
                            now - last > SLOW_PRODUCER_S
                            or len(uids) >= FLUSH_MAX_ITEMS
                            or buf.tell() >= FLUSH_MAX_BYTES
                            or now - self._first_t > FLUSH_MAX_AGE_S
                        ):
                            if self._failed is not None:
                                self._raise_failed()
                            self._publish_batch()
                        return
        self._write_any(item_uid, value)

    def write_many(self, pairs: tp.Iterable[tuple[str, tp.Any]]) -> int:
        """``write`` each ``(item_uid, value)`` pair in turn; returns how many it wrote (also
        added to ``written`` as it goes: a caller whose iterator raised learns it there).

        A map's compute loop: the hot path of ``write``, with the run's state in local variables,
        so a small array costs its copy, the uid's append, the buffer lock and a countdown (a call
        and a dozen attribute reads per item were about half of ``write``'s cost)."""
        # the buffer lock, by its bound methods: a ``with`` block cost twice as much per item
        acquire, release = self._buffer_lock.acquire, self._buffer_lock.release
        ndarray = np.ndarray
        monotonic = _monotonic
        slow_s = SLOW_PRODUCER_S
        # the run under way (hot None: none, the next item takes the general path), in locals;
        # self._last_t lags behind ``last`` meanwhile. Read without the lock: checked under it.
        # ``room``: the items the run may still take before its batch is full, as of the last
        # clock read. The clock (~75 ns, as much as the rest of an item) is read once ``left``
        # more items are in: every item while the producer is slow (a gap over SLOW_PRODUCER_S
        # publishes at once), every CLOCK_EVERY items while it is fast
        hot, shape, pad = self._hot_dtype, self._hot_shape, self._hot_pad
        put: tp.Any  # the buffer's write(), which takes arrays (buffers)
        put, uids, room = self._buf.write, self._uids, self._room()
        every = 1
        span = left = max(1, min(room, every))
        last, deadline = self._last_t, self._first_t + FLUSH_MAX_AGE_S
        n = 0
        try:
            for item_uid, value in pairs:
                if type(value) is ndarray and value.dtype is hot and value.shape == shape:
                    acquire()
                    try:
                        # the I/O thread hands stale items over under the lock, ending the run
                        if self._hot_dtype is hot:
                            try:
                                put(value)  # C-contiguous arrays only (others raise)
                            except (TypeError, ValueError, BufferError):
                                pass  # the general path below copies it
                            else:
                                if pad:
                                    put(pad)
                                uids.append(item_uid)
                                n += 1
                                left -= 1
                                if left:
                                    continue
                                now = monotonic()
                                slow = now - last > slow_s  # since the last clock read
                                room -= span
                                if slow or now > deadline or room <= 0:
                                    self._last_t = now
                                    if self._failed is not None:
                                        self._raise_failed()
                                    self._publish_batch()  # ends the run
                                    if self._restart_run(hot):  # the next item goes on with it
                                        put, uids = self._buf.write, self._uids
                                        room = self._room()
                                        deadline = self._first_t + FLUSH_MAX_AGE_S
                                    else:
                                        hot = None
                                every = 1 if slow else CLOCK_EVERY
                                span = left = max(1, min(room, every))
                                last = now
                                continue
                    finally:
                        release()
                self._last_t = last
                self._write_any(item_uid, value)
                n += 1
                # the run this item may have started (or None): its state, in locals again
                hot, shape, pad = self._hot_dtype, self._hot_shape, self._hot_pad
                put, uids, room = self._buf.write, self._uids, self._room()
                span = left = max(1, min(room, every))
                last, deadline = self._last_t, self._first_t + FLUSH_MAX_AGE_S
        finally:
            self._last_t = last
            self.written += n
        return n

    def _room(self) -> int:
        """How many more items of the run fit in the pending batch: the hot path hands it over
        when they are in (``FLUSH_MAX_ITEMS`` items, or ``FLUSH_MAX_BYTES`` of buffer)."""
        room = FLUSH_MAX_ITEMS - len(self._uids)
        stride = self._run_nbytes + len(self._hot_pad)
        if stride:
            room = min(room, -(-(FLUSH_MAX_BYTES - self._buf.tell()) // stride))
        return room

    def _restart_run(self, dtype: np.dtype[tp.Any] | None) -> bool:
        """After the producer handed its batch over itself (buffer lock held): go on with the
        same run in the new record, its meta listed first, sparing the next item the general
        path and the record a listed entry. False when the next write must take the general
        path (a pair to rotate, a failure)."""
        if (
            dtype is None
            or self._hot_dtype is not None
            or self._rotate
            or self._failed is not None
            or self._uids
            or self._metas
        ):
            return False
        shape = self._hot_shape
        self._metas.append([enc.ARRAY, enc.dtype_descr(dtype), list(shape)])
        self._meta_of[(dtype, shape)] = (0, False)
        self._hot_dtype = dtype
        self._run_mix = 0
        self._run_from = 0
        self._run_offset = self._buf_start + self._buf.tell()
        return True

    def _write_any(self, item_uid: str, value: tp.Any) -> None:
        """Every item the hot path does not take: picks the format and meta, may start a run."""
        if not self._active:
            self.open()
        if self._failed is not None:
            self._raise_failed()
        if self._rotate:
            self._rotate_pair()
        fmt = (
            enc.ARRAY
            if self._forced is None and type(value) is np.ndarray and not value.dtype.hasobject
            else enc.pick_format(value, self._forced)
        )
        with self._buffer_lock:  # the I/O thread may publish stale items (see _publish_if_stale)
            self._end_run()
            hot = False
            if fmt == enc.ARRAY:
                arr = value
                mix, as_bytes = self._meta_of.get((arr.dtype, arr.shape)) or self._new_array_meta(
                    arr
                )
                if not arr.flags.c_contiguous:
                    arr = np.ascontiguousarray(arr)
                if as_bytes:  # dtypes without a buffer export (datetime64): their raw bytes
                    arr = arr.reshape(-1).view(np.uint8)
                nbytes = arr.nbytes
                data: tp.Any = arr
                crc = 0  # small arrays: covered by their buffer's span checksum (I/O thread)
                hot = not as_bytes and nbytes < LARGE_ITEM_BYTES
            else:
                data = enc.encode_other(value, fmt)
                nbytes = len(data)
                mix = self._other_meta(fmt)
                crc = zlib.crc32(data)  # checked on every load of a decoded item
            if nbytes >= LARGE_ITEM_BYTES:
                self._write_direct(item_uid, data, nbytes, mix, crc)
            else:
                buf = self._buf
                self._offsets.append(self._buf_start + buf.tell())
                buf.write(data)
                self._ref_end = self._buf_start + buf.tell()
                buf.write(sh.ZEROS[: -nbytes % sh.ALIGN])
                self._uids.append(item_uid)
                self._nbytes.append(nbytes)
                self._crcs.append(crc)
                self._mix.append(mix)
            if hot:  # the next items of this dtype and shape take the hot path
                self._hot_dtype, self._hot_shape = value.dtype, value.shape
                self._hot_pad = sh.ZEROS[: -nbytes % sh.ALIGN]
                self._run_nbytes, self._run_mix = nbytes, mix
                self._run_from = len(self._uids)
                self._run_offset = self._buf_start + self._buf.tell()
            now = _monotonic()
            slow = now - self._last_t > SLOW_PRODUCER_S
            self._last_t = now
            if (
                slow
                or self._direct_bytes + self._buf.tell() >= FLUSH_MAX_BYTES
                or len(self._uids) >= FLUSH_MAX_ITEMS
                or now - self._first_t > FLUSH_MAX_AGE_S
            ):
                self._publish_batch()

    def _lock_pair(self) -> None:
        """Hold the pair's lock while writing: tools count busy writers by it, and compaction
        leaves such a pair alone. Safety needs none of it (a pair's age decides where locks do not
        reach across hosts, see STALE_WRITER_S), so a filesystem without locks is fine."""
        try:
            locks.try_lock_fd(self._idx_fd)
        except OSError:
            pass

    def _unlock_pair(self) -> None:
        try:
            fcntl.flock(self._idx_fd, fcntl.LOCK_UN)
        except OSError:
            pass

    def _rotate_pair(self) -> None:
        """Seal the pair this writer left idle too long (or filled up to ROTATE_ENTRIES) and go on
        in a new one."""
        self.flush()
        self._shutdown()
        self._reset()
        self.store._own_sealed()
        self.open()

    def _end_run(self) -> None:
        """Write out the offsets, sizes and meta of the items the hot path took since its run began
        (buffer lock held); the next item starts no run until ``_write_any`` says so."""
        if self._hot_dtype is None:
            return
        self._hot_dtype = None
        count = len(self._uids) - self._run_from
        if count:
            self._seal_entries()  # the entries before the run come first
            stride = self._run_nbytes + len(self._hot_pad)
            start = self._run_offset
            self._parts.append(
                (
                    # empty arrays take no bytes: a stride of 0, all at the same offset
                    start + np.arange(count, dtype="<i8") * stride,
                    np.full(count, self._run_nbytes, dtype="<i8"),
                    np.zeros(count, dtype="<u4"),
                    np.full(count, self._run_mix, dtype="<u4"),
                )
            )
            self._ref_end = start + (count - 1) * stride + self._run_nbytes

    def _seal_entries(self) -> None:
        """Move the entries listed one by one into ``_parts`` (as arrays, in item order)."""
        if self._offsets:
            self._parts.append(
                (
                    np.array(self._offsets, dtype="<i8"),
                    np.array(self._nbytes, dtype="<i8"),
                    np.array(self._crcs, dtype="<u4"),
                    np.array(self._mix, dtype="<u4"),
                )
            )
            self._offsets, self._nbytes, self._crcs, self._mix = [], [], [], []

    def _new_array_meta(self, arr: np.ndarray) -> tuple[int, bool]:
        try:
            _ = arr.reshape(-1)[:0].data
            as_bytes = False
        except (ValueError, TypeError, BufferError):
            as_bytes = True
        self._metas.append([enc.ARRAY, enc.dtype_descr(arr.dtype), list(arr.shape)])
        found = (len(self._metas) - 1, as_bytes)
        self._meta_of[(arr.dtype, arr.shape)] = found
        return found

    def _other_meta(self, fmt: int) -> int:
        found = self._meta_of.get(fmt)
        if found is None:
            self._metas.append([fmt, None, []])
            found = (len(self._metas) - 1, False)
            self._meta_of[fmt] = found
        return found[0]

    def _write_direct(self, item_uid: str, data: tp.Any, nbytes: int, mix: int, crc: int) -> None:
        """Write a large item from its own memory (no copy into a buffer), in this thread.

        Its offset is past every buffer handed to the I/O thread, so both write at once without
        ordering them; its index entry goes with the next record, which the I/O thread writes
        after this returns. The caller may reuse the array's memory as soon as ``write`` returns.
        """
        raw = data if isinstance(data, bytes) else data.reshape(-1).view(np.uint8).data
        self._queue_data()
        # at a page boundary: the kernel then copies whole pages (writing 1 MiB items at 64-byte
        # offsets measured ~4% slower), and the array's view starts a page. The gap is dead bytes
        offset = -(-self._buf_start // sh.PAGE) * sh.PAGE
        try:
            sh.pwrite_all(self._bin_fd, raw, offset)
        except OSError as exc:
            where = self.store.paths.shard(self._stem)
            raise store_error(f"writing item {item_uid!r} to", where, exc) from exc
        if not crc:
            # a large array gets its own checksum, a word sum (crc32 would halve the write
            # bandwidth), computed by the I/O thread from the shard's bytes before it publishes
            # the record: in parallel with this thread's next writes, which it cost 15% of
            self._pending_sums.append((len(self._uids), offset, nbytes))
        self._buf_start = sh.align_up(offset + nbytes)
        self._ref_end = offset + nbytes
        self._direct_bytes += nbytes
        self._uids.append(item_uid)
        self._offsets.append(offset)
        self._nbytes.append(nbytes)
        self._crcs.append(crc)
        self._mix.append(mix)

    def _queue_data(self, inline: bool = False) -> None:
        """Send the buffered bytes to the I/O thread (no index record: their items may be joined
        by more before the next flush)."""
        buf = self._buf
        size = buf.tell()
        if size:
            data = buf.getbuffer()[:size]
            job = (data, self._buf_start, None, True, ())
            if inline:
                self._do_io(*job)
                try:
                    data.release()  # then the buffer takes writes again, from its start
                    buf.seek(0)
                except BufferError:  # still viewed: left to the garbage collector
                    self._buf = io.BytesIO()
            else:
                self._submit(job)
                self._buf = io.BytesIO()
            self._buf_start += size

    def _publish_batch(self) -> None:
        """Publish the pending batch (buffer lock held): in this thread when the I/O thread is
        idle and nothing needs syncing, else through the I/O thread.

        A write() of the I/O thread's releases the GIL, but getting it back waits for the
        producer's switch interval (5 ms), by which time its queue is full and the producer
        blocks: writing here measured faster (fewer GIL hand-offs). A sync (fsync, a network
        filesystem) takes milliseconds, which the I/O thread overlaps with the computation, as
        it does reading large items back to checksum them."""
        if self._inline_io and not self._pending_sums and self._jobs.unfinished_tasks == 0:
            # the I/O thread cannot start anything while the buffer lock is held (see flush).
            # Large items' checksums (_pending_sums) stay the I/O thread's: it reads them back
            # while this thread writes the next ones
            try:
                self._hand_over(inline=True)
            except BaseException as exc:
                self._failed = exc
                self._raise_failed()
        else:
            self._hand_over()

    def _hand_over(self, inline: bool = False) -> None:
        """Send buffered bytes, then the index record of every pending item, to the I/O thread
        (``inline``: do that I/O in this thread, when the I/O thread has nothing to do)."""
        self._end_run()  # the meta numbers restart with each record
        if not self._uids:
            return
        self._queue_data(inline)
        if not self._parts and len(self._offsets) <= _FEW:
            # a few items listed one by one (a call with a few new items): no numpy round trip
            n = len(self._offsets)
            columns = [
                struct.pack(f"<{n}q", *self._offsets),
                struct.pack(f"<{n}q", *self._nbytes),
                struct.pack(f"<{n}I", *self._crcs),
                struct.pack(f"<{n}I", *self._mix),
            ]
            self._offsets, self._nbytes, self._crcs, self._mix = [], [], [], []
        else:
            self._seal_entries()
            parts, self._parts = self._parts, []
            columns = [
                (
                    parts[0][k] if len(parts) == 1 else np.concatenate([p[k] for p in parts])
                ).tobytes()
                for k in range(4)
            ]
        obj = [sh.RECORD_ENTRIES, self._uids, *columns, self._metas]
        job = (b"", self._buf_start, obj, False, self._pending_sums)
        self._pending_sums = []
        self._entries += len(self._uids)
        if self._entries >= ROTATE_ENTRIES:
            self._rotate = True  # the next write seals this pair (_end_run sent it to _write_any)
        if inline:
            self._do_io(*job)
        else:
            self._submit(job)
        self._uids = []
        self._metas = []
        self._meta_of = {}
        self._direct_bytes = 0
        self._first_t = _monotonic()

    def _start_io_thread(self) -> None:
        # one I/O thread per writer does every buffered write in order, so the shard bytes of an
        # item always reach the OS before the index record naming it, while the writing thread
        # keeps encoding items; it also publishes items left buffered by a stalled producer
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._io_loop, name=f"exca-lite-writer-{self._stem}", daemon=True
            )
            self._thread.start()

    def _submit(self, job: tuple[tp.Any, int, list[tp.Any] | None, bool, tp.Any]) -> None:
        self._start_io_thread()
        self._jobs.put(job)

    def _io_loop(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=FLUSH_MAX_AGE_S / 2)
            except queue.Empty:
                try:
                    self._publish_if_stale()
                    self._segment_if_idle()
                except BaseException as exc:  # the thread must live on: reported like I/O errors
                    self._failed = exc
                continue
            try:
                if job is None:
                    return
                if self._failed is None:
                    self._do_io(*job)
            except BaseException as exc:  # reported to the caller by its next call
                self._failed = exc
            finally:
                self._jobs.task_done()

    def _publish_if_stale(self) -> None:
        """Publish items buffered for over FLUSH_MAX_AGE_S while the producer is busy elsewhere
        (a model computing its next batch): waiting processes and a crash then lose less."""
        if not self._uids:
            if _monotonic() - self._last_t > ROTATE_IDLE_S and not self._rotate:
                with self._buffer_lock:
                    self._end_run()  # the next write takes the general path, which rotates
                    self._rotate = True
            return
        if not self._buffer_lock.acquire(blocking=False):
            return  # the producer is writing: it checks the age itself
        try:
            # the queue is empty (this thread is its only reader and found nothing) and stays
            # so while the lock is held, so these two puts cannot block this thread on itself
            stale = time.monotonic() - self._first_t > FLUSH_MAX_AGE_S
            if self._uids and stale and self._jobs.qsize() == 0 and self._failed is None:
                self._hand_over()
        finally:
            self._buffer_lock.release()

    def _do_io(
        self,
        data: tp.Any,
        offset: int,
        obj: list[tp.Any] | None,
        buffered: bool,
        sums: tp.Sequence[tuple[int, int, int]],
    ) -> None:
        if len(data):
            sh.pwrite_all(self._bin_fd, data, offset)
            if buffered:
                # buffers of small items: one word-sum checksum per run of consecutive buffers
                # (a "span") instead of one per item; buffers are 64-byte multiples, so their
                # sums add up. Large items carry their own checksum
                if self._span_start < 0 or offset != self._span_end:
                    self._close_span()
                    self._span_start = self._span_end = offset
                self._span_sum += enc.word_sum(data)
                self._span_end = offset + len(data)
        if obj is None:
            return
        if sums:  # large arrays' checksums, from the bytes as written (see _write_direct)
            crcs = bytearray(obj[4])
            for entry, at, nbytes in sums:
                struct.pack_into("<I", crcs, 4 * entry, self._shard_checksum(at, nbytes))
            obj[4] = bytes(crcs)
        self._close_span()
        obj.append(self._spans)
        self._spans = []
        obj.append(self.store._next_stamp())  # taken last: the newest published entry wins
        if self._fsync:
            # power loss must not leave an index record pointing at bytes the disk never got
            os.fsync(self._bin_fd)
        elif self._sync_data:
            # a network filesystem: the bytes reach the server before the record naming them
            os.fdatasync(self._bin_fd)
        record = sh.frame(sh.encode_payload(obj))
        if os.fstat(self._idx_fd).st_nlink == 0:
            # removed underneath (rm -rf, clear): publishing into an unlinked file would report
            # success for items nobody can read
            path = self.store.paths.index(self._stem)
            raise FileNotFoundError(errno.ENOENT, "removed while being written", str(path))
        start = self._idx_end
        # one write per record (O_APPEND): a kill inside it leaves a torn tail, never a gap
        sh.write_all(self._idx_fd, record)
        if self._fsync:
            os.fsync(self._idx_fd)
        self._idx_end = start + len(record)
        self.store._own_flush(self._stem, start, self._idx_end, obj, offset)

    def _shard_checksum(self, offset: int, nbytes: int) -> int:
        """The word checksum of shard bytes this writer wrote, read back from the page cache into
        one reused buffer, in pieces of at most SUM_READ_BYTES (multiples of 8: their word sums
        add up)."""
        if len(self._scratch) < min(nbytes, SUM_READ_BYTES):
            self._scratch = bytearray(min(nbytes, SUM_READ_BYTES))
        total = done = 0
        while done < nbytes:
            view = memoryview(self._scratch)[: min(nbytes - done, len(self._scratch))]
            got = 0
            while got < len(view):
                n = os.preadv(self._bin_fd, [view[got:]], offset + done + got)
                if n <= 0:
                    msg = f"{self.store.paths.shard(self._stem)} was cut while being written"
                    raise StoreError(msg)
                got += n
            total += enc.word_sum(view)
            done += len(view)
        return enc.fold_word_sum(total, nbytes)

    def _close_span(self) -> None:
        if self._span_start >= 0:
            size = self._span_end - self._span_start
            checksum = enc.fold_word_sum(self._span_sum, size)
            self._spans.append([self._span_start, self._span_end, checksum])
        self._span_start = -1
        self._span_sum = 0

    def _wait_io(self) -> None:
        if self._thread is not None:
            self._jobs.join()
        if self._failed is not None:
            self._raise_failed()

    def _raise_failed(self) -> tp.NoReturn:
        failed = self._failed
        if isinstance(failed, StoreError):
            raise failed
        where = self.store.paths.shard(self._stem)
        if isinstance(failed, OSError):
            error = store_error("writing to", where, failed)
            msg = f"{error}; items written since the last successful flush are not stored"
        else:
            msg = (
                f"writing to {where} failed: {failed!r}; items written since the last "
                "successful flush are not stored"
            )
        raise StoreError(msg) from failed

    def flush(self) -> None:
        """Publish every buffered item: their bytes reach the shard before the index record."""
        if self._idx_fd < 0:
            return
        with self._buffer_lock:
            if self._failed is None and self._jobs.unfinished_tasks == 0:
                # the I/O thread is idle and cannot start anything while the buffer lock is held:
                # write here, sparing two thread hand-offs (most of a small flush's latency)
                try:
                    self._hand_over(inline=True)
                except BaseException as exc:
                    self._failed = exc
                    self._raise_failed()
                return
            self._hand_over()
        self._wait_io()

    def retract(self, item_uids: tp.Iterable[str]) -> None:
        """Take back items written under wrong uids: publish a void entry for each (newer than
        its copies, so every reader treats the uid as missing from then on), then flush."""
        for item_uid in item_uids:
            self.write(item_uid, enc.VOID_VALUE)
        self.flush()

    def close(self) -> None:
        """Flush; then keep the pair, its lock and thread for the next writer of this folder in
        this process (parked), or if enough are kept already, seal the pair and stop."""
        if not self._active:
            return
        with contextlib.suppress(ValueError):
            _thread_writers().remove(self)
        try:
            self.flush()
        except BaseException:
            self._active = False
            self._shutdown()
            raise
        self._active = False
        self._park_segment()
        key = _park_key(self.store)
        with _parked_lock:
            idle = _parked.setdefault(key, [])
            if len(idle) < PARK_MAX:
                try:
                    self._parked_size = os.fstat(self._bin_fd).st_size
                except OSError:
                    self._parked_size = -1
                self._idle = True
                self._unlock_pair()  # idle: not a busy writer for `exca-lite info` and clear
                idle.append(self)
                return
        self._shutdown()

    def _park_segment(self) -> None:
        """A big pair about to idle gets a segment of what it holds (other processes then map it
        instead of decoding it); rebuilt only once it doubled, so the work stays O(1) per item.
        Smaller pairs get theirs once idle a while (``_segment_if_idle``): a call's end is not
        delayed by it."""
        with self._segment_lock:
            self._fold_into_segment(sg.PARK_MIN_ENTRIES)

    def _segment_if_idle(self) -> None:
        """In the I/O thread, when it found nothing to do: the segment of a pair parked for
        ``IDLE_SEGMENT_S`` (see there)."""
        if not self._idle or _monotonic() - self._last_t < IDLE_SEGMENT_S:
            return
        with self._segment_lock:
            if self._idle:  # taken back meanwhile: its next park decides
                self._fold_into_segment(sg.MIN_ENTRIES)

    def _fold_into_segment(self, min_entries: int) -> None:
        """Build the pair's segment, covering its index as published now, if at least
        ``min_entries`` entries (and as many as the current segment holds) are not in it yet."""
        # a parked writer publishes nothing: both are settled. Taken back meanwhile (a rare race
        # with _segment_if_idle), it counts a record's entries before publishing it, so
        # ``entries`` may exceed what ``end`` covers: that only delays the next rebuild
        entries = self._entries
        end = self._idx_end
        uncovered = entries - self._covered
        if (
            uncovered >= min_entries
            and uncovered >= self._covered
            and entries <= sg.MAX_ENTRIES
            and self._failed is None
            and self._untouched()
            and self._build_segment(end)
        ):
            self._covered = entries

    def _build_segment(self, end: int) -> bool:
        return sg.build_for_pair(
            self.store.paths,
            self._stem,
            self._file_id,
            end,
            fsync=self._fsync or self._sync_data,
            replace=True,  # a segment of this pair is this writer's own, covering less
        )

    def _shutdown(self, segment: bool = True) -> None:
        """Stop the I/O thread, seal the pair (after a flush) and close the files; then fold the
        sealed pair's index into a segment (``segment.py``) unless ``segment`` is False."""
        self._idle = False
        self._active = False
        try:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
                self._thread = None
        finally:
            if self._idx_fd >= 0 and self._failed is None and not self._uids and self._untouched():
                seal = sh.frame(sh.encode_payload([sh.RECORD_SEAL]))
                try:
                    # sealed: compaction may fold and remove this pair as soon as it likes
                    sh.write_all(self._idx_fd, seal)
                    self._idx_end += len(seal)
                except OSError:
                    segment = False  # unsealed pairs are folded once they look abandoned
                else:
                    if (
                        segment
                        and sg.MIN_ENTRIES <= self._entries <= sg.MAX_ENTRIES
                        and self._entries > self._covered
                    ):
                        self._build_segment(self._idx_end)
            self._close_files()

    def _untouched(self) -> bool:
        """Whether the index is as this writer left it (nobody else ever writes to it; if
        someone did, a seal after their bytes would read as damage)."""
        try:
            stat = os.fstat(self._idx_fd)
        except OSError:
            return False
        # removed (clear): a segment written now would outlive its pair
        return stat.st_size == self._idx_end and stat.st_nlink > 0

    def _close_files(self) -> None:
        for fd in (self._bin_fd, self._idx_fd):
            if fd >= 0:
                os.close(fd)
        self._bin_fd = self._idx_fd = -1


__all__ = [
    "FLUSH_MAX_AGE_S",
    "FLUSH_MAX_BYTES",
    "FLUSH_MAX_ITEMS",
    "LARGE_ITEM_BYTES",
    "ROTATE_ENTRIES",
    "MapWriter",
]
