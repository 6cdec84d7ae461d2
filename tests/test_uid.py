"""The uid: which fields count, its format, and its stability across processes."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing as tp
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from task_defs import Color, Encoder, Model, Nested, Task, Versioned

import exca_lite as xl

pytestmark = pytest.mark.timeout(60)

_UID = re.compile(r"^(?P<head>[\w.]+\.\w+,[^/]+)/(?P<readable>[^/]+)-(?P<hash>[0-9a-f]{8})$")


def test_uid_format() -> None:
    uid = Task(param=1).process.uid()
    assert uid.startswith("task_defs.Task.process,1/param=1-")
    match = _UID.match(uid)
    assert match is not None, uid
    assert match["head"] == "task_defs.Task.process,1"
    assert Task().process.uid().startswith("task_defs.Task.process,1/default-")
    nested = Nested(model=Model(encoder=Encoder(depth=4))).process.uid()
    assert nested.startswith("task_defs.Nested.process,0/model.encoder.depth=4-")


def test_readable_part_is_short_and_filesystem_safe() -> None:
    task = Nested(weights={f"key/{i}": i / 3 for i in range(50)}, path=Path("/a b/c"))
    uid = task.process.uid()
    _head, rest = uid.split("/", 1)
    assert "/" not in rest and " " not in rest
    match = _UID.match(uid)
    assert match is not None, uid
    assert len(match["readable"]) <= 64


def test_uid_config_and_folder(tmp_path: Path) -> None:
    task = Nested(model=Model(lr=0.5, color=Color.BLUE), names=frozenset({"b", "a"}))
    assert task.process.config() == {"model": {"lr": 0.5, "color": "blue"}, "names": ["a", "b"]}
    assert task.process.folder() is None
    placed = dataclasses.replace(task, infra=xl.TaskInfra(folder=tmp_path))
    assert placed.process.folder() == tmp_path / placed.process.uid()


def test_only_non_default_fields_count() -> None:
    assert Task(param=12).process.uid() == Task().process.uid()
    assert Task(param=13).process.uid() != Task().process.uid()
    assert Task(param=13).process.config() == {"param": 13}
    # nested: only the nested non-default fields
    assert Nested(model=Model()).process.uid() == Nested().process.uid()
    assert Nested(model=Model(lr=0.2)).process.config() == {"model": {"lr": 0.2}}


def _versions(extra_field: bool) -> type:
    """Two versions of one class (same module and qualname), the second with one more field."""

    if extra_field:

        @dataclasses.dataclass(frozen=True)
        class Evolving:
            a: int = 0
            b: str = "new"
            infra: xl.TaskInfra = xl.TaskInfra()

            @infra.apply
            def process(self) -> int:
                return self.a

    else:

        @dataclasses.dataclass(frozen=True)  # type: ignore[no-redef]
        class Evolving:
            a: int = 0
            infra: xl.TaskInfra = xl.TaskInfra()

            @infra.apply
            def process(self) -> int:
                return self.a

    return Evolving


def test_adding_a_field_with_a_default_keeps_the_uid() -> None:
    old, new = _versions(False), _versions(True)
    assert old.__qualname__ == new.__qualname__
    assert old(a=3).process.uid() == new(a=3).process.uid()
    assert new(a=3, b="other").process.uid() != old(a=3).process.uid()


def test_adding_a_field_keeps_the_cache(tmp_path: Path) -> None:
    old, new = _versions(False), _versions(True)
    assert old(a=3, infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False)).process() == 3
    cached = new(a=3, infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False, mode="read-only"))
    assert cached.process() == 3


def test_infra_fields_never_count(tmp_path: Path) -> None:
    base = Task(param=2).process.uid()
    for infra in [
        xl.TaskInfra(folder=tmp_path),
        xl.TaskInfra(folder=tmp_path, cluster="local", keep_in_ram=False, cpus_per_task=4),
        xl.TaskInfra(mode="force", job_name="x", slurm_setup=["module load x"]),
    ]:
        assert Task(param=2, infra=infra).process.uid() == base


@dataclasses.dataclass(frozen=True)
class WithInfra:
    """A sub-config that owns an infra of its own."""

    k: int = 0
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.k


@dataclasses.dataclass(frozen=True)
class Outer:
    sub: WithInfra = WithInfra()
    subs: tuple[WithInfra, ...] = ()
    extra: tuple[tp.Any, ...] = ()
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.sub.k


def test_nested_infras_never_count(tmp_path: Path) -> None:
    base = Outer(sub=WithInfra(k=1)).process
    other = Outer(sub=WithInfra(k=1, infra=xl.TaskInfra(folder=tmp_path, version="9"))).process
    assert other.uid() == base.uid()
    assert base.config() == {"sub": {"k": 1}}
    listed = Outer(subs=(WithInfra(k=1, infra=xl.TaskInfra(folder=tmp_path)),)).process
    assert listed.uid() == Outer(subs=(WithInfra(k=1),)).process.uid()
    loose = Outer(extra=(xl.TaskInfra(folder=tmp_path),)).process
    assert loose.uid() == Outer(extra=(xl.TaskInfra(),)).process.uid()


def test_nested_infras_do_not_break_the_cache(tmp_path: Path) -> None:
    first = Outer(sub=WithInfra(k=5), infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False))
    assert first.process() == 5
    sub_infra = xl.TaskInfra(folder=tmp_path / "elsewhere", cluster="local")
    second = Outer(
        sub=WithInfra(k=5, infra=sub_infra),
        infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False, mode="read-only"),
    )
    assert second.process() == 5


def test_exclude_from_cache_uid_including_dotted_names() -> None:
    base = Nested().process.uid()
    assert Nested(seed=5).process.uid() == base
    assert Nested(model=Model(encoder=Encoder(name="other"))).process.uid() == base
    changed = Nested(model=Model(encoder=Encoder(name="other", depth=7))).process
    assert changed.uid() == Nested(model=Model(encoder=Encoder(depth=7))).process.uid()
    assert changed.uid() != base
    assert changed.config() == {"model": {"encoder": {"depth": 7}}}
    # a non-excluded sibling of an excluded name still counts
    assert Nested(model=Model(encoder=Encoder(tags=("t",)))).process.uid() != base


def test_exclude_from_cache_uid_must_be_a_tuple() -> None:
    with pytest.raises(TypeError, match="tuple"):
        xl.TaskInfra().apply(exclude_from_cache_uid="seed")


def test_version_bump_changes_the_uid(tmp_path: Path) -> None:
    v1 = Versioned(x=2).process.uid()
    v2 = Versioned(x=2, infra=xl.TaskInfra(version="2")).process.uid()
    assert v1.startswith("task_defs.Versioned.process,1/")
    assert v2.startswith("task_defs.Versioned.process,2/")
    assert v1.split(",", 1)[1] != v2.split(",", 1)[1]


def test_dict_order_is_irrelevant() -> None:
    a = Nested(weights={"a": 1.0, "b": 2.0, "c": 3.0}).process.uid()
    b = Nested(weights={"c": 3.0, "a": 1.0, "b": 2.0}).process.uid()
    assert a == b


def test_types_are_distinguished() -> None:
    @dataclasses.dataclass(frozen=True)
    class Loose:
        v: tp.Any = None
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply
        def process(self) -> int:
            return 0

    values: list[tp.Any] = [1, 1.0, "1", True, b"1", (1,), None, float("nan"), "None"]
    uids = [Loose(v=v).process.uid() for v in values]
    assert len(set(uids)) == len(values), uids


_SCRIPT = """
import json, sys
from pathlib import Path
import exca_lite as xl
from task_defs import Nested, Model, Encoder, Color
names = frozenset(f"name-{i}" for i in range(40))
task = Nested(model=Model(lr=0.25, color=Color.BLUE, encoder=Encoder(tags=("x", "y"))),
              names=names, weights={f"w{i}": i / 7 for i in range(20)}, path=Path("/data/x"))
print(json.dumps(task.process.uid()))
"""


def test_uid_is_stable_across_processes_and_hash_seeds(subprocess_env: dict[str, str]) -> None:
    uids = set()
    for seed in ("1", "2", "12345"):
        env = {**subprocess_env, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        uids.add(json.loads(out.stdout))
    names = frozenset(f"name-{i}" for i in range(40))
    here = Nested(
        model=Model(lr=0.25, color=Color.BLUE, encoder=Encoder(tags=("x", "y"))),
        names=names,
        weights={f"w{i}": i / 7 for i in range(20)},
        path=Path("/data/x"),
    ).process.uid()
    assert uids == {here}


# # # properties # # #


@dataclasses.dataclass(frozen=True)
class Leaf:
    n: int = 0
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Gen:
    i: int = 0
    f: float = 0.0
    s: str = ""
    items: tuple[int, ...] = ()
    mapping: dict[str, int] = dataclasses.field(default_factory=dict)
    names: frozenset[str] = frozenset()
    leaf: Leaf = Leaf()
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.i


_gens = st.builds(
    Gen,
    i=st.integers(-5, 5),
    f=st.sampled_from([0.0, 0.5, 1.0, 1e-300, 1.5e300, -2.0, 0.1 + 0.2]),
    s=st.sampled_from(["", "a", "b", "a b", "é"]),
    items=st.lists(st.integers(0, 3), max_size=3).map(tuple),
    mapping=st.dictionaries(st.sampled_from("abc"), st.integers(0, 2), max_size=3),
    names=st.frozensets(st.sampled_from(["x", "y", "zz"]), max_size=3),
    leaf=st.builds(Leaf, n=st.integers(0, 2), label=st.sampled_from(["", "l"])),
)


@settings(max_examples=200, deadline=None)
@given(_gens)
def test_equal_configs_give_equal_uids(config: Gen) -> None:
    copy = xl.from_dict(Gen, xl.to_dict(config))
    reordered = dataclasses.replace(copy, mapping=dict(reversed(list(copy.mapping.items()))))
    assert config.process.uid() == copy.process.uid() == reordered.process.uid()


@settings(max_examples=300, deadline=None)
@given(_gens, _gens)
def test_different_configs_give_different_uids(a: Gen, b: Gen) -> None:
    assume(a != b)
    assert a.process.uid() != b.process.uid()
    assert a.process.config() != b.process.config()


def test_exclude_from_cache_uid_names_must_be_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Typo:
        seed: int = 0
        model: Model = Model()
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply(exclude_from_cache_uid=("sede",))
        def process(self) -> int:
            return self.seed

        @infra.apply(exclude_from_cache_uid=("model.encoder.nmae",))
        def nested(self) -> int:
            return self.seed

    with pytest.raises(xl.ConfigError, match=r"'sede'.*\['infra', 'model', 'seed'\]"):
        Typo().process.uid()
    with pytest.raises(xl.ConfigError, match=r"model\.encoder has no field 'nmae'"):
        Typo().nested()


@dataclasses.dataclass(frozen=True)
class AdamW:
    lr: float = 0.1


@dataclasses.dataclass(frozen=True)
class Sgd:
    lr: float = 0.1


@dataclasses.dataclass(frozen=True)
class Training:
    optimizer: AdamW | Sgd = AdamW()
    schedule: AdamW | Sgd | None = None
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> str:
        return type(self.optimizer).__name__


def test_polymorphic_fields_name_the_class() -> None:
    """Two config classes with the same fields are different computations: different uids."""
    adam = Training(optimizer=AdamW(lr=0.5)).process
    sgd = Training(optimizer=Sgd(lr=0.5)).process
    assert adam.config() == {"optimizer": {"lr": 0.5}}  # the default's class: no tag
    assert sgd.config() == {"optimizer": {"__class__": "Sgd", "lr": 0.5}}
    assert adam.uid() != sgd.uid()
    assert Training(optimizer=Sgd()).process.uid() != Training().process.uid()
    assert "optimizer.__class__=Sgd" in Training(optimizer=Sgd()).process.uid()
    # replacing a None default
    assert Training(schedule=AdamW()).process.uid() != Training(schedule=Sgd()).process.uid()
    assert Training(schedule=AdamW()).process.uid() != Training().process.uid()


def test_polymorphic_fields_do_not_share_a_cache(tmp_path: Path) -> None:
    infra = xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    assert Training(optimizer=Sgd(lr=0.5), infra=infra).process() == "Sgd"
    assert Training(optimizer=AdamW(lr=0.5), infra=infra).process() == "AdamW"
