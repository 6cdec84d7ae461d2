"""Configs: frozen-dataclass owners, supported values, and plain-data round trips."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from task_defs import Color, Encoder, Model, Nested, Task

import exca_lite as xl

pytestmark = pytest.mark.timeout(60)


# # # owners # # #


def test_non_frozen_owner_is_a_type_error_saying_how_to_fix() -> None:
    @dataclasses.dataclass
    class NotFrozen:
        x: int = 1
        infra: xl.TaskInfra = xl.TaskInfra()

        @infra.apply
        def process(self) -> int:
            return self.x

    with pytest.raises(xl.ConfigError, match=r"not frozen.*frozen=True") as info:
        NotFrozen().process()
    assert isinstance(info.value, TypeError)
    assert "NotFrozen" in str(info.value)


def test_non_dataclass_owner_is_a_type_error_saying_how_to_fix() -> None:
    class Plain:
        infra = xl.TaskInfra()

        @infra.apply
        def process(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"not a dataclass.*frozen=True") as info:
        Plain().process.uid()
    assert isinstance(info.value, xl.ConfigError)


@dataclasses.dataclass(frozen=True)
class Deep:
    weights: tp.Any = None


@dataclasses.dataclass(frozen=True)
class Middle:
    encoder: Deep = Deep()


@dataclasses.dataclass(frozen=True)
class Top:
    model: Middle = Middle()
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


@pytest.mark.parametrize(
    "make_value",
    [
        lambda tmp: np.zeros(3),
        lambda tmp: lambda: 1,
        lambda tmp: open(tmp / "f", "w"),  # noqa: SIM115 - closed below
    ],
    ids=["array", "lambda", "file"],
)
def test_unsupported_values_name_the_field_path(
    make_value: tp.Callable[[Path], tp.Any], tmp_path: Path
) -> None:
    value = make_value(tmp_path)
    try:
        top = Top(model=Middle(encoder=Deep(weights=value)))
        with pytest.raises(TypeError, match=r"model\.encoder\.weights") as info:
            top.process.uid()
        assert isinstance(info.value, xl.ConfigError)
        with pytest.raises(xl.ConfigError, match=r"model\.encoder\.weights"):
            xl.to_dict(top)
        with pytest.raises(xl.ConfigError, match=r"model\.encoder\.weights"):
            top.process()
    finally:
        if hasattr(value, "close"):
            value.close()


def test_unsupported_values_inside_containers_and_non_str_keys() -> None:
    with pytest.raises(xl.ConfigError, match=r"model\.encoder\.weights\[1\]"):
        Top(model=Middle(encoder=Deep(weights=(1, object())))).process.uid()
    with pytest.raises(xl.ConfigError, match=r"str"):
        Top(model=Middle(encoder=Deep(weights={1: 2}))).process.uid()
    with pytest.raises(xl.ConfigError, match=r"non-frozen"):

        @dataclasses.dataclass
        class Mutable:
            a: int = 1

        Top(model=Middle(encoder=Deep(weights=Mutable()))).process.uid()


def test_configs_and_infras_are_frozen() -> None:
    task = Task(param=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.param = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.infra.folder = "x"  # type: ignore[misc]
    assert task.param == 3


def test_replace_derives_a_sibling_with_another_uid() -> None:
    task = Task(param=3)
    uid = task.process.uid()
    sibling = dataclasses.replace(task, param=4)
    assert sibling.param == 4 and task.param == 3
    assert sibling.process.uid() != uid
    assert "param=4" in sibling.process.uid()
    assert task.process.uid() == uid  # the original's bound task is not shared with the sibling
    assert dataclasses.replace(task).process.uid() == uid


# # # to_dict / from_dict / load_config # # #


def _nested_example(tmp_path: Path) -> Nested:
    return Nested(
        model=Model(encoder=Encoder(depth=5, name="e", tags=("a", "b")), lr=0.5, color=Color.BLUE),
        names=frozenset({"x", "y"}),
        weights={"b": 2.0, "a": 1.5},
        path=tmp_path / "data",
        seed=7,
        infra=xl.TaskInfra(folder=tmp_path, version="3"),
    )


def test_to_dict_gives_plain_data(tmp_path: Path) -> None:
    data = xl.to_dict(_nested_example(tmp_path))
    json.dumps(data)  # plain JSON-able data
    assert data["model"] == {
        "encoder": {"depth": 5, "name": "e", "tags": ["a", "b"]},
        "lr": 0.5,
        "color": "blue",
    }
    assert data["names"] == ["x", "y"]
    assert data["path"] == str(tmp_path / "data")
    assert data["infra"]["folder"] == str(tmp_path)
    assert data["infra"]["version"] == "3"
    with pytest.raises(xl.ConfigError):
        xl.to_dict(Nested)


def test_from_dict_inverts_to_dict(tmp_path: Path) -> None:
    task = _nested_example(tmp_path)
    back = xl.from_dict(Nested, xl.to_dict(task))
    assert back == task
    assert isinstance(back.path, Path) and isinstance(back.names, frozenset)
    assert back.model.color is Color.BLUE and back.model.encoder.tags == ("a", "b")
    assert back.infra == task.infra and isinstance(back.infra.folder, Path)
    assert back.process.uid() == task.process.uid()


def test_from_dict_nested_infra_as_dict_keeps_default_heritage(tmp_path: Path) -> None:
    task = xl.from_dict(Task, {"param": 2, "infra": {"folder": str(tmp_path)}})
    assert isinstance(task.infra, xl.TaskInfra)
    assert task.infra.folder == tmp_path
    assert task.process.infra.version == "1"  # unset: inherited from the class default
    explicit = xl.from_dict(Task, {"infra": {"folder": str(tmp_path), "version": "0"}})
    assert explicit.process.infra.version == "0"  # set: the caller's choice wins
    # the full dump of an instance keeps which fields were set
    again = xl.from_dict(Task, xl.to_dict(task))
    assert again.process.infra.version == "1"
    assert again.process.uid() == task.process.uid()


def test_from_dict_skips_derived_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Derived:
        a: int = 1
        double: int = dataclasses.field(init=False, default=0)

        def __post_init__(self) -> None:
            object.__setattr__(self, "double", 2 * self.a)

    data = xl.to_dict(Derived(a=3))
    assert data == {"a": 3, "double": 6}
    assert xl.from_dict(Derived, data) == Derived(a=3)


def test_from_dict_partial_nested_config() -> None:
    task = xl.from_dict(Nested, {"model": {"encoder": {"depth": 9}}, "names": ["b", "a"]})
    assert task == Nested(model=Model(encoder=Encoder(depth=9)), names=frozenset({"a", "b"}))


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"param": "many"}, "'param'"),
        ({"param": [1]}, "'param'"),
        ({"prm": 1}, "'prm'"),
        ({"infra": {"cluster": "nowhere"}}, "infra.cluster"),
        ({"infra": {"foldr": "/tmp"}}, "infra.foldr"),
        ({"infra": {"version": 3}}, "infra.version"),
    ],
)
def test_from_dict_bad_data_names_the_field(data: dict[str, tp.Any], where: str) -> None:
    with pytest.raises(xl.ValidationError, match=where) as info:
        xl.from_dict(Task, data)
    assert isinstance(info.value, ValueError)


def test_from_dict_bad_nested_data_names_the_dotted_field() -> None:
    with pytest.raises(xl.ValidationError, match=r"model\.encoder\.depth"):
        xl.from_dict(Nested, {"model": {"encoder": {"depth": "deep"}}})
    with pytest.raises(xl.ValidationError, match=r"model\.encoder\.dpth"):
        xl.from_dict(Nested, {"model": {"encoder": {"dpth": 1}}})
    with pytest.raises(xl.ValidationError, match=r"model\.color"):
        xl.from_dict(Nested, {"model": {"color": "green"}})
    with pytest.raises(xl.ValidationError):
        xl.from_dict(Nested, [1, 2])  # type: ignore[arg-type]


def test_from_dict_runs_the_infra_checks() -> None:
    with pytest.raises(xl.ValidationError, match=r"'infra\.cluster'"):
        xl.from_dict(Task, {"infra": {"cluster": "slurmm"}})
    with pytest.raises(xl.ValidationError, match="version"):  # the infra's own check
        xl.from_dict(Task, {"infra": {"version": "../up"}})
    # a cluster without a folder is checked at the first call, once completed by the class
    # default (which may give the folder)
    task = xl.from_dict(Task, {"infra": {"cluster": "local"}})
    with pytest.raises(ValueError, match="needs a folder"):
        task.process()


_TOML = """
param = 4

[infra]
folder = "{folder}"
cluster = "local"
"""

_YAML = """
param: 4
infra:
  folder: {folder}
  cluster: local
"""


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
def test_load_config(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"config{suffix}"
    data = {"param": 4, "infra": {"folder": str(tmp_path), "cluster": "local"}}
    text = {
        ".json": json.dumps(data),
        ".toml": _TOML.format(folder=tmp_path),
        ".yaml": _YAML.format(folder=tmp_path),
    }[suffix]
    path.write_text(text)
    task = xl.load_config(Task, path)
    assert task == Task(param=4, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))
    assert task.process.infra.version == "1"


def test_load_config_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "nested.yml"
    path.write_text("model:\n  encoder:\n    depth: 3\n    tags: [a, b]\n  color: blue\n")
    assert xl.load_config(Nested, path) == Nested(
        model=Model(encoder=Encoder(depth=3, tags=("a", "b")), color=Color.BLUE)
    )


def test_load_config_errors_name_the_file_or_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(xl.ValidationError, match=r"bad\.json"):
        xl.load_config(Task, bad)
    other = tmp_path / "config.ini"
    other.write_text("[x]")
    with pytest.raises(xl.ValidationError, match=r"\.json"):
        xl.load_config(Task, other)
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(xl.ValidationError, match="mapping"):
        xl.load_config(Task, listed)
    typo = tmp_path / "typo.toml"
    typo.write_text("[infra]\nmdoe = 'cached'\n")
    with pytest.raises(xl.ValidationError, match=r"infra\.mdoe"):
        xl.load_config(Task, typo)


# # # round trip property # # #


class Fruit(enum.Enum):
    APPLE = 1
    PEAR = 2


@dataclasses.dataclass(frozen=True)
class Leaf:
    n: int = 0
    label: str = ""
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Everything:
    i: int = 0
    f: float = 0.0
    s: str = ""
    b: bytes = b""
    flag: bool = False
    maybe: int | None = None
    ints: tuple[int, ...] = ()
    strs: list[str] = dataclasses.field(default_factory=list)
    mapping: dict[str, float] = dataclasses.field(default_factory=dict)
    names: frozenset[str] = frozenset()
    path: Path = Path("default")
    fruit: Fruit = Fruit.APPLE
    leaf: Leaf = Leaf()
    leaves: tuple[Leaf, ...] = ()
    optional_leaf: Leaf | None = None
    leaf_map: dict[str, Leaf] = dataclasses.field(default_factory=dict)
    leaf_list: list[Leaf] = dataclasses.field(default_factory=list)
    optional_leaves: dict[str, Leaf | None] = dataclasses.field(default_factory=dict)
    timeout: datetime.timedelta = datetime.timedelta(minutes=5)
    when: datetime.datetime | None = None
    day: datetime.date = datetime.date(2024, 1, 1)


_floats = st.floats(allow_nan=False, allow_infinity=False)
_leaves = st.builds(Leaf, n=st.integers(), label=st.text(max_size=8), scale=_floats)
_everything = st.builds(
    Everything,
    i=st.integers(),
    f=_floats,
    s=st.text(max_size=20),
    b=st.binary(max_size=8),
    flag=st.booleans(),
    maybe=st.none() | st.integers(),
    ints=st.lists(st.integers(), max_size=4).map(tuple),
    strs=st.lists(st.text(max_size=5), max_size=4),
    mapping=st.dictionaries(st.text(max_size=5), _floats, max_size=4),
    names=st.frozensets(st.text(max_size=5), max_size=5),
    path=st.lists(st.text("abc_-.", min_size=1, max_size=4), min_size=1, max_size=3).map(
        lambda parts: Path(*parts)
    ),
    fruit=st.sampled_from(Fruit),
    leaf=_leaves,
    leaves=st.lists(_leaves, max_size=3).map(tuple),
    optional_leaf=st.none() | _leaves,
    leaf_map=st.dictionaries(st.text(max_size=5), _leaves, max_size=3),
    leaf_list=st.lists(_leaves, max_size=3),
    optional_leaves=st.dictionaries(st.text(max_size=5), st.none() | _leaves, max_size=3),
    timeout=st.timedeltas(),
    when=st.none()
    | st.datetimes()
    | st.datetimes(timezones=st.just(datetime.UTC))
    | st.datetimes(
        timezones=st.builds(
            datetime.timezone, st.sampled_from([datetime.timedelta(hours=h) for h in (-5, 2, 9)])
        )
    ),
    day=st.dates(),
)


@settings(max_examples=150, deadline=None)
@given(_everything)
def test_from_dict_to_dict_round_trip(config: Everything) -> None:
    data = xl.to_dict(config)
    assert xl.from_dict(Everything, data) == config
    # through JSON text too (bytes aside, which JSON cannot hold)
    data.pop("b")
    text = json.dumps(data)
    assert xl.from_dict(Everything, json.loads(text)) == dataclasses.replace(config, b=b"")


@settings(max_examples=100, deadline=None)
@given(_everything)
def test_to_dict_from_dict_keeps_the_uid(config: Everything) -> None:
    from uid_defs import Tree

    tree = Tree(
        leaves={k: Leaf_(x=v.n) for k, v in config.leaf_map.items()},
        chain=[Leaf_(name=v.label) for v in config.leaf_list],
        maybe=None if config.optional_leaf is None else Leaf_(x=config.optional_leaf.n),
        timeout=config.timeout,
        start=config.when,
    )
    again = xl.from_dict(Tree, json.loads(json.dumps(xl.to_dict(tree))))
    assert again == tree
    assert again.run.uid() == tree.run.uid()


def Leaf_(**kwargs: tp.Any) -> tp.Any:
    from uid_defs import Leaf as UidLeaf

    return UidLeaf(**kwargs)


# # # issue 14, case 8: containers of configs # # #


def test_case8_from_dict_builds_dicts_lists_and_optionals_of_configs(tmp_path: Path) -> None:
    from uid_defs import Leaf as UidLeaf
    from uid_defs import Tree

    assert xl.from_dict(Tree, {"leaves": {}}) == Tree()
    data = {
        "leaves": {"a": {"x": 1}, "b": {}},
        "chain": [{"name": "n"}],
        "pair": [{"x": 1}, {"x": 2}],
        "maybe": {"x": 3},
        "timeout": "PT90S",
        "start": "2024-05-01T12:30:00",
    }
    tree = xl.from_dict(Tree, data)
    assert tree.leaves == {"a": UidLeaf(x=1), "b": UidLeaf()}
    assert tree.chain == [UidLeaf(name="n")]
    assert tree.pair == (UidLeaf(x=1), UidLeaf(x=2))
    assert tree.maybe == UidLeaf(x=3)
    assert tree.timeout == datetime.timedelta(seconds=90)
    assert tree.start == datetime.datetime(2024, 5, 1, 12, 30)
    assert xl.from_dict(Tree, xl.to_dict(tree)) == tree
    with pytest.raises(xl.ValidationError, match=r"leaves\.a\.x"):
        xl.from_dict(Tree, {"leaves": {"a": {"x": "not an int"}}})
    with pytest.raises(xl.ValidationError, match=r"unknown field 'chain\[0\].typo'"):
        xl.from_dict(Tree, {"chain": [{"typo": 1}]})
    # the cache's own config.json loads back into the config
    placed = dataclasses.replace(tree, infra=xl.TaskInfra(folder=tmp_path))
    assert placed.run() == 3
    folder = placed.run.folder()
    assert folder is not None
    loaded = xl.load_config(Tree, folder / "config.json")
    assert dataclasses.replace(loaded, infra=placed.infra) == placed
    assert loaded.run.uid() == placed.run.uid()


# # # issue 14, case 9: numpy scalars # # #


def test_case9_numpy_floats_in_a_list_field_are_written_as_floats(tmp_path: Path) -> None:
    from uid_defs import Measures

    measures = Measures(
        values=[np.float64(0.5), 1.5], infra=xl.TaskInfra(folder=tmp_path, keep_in_ram=False)
    )
    assert measures.total.uid() == Measures(values=[0.5, 1.5]).total.uid()
    assert measures.total() == 2.0
    assert measures.total() == 2.0  # from the cache
    folder = measures.total.folder()
    assert folder is not None
    assert json.loads((folder / "config.json").read_text())["values"] == [0.5, 1.5]
    assert xl.to_dict(measures)["values"] == [0.5, 1.5]
    assert type(xl.to_dict(measures)["values"][0]) is float


def test_case9_an_unsupported_value_leaves_no_cache_folder(tmp_path: Path) -> None:
    from uid_defs import Measures

    bad = Measures(values=[np.int64(1)], infra=xl.TaskInfra(folder=tmp_path))  # type: ignore[list-item]
    with pytest.raises(xl.ConfigError, match=r"values\[0\].*numpy.int64"):
        bad.total()
    assert list(tmp_path.iterdir()) == []


# # # field annotations: the quick look-up agrees with typing.get_type_hints # # #

Num = float  # an alias of a number: only the full resolution sees through it
Ints = tuple[int, ...]
Choice = tp.Literal["a", "b"]


@dataclasses.dataclass(frozen=True)
class _Annotated:
    a: int = 1
    b: float | None = None
    c: Num = 1.0
    d: Ints = (1,)
    e: list[float] = dataclasses.field(default_factory=list)
    f: Path | str | None = None
    g: tuple[str, ...] = ()
    h: Choice = "a"
    i: tp.Optional[int] = None  # noqa: UP045
    j: dict[str, Num] = dataclasses.field(default_factory=dict)
    k: bool = False
    m: Encoder | None = None
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def run(self) -> int:
        return 1


@dataclasses.dataclass(frozen=True)
class _Inherits(Encoder):  # inherited fields are annotated in task_defs' namespace
    extra: Num = 2.0


@pytest.mark.parametrize("cls", [_Annotated, _Inherits, xl.TaskInfra, xl.MapInfra])
def test_field_numbers_match_the_full_annotation_resolution(cls: type) -> None:
    from exca_lite import config

    hints = tp.get_type_hints(cls)
    for info in config.field_infos(cls):
        hint = hints[info.name]
        number = config._number_type(hint)
        assert info.number is number, info.name
        coerce = None if number is not None else config._coercer(hint)
        assert (info.coerce is None) == (coerce is None), info.name


def test_numbers_behind_an_alias_still_count_by_their_annotation() -> None:
    a = _Annotated(c=2, j={"x": 3})
    b = _Annotated(c=2.0, j={"x": 3.0})
    assert a.run.uid() == b.run.uid()
    assert a.run.uid() != _Annotated(c=2.5).run.uid()
