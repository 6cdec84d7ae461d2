"""The uid of a config: what a cache folder is keyed by.

Only fields that differ from their default count, so adding a field with a default keeps old caches.
Infras never count, nor do excluded names. The canonical bytes are msgspec's JSON with sorted keys:
stable across processes, machines, PYTHONHASHSEED and dict order (floats by their shortest exact
repr; frozensets sorted by their items' canonical bytes; non-finite floats tagged so that NaN is not
confused with None).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
import typing as tp
from pathlib import PurePath

import msgspec

from .config import SUPPORTED, InfraMarker, field_infos, is_frozen_dataclass, sorted_items
from .errors import ConfigError

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
    if isinstance(value, InfraMarker):  # infras never count, even inside a container
        return None
    if isinstance(value, enum.Enum):
        return _canon(value.value, path)
    if isinstance(value, (int, str)):  # subclasses of the plain types
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else value
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
        return uid_config(value, (), path)
    raise ConfigError(
        f"field {path} holds a {cls.__module__}.{cls.__qualname__}, which cannot be part of a "
        f"config; supported: {SUPPORTED}"
    )


def uid_config(obj: tp.Any, exclude: tp.Iterable[str] = (), path: str = "") -> dict[str, tp.Any]:
    """The non-default, non-infra, non-excluded fields of a config, as canonical plain data."""
    excluded = set(exclude) if exclude else None
    out: dict[str, tp.Any] = {}
    for info in field_infos(type(obj)):
        name = info.name
        if info.is_infra or (excluded and name in excluded):
            continue
        value = getattr(obj, name)
        default = info.default
        if value is default:
            continue
        cls = type(value)
        if cls in _PLAIN_SCALARS:  # the common case, kept free of the general walk below
            if cls is type(default) and value == default:
                # -0.0 == 0.0, but "floats by their exact repr": only the same repr is a default
                if cls is not float or repr(value) == repr(default):
                    continue
            elif cls is float and value != value and type(default) is float and default != default:
                continue  # NaN is its own default, though NaN != NaN
            if cls is not float or math.isfinite(value):
                out[name] = value
                continue
        is_config = dataclasses.is_dataclass(value) and not isinstance(value, type)
        # a nested config equal to its default is still walked: its == may hide an unsupported
        # value (a numpy array equal to a default str); it counts only if it has non-default fields
        if (not is_config and _is_default(value, default)) or isinstance(value, InfraMarker):
            continue
        where = f"{path}.{name}" if path else name
        sub_excluded = (
            [e[len(name) + 1 :] for e in excluded if e.startswith(name + ".")] if excluded else []
        )
        if sub_excluded and is_config:
            sub = uid_config(value, sub_excluded, where)
            # differing from the default only in excluded fields is not differing
            if type(default) is type(value) and sub == uid_config(default, sub_excluded, where):
                continue
            out[name] = sub
        else:
            out[name] = _canon(value, where)  # raises on unsupported values, defaults included
            if is_config and _is_default(value, default):
                del out[name]  # equal to its default, and now checked
                continue
        if is_config and type(value) is not type(default):
            # another config class than the default's (a polymorphic field, or one defaulting to
            # None): two classes with the same non-default fields must not share a uid. The
            # qualname, not the module, so that moving a class keeps its caches.
            out[name] = {CLASS_KEY: type(value).__qualname__, **out[name]}
    return out


_PLAIN_SCALARS = frozenset({int, str, bool, float})


def _is_default(value: tp.Any, default: tp.Any) -> bool:
    if value is default:
        return True
    if type(value) is not type(default):
        return False
    try:
        return bool(value == default)
    except (ValueError, TypeError):  # e.g. a numpy array inside: _canon names it as unsupported
        return False


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


def method_uid(cls: type, method: str, version: str, config: dict[str, tp.Any]) -> str:
    """``"{module}.{qualname}.{method},{version}/{readable}-{hash}"``."""
    return f"{cls.__module__}.{cls.__qualname__}.{method},{version}/{readable(config)}-{config_hash(config)}"


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
    "readable",
    "uid_config",
]
