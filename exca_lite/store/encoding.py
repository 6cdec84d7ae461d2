"""How an item value becomes bytes in a shard, and back: the three formats of the map store.

Encoding is separate from indexing (as in diskcache's ``Disk``/``Cache``): the store only sees
``(format, dtype, shape)`` metadata and a byte count.

- ``array``: a numpy array of any non-object dtype, stored as its raw C-order bytes and read back
  as a read-only view on the shard's memory map. The dtype is kept by its full description
  (byte order, structured fields), so ``'>f4'`` comes back as ``'>f4'``.
- ``msgpack``: plain data that msgspec round-trips *exactly*. Only exact ``None``/``bool``/``int``
  (64-bit)/``float``/``str``/``bytes``/``list``/``dict`` with str keys qualify: a tuple would come
  back as a list and a numpy scalar as a float, so those are pickled instead.
- ``pickle``: everything else; the same type comes back.

A fourth code, ``VOID``, is not a format of values: an entry of it (no bytes) says its uid has no
value, superseding older copies the way any newer entry does. A writer publishes such entries to
take back items it stored under wrong uids (a map method that yielded too few or too many outputs).
"""

from __future__ import annotations

import ast
import pickle
import typing as tp

import msgspec
import numpy as np

from ..errors import StoreError

CacheType = tp.Literal["array", "msgpack", "pickle"] | None
"""A format forced by the caller, or None to pick one per value."""

ARRAY = 0
MSGPACK = 1
PICKLE = 2
VOID = 3
FORMAT_NAMES = {"array": ARRAY, "msgpack": MSGPACK, "pickle": PICKLE}
"""``cache_type`` values (None picks the format per value) and their codes in the index."""


class _Void:
    """The value whose entry says "no value": see ``VOID``."""

    def __repr__(self) -> str:
        return "VOID_VALUE"


VOID_VALUE: tp.Final = _Void()

_ARRAY_TYPES = (np.ndarray, np.memmap)
"""Exact types stored raw: other ndarray subclasses (masked, matrix) carry more than their bytes."""

_MAX_DEPTH = 100
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[tp.Any] = msgspec.msgpack.Decoder()


def is_plain(value: tp.Any, depth: int = 0) -> bool:
    """True if msgspec.msgpack gives back exactly ``value`` (same types, recursively)."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if depth >= _MAX_DEPTH:
        return False
    if kind is list:
        return all(is_plain(sub, depth + 1) for sub in value)
    if kind is dict:
        return all(type(k) is str and is_plain(v, depth + 1) for k, v in value.items())
    return False


def is_raw_array(value: tp.Any) -> bool:
    """True if ``value`` is stored in the ``array`` format (its bytes are all there is to it)."""
    return type(value) in _ARRAY_TYPES and not value.dtype.hasobject


def pick_format(value: tp.Any, forced: int | None) -> int:
    """The format code for ``value``: the forced one if it can take the value, else a StoreError."""
    if value is VOID_VALUE:
        return VOID
    if forced is None:
        if is_raw_array(value):
            return ARRAY
        return MSGPACK if is_plain(value) else PICKLE
    if forced == ARRAY and not is_raw_array(value):
        msg = (
            f'cache_type="array" needs a numpy.ndarray of a non-object dtype, got '
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
        raise StoreError(msg)
    if forced == MSGPACK and not is_plain(value):
        msg = (
            'cache_type="msgpack" needs plain data that round-trips exactly (None, bool, int, '
            f"float, str, bytes, list, dict with str keys), got {_short_repr(value)}; "
            'use cache_type="pickle" or None'
        )
        raise StoreError(msg)
    return forced


def encode_other(value: tp.Any, fmt: int) -> bytes:
    """The bytes of a non-array value in format ``fmt`` (MSGPACK, PICKLE, or VOID: none)."""
    if fmt == VOID:
        return b""
    if fmt == MSGPACK:
        return _encoder.encode(value)
    try:
        return pickle.dumps(value, protocol=5)
    except Exception as exc:
        msg = f"cannot pickle {_short_repr(value)} for the cache: {exc!r}"
        raise StoreError(msg) from exc


def decode_other(data: memoryview, fmt: int) -> tp.Any:
    if fmt == MSGPACK:
        return _decoder.decode(data)
    return pickle.loads(data)


_U64 = (1 << 64) - 1


def word_sum(data: memoryview | bytes | bytearray) -> int:
    """The sum of ``data``'s little-endian 64-bit words (a short tail counts as one), mod 2**64.

    Sums of pieces whose lengths are multiples of 8 add up to the sum of their concatenation,
    so a writer can checksum a run of buffers one buffer at a time.
    """
    whole = len(data) // 8
    total = int(np.add.reduce(np.frombuffer(data, dtype="<u8", count=whole), dtype=np.uint64))
    return (total + int.from_bytes(bytes(data[whole * 8 :]), "little")) & _U64


def fold_word_sum(total: int, nbytes: int) -> int:
    """The 32-bit checksum of ``nbytes`` bytes whose ``word_sum`` is ``total``."""
    total = (total + nbytes) & _U64
    return (total ^ (total >> 32)) & 0xFFFFFFFF


def word_checksum(data: memoryview | bytes | bytearray) -> int:
    """A 32-bit checksum of array bytes: the sum of their 64-bit words and length, folded.

    crc32 runs at ~2-4 GB/s and would halve the write bandwidth of large arrays (and cost the
    writing thread more than the whole copy of small ones); a vectorized word sum runs at memory
    speed. It catches what storage does to data (flipped bits, zeroed or garbage pages, a torn
    write), not a reordering of 8-byte words, which storage does not do.
    """
    return fold_word_sum(word_sum(data), len(data))


def dtype_descr(dtype: np.dtype[tp.Any]) -> str:
    """A string that ``dtype_from_descr`` turns back into exactly ``dtype`` (fields included)."""
    if dtype.fields is None and dtype.subdtype is None:
        return dtype.str
    return repr(np.lib.format.dtype_to_descr(dtype))


def dtype_from_descr(descr: str) -> np.dtype[tp.Any]:
    if descr.startswith("["):
        return np.lib.format.descr_to_dtype(ast.literal_eval(descr))
    if descr.startswith("("):
        base, shape = ast.literal_eval(descr)
        return np.dtype((np.lib.format.descr_to_dtype(base), shape))
    return np.dtype(descr)


def _short_repr(value: tp.Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "ARRAY",
    "CacheType",
    "FORMAT_NAMES",
    "MSGPACK",
    "PICKLE",
    "decode_other",
    "dtype_descr",
    "dtype_from_descr",
    "encode_other",
    "is_plain",
    "is_raw_array",
    "pick_format",
    "word_checksum",
]
