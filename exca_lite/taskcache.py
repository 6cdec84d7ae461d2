"""One task result (or failure) per config uid, in a human-readable folder.

Files of a task cache folder (``TaskPaths`` names them all):
  config.json   full config (infras included), for humans and for the mismatch check
  uid.json      the uid config: exactly what the uid hash was computed from
  result.npy    a numpy array result (memory-mapped on load when large), or
  result.pkl    any other result, pickled
  error.json    a cached failure: exception type, message and the job's traceback text
  job.pkl       the submitit job record, to re-attach to a job still running
  submission    a token naming the computation under way: its outcome is written only while the
                token is still there (a clear() meanwhile removes it: a job finishing after a
                clear must not bring back the result of the code that was cleared)
  logs          a link to the job's log folder
  task.lock     serializes submissions of this task between processes
Results and failures are written to a temp name then published with ``os.replace``.
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import secrets
import typing as tp
import warnings
from pathlib import Path

import msgspec
import numpy as np

from .errors import CorruptCacheWarning, JobError, UidMismatchError
from .fsio import atomic_write, atomic_writer

MMAP_MIN_BYTES = 1 << 20
_MISSING: tp.Any = object()


class TaskPaths:
    """Every path inside one task cache folder, as strings computed once (the hit path opens them)."""

    __slots__ = (
        "_folder",
        "array_result",
        "base",
        "config",
        "error",
        "job",
        "lock",
        "logs",
        "result_npy",
        "result_pkl",
        "submission",
        "uid",
    )

    def __init__(self, folder: Path | str) -> None:
        # the Path is built on first use: a uid() call needs only strings, and Path parsing is a
        # third of the cost of a fresh object's uid
        self._folder = folder if isinstance(folder, Path) else None
        self.base = base = str(folder)
        self.config = f"{base}/config.json"
        self.uid = f"{base}/uid.json"
        self.result_pkl = f"{base}/result.pkl"
        self.result_npy = f"{base}/result.npy"
        self.error = f"{base}/error.json"
        self.array_result = False  # last found as result.npy: look there first next time
        self.job = f"{base}/job.pkl"
        self.logs = f"{base}/logs"
        self.lock = f"{base}/task.lock"
        self.submission = f"{base}/submission"

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(self.base)
        return self._folder


class Failure(msgspec.Struct):
    """A cached failure, as stored in ``error.json``."""

    uid: str
    type: str
    message: str
    traceback: str
    job_id: str = ""

    def error(self) -> JobError:
        where = f" in job {self.job_id}" if self.job_id else ""
        return JobError(
            f"{self.uid} failed{where} (cached failure; mode='retry' recomputes it): "
            f"{self.type}: {self.message}\n--- traceback of the job ---\n{self.traceback}"
        )


def load_result(paths: TaskPaths, warn: bool = True) -> tp.Any:
    """The cached result, or ``_MISSING``; a damaged file warns and counts as missing.

    Raw ``os`` calls rather than file objects, and no existence check before opening: a cached
    result is read on every call of a task with ``keep_in_ram=False`` (~5 us saved per call).
    """
    path = paths.result_npy if paths.array_result else paths.result_pkl
    try:
        for _ in range(2):  # result.pkl and result.npy, the one last found first
            if path == paths.result_pkl:
                raw = _read_file(path)
                if raw is not None:
                    paths.array_result = False
                    return pickle.loads(tp.cast(bytearray, raw))
                path = paths.result_npy
            else:
                data = _read_file(path, mmap_min=MMAP_MIN_BYTES)
                if data is not None:
                    paths.array_result = True
                    if isinstance(data, int):  # large: mapped, not read
                        return np.load(path, mmap_mode="r")
                    return _small_npy(data)
                path = paths.result_pkl
        return _MISSING
    except Exception as e:
        if not warn:
            return _MISSING
        warnings.warn(
            f"unreadable cached result {path} ({type(e).__name__}: {e}); "
            "it is ignored and will be recomputed",
            CorruptCacheWarning,
            stacklevel=3,
        )
        return _MISSING


def _read_file(path: str, mmap_min: int | None = None) -> bytearray | int | None:
    """A whole file's bytes; None if it does not exist; its size if ``mmap_min`` bytes or more."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if mmap_min is not None and size >= mmap_min:
            return size
        data = bytearray(size)
        view, done = memoryview(data), 0
        while done < size:  # one read, unless the file is over 2 GiB
            got = os.readv(fd, [view[done:]])
            if got == 0:
                raise ValueError("file shorter than its size")
            done += got
        return data
    finally:
        os.close(fd)


_NPY_HEADERS: dict[bytes, tuple[np.dtype[tp.Any], tuple[int, ...], bool]] = {}
"""Parsed .npy headers by their bytes: a cached array read again skips np.load's header parsing
(``ast.literal_eval`` and friends: most of a 60 us load of a small array)."""


def _small_npy(data: bytes | bytearray) -> np.ndarray:
    """A small .npy file's bytes as a writable array, as ``np.load`` gives it."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    if data[6] == 1:
        start = 10
        length = int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        start = 12
        length = int.from_bytes(data[8:12], "little")
    else:
        raise ValueError(f".npy format version {data[6]}")
    header = bytes(data[start : start + length])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        fields = ast.literal_eval(header.decode("latin1"))
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
        if dtype.hasobject:
            raise ValueError("object arrays are not stored as .npy")
        parsed = (dtype, tuple(fields["shape"]), bool(fields["fortran_order"]))
        if len(_NPY_HEADERS) < 1024:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran = parsed
    count = math.prod(shape)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start + length)
    return array.reshape(shape, order="F" if fortran else "C")


def load_failure(paths: TaskPaths) -> Failure | None:
    try:
        with open(paths.error, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=Failure)
    except msgspec.DecodeError as e:
        warnings.warn(
            f"unreadable cached failure {paths.error} ({e}); it is ignored",
            CorruptCacheWarning,
            stacklevel=3,
        )
        return None


def has_outcome(paths: TaskPaths) -> bool:
    return any(os.path.exists(p) for p in (paths.result_pkl, paths.result_npy, paths.error))


def save_result(paths: TaskPaths, value: tp.Any) -> None:
    # a plain array (or a file-backed one) as .npy; a subclass (masked, record array, matrix)
    # pickled, or it would come back as a plain array that means something else
    if (type(value) is np.ndarray or type(value) is np.memmap) and value.dtype != object:
        tmp, publish = atomic_writer(Path(paths.result_npy))
        try:
            with open(tmp, "wb") as f:
                np.save(f, value, allow_pickle=False)
            publish()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        atomic_write(Path(paths.result_pkl), pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    # a result supersedes an older failure (mode "retry"/"force")
    _unlink(paths.error)


def save_failure(paths: TaskPaths, failure: Failure) -> None:
    atomic_write(Path(paths.error), msgspec.json.encode(failure))


def clear(paths: TaskPaths) -> None:
    for path in (paths.result_pkl, paths.result_npy, paths.error, paths.job, paths.submission):
        _unlink(path)


def new_submission(paths: TaskPaths) -> str:
    """Start a computation of this task: a fresh token in ``submission``, which its job checks
    before writing the outcome (``is_current``)."""
    token = secrets.token_hex(8)
    atomic_write(Path(paths.submission), token.encode())
    return token


def current_submission(paths: TaskPaths) -> str | None:
    """The token of the computation under way (or last started), None if none (cleared, or
    submitted by an exca_lite before tokens)."""
    try:
        with open(paths.submission, "rb") as f:
            return f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None


def is_current(paths: TaskPaths, token: str) -> bool:
    """Whether ``token`` still names the computation under way: not cleared (nor superseded by a
    forced or retried one) since it started."""
    return current_submission(paths) == token


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_configs(
    paths: TaskPaths,
    full_config: tp.Callable[[], dict[str, tp.Any]],
    uid_config: tp.Callable[[], bytes],
) -> None:
    """Write config.json and uid.json once (they never change for a uid).

    Every call that computes something comes here: once both exist, two ``stat`` calls are all it
    costs (the configs are built only when a file is missing).
    """
    has_uid, has_config = os.path.exists(paths.uid), os.path.exists(paths.config)
    if has_uid and has_config:
        return
    # both encoded before anything is written: a config that cannot be written leaves no folder
    # behind (a uid.json without its config.json would never be completed)
    uid_data = None if has_uid else uid_config()
    data = None if has_config else encode_config(full_config())
    paths.folder.mkdir(parents=True, exist_ok=True)
    if uid_data is not None:
        atomic_write(Path(paths.uid), uid_data)
    if data is not None:
        atomic_write(Path(paths.config), data)


def encode_config(full_config: dict[str, tp.Any]) -> bytes:
    """config.json's bytes (indented, human-readable)."""
    return msgspec.json.format(msgspec.json.encode(json_safe(full_config)))


def json_safe(value: tp.Any) -> tp.Any:
    """Plain data with non-finite floats as the strings "inf", "-inf", "nan": JSON has no such
    numbers (msgspec would write null), and ``load_config`` reads these strings back as floats."""
    if type(value) is float and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def check_configs(
    paths: TaskPaths,
    uid: str,
    full_config: dict[str, tp.Any],
    uid_config: bytes,
    skipped: tp.Callable[[], tuple[set[str], set[str]]],
    repair: bool = True,
) -> None:
    """Refuse to reuse a folder whose stored configs disagree with the current one.

    uid.json must match exactly (else: a hash collision, or a changed encoding). config.json is
    compared on the fields both sides have, infras and excluded fields aside: a field whose default
    changed keeps the same uid but is a different computation. New fields (absent from the stored
    config) are fine: adding a field with a default keeps old caches. Keys of a dict-valued
    field are not fields: one added or removed there (a dict default changed) is a difference.
    ``skipped``: (the paths not compared, the paths of dict-valued fields), asked for only when
    config.json is not byte-equal to the current config.

    A damaged uid.json or config.json is reported and, when ``repair`` (not read-only), rewritten
    from the current config: the folder's name already carries the hash of the uid config, and a
    file left damaged would switch this check off for good.
    """
    raw_uid = _read_file(paths.uid)
    if not isinstance(raw_uid, bytearray):  # no file (never an int: no mmap_min)
        return
    stored_uid = bytes(raw_uid)
    # the usual case first: files this exca_lite wrote for this very config, byte for byte
    if stored_uid != uid_config:
        _check_uid_config(paths, uid, stored_uid, uid_config, repair)
    raw = _read_file(paths.config)
    if not isinstance(raw, bytearray):
        return
    if raw == encode_config(full_config):
        return
    try:
        stored = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        _repair(paths.config, e, repair, lambda: encode_config(full_config))
        return
    ignored, dicts = skipped()
    diffs = config_diffs(stored, comparable(full_config), ignored, dicts)
    if diffs:
        raise UidMismatchError(
            f"cache folder {paths.folder} was computed with a different config, though the uid "
            f"{uid} is the same (did a default value change?): {'; '.join(diffs[:5])}. "
            "Bump the infra version, or clear the cache if the change does not matter."
        )


def _check_uid_config(
    paths: TaskPaths, uid: str, stored_uid: bytes, uid_config: bytes, repair: bool
) -> None:
    """uid.json (not byte-equal to ``uid_config``) must decode to the same uid config."""
    try:
        stored_config = msgspec.json.decode(stored_uid)
    except msgspec.DecodeError as e:
        _repair(paths.uid, e, repair, lambda: uid_config)
        return
    if stored_config != msgspec.json.decode(uid_config):
        raise UidMismatchError(
            f"cache folder {paths.folder} holds uid config {stored_uid.decode()} but {uid} now "
            f"gives {uid_config.decode()} (hash collision?): clear it or bump the version"
        )


def comparable(full_config: dict[str, tp.Any]) -> tp.Any:
    """A full config as config.json reads back (what ``config_diffs`` compares)."""
    return msgspec.json.decode(msgspec.json.encode(json_safe(full_config)))


def config_diffs(
    stored: tp.Any, current: tp.Any, ignored: set[str], dicts: tp.AbstractSet[str] = frozenset()
) -> list[str]:
    """Where two full configs disagree, on the fields both have, ``ignored`` paths aside; the
    dicts at paths ``dicts`` (dict-valued fields) must also have the same keys."""
    diffs: list[str] = []
    _diff(stored, current, "", ignored, dicts, diffs)
    return diffs


def _repair(path: str, error: Exception, repair: bool, data: tp.Callable[[], bytes]) -> None:
    outcome = "the folder's config cannot be checked (mode='read-only' writes nothing)"
    if repair:
        try:
            atomic_write(Path(path), data())
            outcome = "rewritten from the current config"
        except OSError as e:  # a read-only mount, a colleague's folder: still readable
            outcome = f"the folder's config cannot be checked, nor the file rewritten ({e})"
    warnings.warn(f"unreadable {path} ({error}): {outcome}", CorruptCacheWarning, stacklevel=4)


def _diff(
    stored: tp.Any,
    current: tp.Any,
    path: str,
    ignored: set[str],
    dicts: tp.AbstractSet[str],
    out: list[str],
) -> None:
    if path in ignored:
        return
    if isinstance(stored, dict) and isinstance(current, dict):
        if path in dicts:
            for key in sorted(stored.keys() ^ current.keys()):
                old, new = stored.get(key, "(absent)"), current.get(key, "(absent)")
                out.append(f"{path}[{key!r}]: stored {old!r}, now {new!r}")
        for key in stored.keys() & current.keys():
            where = f"{path}.{key}" if path else key
            _diff(stored[key], current[key], where, ignored, dicts, out)
    elif isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for i, (old, new) in enumerate(zip(stored, current, strict=True)):
            _diff(old, new, f"{path}[{i}]", ignored, dicts, out)
    elif stored != current:
        out.append(f"{path}: stored {stored!r}, now {current!r}")


__all__ = [
    "Failure",
    "TaskPaths",
    "check_configs",
    "clear",
    "comparable",
    "config_diffs",
    "encode_config",
    "has_outcome",
    "load_failure",
    "load_result",
    "save_failure",
    "save_result",
    "write_configs",
]
