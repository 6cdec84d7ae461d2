"""Round trips through the map store for generated values: every dtype, shape and layout of arrays,
plain data through msgpack, everything else through pickle, each coming back with its own type."""

from __future__ import annotations

import itertools
import sys
import types
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exca_lite.errors import StoreError
from exca_lite.store import MapStore
from exca_lite.store.encoding import is_plain

_counter = itertools.count()
_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

DTYPES = st.sampled_from(
    [
        "<f4",
        ">f4",
        "<f8",
        ">i8",
        "<i2",
        "u1",
        "?",
        "<c16",
        ">c8",
        "<M8[ns]",
        ">m8[s]",
        "<U5",
        "S3",
        "<f2",
        ">u4",
    ]
).map(np.dtype)


def roundtrip(folder: Path, value: tp.Any, cache_type: tp.Any = None) -> tp.Any:
    uid = f"v{next(_counter)}"
    with MapStore(folder).writer(cache_type) as w:
        w.write(uid, value)
    return MapStore(folder).load(uid)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "transposed", "strided"]))
    if layout == "transposed" and arr.ndim > 1:
        arr = arr.T
    elif layout == "strided" and arr.ndim >= 1:
        arr = arr[::2]
    return arr


@pytest.mark.timeout(60)
@_SETTINGS
@given(arr=arrays())
def test_arrays_round_trip(tmp_path: Path, arr: np.ndarray) -> None:
    got = roundtrip(tmp_path, arr)
    assert type(got) is np.ndarray
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert not got.flags.writeable
    assert got.tobytes() == np.ascontiguousarray(arr).tobytes()  # bitwise: NaN and NaT included


def test_a_series_of_same_shape_arrays_round_trips_whatever_their_layout(tmp_path: Path) -> None:
    # the writer's hot path takes an array like the previous one without looking at its meta:
    # layouts, dtypes without a buffer export, record boundaries and a format switch must all
    # leave it
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    values: dict[str, tp.Any] = {}
    for i in range(2500):  # crosses the 1000-item record boundary twice
        values[f"c{i}"] = base + i
    values["strided"] = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]
    values["fortran"] = np.asfortranarray(base * 2)
    values["after"] = base - 1
    values["dt0"] = np.arange(4).astype("datetime64[s]")
    values["dt1"] = np.arange(4, 8).astype("datetime64[s]")
    store = MapStore(tmp_path / "c")
    with store.writer() as writer:
        for uid, value in values.items():
            writer.write(uid, value)
        writer.configure("pickle")
        writer.write("pickled", base + 5)
    reader = MapStore(tmp_path / "c")
    for uid, value in values.items():
        got = reader.load(uid)
        assert got.dtype == value.dtype and got.shape == value.shape, uid
        assert got.tobytes() == np.ascontiguousarray(value).tobytes(), uid
    pickled = reader.load("pickled")
    assert pickled.flags.writeable  # unpickled, not a view on the shard
    np.testing.assert_array_equal(pickled, base + 5)


@pytest.mark.timeout(60)
@_SETTINGS
@given(arr=arrays())
def test_a_batch_of_arrays_reads_back_as_written_views(tmp_path: Path, arr: np.ndarray) -> None:
    # load_many serves a batch of one shard and one meta as rows of one strided view of the map:
    # each must be the array written, read-only, whatever its dtype and shape (0-d, empty,
    # datetime64 and structured included), with or without other items in the batch
    folder = tmp_path / f"c{next(_counter)}"
    values = {f"i{k}": arr for k in range(40)}
    values.update({f"j{k}": np.full(3, k, dtype=np.int16) for k in range(3)})
    store = MapStore(folder)
    with store.writer() as writer:
        for uid, value in values.items():
            writer.write(uid, value)
    reader = MapStore(folder)
    for batch in (list(values)[:40], list(values), list(values)[::-1]):
        for uid, got in zip(batch, reader.load_many(batch), strict=True):
            want = values[uid]
            assert type(got) is np.ndarray, uid
            assert got.dtype == want.dtype and got.shape == want.shape, uid
            assert not got.flags.writeable, uid
            assert got.tobytes() == np.ascontiguousarray(want).tobytes(), uid


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.timeout(60)
@_SETTINGS
@given(value=plain)
def test_plain_data_round_trips_through_msgpack(tmp_path: Path, value: tp.Any) -> None:
    assert is_plain(value)
    got = roundtrip(tmp_path, value, "msgpack")
    assert got == value and type(got) is type(value)
    assert roundtrip(tmp_path, value) == value


others = st.one_of(
    st.tuples(st.integers(), st.text(max_size=4)),
    st.floats(width=32).map(np.float32),
    st.integers(min_value=-(2**31), max_value=2**31 - 1).map(np.int32),
    st.frozensets(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=4), hnp.arrays(np.float32, 3), min_size=1, max_size=3),
    st.integers(min_value=2**64),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=3),
)


@pytest.mark.timeout(60)
@_SETTINGS
@given(value=others)
def test_other_values_round_trip_through_pickle_with_their_type(
    tmp_path: Path, value: tp.Any
) -> None:
    assert not is_plain(value)
    got = roundtrip(tmp_path, value)
    assert type(got) is type(value)
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), np.ndarray):
        assert value.keys() == got.keys()
        for key in value:
            np.testing.assert_array_equal(got[key], value[key])
    elif isinstance(value, (float, np.floating)) and value != value:
        assert got != got
    else:
        assert got == value


@pytest.mark.timeout(60)
def test_is_plain_is_exact() -> None:
    assert is_plain({"a": [1, 2.0, None, "x", b"y", True]})
    for value in [(1,), np.float64(1.0), {1: 2}, [1, (2,)], 1 << 64, bytearray(b"x")]:
        assert not is_plain(value), value

    class Sub(str):
        pass

    assert not is_plain(Sub("x"))


@pytest.mark.timeout(60)
def test_an_item_whose_class_is_gone_names_the_item_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("gone_user_module")
    monkeypatch.setitem(sys.modules, module.__name__, module)

    class Payload:
        def __init__(self, n: int) -> None:
            self.n = n

    Payload.__module__, Payload.__qualname__ = module.__name__, "Payload"
    module.Payload = Payload  # type: ignore[attr-defined]
    store = MapStore(tmp_path)
    with store.writer() as w:
        w.write("x", Payload(3))
        w.write("y", {"fine": 1})
    assert MapStore(tmp_path).load("x").n == 3
    del module.Payload  # renamed or removed since the cache was written
    fresh = MapStore(tmp_path)
    with pytest.raises(StoreError, match="cannot decode item 'x' of ") as info:
        fresh.load("x")
    message = str(info.value)
    assert str(tmp_path) in message and "AttributeError" in message and "Payload" in message
    assert "renamed" in message and "clear the cache" in message
    assert isinstance(info.value.__cause__, AttributeError)
    assert fresh.load("y") == {"fine": 1}  # the rest of the cache is still served
