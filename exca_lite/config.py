"""Frozen-dataclass configs: checking them, walking their fields, and plain-data round trips.

A config is any frozen dataclass whose field values are plain data (see ``SUPPORTED``), nested frozen
dataclasses of the same, or infras. Everything here is computed per class once and cached, because
the uid (``uid.py``) walks configs on hot paths.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import typing as tp
from pathlib import Path, PurePath

import msgspec

from .errors import ConfigError, ValidationError

_MISSING: tp.Any = dataclasses.MISSING

SUPPORTED = (
    "None, bool, int, float, str, bytes, pathlib.Path, enum.Enum, tuple, list, dict with str keys, "
    "frozenset, and nested frozen dataclasses of the same"
)


class InfraMarker:
    """Base of TaskInfra/MapInfra: infra values never count in a uid and are never walked into."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What the uid walk needs to know about one dataclass field, computed once per class."""

    name: str
    default: tp.Any  # dataclasses.MISSING when the field has no default
    is_infra: bool  # declared default (or annotation) is an infra


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
    out = []
    for f in dataclasses.fields(cls):
        default: tp.Any = _MISSING
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = f.default_factory()  # type: ignore[operator]
        out.append(FieldInfo(f.name, default, isinstance(default, InfraMarker)))
    _FIELD_INFOS[cls] = infos = tuple(out)
    return infos


def _check_key(key: object, path: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"dict keys must be str, got {type(key).__name__} key at {path or '.'}")
    return key


def plain(value: tp.Any, path: str = "") -> tp.Any:
    """Full config as plain data (JSON-able): the inverse of ``from_dict``.

    Raises ``ConfigError`` naming the field path for any unsupported value.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        if isinstance(value, enum.Enum):
            return plain(value.value, path)
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return plain(value.value, path)
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


def _dataclass_types(hint: tp.Any) -> list[type]:
    """Dataclass classes named by an annotation (directly or inside an Optional/Union)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    return [a for a in tp.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]


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
    subs = _dataclass_types(hint)
    if len(subs) == 1 and isinstance(value, tp.Mapping):
        return _build(subs[0], value, where)
    if subs and isinstance(value, tuple(subs)):
        return value
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
