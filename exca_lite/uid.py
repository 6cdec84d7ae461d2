"""The uid of a config: what a cache folder is keyed by.

Only fields that differ from their default count, so adding a field with a default keeps old caches;
numbers count as their field's annotation says (``float``: an int is that float). Infras never
count, nor do excluded names, except the effective version of a nested config's infra, which always
does (an upstream version bump must reach every downstream uid). A class of ``__main__`` is named
after its script (``module_name``). The canonical bytes are msgspec's JSON with sorted keys:
stable across processes, machines, PYTHONHASHSEED and dict order (floats by their shortest exact
repr; frozensets sorted by their items' canonical bytes; non-finite floats tagged so that NaN is not
confused with None).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import math
import os
import re
import sys
import typing as tp
import warnings
from pathlib import PurePath

import msgspec

from .config import (
    SUPPORTED,
    TIME_TYPES,
    FieldInfo,
    InfraMarker,
    coerce_number,
    field_infos,
    is_frozen_dataclass,
    sorted_items,
)
from .errors import ConfigError, InteractiveClassWarning

_encode = msgspec.json.Encoder(order="sorted").encode
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
READABLE_MAX_CHARS = 64
HASH_HEX_CHARS = 8
CLASS_KEY = "__class__"


def _canon(value: tp.Any, path: str) -> tp.Any:
    """A value as msgspec-encodable plain data, nested configs reduced to their non-default fields."""
    cls = type(value)
    if cls is int or cls is str or cls is bool or value is None:
        return value
    if cls is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, InfraMarker):  # infras in a container never count
        return None
    if isinstance(value, enum.Enum):
        return _canon(value.value, path)
    if isinstance(value, (int, str)):  # subclasses of the plain types
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)
    if isinstance(value, float):
        return _canon(float(value), path)
    if cls is bytes:
        return {"__bytes__": value.hex()}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_canon(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, frozenset):
        return sorted_items([_canon(v, f"{path}[]") for v in value])
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"dict keys must be str, got {type(k).__name__} at {path}")
            out[k] = _canon(v, f"{path}.{k}")
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not is_frozen_dataclass(cls):
            raise ConfigError(
                f"field {path} holds a non-frozen dataclass {cls.__qualname__}: nested configs "
                "must be @dataclasses.dataclass(frozen=True)"
            )
        return uid_config(value, (), path, nested=True)
    if isinstance(value, TIME_TYPES):
        return msgspec.to_builtins(value)  # ISO 8601, as in config.json
    raise ConfigError(
        f"field {path} holds a {cls.__module__}.{cls.__qualname__}, which cannot be part of a "
        f"config; supported: {SUPPORTED}"
    )


_NOT_COMPUTED: tp.Any = object()
_BAD_DEFAULT: tp.Any = object()


class _Field:
    """One field as the uid walk sees it (per class, computed once): ``canon_default`` is the
    canonical form of the default, for non-scalar defaults; ``kept_default`` what a value equal
    to its default still contributes (the versions of the nested infras inside it), or None."""

    __slots__ = ("canon_default", "coerce", "default", "is_infra", "kept_default", "name", "number")

    def __init__(self, info: FieldInfo) -> None:
        self.name = info.name
        self.default = info.default
        self.is_infra = info.is_infra
        self.number = info.number
        self.coerce = info.coerce
        self.canon_default: tp.Any = _NOT_COMPUTED
        self.kept_default: tp.Any = None

    def prepare(self, path: str) -> None:
        default = self.default
        if self.is_infra or default is _MISSING or type(default) in _PLAIN_SCALARS:
            self.canon_default = default
            return
        if self.coerce is not None:
            default = self.coerce(default, path)
        try:
            canon = _canon(default, path)
        except ConfigError:  # an unsupported default: an error once a value is walked, if ever
            self.canon_default = _BAD_DEFAULT
            return
        self.canon_default = canon
        self.kept_default = canon if _has_infra(default) else None


_MISSING: tp.Any = dataclasses.MISSING
_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type, path: str) -> tuple[_Field, ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = tuple(_Field(info) for info in field_infos(cls))
        for field in fields:
            field.prepare(f"{path}.{field.name}" if path else field.name)
        _FIELDS[cls] = fields
    return fields


def _has_infra(value: tp.Any) -> bool:
    """Whether a value holds a nested config with an infra, at any depth (its version counts)."""
    if isinstance(value, InfraMarker):
        return True
    if isinstance(value, (tuple, list, frozenset)):
        return any(_has_infra(v) for v in value)
    if isinstance(value, dict):
        return any(_has_infra(v) for v in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_has_infra(getattr(value, f.name)) for f in field_infos(type(value)))
    return False


def uid_config(
    obj: tp.Any, exclude: tp.Iterable[str] = (), path: str = "", nested: bool = False
) -> dict[str, tp.Any]:
    """The non-default, non-excluded fields of a config, as canonical plain data.

    Infra fields never count, except in a ``nested`` config (one inside the config the uid is
    for): there its infra counts by its effective ``version`` (default heritage applied), as
    ``{"version": ...}``, whether or not it differs from the default, so that bumping an upstream
    version gives every downstream uid a new value.
    """
    excluded = set(exclude) if exclude else None
    out: dict[str, tp.Any] = {}
    for field in _fields(type(obj), path):
        name = field.name
        if excluded and name in excluded:
            continue
        if field.is_infra and not nested:
            continue
        value = getattr(obj, name)
        default = field.default
        if value is default:
            if field.kept_default is not None:
                out[name] = field.kept_default
            elif field.is_infra:
                out[name] = {"version": value.version}
            continue
        cls = type(value)
        if cls in _PLAIN_SCALARS:  # the common case, kept free of the general walk below
            number = field.number
            if number is not None and cls is not number and cls is not bool:
                value = coerce_number(number, value, f"{path}.{name}" if path else name)
                cls = type(value)
            if cls is type(default) and value == default:
                # -0.0 == 0.0, but "floats by their exact repr": only the same repr is a default
                if cls is not float or repr(value) == repr(default):
                    continue
            elif cls is float and value != value and type(default) is float and default != default:
                continue  # NaN is its own default, though NaN != NaN
            if cls is not float or math.isfinite(value):
                out[name] = value
                continue
        where = f"{path}.{name}" if path else name
        if field.is_infra or isinstance(value, InfraMarker):
            if nested and isinstance(value, InfraMarker):
                out[name] = {"version": value.merged_into(default).version}
            continue
        if field.coerce is not None:
            value = field.coerce(value, where)
        is_config = dataclasses.is_dataclass(value) and not isinstance(value, type)
        sub_excluded = (
            [e[len(name) + 1 :] for e in excluded if e.startswith(name + ".")] if excluded else []
        )
        if sub_excluded and is_config:
            sub: tp.Any = uid_config(value, sub_excluded, where, nested=True)
            canon_default = (
                uid_config(default, sub_excluded, where, nested=True)
                if type(default) is type(value)
                else _NOT_COMPUTED
            )
        else:
            sub = _canon(value, where)  # raises on unsupported values, defaults included
            canon_default = field.canon_default
        if (not is_config or type(value) is type(default)) and sub == canon_default:
            # equal to the default (infra fields aside, but for their versions): counts only by
            # the versions of the infras inside it. Plain data by its plain form, as everywhere
            # in the uid: [] is the default () (from_dict builds a list for a Sequence field)
            if _has_infra(value) if sub_excluded else field.kept_default is not None:
                out[name] = sub
            continue
        if is_config and type(value) is not type(default):
            # another config class than the default's (a polymorphic field, or one defaulting to
            # None): two classes with the same non-default fields must not share a uid. The
            # qualname, not the module, so that moving a class keeps its caches.
            sub = {CLASS_KEY: type(value).__qualname__, **sub}
        out[name] = sub
    return out


_PLAIN_SCALARS = frozenset({int, str, bool, float})


def canonical_bytes(config: dict[str, tp.Any]) -> bytes:
    return _encode(config)


def _readable_parts(config: dict[str, tp.Any], prefix: str, parts: list[str]) -> None:
    for key in sorted(config):
        value = config[key]
        cls = type(value)
        if cls is str:
            parts.append(f"{prefix}{key}={value}")
        elif cls is dict and value and "__float__" not in value and "__bytes__" not in value:
            _readable_parts(value, f"{prefix}{key}.", parts)
        else:
            parts.append(f"{prefix}{key}={_encode(value).decode()}")


def readable(config: dict[str, tp.Any]) -> str:
    """A short, filesystem-safe ``key=value`` rendering of a uid config."""
    if not config:
        return "default"
    parts: list[str] = []
    _readable_parts(config, "", parts)
    text = _UNSAFE.sub("_", ",".join(parts))
    return text[:READABLE_MAX_CHARS]


def config_hash(config: dict[str, tp.Any]) -> str:
    return hashlib.blake2b(canonical_bytes(config), digest_size=HASH_HEX_CHARS // 2).hexdigest()


def method_uid(
    cls: type, method: str, version: str, config: dict[str, tp.Any], func: tp.Any = None
) -> str:
    """``"{module}.{qualname}.{method},{version}/{readable}-{hash}"``."""
    head = f"{module_name(cls, func)}.{cls.__qualname__}.{method}"
    return f"{head},{version}/{readable(config)}-{config_hash(config)}"


INTERACTIVE_MODULE = "__interactive__"
_MODULE_NAMES: dict[type, str] = {}


def module_name(cls: type, func: tp.Any = None) -> str:
    """The module a class is named after in uids: never ``__main__``.

    A class of a script run as ``python featurize.py`` is named after the script (``featurize``,
    its name when imported), under ``python -m pkg.mod`` after ``pkg.mod``: a script and an import
    of it share one cache, two scripts defining the same class name never do. The file is the one
    the method's code was compiled from (``func``), so a worker running a script's class (pickled
    by value) names it the same. Where no file names it (a notebook, ``python -c``, ``exec``), the
    uid says ``__interactive__`` and a one-time warning suggests moving the class into a module.
    """
    name = _MODULE_NAMES.get(cls)
    if name is None:
        name = cls.__module__
        if name == "__main__":
            name = _main_module_name(cls, func)
        _MODULE_NAMES[cls] = name
    return name


def _main_module_name(cls: type, func: tp.Any) -> str:
    code = getattr(inspect.unwrap(func), "__code__", None) if func is not None else None
    source = code.co_filename if code is not None else None
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file and main_file.startswith("<"):  # python - < script.py: "<stdin>", no file
        main_file = None
    if source and main_file and os.path.realpath(source) == os.path.realpath(main_file):
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            return str(spec.name)  # python -m pkg.mod
        return _file_module(source)
    if source and source.endswith(".py") and os.path.isfile(source):
        return _file_module(source)  # a script's class in a worker process
    warnings.warn(
        f"{cls.__qualname__} is defined in __main__ without a file naming it (a notebook, "
        f"python -c, exec): its uids start with {INTERACTIVE_MODULE}.{cls.__qualname__}, which "
        "another notebook defining the same class name would share; move the class into a "
        "module (a .py file) to give its caches a name of their own",
        InteractiveClassWarning,
        stacklevel=4,
    )
    return INTERACTIVE_MODULE


def _file_module(path: str) -> str:
    """The name a script has when imported from its folder: its stem (a ``__main__.py`` is named
    after its folder: ``pkg.__main__``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem == "__main__":
        return f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}.__main__"
    return stem


def item_uid_name(item_uid: str, max_chars: int = 128) -> str:
    """Item uids stay small: a long one keeps its head and gets a hash of the whole."""
    if len(item_uid) <= max_chars:
        return item_uid
    digest = hashlib.blake2b(item_uid.encode("utf8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{item_uid[: max_chars - 25]}-{digest}"


__all__ = [
    "canonical_bytes",
    "config_hash",
    "item_uid_name",
    "method_uid",
    "module_name",
    "readable",
    "uid_config",
]
