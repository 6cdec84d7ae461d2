"""The writer of the map store: appends items to one writer slot's shard and index.

Why it looks like this (docs/design.md has the protocol and the crash analysis):

- ``write`` must cost microseconds: small items are copied into a buffer, no system call; a
  background I/O thread writes full buffers, then the index record naming their items, so the
  shard bytes of an item always reach the OS before its entry is published.
- Large items are written in the calling thread straight from their own memory (no copy), at an
  offset past every buffer given to the I/O thread, so both write at once.
- Items a stalled producer left buffered are published by the I/O thread after about a second, so
  a process waiting for them (claims) or a crash loses little.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
import types
import typing as tp
import zlib
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..fsio import atomic_write
from . import encoding as enc
from . import format as sh
from . import locks

if tp.TYPE_CHECKING:
    from .mapstore import MapStore

FLUSH_MAX_BYTES = 8 << 20
FLUSH_MAX_ITEMS = 1000
FLUSH_MAX_AGE_S = 1.0
SLOW_PRODUCER_S = 0.1
"""A write() arriving this long after the previous one is published at once: the producer is slow,
so batching saves nothing while a process waiting for the item would wait one more item."""
_FEW = 16
LARGE_ITEM_BYTES = 256 << 10
SUM_READ_BYTES = 8 << 20
"""Piece size in which the I/O thread reads a large item back to checksum it."""
"""Items this big skip the write buffer and go to the shard straight from their own memory."""
_monotonic = time.monotonic


_parked_lock = threading.Lock()
_parked: dict[tuple[str, str], MapWriter] = {}
"""Idle writers kept between uses, one per (folder, durability) in this process: a closed writer
frees its slot lock (so compaction, clear and other writers see the slot free) but keeps its open
files and its I/O thread. The next ``store.writer()`` of that folder tries the same slot again
(one ``flock``) and, if nobody touched the pair meanwhile, goes on appending: no folder listing,
no index read, no thread start. ``MapStore.close()`` and ``clear()`` close it."""


def _forget_parked_after_fork() -> None:
    # a forked child holds none of these (no I/O thread, locks owned by the parent)
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
    """The idle writer of ``store``'s folder, if any, now owned by the caller (and ``store``)."""
    if not _parked:
        return None
    with _parked_lock:
        writer = _parked.pop(_park_key(store), None)
    if writer is not None:
        writer.store = store
    return writer


def release_all_parked() -> None:
    """Close every idle writer of this process (and their I/O threads), e.g. before forking."""
    with _parked_lock:
        writers = list(_parked.values())
        _parked.clear()
    for writer in writers:
        writer._shutdown()


def release_parked(store: MapStore) -> None:
    """Close the idle writer of ``store``'s folder, if any (its slot becomes free)."""
    writer = take_parked(store)
    if writer is not None:
        writer._shutdown()


def _file_id(path: Path, head: bytes, magic: bytes) -> bytes:
    """The file id in the header ``head`` of ``path``; a StoreError saying why if it is none."""
    file_id = sh.parse_header(head, magic)
    if file_id is None:
        raise StoreError(f"{path}: {sh.header_problem(head, magic)} (see verify(), clear())")
    return file_id


class _DamagedPair(Exception):
    """The slot's shard is shorter than its index says: the writer must take another slot."""


class MapWriter:
    """Appends items to one slot's shard and publishes them in batches to its index.

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
        self._slot = -1
        self._lock: locks.FdLock | None = None
        self._bin_fd = -1
        self._idx_fd = -1
        self._stem = ""
        self._idx_end = 0
        self._buf = bytearray()
        self._buf_start = 0  # shard offset of self._buf[0]; always 64-aligned
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
    def slot(self) -> int:
        return self._slot

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
        if self._lock is not None:
            return
        if self._idle:
            self._idle = False
            lock = locks.try_slot(self.store.paths, self._slot)
            if lock is not None and self._still_good():
                self._lock = lock
                self._last_t = self._first_t = time.monotonic()
                return
            # taken, compacted, cleared, damaged or failed meanwhile: start afresh
            if lock is not None:
                locks.release_slot(self.store.paths, self._slot, lock)
            self._shutdown()
            self._failed = None  # reported to the user of the previous writer already
            self._span_start, self._span_sum, self._spans = -1, 0, []
            self._buf = bytearray()
            # items a failed writer had not published are lost (its user was told so)
            self._uids, self._offsets, self._nbytes, self._crcs, self._mix = [], [], [], [], []
            self._parts, self._pending_sums, self._metas, self._meta_of = [], [], [], {}
            self._hot_dtype = None
            self._direct_bytes = 0
        paths = self.store.paths
        damaged: list[tuple[int, locks.FdLock]] = []
        try:
            while self._lock is None:
                try:
                    paths.folder.mkdir(parents=True, exist_ok=True)
                    slot, lock = locks.acquire_slot(paths)
                except OSError as exc:
                    msg = f"cannot write into the cache folder {paths.folder}: {exc}"
                    raise StoreError(msg) from exc
                try:
                    self._open_pair(slot)
                except _DamagedPair:
                    # keep holding it until a slot is found, so acquire_slot moves past it
                    self._close_files()
                    damaged.append((slot, lock))
                    continue
                except BaseException:
                    self._close_files()
                    locks.release_slot(paths, slot, lock)
                    raise
                self._slot, self._lock = slot, lock
        finally:
            for slot, lock in damaged:
                locks.release_slot(paths, slot, lock)
        self._last_t = self._first_t = time.monotonic()
        self._start_io_thread()

    def _still_good(self) -> bool:
        """Whether a parked writer, its slot taken again, can go on with its pair: nobody removed it
        (compaction, clear), wrote to it (another holder of the slot) or cut it (external damage:
        it must then never be appended to again), and its I/O thread is fine."""
        if self._failed is not None or self._thread is None or not self._thread.is_alive():
            return False
        try:
            idx, shard = os.fstat(self._idx_fd), os.fstat(self._bin_fd)
        except OSError:
            return False
        # someone else touching the index (a torn tail appended) or cutting the shard: start
        # afresh (a new holder checks the tail, and refuses a cut shard)
        return (
            idx.st_nlink > 0
            and shard.st_nlink > 0
            and idx.st_size == self._idx_end
            and shard.st_size == self._parked_size
            and shard.st_size >= self._ref_end
        )

    def _open_pair(self, slot: int) -> None:
        paths = self.store.paths
        pairs = paths.list_pairs() or []
        # the current generation: pairs of older ones are frozen (a compaction may retire them)
        gen = max((p.gen for p in pairs if p.slot is None), default=0)
        name = sh.DataName.writer(slot, gen)
        self._stem = name.stem
        idx_path, bin_path = paths.index(name.stem), paths.shard(name.stem)
        shard_head = sh.read_header(bin_path, sh.SHARD_HEADER_BYTES)
        if shard_head is None:
            if idx_path.exists():
                raise StoreError(f"{idx_path} exists without its shard {bin_path}: run clear()")
            file_id = sh.new_file_id()
            # the shard exists before its index: a reader never finds entries without their file
            atomic_write(bin_path, sh.shard_header(file_id), fsync=self._fsync)
        else:
            file_id = _file_id(bin_path, shard_head, sh.SHARD_MAGIC)
        index_head = sh.read_header(idx_path, sh.INDEX_HEADER_BYTES)
        if index_head is None:
            atomic_write(idx_path, sh.index_header(file_id), fsync=self._fsync)
        elif _file_id(idx_path, index_head, sh.INDEX_MAGIC) != file_id:
            msg = f"{idx_path} and {bin_path} do not belong together (file ids differ)"
            raise StoreError(msg)
        # read too: the I/O thread checksums large items from the shard (see _write_direct)
        self._bin_fd = os.open(bin_path, os.O_RDWR)
        self._idx_fd = os.open(idx_path, os.O_WRONLY | os.O_APPEND)
        if self.store._loaded:
            # also registers the new pair, so this store takes in its own flushes without
            # re-reading them
            self.store.refresh()
        state = self.store._pair_state(name.stem)
        if state is not None and not state.bad:
            valid_end, referenced = state.pos, state.max_end
        else:
            valid_end, referenced = sh.index_extent(idx_path, file_id)
        size = os.fstat(self._bin_fd).st_size
        if referenced > size:
            # published entries point past the shard's end: it lost bytes (truncated, or a power
            # loss kept a record but not its data). Appending would give those entries bytes
            # again -- the wrong ones -- so this shard is never written again: the writer takes
            # another slot, readers keep rejecting those entries, compact() folds the pair in
            raise _DamagedPair(str(bin_path))
        if os.fstat(self._idx_fd).st_size > valid_end:
            # a torn record from a holder that died mid-append; readers never read past valid_end
            # (they stop at a record they cannot check), so cutting it is invisible to them
            os.ftruncate(self._idx_fd, valid_end)
        self._idx_end = valid_end
        # garbage a dead holder left after its last published item is dead bytes: skip it; and
        # never below a byte an entry points to (an old entry must never see new bytes)
        self._buf_start = sh.align_up(max(size, referenced))

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
                    buf = self._buf
                    try:
                        buf.extend(value)  # C-contiguous arrays only: others raise TypeError
                    except (TypeError, ValueError, BufferError):
                        pass  # the general path below copies it
                    else:
                        buf += self._hot_pad
                        uids = self._uids
                        uids.append(item_uid)
                        now = _monotonic()
                        last, self._last_t = self._last_t, now
                        if (
                            now - last > SLOW_PRODUCER_S
                            or len(uids) >= FLUSH_MAX_ITEMS
                            or len(buf) >= FLUSH_MAX_BYTES
                            or now - self._first_t > FLUSH_MAX_AGE_S
                        ):
                            if self._failed is not None:
                                self._raise_failed()
                            self._hand_over()
                        return
        self._write_any(item_uid, value)

    def _write_any(self, item_uid: str, value: tp.Any) -> None:
        """Every item the hot path does not take: picks the format and meta, may start a run."""
        if self._lock is None:
            self.open()
        if self._failed is not None:
            self._raise_failed()
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
                self._offsets.append(self._buf_start + len(buf))
                buf.extend(data)
                self._ref_end = self._buf_start + len(buf)
                buf += sh.ZEROS[: -nbytes % sh.ALIGN]
                self._uids.append(item_uid)
                self._nbytes.append(nbytes)
                self._crcs.append(crc)
                self._mix.append(mix)
            if hot:  # the next items of this dtype and shape take the hot path
                self._hot_dtype, self._hot_shape = value.dtype, value.shape
                self._hot_pad = sh.ZEROS[: -nbytes % sh.ALIGN]
                self._run_nbytes, self._run_mix = nbytes, mix
                self._run_from = len(self._uids)
                self._run_offset = self._buf_start + len(self._buf)
            now = _monotonic()
            slow = now - self._last_t > SLOW_PRODUCER_S
            self._last_t = now
            if (
                slow
                or self._direct_bytes + len(self._buf) >= FLUSH_MAX_BYTES
                or len(self._uids) >= FLUSH_MAX_ITEMS
                or now - self._first_t > FLUSH_MAX_AGE_S
            ):
                self._hand_over()

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
            msg = f"writing item {item_uid!r} to {self.store.paths.shard(self._stem)} failed: {exc}"
            raise StoreError(msg) from exc
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
        if self._buf:
            job = (self._buf, self._buf_start, None, True, ())
            if inline:
                self._do_io(*job)
            else:
                self._submit(job)
            self._buf_start += len(self._buf)
            self._buf = bytearray()

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
                target=self._io_loop, name=f"exca-lite-writer-{self._slot}", daemon=True
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
        if not self._uids or not self._buffer_lock.acquire(blocking=False):
            return  # nothing buffered, or the producer is writing: it checks the age itself
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
        record = sh.frame(sh.encode_payload(obj))
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
        msg = (
            f"writing to {self.store.paths.shard(self._stem)} failed: {self._failed!r}; "
            "items written since the last successful flush are lost"
        )
        raise StoreError(msg) from self._failed

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

    def close(self) -> None:
        """Flush; then keep the slot, files and thread for the next writer of this folder in this
        process (parked), or if one is kept already, stop the thread, close the files and free
        the slot."""
        if self._lock is None or self._idle:
            return
        try:
            self.flush()
        except BaseException:
            self._shutdown()
            raise
        key = _park_key(self.store)
        with _parked_lock:
            if key not in _parked:
                try:
                    self._parked_size = os.fstat(self._bin_fd).st_size
                except OSError:
                    self._parked_size = -1
                self._idle = True
                locks.release_slot(self.store.paths, self._slot, self._lock)
                self._lock = None
                _parked[key] = self
                return
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop the I/O thread, close the files and free the slot if held (after a flush)."""
        self._idle = False
        try:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
                self._thread = None
        finally:
            self._close_files()
            if self._lock is not None:
                locks.release_slot(self.store.paths, self._slot, self._lock)
                self._lock = None

    def _close_files(self) -> None:
        for fd in (self._bin_fd, self._idx_fd):
            if fd >= 0:
                os.close(fd)
        self._bin_fd = self._idx_fd = -1


__all__ = ["FLUSH_MAX_AGE_S", "FLUSH_MAX_BYTES", "FLUSH_MAX_ITEMS", "LARGE_ITEM_BYTES", "MapWriter"]
