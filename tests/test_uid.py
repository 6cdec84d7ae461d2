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


def test_nested_infra_fields_never_count_but_their_version(tmp_path: Path) -> None:
    base = Outer(sub=WithInfra(k=1)).process
    placed = Outer(sub=WithInfra(k=1, infra=xl.TaskInfra(folder=tmp_path, cluster="local")))
    assert placed.process.uid() == base.uid()
    other = Outer(sub=WithInfra(k=1, infra=xl.TaskInfra(folder=tmp_path, version="9"))).process
    assert other.uid() != base.uid()
    assert base.config() == {"sub": {"k": 1, "infra": {"version": "0"}}}
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


# # # issue 14: uids that never serve a wrong or stale result # # #

_FEATURIZE = """
import dataclasses, os, sys, typing as tp
import exca_lite as xl

COUNTER = os.environ["COUNTER"]


@dataclasses.dataclass(frozen=True)
class Featurizer:
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
        for i in items:
            with open(COUNTER, "a") as f:
                f.write(f"{i}\\n")
            yield SCALE * i


def main() -> None:
    feat = Featurizer(infra=xl.MapInfra(folder=os.environ["FOLDER"]))
    print(list(feat.embed([1, 2, 3])), feat.embed.uid())


if __name__ == "__main__":
    main()
"""


def _script(folder: Path, name: str, scale: int) -> Path:
    path = folder / f"{name}.py"
    path.write_text(f"SCALE = {scale}\n" + _FEATURIZE)
    return path


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_case1_two_scripts_sharing_a_folder_never_share_a_cache(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = dict(subprocess_env, FOLDER=str(tmp_path / "cache"), COUNTER=str(tmp_path / "n"))
    _script(tmp_path, "script_a", 1)
    _script(tmp_path, "script_b", -1000)
    out_a = _run(["script_a.py"], tmp_path, env)
    out_b = _run(["script_b.py"], tmp_path, env)
    assert out_a.startswith("[1, 2, 3] script_a.Featurizer.embed,1/")
    assert out_b.startswith("[-1000, -2000, -3000] script_b.Featurizer.embed,1/")
    assert "__main__" not in out_a + out_b


def test_case1_a_script_and_an_import_of_it_share_one_cache(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    counter = tmp_path / "n"
    env = dict(subprocess_env, FOLDER=str(tmp_path / "cache"), COUNTER=str(counter))
    _script(tmp_path, "featurize", 1)
    as_script = _run(["featurize.py"], tmp_path, env)
    assert counter.read_text().split() == ["1", "2", "3"]
    imported = _run(["-c", "import featurize; featurize.main()"], tmp_path, env)
    assert imported == as_script
    assert as_script.startswith("[1, 2, 3] featurize.Featurizer.embed,1/")
    assert counter.read_text().split() == ["1", "2", "3"]  # nothing recomputed
    # under python -m, the module is named as when imported
    assert _run(["-m", "featurize"], tmp_path, env) == as_script


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_case1_no_file_names_the_class_the_uid_says_so(
    tmp_path: Path, subprocess_env: dict[str, str], how: str
) -> None:
    code = "SCALE = 1\n" + _FEATURIZE.replace('if __name__ == "__main__":\n    main()', "main()")
    env = dict(subprocess_env, FOLDER=str(tmp_path / "c"), COUNTER=str(tmp_path / "n"))
    res = subprocess.run(  # python -c CODE, or python - < script.py ("<stdin>" is no file)
        [sys.executable, "-c", code] if how == "-c" else [sys.executable, "-"],
        input=None if how == "-c" else code,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert " __interactive__.Featurizer.embed,1/" in res.stdout
    assert res.stderr.count("InteractiveClassWarning") == 1
    assert "move the class into a module" in res.stderr


_UPSTREAM = """
import dataclasses
import exca_lite as xl


@dataclasses.dataclass(frozen=True)
class Extractor:
    size: int = 3
    infra: xl.TaskInfra = xl.TaskInfra(version="{version}")

    @infra.apply
    def features(self) -> list[int]:
        return [{scale} * i for i in range(self.size)]
"""

_DOWNSTREAM = """
import dataclasses, os, sys
import exca_lite as xl
from upstream import Extractor


@dataclasses.dataclass(frozen=True)
class Classifier:
    extractor: Extractor = Extractor()
    infra: xl.TaskInfra = xl.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        with open(os.environ["COUNTER"], "a") as f:
            f.write("fit\\n")
        return sum(self.extractor.features())


folder = os.environ["FOLDER"]
extractor = Extractor(infra=xl.TaskInfra(folder=folder))
model = Classifier(extractor=extractor, infra=xl.TaskInfra(folder=folder))
print(model.fit(), model.fit.uid())
"""


def test_case2_bumping_an_upstream_version_changes_the_downstream_uid(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    counter = tmp_path / "n"
    env = dict(subprocess_env, FOLDER=str(tmp_path / "cache"), COUNTER=str(counter))
    (tmp_path / "downstream.py").write_text(_DOWNSTREAM)
    upstream = tmp_path / "upstream.py"
    upstream.write_text(_UPSTREAM.format(version="1", scale=1))
    first = _run(["downstream.py"], tmp_path, env).split()
    assert first[0] == "3"  # 0 + 1 + 2
    # the code changes, and its author bumps the version, as the docs say to do
    upstream.write_text(_UPSTREAM.format(version="2", scale=10))
    second = _run(["downstream.py"], tmp_path, env).split()
    assert second[0] == "30"  # recomputed from the new features, not the old result
    assert second[1] != first[1]
    assert "extractor.infra.version=2" in second[1]
    assert counter.read_text().split() == ["fit", "fit"]


def test_case3_numbers_count_by_their_annotation(tmp_path: Path) -> None:
    from uid_defs import Svm

    assert Svm(C=1).fit.uid() == Svm().fit.uid()
    assert Svm(C=10).fit.uid() == Svm(C=10.0).fit.uid()
    assert Svm(C=10).fit.config() == {"C": 10.0}
    assert Svm(gammas=[1, 2]).fit.uid() == Svm(gammas=[1.0, 2.0]).fit.uid()
    assert Svm(C=True).fit.uid() != Svm(C=1).fit.uid()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'n_bins' is annotated int but holds the float 9\.0"):
        Svm(n_bins=9.0).fit.uid()  # type: ignore[arg-type]
    with pytest.raises(xl.ConfigError, match=r"n_bins.*pass an int"):
        Svm(n_bins=2.5).fit.uid()  # type: ignore[arg-type]


def test_case3_toml_and_python_configs_share_a_cache(tmp_path: Path) -> None:
    from uid_defs import Svm

    counter = tmp_path / "n"
    folder = tmp_path / "cache"
    infra = xl.TaskInfra(folder=folder, keep_in_ram=False)
    python = Svm(C=10, gammas=[1, 2], counter=str(counter), infra=infra)
    assert python.fit() == 93.0
    toml = tmp_path / "svm.toml"
    toml.write_text(
        f'C = 10\ngammas = [1, 2]\ncounter = "{counter}"\n[infra]\nfolder = "{folder}"\n'
        "keep_in_ram = false\n"
    )
    loaded = xl.load_config(Svm, toml)
    assert loaded.C == 10.0 and isinstance(loaded.C, float)
    assert loaded.fit.uid() == python.fit.uid()
    assert loaded.fit() == 93.0
    assert counter.read_text().count("x") == 1  # computed once, shared


def test_case4_version_is_a_short_name_that_stays_in_folder(tmp_path: Path) -> None:
    for bad in ("x/../../escape", "..", "a/b", "", "a b", "v1\n", "x" * 65):
        with pytest.raises(ValueError, match="version"):
            xl.TaskInfra(folder=tmp_path, version=bad)
        with pytest.raises(ValueError, match="version"):
            xl.MapInfra(version=bad)
    with pytest.raises(xl.ValidationError, match="version"):
        xl.from_dict(Task, {"infra": {"version": "x/../../escape"}})
    assert xl.TaskInfra(version="2024-05.b_1").version == "2024-05.b_1"


def test_case5_folder_tilde_is_expanded_and_relative_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert xl.TaskInfra(folder="~/cache").folder == home / "cache"
    assert xl.TaskInfra(folder=Path("~/cache")).folder == home / "cache"
    assert xl.MapInfra(folder="rel").folder == work / "rel"
    toml = tmp_path / "task.toml"
    toml.write_text('param = 3\n[infra]\nfolder = "~/cache"\n')
    task = xl.load_config(Task, toml)
    task.process()
    assert (home / "cache" / task.process.uid() / "config.json").exists()
    assert not (work / "~").exists()


def test_case12_a_nested_infra_never_changes_the_uid_but_its_version(tmp_path: Path) -> None:
    from uid_defs import Feat, Head

    bare = Head(feat=Feat(dim=8)).train
    placed = Head(feat=Feat(dim=8, infra=xl.TaskInfra(folder=tmp_path, cluster="local"))).train
    assert placed.uid() == bare.uid()
    assert bare.config() == {"feat": {"dim": 8, "infra": {"version": "1"}}}
    assert "feat=__" not in bare.uid()
    assert "feat.dim=8,feat.infra.version=1" in bare.uid()
    bumped = Head(feat=Feat(dim=8, infra=xl.TaskInfra(version="2"))).train
    assert bumped.uid() != bare.uid()
    # a nested config at its default counts by its version too; so do configs in containers
    assert Head().train.config() == {"feat": {"infra": {"version": "1"}}}
    assert Head(feat=Feat(infra=xl.TaskInfra(folder=tmp_path))).train.uid() == Head().train.uid()
    listed = Head(feats=(Feat(infra=xl.TaskInfra(folder=tmp_path)),)).train
    assert listed.uid() == Head(feats=(Feat(),)).train.uid()
    assert listed.config()["feats"] == [{"infra": {"version": "1"}}]
    listed_v2 = Head(feats=(Feat(infra=xl.TaskInfra(version="2")),)).train
    assert listed_v2.uid() != listed.uid()


def test_time_values_have_a_stable_encoding() -> None:
    import datetime

    from uid_defs import Tree

    tree = Tree(
        timeout=datetime.timedelta(minutes=90, microseconds=5),
        start=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
    )
    assert tree.run.config() == {"timeout": "PT5400.000005S", "start": "2024-05-01T12:30:00Z"}
    assert Tree(timeout=datetime.timedelta(hours=1)).run.uid() == Tree().run.uid()
    assert tree.run.uid().endswith("-" + xl_hash(tree.run.config()))


def xl_hash(config: dict[str, tp.Any]) -> str:
    from exca_lite.uid import config_hash

    return config_hash(config)


def test_case1_a_notebook_class_warns_once_and_says_so_in_its_uid() -> None:
    namespace: dict[str, tp.Any] = {"__name__": "__main__"}
    cell = (
        "import dataclasses, exca_lite as xl\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Cell:\n"
        "    a: int = 0\n"
        "    infra: xl.TaskInfra = xl.TaskInfra()\n"
        "    @infra.apply\n"
        "    def process(self) -> int:\n"
        "        return self.a\n"
    )
    exec(compile(cell, "<ipython-input-1>", "exec"), namespace)
    cls = namespace["Cell"]
    with pytest.warns(xl.InteractiveClassWarning, match="move the class into a module"):
        assert cls(a=1).process.uid().startswith("__interactive__.Cell.process,0/a=1-")
    assert cls(a=2).process.uid().startswith("__interactive__.Cell.process,0/a=2-")  # once


@dataclasses.dataclass(frozen=True)
class _Sequences:
    seq: tp.Sequence[str] = ()
    anything: tp.Any = ()
    pair: tp.Sequence[int] = (1, 2)
    infra: xl.TaskInfra = xl.TaskInfra()

    @infra.apply
    def run(self) -> int:
        return len(self.seq)


def test_a_value_with_its_defaults_plain_form_is_the_default(tmp_path: Path) -> None:
    default = _Sequences().run.uid()
    assert _Sequences(seq=[], anything=[], pair=[1, 2]).run.uid() == default
    assert _Sequences(pair=[2, 1]).run.uid() != default
    # a config read back from its own files keeps its uid (from_dict builds lists for these)
    for obj in (_Sequences(), _Sequences(seq=("a",), pair=(3,))):
        again = xl.from_dict(_Sequences, xl.to_dict(obj))
        assert again.run.uid() == obj.run.uid()
    run = _Sequences(seq=("a",), infra=xl.TaskInfra(folder=tmp_path))
    assert run.run() == 1
    assert [tuple(owner.seq) for owner in run.run.iter_cached()] == [("a",)]
