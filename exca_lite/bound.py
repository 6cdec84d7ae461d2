"""What TaskInfra and MapInfra methods share: the descriptor on the class and the bound object.

``@infra.apply`` puts an ``InfraMethod`` on the class. On an instance it gives a bound object,
stored in the instance's ``__dict__`` on first access, so later accesses are a plain attribute lookup
(a data descriptor was rejected: it would run Python code on every access, and a RAM hit is meant
to cost one call). The bound object computes once, and keeps, everything derivable from the
config: the infra in effect (default heritage applied), the uid, the cache paths.
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp
import warnings
from pathlib import Path

import msgspec

from . import taskcache
from .config import InfraMarker, check_owner, field_infos, from_dict, infra_plain, plain
from .errors import ConfigError, CorruptCacheWarning, ValidationError
from .infra import IN_MEMORY_CLUSTERS
from .taskcache import TaskPaths
from .uid import canonical_bytes, method_uid, uid_config

if tp.TYPE_CHECKING:
    from .infra import Infra

B = tp.TypeVar("B", bound="BoundMethod")


class InfraMethod(tp.Generic[B]):
    """Base of the descriptors ``@infra.apply`` returns; subclasses make their bound objects."""

    def __init__(self, infra: Infra, func: tp.Callable[..., tp.Any], exclude: tuple[str, ...]):
        self.infra = infra
        self.func = func
        self.exclude = exclude
        self.name: str = getattr(func, "__name__", "method")
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        self._infra_field: dict[type, str] = {}
        self._class_default: dict[type, Infra] = {}
        self._dict_keys: dict[type, str] = {}
        self._refs: dict[type, str] = {}
        self.owner_qualname = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.owner_qualname = owner.__qualname__

    def new_bound(self, obj: tp.Any) -> B:
        """A fresh bound object (subclasses name their class)."""
        raise NotImplementedError

    def bind(self, obj: tp.Any) -> B:
        cls = type(obj)
        key = self._dict_keys.get(cls)
        if key is None:
            key = self._dict_keys[cls] = self._dict_key(cls)
        try:
            state = obj.__dict__
        except AttributeError:  # __slots__ class: no instance dict, bound objects are rebuilt
            return self.new_bound(obj)
        bound = state.get(key)
        if bound is None:
            # setdefault: threads racing on a first access all get the one object that won
            bound = state.setdefault(key, self.new_bound(obj))
        return tp.cast(B, bound)

    def _dict_key(self, cls: type) -> str:
        """Where the bound object is kept in the instance dict. Under the method's own name when
        ``obj.name`` resolves to this descriptor: later accesses then find it without calling
        ``__get__``. Under another key when a subclass overrides the method (and reaches this one
        through ``super()``): the bound object must not hide the override."""
        name: str = self.name
        for klass in cls.__mro__:
            if name in klass.__dict__:
                if klass.__dict__[name] is self:
                    return name
                break
        return f"{name}@{self.owner_qualname}"

    def ref(self, cls: type) -> str:
        """How jobs, pickles and uids name this method on ``cls``: its name when it is the first
        infra method of that name in the MRO (what ``find_method`` finds), else
        ``name@DefiningClass`` (an overridden method reached through ``super()``), so that an
        override and the method it overrides never share a cache, a job or a bound object."""
        ref = self._refs.get(cls)
        if ref is None:
            ref = self.name
            if find_method(cls, self.name) is not self:
                ref = f"{self.name}@{self.owner_qualname}"
            self._refs[cls] = ref
        return ref

    def infra_field(self, cls: type) -> str:
        """The name of the owner's field holding this method's infra (checked once per class)."""
        name = self._infra_field.get(cls)
        if name is None:
            check_owner(cls)
            for info in field_infos(cls):
                if info.default is self.infra:
                    name = info.name
                    break
            else:
                name = self._redeclared_field(cls)
            for excluded in self.exclude:
                _check_excluded_name(cls, excluded, self.name)
            self._infra_field[cls] = name
        return name

    def _redeclared_field(self, cls: type) -> str:
        """The field of a subclass that re-declares the infra field of the class defining this
        method (``infra: TaskInfra = TaskInfra(version="2")``, to bump an inherited method's
        version): its default completes the decorator's infra for this subclass."""
        kind = type(self.infra).__name__
        for base in cls.__mro__[1:]:
            if base is object or not dataclasses.is_dataclass(base):
                continue
            for info in field_infos(base):
                if info.default is self.infra:
                    mine = {i.name: i for i in field_infos(cls)}.get(info.name)
                    if mine is not None and isinstance(mine.default, type(self.infra)):
                        return info.name
                    raise TypeError(
                        f"{cls.__qualname__}.{self.name}: inherited from {base.__qualname__}, "
                        f"whose field {info.name!r} holds its infra; {cls.__qualname__} must "
                        f"keep that field a {kind} (re-declaring it with another {kind} "
                        "default is fine)"
                    )
        raise TypeError(
            f"{cls.__qualname__}.{self.name}: the infra whose apply decorates it must be the "
            f"default of one of its dataclass fields (infra: {kind} = {kind}())"
        )

    def class_default(self, cls: type) -> Infra:
        """The infra an instance's infra is completed by: the decorator's, or, in a subclass
        re-declaring the field, that field's default completed by the decorator's."""
        default = self._class_default.get(cls)
        if default is None:
            name = self.infra_field(cls)
            default = next(i.default for i in field_infos(cls) if i.name == name)
            if default is not self.infra:
                default = default.merged_into(self.infra)
            self._class_default[cls] = default
        return default


def refuse_read_only_clear(mode: str, uid: str, paths: TaskPaths | None) -> None:
    """``clear()`` under mode "read-only" would otherwise do nothing, silently."""
    if mode == "read-only":
        where = "" if paths is None else f" (or: exca-lite clear {paths.base})"
        raise ValueError(
            f"{uid}: clear() with mode='read-only', which never modifies a cache: clear it "
            f"through an infra of another mode{where}"
        )


def rebind(owner: tp.Any, ref: str) -> BoundMethod:
    """Unpickle a bound method (it travels inside its owner's __dict__) without its caches."""
    bound: BoundMethod = find_method(type(owner), ref).new_bound(owner)
    return bound


def find_method(cls: type, ref: str) -> InfraMethod[tp.Any]:
    """The infra method ``ref`` names on ``cls``: ``name`` (the first of that name in the MRO) or
    ``name@DefiningClass`` (see ``InfraMethod.ref``)."""
    name, _, owner = ref.partition("@")
    for klass in cls.__mro__:
        method = klass.__dict__.get(name)
        if isinstance(method, InfraMethod) and (not owner or klass.__qualname__ == owner):
            return method
    raise AttributeError(f"{cls.__qualname__} has no infra method {ref!r}")


class BoundMethod:
    """State shared by ``task.process`` and ``feat.embed``: infra in effect, uid, paths."""

    _infra: tp.Any
    _ref: str

    def __init__(self, method: InfraMethod[tp.Any], owner: tp.Any) -> None:
        self._method = method
        self._owner = owner
        self._prepared = False
        self._runnable = False  # prepared, and its infra can compute (_prepare_to_run)
        self._checked = False
        self._check_config_data: tp.Any = None

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (rebind, (self._owner, self._method.ref(type(self._owner))))

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"<{kind} {type(self._owner).__qualname__}.{self._method.ref(type(self._owner))}>"

    def _prepare(self) -> None:
        if self._prepared:
            return
        method = self._method
        cls = type(self._owner)
        field = method.infra_field(cls)
        given = getattr(self._owner, field)
        if not isinstance(given, type(method.infra)):
            raise TypeError(
                f"{cls.__qualname__}.{field} must be a {type(method.infra).__name__}, got {given!r}"
            )
        self._infra = given.merged_into(method.class_default(cls))
        self._uid_config = uid_config(self._owner, method.exclude)
        self._ref = method.ref(cls)
        self._uid = method_uid(cls, self._ref, self._infra.version, self._uid_config, method.func)
        folder = self._infra.folder
        self._paths = None if folder is None else TaskPaths(f"{folder}/{self._uid}")
        self._prepare_more()
        self._prepared = True

    def _prepare_more(self) -> None:
        """Subclasses derive more state here, once."""

    def _prepare_to_run(self) -> None:
        """``_prepare``, and refuse an infra that cannot compute (a cluster without a folder).
        Not at construction nor for ``uid()``: a class default may name the cluster, each
        instance the folder."""
        if self._runnable:
            return
        self._prepare()
        try:
            self._infra.check_usable()
        except ValueError as exc:
            what = f"{type(self._owner).__qualname__}.{self._method.name}"
            raise ValueError(f"{what}: {exc}") from None
        self._runnable = True

    def uid(self) -> str:
        self._prepare()
        return self._uid

    def folder(self) -> Path | None:
        self._prepare()
        return None if self._paths is None else self._paths.folder

    def config(self) -> dict[str, tp.Any]:
        """The uid config: the non-default fields the uid is computed from."""
        self._prepare()
        return dict(self._uid_config)

    # # # config.json and uid.json # # #

    def _full_config(self) -> dict[str, tp.Any]:
        """The config for config.json: every field, and the infra in effect (heritage applied)."""
        owner = self._owner
        field = self._method.infra_field(type(owner))
        # to_dict's walk, but the infra as in effect: never the owner's own (partial) one
        return {
            info.name: (
                infra_plain(self._infra)
                if info.name == field
                else plain(getattr(owner, info.name), info.name)
            )
            for info in field_infos(type(owner))
        }

    def _uid_bytes(self) -> bytes:
        return canonical_bytes(self._uid_config)

    def _compared_paths(self) -> tuple[set[str], set[str]]:
        """Paths of config.json the mismatch check skips (infras and excluded fields), and those
        of dict values (whose keys it compares): one walk of the config."""
        infras: set[str] = set()
        dicts: set[str] = set()
        _special_paths(self._owner, "", infras, dicts)
        return infras | set(self._method.exclude), dicts

    def _check_config(self) -> tp.Any:
        """The full config as the mismatch check compares it (as config.json reads back)."""
        if self._check_config_data is None:
            self._prepare()
            self._check_config_data = taskcache.comparable(self._full_config())
        return self._check_config_data

    def _check_configs(self) -> None:
        """Once per bound object: refuse a folder whose stored configs disagree with this one."""
        if self._checked or self._paths is None:
            return
        taskcache.check_configs(
            self._paths,
            self._uid,
            self._full_config(),
            self._uid_bytes(),
            self._compared_paths,
            repair=self._infra.mode != "read-only",
        )
        self._checked = True

    def _write_configs(self) -> None:
        workdir = getattr(self._infra, "workdir", None)
        if workdir is not None and self._infra.cluster not in IN_MEMORY_CLUSTERS:
            # a typo in WorkDir fails the submission: it must not leave a cache folder behind
            from .workdir import check_sources

            check_sources(workdir)
        taskcache.write_configs(tp.cast(TaskPaths, self._paths), self._full_config, self._uid_bytes)

    # # # every cache of this method and version # # #

    def _cached_owners(self) -> list[tp.Any]:
        """The owner of every cache of this method and version under ``folder``, rebuilt from its
        config.json with this owner's infra, in folder-name order.

        Read eagerly (a list): the one warning about skipped folders is then raised at the call,
        pointing at the caller, rather than whenever (or never, if not exhausted) a lazy walk ends.
        A folder counts only if its rebuilt config gives exactly that folder's uid: a config.json
        from another class definition (a default since changed, a field since added with a
        value) would otherwise yield an owner whose calls read another folder.
        """
        self._prepare()
        method = self._method
        cls = type(self._owner)
        what = f"{cls.__qualname__}.{method.name}"
        if self._infra.folder is None:
            raise ValueError(
                f"{what}.iter_cached() lists the caches under the infra's folder, and this "
                "infra has none: set folder=... on the infra of the object it is called on"
            )
        head = self._uid.split("/", 1)[0]
        method_dir = Path(self._infra.folder) / head
        try:
            names = sorted(e.name for e in os.scandir(method_dir) if not e.name.startswith("."))
        except FileNotFoundError:
            return []
        field = method.infra_field(cls)
        infra = getattr(self._owner, field)
        init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
        owners: list[tp.Any] = []
        skipped: list[str] = []
        for name in names:
            config = method_dir / name / "config.json"
            try:
                data = msgspec.json.decode(config.read_bytes())
                if not isinstance(data, dict):
                    raise ValidationError(f"holds a {type(data).__name__}, not a mapping")
                # fields that no longer exist are dropped, as the config check ignores them: if
                # one counted in this cache's uid, the uid comparison below tells
                data = {k: v for k, v in data.items() if k in init_fields}
                data[field] = infra
                owner = from_dict(cls, data)
                uid = method_uid(
                    cls,
                    self._ref,
                    self._infra.version,
                    uid_config(owner, method.exclude),
                    method.func,
                )
            except FileNotFoundError:
                skipped.append(f"{name} (no config.json: not a cache)")
                continue
            except (OSError, msgspec.DecodeError, ConfigError, ValidationError) as e:
                skipped.append(f"{name} ({type(e).__name__}: {e})")
                continue
            if uid != f"{head}/{name}":
                skipped.append(
                    f"{name} (its config.json gives the uid {uid.split('/', 1)[1]} with the class "
                    "as defined now: a class default changed?)"
                )
                continue
            owners.append(owner)
        if skipped:
            shown = "; ".join(skipped[:5]) + (
                f"; and {len(skipped) - 5} more" if skipped[5:] else ""
            )
            warnings.warn(
                f"{what}.iter_cached(): skipped {len(skipped)} folder(s) of {method_dir} that are "
                f"not readable caches of this class: {shown}. Remove them if they are not caches "
                "(or clear them with `exca-lite clear`); a changed class needs a version bump",
                CorruptCacheWarning,
                stacklevel=3,
            )
        return owners


def _check_excluded_name(cls: type, dotted: str, method: str) -> None:
    """A name in exclude_from_cache_uid must be a field (a typo would silently keep it in the uid).

    Nested parts are checked as far as the field defaults are dataclasses (a nested config that
    defaults to None cannot be checked further: its type is only an annotation).
    """
    klass: type | None = cls
    walked: list[str] = []
    for part in dotted.split("."):
        if klass is None:
            return
        infos = {info.name: info for info in field_infos(klass)}
        if part not in infos:
            where = ".".join(walked) or cls.__qualname__
            raise ConfigError(
                f"{cls.__qualname__}.{method}: exclude_from_cache_uid names {dotted!r}, but "
                f"{where} has no field {part!r}; its fields: {sorted(infos)}"
            )
        walked.append(part)
        default = infos[part].default
        is_config = dataclasses.is_dataclass(default) and not isinstance(default, type)
        klass = type(default) if is_config else None


def _special_paths(value: tp.Any, path: str, infras: set[str], dicts: set[str]) -> None:
    """Add to ``infras`` the paths (as in config.json: ``sub.infra``, ``subs[0].infra``) of the
    infras in a config, at any depth (they never count: a stored config.json may differ there),
    and to ``dicts`` those of its dict values (their keys are data, not fields: a key added to a
    dict default changes the computation, as a new field does not)."""
    if isinstance(value, InfraMarker):
        infras.add(path)
    elif isinstance(value, dict):
        dicts.add(path)
        for key, item in value.items():
            _special_paths(item, f"{path}.{key}" if path else str(key), infras, dicts)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _special_paths(item, f"{path}[{i}]", infras, dicts)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for info in field_infos(type(value)):
            where = f"{path}.{info.name}" if path else info.name
            _special_paths(getattr(value, info.name), where, infras, dicts)


__all__ = ["BoundMethod", "InfraMethod", "find_method", "rebind"]
