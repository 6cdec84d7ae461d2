"""Every error exca_lite raises, under one root.

Errors cross process boundaries (a worker's failure is re-raised in the caller), so each one keeps
its whole state in ``args`` and pickles like a plain exception.
"""

from __future__ import annotations


class ExcaLiteError(Exception):
    """Root of every exca_lite error: ``except xl.ExcaLiteError`` catches them all."""


class CacheMissError(ExcaLiteError, LookupError):
    """``mode="read-only"`` asked for something that is not cached."""


class ConfigError(ExcaLiteError, TypeError):
    """A config (its class or a field value) cannot be used as a cache key."""


class ValidationError(ExcaLiteError, ValueError):
    """Plain data given to ``from_dict``/``load_config`` does not fit the config class."""


class UidMismatchError(ExcaLiteError):
    """A cache folder's stored ``uid.json`` disagrees with the config now asking for it."""


class JobError(ExcaLiteError, RuntimeError):
    """A computation failed in a job; the message carries the job's own traceback text."""


class StoreError(ExcaLiteError):
    """A cache store cannot be used as asked (bad value, shape mismatch, unwritable folder)."""


class NotACacheError(ExcaLiteError, ValueError):
    """A folder given as a cache holds none of the files of a task or map cache."""


class CorruptCacheWarning(UserWarning):
    """Damaged cache data was found and skipped; the rest of the cache is still served."""


class CacheFormatWarning(UserWarning):
    """Cache files of another format version were found and skipped (never modified)."""


class InteractiveClassWarning(UserWarning):
    """A cached method's class is defined where no file names it (a notebook): its uids start
    with ``__interactive__``, shared by every notebook defining the same class name."""


__all__ = [
    "InteractiveClassWarning",
    "CacheMissError",
    "ConfigError",
    "CacheFormatWarning",
    "CorruptCacheWarning",
    "ExcaLiteError",
    "JobError",
    "NotACacheError",
    "StoreError",
    "UidMismatchError",
    "ValidationError",
]
