"""Frozen-dataclass configs: checking them, walking their fields, and plain-data round trips.

A config is any frozen dataclass whose field values are plain data (see ``SUPPORTED``), nested frozen
dataclasses of the same, or infras. Everything here is computed per class once and cached, because
the uid (``uid.py``) walks configs on hot paths.
"""

from __future__ import annotations

import builtins
import collections.abc
import dataclasses
import datetime
import enum
import functools
import os
import re
import sys
import types
import typing as tp
from pathlib import Path, PurePath

import msgspec

from .errors import ConfigError, ValidationError

_MISSING: tp.Any = dataclasses.MISSING

SUPPORTED = (
    "None, bool, int, float, str, bytes, pathlib.Path, enum.Enum, datetime.datetime/date/time/"
    "timedelta, tuple, list, dict with str keys, frozenset, and nested frozen dataclasses of the same"
)
# values msgspec renders as ISO 8601 strings (durations as seconds: "PT3600S"), in config files
# and in the uid alike
TIME_TYPES = (datetime.datetime, datetime.date, datetime.time, datetime.timedelta)


class InfraMarker:
    """Base of TaskInfra/MapInfra: infra fields never count in a uid, except the ``version`` of
    the infra of a nested config (see uid.py)."""

    __slots__ = ()

    version: str

    def merged_into(self, default: tp.Any) -> tp.Self:
        """This infra completed by the class default (infra.py: default heritage)."""
        raise NotImplementedError


Coerce = tp.Callable[[tp.Any, str], tp.Any]


class FieldInfo(tp.NamedTuple):
    """What the uid walk needs to know about one dataclass field, computed once per class (a
    named tuple: built ~3x faster than a frozen dataclass, in every fresh process's first call)."""

    name: str
    default: tp.Any  # dataclasses.MISSING when the field has no default
    is_infra: bool  # declared default (or annotation) is an infra
    # numbers count by their annotation: ``float`` (int values count as floats) or ``int`` (a
    # float value is an error); None for any other annotation
    number: type | None = None
    # the same for numbers inside a container annotation (``list[float]``, ``dict[str, float]``)
    coerce: Coerce | None = None


def is_frozen_dataclass(cls: type) -> bool:
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and bool(params.frozen)


def check_owner(cls: type) -> None:
    """Raise a TypeError saying how to fix a class that cannot own an infra."""
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(
            f"{cls.__qualname__} owns an infra but is not a dataclass: decorate it with "
            "@dataclasses.dataclass(frozen=True)"
        )
    if not is_frozen_dataclass(cls):
        raise ConfigError(
            f"{cls.__qualname__} owns an infra but is not frozen: use "
            "@dataclasses.dataclass(frozen=True) so that its cache key cannot change after use"
        )


_FIELD_INFOS: dict[type, tuple[FieldInfo, ...]] = {}


def field_infos(cls: type) -> tuple[FieldInfo, ...]:
    """The fields of a dataclass with their (materialized) defaults, cached per class."""
    infos = _FIELD_INFOS.get(cls)
    if infos is not None:
        return infos
    fields = dataclasses.fields(cls)
    hints: dict[str, tp.Any] | None = None
    out = []
    for f in fields:
        default: tp.Any = _MISSING
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = f.default_factory()  # type: ignore[operator]
        quick = _quick_number(f.type, _annotation_owner(cls, f.name))
        if quick is not _UNKNOWN:
            number, coerce = quick, None
        else:
            if hints is None:
                try:
                    hints = _type_hints(cls)
                except Exception:  # unresolvable forward references: the raw annotations
                    hints = {g.name: g.type for g in fields}
            hint = hints.get(f.name, f.type)
            number = _number_type(hint)
            coerce = None if number is not None else _coercer(hint)
        if number is float and type(default) is int:
            default = float(default)
        out.append(FieldInfo(f.name, default, isinstance(default, InfraMarker), number, coerce))
    _FIELD_INFOS[cls] = infos = tuple(out)
    return infos


_UNKNOWN: tp.Any = object()
_NAME = re.compile(r"[A-Za-z_][\w.]*")
_BUILTIN_NAMES: dict[str, tp.Any] = vars(builtins)


def _annotation_owner(cls: type, name: str) -> type:
    """The class of the MRO that annotates field ``name``: its module resolves the annotation."""
    for base in cls.__mro__:
        if name in vars(base).get("__annotations__", {}):
            return base
    return cls


def _quick_number(annotation: tp.Any, owner: type) -> tp.Any:
    """``float``, ``int`` or None when a string annotation says so plainly, else ``_UNKNOWN``.

    Resolving string annotations (``from __future__ import annotations``) with
    ``typing.get_type_hints`` compiles each of them: ~0.7 ms for an infra's fields, in every fresh
    process, before the first cache hit. Most annotations are plain classes (``str``, ``Path | None``,
    ``tuple[str, ...]``, literal aliases): looking their names up is enough to know they hold no number. Anything
    else (aliases, typing forms, numbers inside containers) is left to the full resolution.
    """
    if not isinstance(annotation, str):
        return _UNKNOWN if _maybe_holds_number(annotation) else None
    module = sys.modules.get(owner.__module__)
    namespaces = (vars(owner), vars(module) if module is not None else {}, _BUILTIN_NAMES)
    numbers = set()
    for name in _NAME.findall(annotation):
        if name == "None":
            continue
        head, *attrs = name.split(".")
        value = _MISSING
        for namespace in namespaces:
            if head in namespace:
                value = namespace[head]
                break
        for attr in attrs:
            value = getattr(value, attr, _MISSING)
        if value is int or value is float:
            numbers.add(value)
        elif isinstance(value, type) and value is not _MISSING:
            continue  # a plain class: holds no number
        elif tp.get_origin(value) is not tp.Literal:  # a choice of constants: never coerced
            return _UNKNOWN  # an alias, a typing form, or a name not found: resolve it fully
    if not numbers:
        return None
    number = _STR_NUMBERS.get(annotation.strip())
    return number if number in numbers and len(numbers) == 1 else _UNKNOWN


def _maybe_holds_number(hint: tp.Any) -> bool:
    """Whether a resolved annotation is, or contains, something other than plain classes."""
    if hint is int or hint is float:
        return True
    return not isinstance(hint, type) and hint is not None and hint is not _NONE_TYPE


_NONE_TYPE = type(None)
_STR_NUMBERS = {
    f"{prefix}{number}{suffix}": typ
    for number, typ in (("float", float), ("int", int))
    for prefix, suffix in (("", ""), ("", " | None"), ("None | ", ""), ("Optional[", "]"))
} | {f"tp.Optional[{n}]": t for n, t in (("float", float), ("int", int))}


def _number_type(hint: tp.Any) -> type | None:
    """``float`` or ``int`` for a field annotated so (or Optional of it), else None."""
    if hint is float or hint is int:
        return tp.cast(type, hint)
    if isinstance(hint, str):  # an annotation that could not be resolved
        return _STR_NUMBERS.get(hint.replace("typing.", "tp.").strip())
    if tp.get_origin(hint) in (tp.Union, types.UnionType):
        args = [a for a in tp.get_args(hint) if a is not _NONE_TYPE]
        if len(args) == 1 and (args[0] is float or args[0] is int):
            return tp.cast(type, args[0])
    return None


def coerce_number(number: type, value: tp.Any, where: str) -> tp.Any:
    """A number as its annotation says: an int (not a bool) in a ``float`` field is that float; a
    float in an ``int`` field is an error, since the method would compute with the float."""
    cls = type(value)
    if number is float:
        return float(value) if cls is int else value
    if isinstance(value, float):
        fix = f"pass the int {int(value)}" if value.is_integer() else "pass an int"
        raise ConfigError(
            f"field {where!r} is annotated int but holds the float {value!r}: {fix}, or "
            "annotate the field float"
        )
    return value


def _coercer(hint: tp.Any) -> Coerce | None:
    """A function normalizing the numbers inside a container value by its annotation, or None
    when the annotation holds no ``float``/``int`` to go by."""
    number = _number_type(hint)
    if number is not None:
        return functools.partial(coerce_number, number)
    origin, args = tp.get_origin(hint), tp.get_args(hint)
    if origin in (list, tuple, frozenset, set, collections.abc.Sequence) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            each = [_coercer(a) for a in args]
            if not any(each):
                return None
            return functools.partial(_coerce_fixed_tuple, each)
        inner = _coercer(args[0])
        return None if inner is None else functools.partial(_coerce_items, inner)
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        inner = _coercer(args[1])
        return None if inner is None else functools.partial(_coerce_values, inner)
    return None


def _coerce_items(inner: Coerce, value: tp.Any, where: str) -> tp.Any:
    if isinstance(value, (list, tuple)):
        return type(value)(inner(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, frozenset):
        return frozenset(inner(v, f"{where}[]") for v in value)
    return value


def _coerce_fixed_tuple(each: list[Coerce | None], value: tp.Any, where: str) -> tp.Any:
    if not isinstance(value, (list, tuple)) or len(value) != len(each):
        return value
    return type(value)(
        v if c is None else c(v, f"{where}[{i}]")
        for i, (c, v) in enumerate(zip(each, value, strict=True))
    )


def _coerce_values(inner: Coerce, value: tp.Any, where: str) -> tp.Any:
    if isinstance(value, dict):
        return {k: inner(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _check_key(key: object, path: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"dict keys must be str, got {type(key).__name__} key at {path or '.'}")
    return key


def plain(value: tp.Any, path: str = "") -> tp.Any:
    """Full config as plain data (JSON-able): the inverse of ``from_dict``.

    Raises ``ConfigError`` naming the field path for any unsupported value.
    """
    cls = type(value)
    if value is None or cls is bool or cls is int or cls is float or cls is str or cls is bytes:
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value, path)
    # subclasses (numpy.float64 is a float) as the plain type, which every encoder knows
    if isinstance(value, int):
        return bool(value) if isinstance(value, bool) else int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, TIME_TYPES):
        return msgspec.to_builtins(value)
    if isinstance(value, (tuple, list)):
        return [plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, frozenset):
        return sorted_items([plain(v, f"{path}[]") for v in value])
    if isinstance(value, dict):
        return {_check_key(k, path): plain(v, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not is_frozen_dataclass(type(value)):
            raise ConfigError(
                f"field {path or '.'} holds a non-frozen dataclass {type(value).__qualname__}: "
                "nested configs must be @dataclasses.dataclass(frozen=True)"
            )
        names: tp.Iterable[str] = [info.name for info in field_infos(type(value))]
        if isinstance(value, InfraMarker):
            # an infra as given: only what it sets, so that from_dict(to_dict(x)) keeps what it
            # inherits from the class default (see infra.py, "default heritage")
            names = [n for n in names if n in getattr(value, "explicit_fields", ())]
        return {name: plain(getattr(value, name), _join(path, name)) for name in names}
    raise ConfigError(
        f"field {path or '.'} holds a {type(value).__module__}.{type(value).__qualname__}, "
        f"which cannot be part of a config; supported: {SUPPORTED}"
    )


def infra_plain(infra: InfraMarker) -> dict[str, tp.Any]:
    """Every field of an infra in effect (for config.json), bookkeeping aside."""
    return {
        info.name: plain(getattr(infra, info.name), info.name)
        for info in field_infos(type(infra))
        if info.name != "explicit_fields"
    }


def sorted_items(values: list[tp.Any]) -> list[tp.Any]:
    """Order a frozenset's items by their canonical bytes, so the order never depends on hashing."""
    return sorted(values, key=lambda v: msgspec.json.encode(v, order="sorted"))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def to_dict(obj: tp.Any) -> dict[str, tp.Any]:
    """The full config of a dataclass instance as plain data, infras included."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise ConfigError(f"to_dict expects a dataclass instance, got {type(obj).__qualname__}")
    out = plain(obj)
    if not isinstance(out, dict):  # pragma: no cover - a dataclass always gives a dict
        raise ConfigError("to_dict: unexpected non-dict")
    return out


T = tp.TypeVar("T")


def _dec_hook(typ: type, value: tp.Any) -> tp.Any:
    if typ is Path and isinstance(value, (str, PurePath)):
        return Path(value)
    raise NotImplementedError(f"unsupported type {typ}")


@functools.cache
def _type_hints(cls: type) -> dict[str, tp.Any]:
    return tp.get_type_hints(cls)


def _holds_dataclass(hint: tp.Any) -> bool:
    """Whether an annotation names a dataclass, directly or inside a union or a container."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return True
    return any(_holds_dataclass(a) for a in tp.get_args(hint) if a is not Ellipsis)


def _msgspec_hint(hint: tp.Any) -> tp.Any:
    """msgspec refuses unions of a custom type with str (``Path | str | None``, an infra's folder):
    decode those as str, which the field accepts too."""
    args = tp.get_args(hint)
    if Path in args and str in args:
        return tp.Union[tuple(a for a in args if a is not Path)]  # noqa: UP007
    return hint


def _build(cls: type, data: tp.Mapping[str, tp.Any], path: str) -> tp.Any:
    """One dataclass from a mapping, field by field, through its real constructor.

    Field by field rather than one ``msgspec.convert`` of the whole class: msgspec cannot type an
    infra's ``folder`` (``Path | str | None``), ignores unknown keys, and builds dataclasses without
    calling ``__init__`` (which infras need, to record the fields they were given).
    """
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    derived = {f.name for f in dataclasses.fields(cls) if not f.init}
    kwargs: dict[str, tp.Any] = {}
    for key, value in data.items():
        where = _join(path, str(key))
        if key in derived:  # init=False: computed by the class (to_dict writes it for humans)
            continue
        if key not in names:
            raise ValidationError(
                f"unknown field {where!r} for {cls.__qualname__}; valid fields: {sorted(names)}"
            )
        kwargs[key] = _convert(hints[key], value, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a missing field, or a __post_init__ check (infras)
        raise ValidationError(f"invalid config at {path or '.'} ({cls.__qualname__}): {e}") from e


def _convert(hint: tp.Any, value: tp.Any, where: str) -> tp.Any:
    """Plain data as the annotation says. Annotations holding a config class (``Sub``,
    ``Sub | None``, ``list[Sub]``, ``dict[str, Sub]``) are walked here, the configs built through
    their constructors; everything else is msgspec's."""
    if not _holds_dataclass(hint):
        return _msgspec_convert(hint, value, where)
    if isinstance(hint, type):  # a config class
        if isinstance(value, hint):
            return value
        if isinstance(value, tp.Mapping):
            return _build(hint, value, where)
        raise ValidationError(
            f"invalid value for field {where!r}: expected a {hint.__qualname__} (or a mapping of "
            f"its fields), got {type(value).__name__}"
        )
    origin, args = tp.get_origin(hint), tp.get_args(hint)
    if origin in (tp.Union, types.UnionType):
        if value is None and _NONE_TYPE in args:
            return None
        problems = []
        for arg in args:
            if arg is _NONE_TYPE:
                continue
            try:
                return _convert(arg, value, where)
            except ValidationError as e:
                problems.append(str(e))
        raise ValidationError(f"invalid value for field {where!r}: {'; '.join(problems)}")
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        if not isinstance(value, tp.Mapping):
            raise ValidationError(f"field {where!r} expects a mapping, got {type(value).__name__}")
        return {
            _convert(args[0], k, f"{where}.{k}"): _convert(args[1], v, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple, frozenset, set, collections.abc.Sequence) and args:
        if isinstance(value, (str, bytes, tp.Mapping)) or not isinstance(value, tp.Iterable):
            raise ValidationError(f"field {where!r} expects a sequence, got {type(value).__name__}")
        items = list(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValidationError(
                    f"field {where!r} expects {len(args)} items, got {len(items)}"
                )
            return tuple(
                _convert(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, items, strict=True))
            )
        converted = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items)]
        if origin is collections.abc.Sequence:
            return converted
        return origin(converted)
    return _msgspec_convert(hint, value, where)


def _msgspec_convert(hint: tp.Any, value: tp.Any, where: str) -> tp.Any:
    try:
        return msgspec.convert(value, _msgspec_hint(hint), dec_hook=_dec_hook, strict=False)
    except msgspec.ValidationError as e:
        raise ValidationError(f"invalid value for field {where!r}: {e}") from e
    except TypeError as e:  # an annotation msgspec cannot decode into
        raise ValidationError(f"field {where!r}: cannot decode into {hint}: {e}") from e


def from_dict(cls: type[T], data: tp.Mapping[str, tp.Any]) -> T:
    """Build a (nested) config from plain dicts, validating types; errors name the field."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"from_dict expects a dataclass class, got {cls!r}")
    if not isinstance(data, tp.Mapping):
        raise ValidationError(
            f"from_dict({cls.__qualname__}, ...) expects a mapping, got {type(data).__name__}"
        )
    return tp.cast(T, _build(cls, data, ""))


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """``from_dict`` on the content of a .json, .toml or .yaml/.yml file."""
    path = Path(path)
    raw = path.read_bytes()
    suffix = path.suffix.lower()
    data: tp.Any
    try:
        if suffix == ".json":
            data = msgspec.json.decode(raw)
        elif suffix == ".toml":
            import tomllib  # only configs from files need it

            data = tomllib.loads(raw.decode("utf8"))
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise ValidationError(
                    f"{path} is YAML, which needs PyYAML: pip install 'exca_lite[yaml]'"
                ) from e
            data = yaml.safe_load(raw)
        else:
            raise ValidationError(
                f"{path}: unsupported config format {suffix!r} (.json, .toml, .yaml)"
            )
    except ValidationError:
        raise
    except Exception as e:
        raise ValidationError(f"{path} could not be parsed: {e}") from e
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must hold a mapping at the top, got {type(data).__name__}")
    return from_dict(cls, data)


__all__ = [
    "TIME_TYPES",
    "coerce_number",
    "infra_plain",
    "FieldInfo",
    "InfraMarker",
    "check_owner",
    "field_infos",
    "from_dict",
    "is_frozen_dataclass",
    "load_config",
    "plain",
    "to_dict",
]
