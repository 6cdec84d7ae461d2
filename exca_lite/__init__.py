"""exca_lite: execute and cache seamlessly, on frozen dataclasses.

Re-exports only; see the README for the tour and SPEC for the contract.
"""

from .config import from_dict, load_config, to_dict
from .errors import (
    CacheFormatWarning,
    CacheMissError,
    ConfigError,
    CorruptCacheWarning,
    ExcaLiteError,
    InteractiveClassWarning,
    JobError,
    StoreError,
    UidMismatchError,
    ValidationError,
)
from .mapping import MapInfra
from .task import TaskInfra, WorkDir, job_array

__version__ = "0.1.0"

__all__ = [
    "CacheMissError",
    "ConfigError",
    "CacheFormatWarning",
    "CorruptCacheWarning",
    "ExcaLiteError",
    "InteractiveClassWarning",
    "JobError",
    "MapInfra",
    "StoreError",
    "TaskInfra",
    "UidMismatchError",
    "ValidationError",
    "WorkDir",
    "from_dict",
    "job_array",
    "load_config",
    "to_dict",
]
