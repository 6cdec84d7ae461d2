"""Edge cases a demanding ML researcher hits, checked against SPEC.md.

Behaviours that contradict SPEC are kept as ``xfail(strict=True, reason="BUG: ...")`` tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import threading
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pytest
import user_defs as ud
from user_defs import counts

import exca_lite as xl


def _rich(tmp_path: Path, **kwargs: tp.Any) -> ud.Rich:
    return ud.Rich(infra=xl.TaskInfra(folder=tmp_path), **kwargs)


RICH_VALUES: dict[str, tp.Any] = dict(
    color=ud.Color.BLUE,
    level=ud.Level.HIGH,
    data_dir=pathlib.Path("/scratch/日本/data set"),
    ckpt=pathlib.Path("relative/ckpt.pt"),
    optim=ud.Optim(lr=3e-4, betas=(0.8, 0.95)),
    layers=(128, 256, 512),
    tags=["a", "β"],
    labels=frozenset({"x", "y"}),
    weights={"cls": 0.5, "reg": 1e-300},
    scale=float("inf"),
    seed=2**100,
    blob=b"\x00\xff\x10",
    note="héllo/wörld ../.. \n\t 🚀",
)


# ----------------------------------------------------------------------------------------- configs


def test_rich_config_to_dict_from_dict_round_trip_keeps_types(tmp_path: Path) -> None:
    cfg = _rich(tmp_path, **RICH_VALUES)
    back = xl.from_dict(ud.Rich, xl.to_dict(cfg))
    assert back == cfg
    assert type(back.color) is ud.Color and back.color is ud.Color.BLUE
    assert type(back.level) is ud.Level and back.level is ud.Level.HIGH
    assert isinstance(back.data_dir, pathlib.Path) and isinstance(back.ckpt, pathlib.Path)
    assert isinstance(back.optim, ud.Optim) and back.optim.betas == (0.8, 0.95)
    assert type(back.optim.betas) is tuple and type(back.layers) is tuple
    assert type(back.tags) is list and type(back.labels) is frozenset
    assert back.seed == 2**100 and back.blob == b"\x00\xff\x10" and back.scale == math.inf
    assert back.run.uid() == cfg.run.uid()


def test_rich_config_survives_a_json_file(tmp_path: Path) -> None:
    values = {k: v for k, v in RICH_VALUES.items() if k not in ("blob", "scale")}
    cfg = _rich(tmp_path, **values)
    path = tmp_path / "cfg.json"
    data = xl.to_dict(cfg)
    data.pop("blob")  # to_dict keeps bytes as bytes (the default b"" included): not JSON
    path.write_text(json.dumps(data))
    back = xl.load_config(ud.Rich, path)
    assert back == cfg
    assert back.run.uid() == cfg.run.uid()


def test_cache_config_json_keeps_inf_and_nan(tmp_path: Path) -> None:
    cfg = _rich(tmp_path, scale=math.inf, weights={"a": -math.inf})
    cfg.run()
    folder = cfg.run.folder()
    assert folder is not None
    stored = json.loads((folder / "config.json").read_text())
    assert stored["scale"] is not None and stored["weights"]["a"] is not None
    back = xl.load_config(ud.Rich, folder / "config.json")
    assert back.scale == math.inf and back.run.uid() == cfg.run.uid()


def test_cache_config_json_loads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = _rich(tmp_path, **{k: v for k, v in RICH_VALUES.items() if k != "scale"})
    cfg.run()
    folder = cfg.run.folder()
    assert folder is not None
    back = xl.load_config(ud.Rich, folder / "config.json")
    assert back.run.uid() == cfg.run.uid()
    assert dataclasses.replace(back, infra=cfg.infra) == cfg


def test_rich_result_round_trips_through_a_subprocess(tmp_path: Path) -> None:
    cfg = ud.Rich(infra=xl.TaskInfra(folder=tmp_path, cluster="local"), **RICH_VALUES)
    out = cfg.run()
    fresh = ud.Rich(infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False), **RICH_VALUES)
    for result in (out, fresh.run()):
        for key, value in RICH_VALUES.items():
            assert result[key] == value, key
            assert type(result[key]) is type(value), key


@pytest.mark.parametrize(
    "field,value,path",
    [
        ("weights", {"w": np.zeros(3)}, "weights.w"),
        ("tags", [1, lambda x: x], "tags"),
        ("weights", {1: 0.5}, "weights"),
        ("labels", {"a", "b"}, "labels"),
        ("seed", np.int64(3), "seed"),
        ("scale", np.float32(1.5), "scale"),
        ("optim", ud.Optim(name=np.array(["sgd"])), "optim.name"),  # type: ignore[arg-type]
    ],
)
def test_unsupported_field_values_name_the_field(
    tmp_path: Path, field: str, value: tp.Any, path: str
) -> None:
    cfg = _rich(tmp_path, **{field: value})
    with pytest.raises(TypeError, match=path.replace(".", r"\.")):
        cfg.run.uid()
    assert not any(tmp_path.iterdir())


def test_array_equal_to_nested_default_is_still_rejected(tmp_path: Path) -> None:
    cfg = _rich(tmp_path, optim=ud.Optim(name=np.array(["adam"])))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optim\.name"):
        cfg.run.uid()


def test_open_file_in_config_names_the_field(tmp_path: Path) -> None:
    with open(tmp_path / "f.txt", "w") as f:
        cfg = _rich(tmp_path, optim=ud.Optim(name=f))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"optim\.name"):
            cfg.run()


@pytest.mark.parametrize(
    "data,path",
    [
        ({"color": "green"}, "color"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"optim": {"momentum": 0.9}}, "optim.momentum"),
        ({"tags": ["a", 3]}, "tags"),
        ({"level": 3}, "level"),
        ({"seed": 1.5}, "seed"),
        ({"infra": {"cluster": "sluurm"}}, "infra.cluster"),
        ({"infra": {"mode": "overwrite"}}, "infra.mode"),
    ],
)
def test_from_dict_bad_data_names_the_field(data: dict[str, tp.Any], path: str) -> None:
    with pytest.raises(xl.ValidationError, match=path.replace(".", r"\.")):
        xl.from_dict(ud.Rich, data)


def test_non_frozen_and_non_dataclass_owners_are_clear_type_errors() -> None:
    @dataclasses.dataclass
    class NotFrozen:
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply
        def run(self) -> int:
            return 1

    class Plain:
        infra = xl.TaskInfra()

        @infra.apply
        def run(self) -> int:
            return 1

    with pytest.raises(TypeError, match="frozen=True"):
        NotFrozen().run()
    with pytest.raises(TypeError, match="frozen=True"):
        Plain().run()


# -------------------------------------------------------------------------------------------- uids


def test_uid_ignores_dict_order_and_list_vs_tuple_spelling(tmp_path: Path) -> None:
    a = _rich(tmp_path, weights={"a": 1.0, "b": 2.0})
    b = _rich(tmp_path, weights={"b": 2.0, "a": 1.0})
    assert a.run.uid() == b.run.uid()


def test_explicit_default_values_keep_the_default_uid(tmp_path: Path) -> None:
    assert _rich(tmp_path).run.uid() == _rich(tmp_path, scale=1.0, tags=[], seed=None).run.uid()
    assert _rich(tmp_path).run.uid().split("/")[1].startswith("default-")


def test_float_edge_values_give_distinct_uids(tmp_path: Path) -> None:
    values = [1e-300, 5e-324, 1.0, 1.0000000000000002, math.inf, -math.inf, math.nan, 0.1 + 0.2]
    uids = {_rich(tmp_path, scale=v).run.uid() for v in values}
    assert len(uids) == len(values)


def test_huge_ints_and_int_vs_float_give_distinct_uids(tmp_path: Path) -> None:
    uids = {_rich(tmp_path, seed=v).run.uid() for v in (2**64, 2**64 + 1, 10**16, 0)}
    uids.add(_rich(tmp_path, weights={"a": 1.0}).run.uid())
    uids.add(_rich(tmp_path, weights={"a": True}).run.uid())  # type: ignore[dict-item]
    assert len(uids) == 6
    # numbers count by their annotation (dict[str, float]): 1 is 1.0 there
    assert (
        _rich(tmp_path, weights={"a": 1}).run.uid() == _rich(tmp_path, weights={"a": 1.0}).run.uid()
    )


def test_uid_is_stable_across_processes_with_hash_randomization(tmp_path: Path) -> None:
    code = (
        "import pathlib, user_defs as ud, exca_lite as xl\n"
        "c = ud.Rich(labels=frozenset({'x','y','z','w'}), weights={'b':1.0,'a':2.0},"
        " color=ud.Color.BLUE, note='日本', infra=xl.TaskInfra(folder='/nowhere'))\n"
        "print(c.run.uid())\n"
    )
    uids = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        uids.add(res.stdout.strip())
    assert len(uids) == 1


def test_unicode_and_slashes_in_values_stay_one_folder_level(tmp_path: Path) -> None:
    cfg = _rich(tmp_path, note="../../etc/passwd/ü", tags=["/", "\\", ".."])
    folder = cfg.run.folder()
    assert folder is not None
    assert folder.parent.parent == tmp_path
    assert cfg.run()["note"] == "../../etc/passwd/ü"
    assert folder.is_dir()


def test_negative_zero_is_not_the_default_zero(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    zero = ud.Scaled(x=0.0, counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    neg = ud.Scaled(x=-0.0, counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    assert zero.run() == "0.0"
    assert neg.run() == "-0.0"  # SPEC: floats are encoded by their exact repr


def test_negative_zero_differs_from_zero_when_default_is_nonzero(tmp_path: Path) -> None:
    zero = ud.Rich(scale=0.0, infra=xl.TaskInfra(folder=tmp_path))
    neg = ud.Rich(scale=-0.0, infra=xl.TaskInfra(folder=tmp_path))
    assert zero.run.uid() != neg.run.uid()
    assert math.copysign(1, neg.run()["scale"]) == -1


def test_nan_equal_to_nan_default_keeps_the_default_uid(tmp_path: Path) -> None:
    default = ud.NanDefault(infra=xl.TaskInfra(folder=tmp_path))
    explicit = ud.NanDefault(x=float("nan"), infra=xl.TaskInfra(folder=tmp_path))
    assert default.run.uid() == explicit.run.uid()


def test_version_bump_gives_a_new_cache(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    v1 = ud.Rich(counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    v2 = ud.Rich(counter=counter, infra=xl.TaskInfra(folder=tmp_path, version="2"))
    v0 = ud.Rich(counter=counter, infra=xl.TaskInfra(folder=tmp_path, version="0"))
    assert v1.run.infra.version == "1" and v0.run.infra.version == "0"
    assert len({v1.run.uid(), v2.run.uid(), v0.run.uid()}) == 3
    v1.run(), v2.run(), v0.run()
    assert counts(counter) == {"run": 3}


# -------------------------------------------------------------------------------------- TaskInfra


def test_task_force_recomputes_once_per_object(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=tmp_path)).run()
    for keep_in_ram in (True, False):
        forced = ud.Flaky(
            fail=False,
            counter=counter,
            infra=xl.TaskInfra(folder=tmp_path, mode="force", keep_in_ram=keep_in_ram),
        )
        assert forced.run() == 42 and forced.run() == 42
    assert counts(counter) == {"run": 3}


def test_cached_failure_retry_and_traceback(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    failing = ud.Flaky(fail=True, counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(Exception, match="flaky failure 1234"):
        failing.run()
    assert failing.run.status() == "failed"
    # another object (the exclusion makes it the same cache) gets the cached failure, not a rerun
    fixed = ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    with pytest.raises(Exception, match="flaky failure 1234") as info:
        fixed.run()
    assert "user_defs.py" in str(info.value)  # the job's own traceback text
    assert counts(counter) == {"run": 1}
    retry = ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=tmp_path, mode="retry"))
    assert retry.run() == 42 and retry.run.status() == "completed"
    assert fixed.run() == 42
    assert counts(counter) == {"run": 2}


def test_local_failure_carries_the_job_traceback(tmp_path: Path) -> None:
    failing = ud.Flaky(fail=True, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    with pytest.raises(Exception, match="flaky failure 1234") as info:
        failing.run()
    assert "user_defs.py" in str(info.value) and "raise ValueError" in str(info.value)
    assert failing.run.status() == "failed"


def test_task_read_only_never_computes_nor_writes(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    root = tmp_path / "cache"
    ro = ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=root, mode="read-only"))
    with pytest.raises(xl.CacheMissError):
        ro.run()
    assert ro.run.status() == "not submitted"
    with pytest.raises(xl.CacheMissError):
        ro.run.job().result()
    assert not root.exists() and counts(counter) == {}
    ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=root)).run()
    ro2 = ud.Flaky(fail=False, counter=counter, infra=xl.TaskInfra(folder=root, mode="read-only"))
    assert ro2.run() == 42 and counts(counter) == {"run": 1}


def test_clear_then_recompute_with_keep_in_ram(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    task = ud.Rich(note="x", counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    task.run()
    task.run.clear()
    assert task.run.status() == "not submitted"
    # a cleared cache must not be served from RAM: clear() means "compute again"
    task.run()
    assert counts(counter) == {"run": 2}


def test_clear_by_another_object_is_seen_in_this_process(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    task = ud.Rich(note="x", counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    task.run()
    other = ud.Rich(note="x", counter=counter, infra=xl.TaskInfra(folder=tmp_path))
    other.run.clear()
    assert task.run.status() == "not submitted"  # holds, yet the next call computes nothing:
    task.run()  # nothing is cached anywhere, so this must compute
    assert counts(counter) == {"run": 2}


def test_keep_in_ram_false_returns_equal_fresh_objects(tmp_path: Path) -> None:
    task = ud.Rich(tags=["a"], infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False))
    first, second = task.run(), task.run()
    assert first == second and first is not second
    first["tags"].append("mutated")  # mutating a result must not corrupt the cache
    assert task.run()["tags"] == ["a"]


def test_two_methods_two_infras_on_one_class(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    obj = ud.Both(
        x=3,
        counter=counter,
        task_infra=xl.TaskInfra(folder=tmp_path / "t"),
        map_infra=xl.MapInfra(folder=tmp_path / "m"),
    )
    assert obj.total.uid().startswith("user_defs.Both.total,3/x=3-")
    assert obj.per_item.uid().startswith("user_defs.Both.per_item,7/x=3-")
    assert obj.total() == 300 and list(obj.per_item(["ab", "c"])) == [5, 4]
    again = ud.Both(
        x=3,
        counter=counter,
        task_infra=xl.TaskInfra(folder=tmp_path / "t"),
        map_infra=xl.MapInfra(folder=tmp_path / "m"),
    )
    assert again.total() == 300 and list(again.per_item(["c", "ab"])) == [4, 5]
    assert counts(counter) == {"total": 1, "ab": 1, "c": 1}
    assert obj.total.folder().parent.parent == tmp_path / "t"  # type: ignore[union-attr]
    assert obj.per_item.folder().parent.parent == tmp_path / "m"  # type: ignore[union-attr]


def test_inheritance_override_default_and_added_field(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")

    def make(cls: type[ud.Base], **kw: tp.Any) -> ud.Base:
        return cls(counter=counter, infra=xl.TaskInfra(folder=tmp_path), **kw)

    assert make(ud.Base).run() == ("Base", 1)
    assert make(ud.ChildDefault).run() == ("ChildDefault", 5)
    assert make(ud.ChildDefault, a=1).run() == ("ChildDefault", 1)
    assert make(ud.ChildField).run() == ("ChildField", 1)
    assert make(ud.ChildField, b=2).run() == ("ChildField", 1)
    uids = {
        make(c, **kw).run.uid()
        for c, kw in [
            (ud.Base, {}),
            (ud.ChildDefault, {}),
            (ud.ChildDefault, {"a": 1}),
            (ud.ChildField, {}),
            (ud.ChildField, {"b": 2}),
            (ud.Base, {"a": 5}),
        ]
    }
    assert len(uids) == 6
    assert counts(counter) == {"Base": 1, "ChildDefault": 2, "ChildField": 2}


def test_function_local_class_task(tmp_path: Path) -> None:
    def make() -> tp.Any:
        @dataclasses.dataclass(frozen=True)
        class Local:
            x: int = 1
            infra: xl.TaskInfra = xl.TaskInfra(version="1")

            @infra.apply
            def run(self) -> int:
                return self.x * 2

        return Local

    cls = make()
    assert cls(x=4, infra=xl.TaskInfra(folder=tmp_path / "none")).run() == 8
    assert cls(x=4, infra=xl.TaskInfra(folder=tmp_path / "local", cluster="local")).run() == 8


def test_function_local_class_task_debug(tmp_path: Path) -> None:
    def make() -> tp.Any:
        @dataclasses.dataclass(frozen=True)
        class Local:
            x: int = 1
            infra: xl.TaskInfra = xl.TaskInfra(version="1")

            @infra.apply
            def run(self) -> int:
                return self.x * 2

        return Local

    # "local" (a real subprocess) works with this class; the in-process "debug" must too
    task = make()(x=4, infra=xl.TaskInfra(folder=tmp_path, cluster="debug"))
    assert task.run() == 8


# --------------------------------------------------------------------------------------- MapInfra


def _items(tmp_path: Path, **kwargs: tp.Any) -> ud.Items:
    infra_keys = {"mode", "cluster", "max_jobs", "keep_in_ram", "min_samples_per_job"}
    infra = {k: v for k, v in kwargs.items() if k in infra_keys}
    fields = {k: v for k, v in kwargs.items() if k not in infra_keys}
    fields.setdefault("counter", str(tmp_path / "counter"))
    return ud.Items(infra=xl.MapInfra(folder=tmp_path / "cache", **infra), **fields)


ODD_ARRAYS: dict[str, np.ndarray] = {
    "0d": np.array(3.5),
    "empty": np.zeros((0, 3), dtype=np.int16),
    "big_endian": np.arange(4, dtype=">i4"),
    "non_contiguous": np.arange(12.0).reshape(3, 4)[:, ::2],
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "reversed": np.arange(10)[::-1],
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, complex(-0.0, -0.0)], dtype=np.complex64),
    "unicode": np.array(["ab", "日本"]),
    "bytes": np.array([b"a\x00", b"b"]),
    "datetime": np.array(["2020-01-01", "NaT"], dtype="datetime64[D]"),
    "structured": np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "float16_nan": np.array([np.nan, -0.0, np.inf], dtype=np.float16),
    "uint64_max": np.array([2**64 - 1], dtype=np.uint64),
}


@dataclasses.dataclass(frozen=True)
class OddOutputs:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def get(self, names: tp.Sequence[str]) -> tp.Iterator[tp.Any]:
        for name in names:
            yield ODD_ARRAYS[name]


@pytest.mark.parametrize("name", sorted(ODD_ARRAYS))
def test_odd_arrays_round_trip_bit_for_bit(tmp_path: Path, name: str) -> None:
    expected = ODD_ARRAYS[name]
    OddOutputs(infra=xl.MapInfra(folder=tmp_path)).get.compute([name])
    (out,) = list(OddOutputs(infra=xl.MapInfra(folder=tmp_path)).get([name]))
    assert type(out) is np.ndarray
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert out.tobytes() == np.ascontiguousarray(expected).tobytes()
    assert not out.flags.writeable
    stacked = OddOutputs(infra=xl.MapInfra(folder=tmp_path)).get.stack([name, name])
    assert stacked.shape == (2, *expected.shape) and stacked.dtype == expected.dtype
    assert stacked[1].tobytes() == np.ascontiguousarray(expected).tobytes()


PY_OUTPUTS: dict[str, tp.Any] = {
    "none": None,
    "nan": float("nan"),
    "neg_zero": -0.0,
    "huge_int": 2**70,
    "np_scalar": np.float32(1.5),
    "tuple": (1, "a", None),
    "list": [1, (2, 3)],
    "set": {1, 2},
    "int_key_dict": {1: "a", (2, 3): [4]},
    "bytes": b"\x00\xff",
    "str": "héllo 🚀",
    "path": pathlib.Path("/a/b"),
    "enum": ud.Color.BLUE,
    "config": ud.Optim(lr=0.5),
    "object_array": np.array([1, "a", None], dtype=object),
    "masked": np.ma.array([1, 2], mask=[0, 1]),
    "bool": True,
    "empty_dict": {},
}


@dataclasses.dataclass(frozen=True)
class PyOutputs:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def get(self, names: tp.Sequence[str]) -> tp.Iterator[tp.Any]:
        for name in names:
            yield PY_OUTPUTS[name]


def test_python_outputs_round_trip_with_their_type(tmp_path: Path) -> None:
    names = sorted(PY_OUTPUTS)
    PyOutputs(infra=xl.MapInfra(folder=tmp_path)).get.compute(names)
    outs = list(PyOutputs(infra=xl.MapInfra(folder=tmp_path)).get(names))
    for name, out in zip(names, outs, strict=True):
        expected = PY_OUTPUTS[name]
        assert type(out) is type(expected), name
        assert repr(out) == repr(expected), name
    assert math.copysign(1, outs[names.index("neg_zero")]) == -1


@pytest.mark.parametrize("kind", ["ragged", "mixed_dtype"])
def test_stack_of_mismatched_arrays_names_the_items(tmp_path: Path, kind: str) -> None:
    obj = _items(tmp_path, kind=kind)
    with pytest.raises(Exception, match=r"'a'.*'bb'") as info:
        obj.embed.stack(["a", "bb", "ccc"])
    assert "shape" in str(info.value) and "dtype" in str(info.value)
    assert sorted(obj.embed.cached_uids()) == ["a", "bb", "ccc"]  # computed, kept


@pytest.mark.parametrize("kind", ["none", "object"])
def test_stack_of_non_arrays_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    with pytest.raises(Exception, match=r"'a'.*not stored as an array"):
        _items(tmp_path, kind=kind).embed.stack(["a", "bb"])


def test_stack_of_0d_arrays_is_1d(tmp_path: Path) -> None:
    out = _items(tmp_path, kind="scalar0d").embed.stack(["a", "bb", "a"])
    assert out.shape == (3,) and out.tolist() == [1.0, 2.0, 1.0]


def test_generator_input_and_duplicates_in_order(tmp_path: Path) -> None:
    obj = _items(tmp_path)
    out = list(obj.embed(x for x in ["ccc", "a", "ccc", "bb"]))
    assert [float(o[0]) for o in out] == [3.0, 1.0, 3.0, 2.0]
    stacked = _items(tmp_path).embed.stack(x for x in ["bb", "bb", "dddd"])
    assert stacked[:, 0].tolist() == [2.0, 2.0, 4.0]
    assert _items(tmp_path).embed.compute(iter(["a", "eeeee"])) == 1
    assert counts(tmp_path / "counter") == {"ccc": 1, "a": 1, "bb": 1, "dddd": 1, "eeeee": 1}


def test_empty_inputs(tmp_path: Path) -> None:
    obj = _items(tmp_path)
    assert list(obj.embed([])) == []
    assert list(obj.embed(iter([]))) == []
    assert obj.embed.compute([]) == 0
    with pytest.raises(Exception, match="at least one"):
        obj.embed.stack([])


def test_item_uid_returning_non_str_is_a_clear_type_error(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class ById:
        infra: xl.MapInfra = xl.MapInfra()

        @infra.apply(item_uid=lambda item: item["id"])
        def f(self, items: tp.Sequence[dict[str, tp.Any]]) -> tp.Iterator[int]:
            for item in items:
                yield item["v"]

    obj = ById(infra=xl.MapInfra(folder=tmp_path))
    assert list(obj.f([{"id": "x", "v": 1}, {"id": "y", "v": 2}])) == [1, 2]
    with pytest.raises(TypeError, match=r"item_uid must return a str.*int.*#1"):
        list(obj.f([{"id": "z", "v": 1}, {"id": 7, "v": 2}]))
    assert sorted(obj.f.cached_uids()) == ["x", "y"]


def test_int_and_tuple_items_with_str_uid(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Pairs:
        infra: xl.MapInfra = xl.MapInfra()

        @infra.apply(item_uid=str)
        def f(self, items: tp.Sequence[tp.Any]) -> tp.Iterator[tp.Any]:
            yield from items

    obj = Pairs(infra=xl.MapInfra(folder=tmp_path))
    assert list(obj.f([(1, 2), 3, (1, 2)])) == [(1, 2), 3, (1, 2)]
    # 1 and "1" share item_uid=str: the cache cannot tell them apart (user's item_uid choice)
    assert list(obj.f([1, "1"])) in ([1, 1], ["1", "1"])


def test_long_and_weird_item_uids(tmp_path: Path) -> None:
    weird = ["x" * 5000, "a/b", "../..", "", "\n", "\x00", "日本", " "]
    obj = _items(tmp_path, kind="object")
    out = list(obj.embed(weird))
    assert [o["item"] for o in out] == weird
    before = counts(tmp_path / "counter")
    again = list(_items(tmp_path, kind="object").embed(weird))
    assert [o["item"] for o in again] == weird
    assert counts(tmp_path / "counter") == before  # all from the cache
    uids = _items(tmp_path, kind="object").embed.cached_uids()
    assert len(uids) == len(weird) and all(len(u) <= 200 for u in uids)
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "a").exists()


def test_map_force_recomputes_requested_items_once_per_object(tmp_path: Path) -> None:
    _items(tmp_path).embed.compute(["a", "bb", "ccc"])
    forced = _items(tmp_path, mode="force")
    list(forced.embed(["a", "bb", "a"]))
    list(forced.embed(["a"]))
    forced.embed.stack(["bb"])
    assert forced.embed.compute(["a", "dddd"]) == 1
    assert counts(tmp_path / "counter") == {"a": 2, "bb": 2, "ccc": 1, "dddd": 1}


def test_map_read_only_names_missing_items_and_writes_nothing(tmp_path: Path) -> None:
    _items(tmp_path).embed.compute(["a", "bb"])
    ro = _items(tmp_path, mode="read-only")
    with pytest.raises(xl.CacheMissError, match=r"2 .*'zz'.*'yy'|2 .*'yy'.*'zz'"):
        list(ro.embed(["a", "zz", "yy"]))
    assert ro.embed.stack(["bb", "a"])[:, 0].tolist() == [2.0, 1.0]
    fresh = _items(tmp_path / "other", mode="read-only")
    with pytest.raises(xl.CacheMissError):
        fresh.embed.compute(["a"])
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("cluster", [None, "threadpool", "processpool"])
def test_failure_mid_map_keeps_completed_items(tmp_path: Path, cluster: str | None) -> None:
    items = [f"i{k:02d}" for k in range(20)]
    failing = _items(tmp_path, fail_on="i13", cluster=cluster, max_jobs=2)
    with pytest.raises(Exception, match="cannot embed 'i13'"):
        list(failing.embed(items))
    assert set(failing.embed.cached_uids()) == set(items[:13])
    fixed = _items(tmp_path, cluster=cluster, max_jobs=2)
    assert fixed.embed.stack(items).shape == (20, 3)
    assert counts(tmp_path / "counter") == {i: 1 for i in items}


@pytest.mark.parametrize(
    "cluster,shared_object", [(None, True), (None, False), ("threadpool", False)]
)
def test_user_threads_share_a_map(tmp_path: Path, cluster: str | None, shared_object: bool) -> None:
    items = [f"item{k:03d}" * (k % 5 + 1) for k in range(120)]
    shared = _items(tmp_path, cluster=cluster, max_jobs=3)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    ok: list[bool] = []

    def work(k: int) -> None:
        try:
            obj = shared if shared_object else _items(tmp_path, cluster=cluster, max_jobs=3)
            mine = items[k * 20 :] + items[: k * 20]
            barrier.wait()
            out = list(obj.embed(mine))
            stacked = obj.embed.stack(mine)
            ok.append([float(o[0]) for o in out] == [float(len(i)) for i in mine])
            ok.append(stacked[:, 0].tolist() == [float(len(i)) for i in mine])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ok) == 12 and all(ok)
    assert counts(tmp_path / "counter") == {i: 1 for i in items}


def test_user_threads_share_one_map_object_on_a_threadpool(tmp_path: Path) -> None:
    # one model object used by a data loader's threads: a few percent of the rounds fail, so repeat
    items = [f"item{k:04d}" for k in range(60)]
    errors: list[BaseException] = []
    for rounds in range(150):
        shared = ud.Items(infra=xl.MapInfra(folder=tmp_path / str(rounds), cluster="threadpool"))
        barrier = threading.Barrier(8)

        def work(k: int, shared: ud.Items = shared, barrier: threading.Barrier = barrier) -> None:
            try:
                mine = items[k * 7 :] + items[: k * 7]
                barrier.wait()
                assert [float(o[0]) for o in shared.embed(mine)] == [8.0] * 60
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            break
    assert not errors, f"round {rounds}: {errors[0]!r}"


def test_user_threads_share_a_task(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    barrier = threading.Barrier(6)
    results: list[str] = []

    def work() -> None:
        task = ud.Rich(note="t", counter=counter, infra=xl.TaskInfra(folder=tmp_path))
        barrier.wait()
        results.append(task.run()["note"])

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["t"] * 6 and counts(counter) == {"run": 1}


def test_function_local_map_class_on_processpool_fails_clearly_or_works(tmp_path: Path) -> None:
    def make() -> tp.Any:
        @dataclasses.dataclass(frozen=True)
        class LocalMap:
            infra: xl.MapInfra = xl.MapInfra()

            @infra.apply(item_uid=str)
            def f(self, items: tp.Sequence[str]) -> tp.Iterator[int]:
                for item in items:
                    yield len(item)

        return LocalMap

    obj = make()(infra=xl.MapInfra(folder=tmp_path, cluster="processpool", max_jobs=2))
    # before any worker starts (each would fail to unpickle it), naming the class and the fix
    with pytest.raises(RuntimeError, match="LocalMap is defined inside a function"):
        list(obj.f(["a", "bb", "ccc"]))
    # the same class works in this process and threads
    inline = make()(infra=xl.MapInfra(folder=tmp_path / "t", cluster="threadpool", max_jobs=2))
    assert list(inline.f(["a", "bb", "ccc"])) == [1, 2, 3]


def test_miscounted_outputs_say_how_many(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Short:
        extra: int = -1
        infra: xl.MapInfra = xl.MapInfra()

        @infra.apply(item_uid=str)
        def f(self, items: tp.Sequence[str]) -> tp.Iterator[int]:
            yield from range(len(items) + self.extra)

    with pytest.raises(RuntimeError, match="3"):
        list(Short(infra=xl.MapInfra(folder=tmp_path)).f(["a", "b", "c"]))
    with pytest.raises(RuntimeError, match="3"):
        list(Short(extra=1, infra=xl.MapInfra(folder=tmp_path)).f(["a", "b", "c"]))


# ------------------------------------------------------------------------- reading never writes


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size if path.is_file() else 0)
    return out


@pytest.mark.parametrize("mode", ["read-only", "cached"])
def test_reading_a_colleagues_full_cache_writes_nothing(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "colleague"
    writer = ud.Items(infra=xl.MapInfra(folder=root))
    writer.embed.compute(["a", "bb", "ccc"])
    ud.Rich(note="n", infra=xl.TaskInfra(folder=root)).run()
    before = _snapshot(root)
    reader = ud.Items(infra=xl.MapInfra(folder=root, mode=mode))  # type: ignore[arg-type]
    assert reader.embed.stack(["ccc", "a"])[:, 0].tolist() == [3.0, 1.0]
    assert [float(o[0]) for o in reader.embed(["bb"])] == [2.0]
    assert reader.embed.compute(["a"]) == 0
    assert sorted(reader.embed.cached_uids()) == ["a", "bb", "ccc"]
    task = ud.Rich(note="n", infra=xl.TaskInfra(folder=root, mode=mode))  # type: ignore[arg-type]
    assert task.run()["note"] == "n" and task.run.status() == "completed"
    if mode == "read-only":
        with pytest.raises(xl.CacheMissError):
            list(reader.embed(["dddd"]))
        with pytest.raises(xl.CacheMissError):
            ud.Rich(note="other", infra=xl.TaskInfra(folder=root, mode="read-only")).run()
    assert _snapshot(root) == before


# ---------------------------------------------------------------------------------------- the CLI


def _cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exca_lite", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_on_user_caches(tmp_path: Path) -> None:
    root = tmp_path / "root"
    weird = ["x" * 500, "a/b", "日本", ""]
    _items_root = ud.Items(kind="object", infra=xl.MapInfra(folder=root))
    _items_root.embed.compute(weird)
    OddOutputs(infra=xl.MapInfra(folder=root)).get.compute(sorted(ODD_ARRAYS))
    PyOutputs(infra=xl.MapInfra(folder=root)).get.compute(sorted(PY_OUTPUTS))
    rich = ud.Rich(infra=xl.TaskInfra(folder=root), **RICH_VALUES)
    rich.run()
    failed = ud.Flaky(infra=xl.TaskInfra(folder=root))
    with pytest.raises(ValueError):
        failed.run()
    proc = _cli("ls", "--json", root)
    assert proc.returncode == 0, proc.stderr
    rows = {r["uid"]: r for r in json.loads(proc.stdout)}
    assert len(rows) == 5, rows.keys()
    assert rows[_items_root.embed.uid()]["items"] == 4
    assert rows[OddOutputs(infra=xl.MapInfra(folder=root)).get.uid()]["items"] == len(ODD_ARRAYS)
    assert rows[rich.run.uid()]["kind"] == "task"
    for folder in (_items_root.embed.folder(), rich.run.folder()):
        assert folder is not None
        for command in ("info", "verify"):
            proc = _cli(command, folder)
            assert proc.returncode == 0, (command, folder, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr
    folder = OddOutputs(infra=xl.MapInfra(folder=root)).get.folder()
    proc = _cli("verify", folder)  # type: ignore[arg-type]
    assert proc.returncode == 0 and f"{len(ODD_ARRAYS)} item(s) checked" in proc.stdout, proc
    proc = _cli("info", "--json", failed.run.folder())  # type: ignore[arg-type]
    assert proc.returncode == 0 and "failed" in proc.stdout, proc
    # the odd arrays still load bit for bit after the CLI looked at them
    (out,) = list(OddOutputs(infra=xl.MapInfra(folder=root)).get(["big_endian"]))
    assert out.dtype == np.dtype(">i4") and out.tolist() == [0, 1, 2, 3]


def test_cli_verify_flags_a_truncated_shard_of_odd_arrays(tmp_path: Path) -> None:
    obj = OddOutputs(infra=xl.MapInfra(folder=tmp_path))
    obj.get.compute(sorted(ODD_ARRAYS))
    folder = obj.get.folder()
    assert folder is not None
    (shard,) = folder.glob("*.bin")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    proc = _cli("verify", folder)
    assert proc.returncode == 1 and "damaged" in proc.stdout + proc.stderr, proc
    # the rest of the cache still reads; lost items are missing (recomputed), never wrong
    again = OddOutputs(infra=xl.MapInfra(folder=tmp_path))
    for name in sorted(ODD_ARRAYS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", xl.CorruptCacheWarning)
            (out,) = list(again.get([name]))
        assert out.tobytes() == np.ascontiguousarray(ODD_ARRAYS[name]).tobytes(), name


# # # issue 14 # # #


def test_case11_str_item_uid_on_numpy_arrays_is_an_error_saying_what_to_use(
    tmp_path: Path,
) -> None:
    from uid_defs import ArrayMap

    big = np.zeros(10_000)
    other = big.copy()
    other[5000] = 1.0
    assert str(big) == str(other)  # what made them share one item uid
    feat = ArrayMap(infra=xl.MapInfra(folder=tmp_path))
    with pytest.raises(TypeError, match=r"item_uid=str on numpy array items.*hashlib\.sha256"):
        list(feat.embed([big, other]))
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    with pytest.raises(TypeError, match="item #0"):
        list(ArrayMap().embed([np.array([0.123456789])]))


def test_a_map_is_called_with_the_methods_own_parameter_name() -> None:
    from uid_defs import Lengths

    lengths = Lengths()
    assert list(lengths.measure(texts=["a", "bb"])) == [1, 2]
    assert list(lengths.measure(items=["ccc"])) == [3]
    assert list(lengths.measure(["dddd"])) == [4]
    with pytest.raises(TypeError, match=r"Lengths.measure\(\) takes one sequence.*texts="):
        lengths.measure(text=["a"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="texts="):
        lengths.measure(["a"], texts=["b"])


def test_infra_repr_shows_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    assert repr(xl.TaskInfra()) == "TaskInfra()"
    assert repr(xl.TaskInfra(version="2", cpus_per_task=4)) == (
        "TaskInfra(version='2', cpus_per_task=4)"
    )
    assert repr(xl.MapInfra(folder=tmp_path, max_jobs=3)) == (
        f"MapInfra(folder={tmp_path!r}, max_jobs=3)"
    )


@pytest.mark.parametrize("cluster", [None, "threadpool", "processpool"])
def test_case6_a_map_override_calling_super_gets_its_own_outputs(
    tmp_path: Path, cluster: str | None
) -> None:
    from uid_defs import Doubled, Lengths

    doubled = Doubled(infra=xl.MapInfra(folder=tmp_path, cluster=cluster))  # type: ignore[arg-type]
    assert list(doubled.measure(["a", "bbb"])) == [2, 6]
    assert list(doubled.measure(["a", "bbb"])) == [2, 6]
    parent = Lengths.measure.__get__(doubled)
    assert parent.uid().startswith("uid_defs.Doubled.measure@Lengths,0/")
    assert list(parent(["a", "bbb"])) == [1, 3]
    fresh = Doubled(infra=xl.MapInfra(folder=tmp_path, mode="read-only"))
    assert list(fresh.measure(["a", "bbb"])) == [2, 6]
