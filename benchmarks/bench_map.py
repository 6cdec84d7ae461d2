"""Map-side scenarios: fill, iterate, stack, open, one new item, bandwidth, parallel speed-up, and
the scale scenarios (a 1M-item cache opened, checked, its memory; an opt-in 100M-item cache).

exca_lite's ``Featurizer`` (``map_configs``) and exca's ``ExcaFeaturizer`` (memmap cache_type) yield
the same arrays (``items.make_item``); joblib.Memory caches ``make_item`` per item, the plain
baselines write / read one ``.npy`` file per item, and Hugging Face ``datasets`` (``hf_peer``, peer
``hf``, when the ``bench`` extra is installed) maps a saved dataset of item numbers into an Arrow
cache file. Caches are filled once per run and shared by the read scenarios (``_filled``), each
library's in its own folder.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import time
import typing as tp
from pathlib import Path

import numpy as np

from benchmarks import hf_peer
from benchmarks.common import Scenario, Sizes, run_fresh, tempdir, timed
from benchmarks.items import make_item, plain_loop

US = 1e6
MS = 1e3
MIB = float(1 << 20)


def unavailable() -> str | None:
    """Why exca_lite's MapInfra cannot be benchmarked (None when a smoke test passes)."""
    try:
        import exca_lite as xl
        from benchmarks.map_configs import Featurizer

        with tempdir("smoke") as tmp:
            feat = Featurizer(dim=4, infra=xl.MapInfra(folder=tmp))
            out = list(feat.embed([1, 2, 1]))
            if [float(x[0]) for x in out] != [1.0, 2.0, 1.0]:
                return f"wrong outputs {out}"
            if feat.embed.compute([1, 2, 3]) != 1:
                return "compute() did not report 1 computed item"
            fresh = Featurizer(dim=4, infra=xl.MapInfra(folder=tmp))
            stacked = fresh.embed.stack([3, 1])
            if stacked.shape != (2, 4) or float(stacked[0, 0]) != 3.0:
                return f"wrong stack {stacked!r}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@functools.cache
def hf_problem() -> str | None:
    """Why the HF peer is absent from this run (None: it runs, quietly)."""
    problem = hf_peer.unavailable()
    if problem is None:
        hf_peer.quiet()
    return problem


def _hf_libs(scenario: Scenario, *libs: str) -> list[str]:
    """``libs`` when HF datasets runs; else none, and the scenario says why."""
    problem = hf_problem()
    if problem is None:
        return list(libs)
    scenario.notes.append(f"peer hf absent: {problem}")
    return []


def _label(count: int) -> str:
    return f"{count // 1_000_000}M" if count >= 1_000_000 else f"{count // 1000}k"


def _featurizer(folder: Path, dim: int, **infra: tp.Any) -> tp.Any:
    import exca_lite as xl
    from benchmarks.map_configs import Featurizer

    return Featurizer(dim=dim, infra=xl.MapInfra(folder=folder, **infra))


def _exca_featurizer(folder: Path, dim: int, **infra: tp.Any) -> tp.Any:
    from benchmarks.exca_configs import ExcaFeaturizer, map_infra

    return ExcaFeaturizer(dim=dim, infra=map_infra(folder=folder, **infra))


def _fill(lib: str, folder: Path, n: int, dim: int) -> float:
    """Seconds to compute and store items ``0..n-1`` into a new cache of ``lib``."""
    items = list(range(n))
    if lib == "exca_lite":
        feat = _featurizer(folder, dim)
        return timed(lambda: feat.embed.compute(items))
    if lib == "exca":
        efeat = _exca_featurizer(folder, dim)
        return timed(lambda: efeat.embed(items))  # computes and stores; loads nothing
    if lib == "joblib":
        import joblib

        cached = joblib.Memory(folder, verbose=0).cache(make_item)

        def joblib_loop() -> None:
            for item in items:
                cached(item, dim)

        return timed(joblib_loop)
    if lib == "npy_files":
        folder.mkdir(parents=True)

        def save_loop() -> None:
            for item in items:
                np.save(f"{folder}/{item}.npy", make_item(item, dim))

        return timed(save_loop)
    if lib in ("hf", "hf_unbatched"):
        return hf_peer.fill(folder, n, dim, batched=lib == "hf")
    raise ValueError(lib)


# caches shared by the read scenarios of one run: (lib, n, dim) -> folder, and its fill time
_FILLED: dict[tuple[str, int, int], Path] = {}
_FILL_SECONDS: dict[tuple[str, int, int], float] = {}
_ROOTS: list[tp.Any] = []


def _filled(lib: str, n: int, dim: int) -> Path:
    """A cache of ``lib`` holding items ``0..n-1`` (filled once per run, removed at exit)."""
    key = (lib, n, dim)
    folder = _FILLED.get(key)
    if folder is None:
        root = tempdir(f"filled-{lib}")
        _ROOTS.append(root)
        folder = root.__enter__() / "cache"
        _FILL_SECONDS[key] = _fill(lib, folder, n, dim)
        _FILLED[key] = folder
    return folder


def cleanup() -> None:
    """Remove the shared caches."""
    while _ROOTS:
        _ROOTS.pop().__exit__(None, None, None)
    _FILLED.clear()


def _slow_n(sizes: Sizes) -> int:
    """Items for the per-file peers (joblib, npy files): ~100x slower per item, same figure."""
    return min(sizes.slow_items, sizes.map_items)


def bench_map_fill(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim, n_jl = sizes.map_items, sizes.map_dim, _slow_n(sizes)
    scenario = Scenario(
        "map_fill",
        "µs/item",
        target="< 1.4 µs/item (ahead of batched HF)",
        notes=[
            f"compute+store {n} arrays of {dim} float32, cluster=None, minus the plain loop; "
            f"joblib and npy files on {n_jl} items; hf = Dataset.map(batched=True, "
            f"batch_size={hf_peer.BATCH}) of a saved dataset into its Arrow cache file (the batch "
            "function builds the same arrays and stacks them), hf_unbatched = map() one example "
            "at a time"
        ],
    )
    items = list(range(n))
    repeat = min(sizes.repeat, 3)
    plain = [timed(lambda: plain_loop(items, dim)) for _ in range(repeat)]
    plain_per_item = statistics.median(plain) / n
    libs = {"exca_lite": n, "exca": n, "joblib": n_jl, "npy_files": n_jl}
    libs.update(dict.fromkeys(_hf_libs(scenario, "hf", "hf_unbatched"), n))
    samples: dict[str, list[float]] = {lib: [] for lib in libs}
    for r in range(repeat):
        for lib, count in libs.items():
            if r == repeat - 1:  # the last fill is kept for the read scenarios
                _FILLED.pop((lib, count, dim), None)
                _filled(lib, count, dim)
                seconds = _FILL_SECONDS[(lib, count, dim)]
            else:
                with tempdir(f"fill-{lib}") as folder:
                    seconds = _fill(lib, folder / "cache", count, dim)
            samples[lib].append(seconds / count - plain_per_item)
    for lib in libs:
        scenario.add(lib, samples[lib], US)
    scenario.extra["plain_loop_us_per_item"] = plain_per_item * US
    return scenario


def bench_map_hit_iter(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim, n_jl = sizes.map_items, sizes.map_dim, _slow_n(sizes)
    scenario = Scenario(
        "map_hit_iter",
        "µs/item",
        target="< 1.0 µs/item",
        notes=[
            f"fresh process: open + iterate {n} cached items; joblib and npy files on {n_jl}; "
            f"hf = Dataset.from_file + with_format('numpy').iter(batch_size={hf_peer.BATCH}), "
            "each batch's rows taken one by one"
        ],
    )
    libs = {"exca_lite": n, "exca": n, "joblib": n_jl, "npy_files": n_jl}
    libs.update(dict.fromkeys(_hf_libs(scenario, "hf"), n))
    folders = {lib: _filled(lib, count, dim) for lib, count in libs.items()}
    if "hf" in folders:
        folders["hf"] = hf_peer.cache_file(folders["hf"])
    samples: dict[str, list[float]] = {lib: [] for lib in libs}
    for _ in range(sizes.fresh_repeat):
        for lib, count in libs.items():
            report = run_fresh("map_hit_iter", lib=lib, folder=str(folders[lib]), n=count, dim=dim)
            samples[lib].append(report["seconds"] / count)
    for lib in libs:
        scenario.add(lib, samples[lib], US)
    return scenario


def bench_map_hit_stack(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim = sizes.map_items, sizes.map_dim
    scenario = Scenario(
        "map_hit_stack",
        "µs/item",
        target="< 0.3 µs/item + memcpy",
        notes=[
            f"stack() of {n} cached items on an opened cache; np_stack = np.stack of the same "
            "arrays held in RAM, memcpy = copy of one array of the same bytes; "
            "exca = np.stack(list(embed(items))); hf = gather ds[rows]['feat'] on the numpy-"
            "formatted Arrow file (rows: the items' row numbers, HF has no item key), hf_slice "
            "= the same rows as one slice"
        ],
    )
    items = list(range(n))
    feat = _featurizer(_filled("exca_lite", n, dim), dim)
    efeat = _exca_featurizer(_filled("exca", n, dim), dim)
    arrays = [make_item(item, dim) for item in items]
    contiguous = np.stack(arrays)
    first = timed(lambda: feat.embed.stack(items))  # opens the cache
    if not np.array_equal(feat.embed.stack(items), contiguous):
        raise RuntimeError("exca_lite stack() differs from the arrays it cached")
    efeat.embed(items)  # exca opens its cache
    names = ["exca_lite", "exca", *_hf_libs(scenario, "hf", "hf_slice"), "np_stack", "memcpy"]
    samples: dict[str, list[float]] = {k: [] for k in names}
    hf_ds: tp.Any = None
    rows = np.asarray(items)
    if "hf" in samples:
        hf_ds = hf_peer.open_numpy(hf_peer.cache_file(_filled("hf", n, dim)))
        if not np.array_equal(hf_ds[rows]["feat"], contiguous):
            raise RuntimeError("HF gather differs from the arrays it cached")
    for _ in range(sizes.repeat):
        samples["exca_lite"].append(timed(lambda: feat.embed.stack(items)) / n)
        samples["exca"].append(timed(lambda: np.stack(list(efeat.embed(items)))) / n)
        if hf_ds is not None:
            samples["hf"].append(timed(lambda: hf_ds[rows]["feat"]) / n)
            samples["hf_slice"].append(timed(lambda: hf_ds[0:n]["feat"]) / n)
        samples["np_stack"].append(timed(lambda: np.stack(arrays)) / n)
        samples["memcpy"].append(timed(contiguous.copy) / n)
    for name, values in samples.items():
        scenario.add(name, values, US)
    scenario.extra["exca_lite_first_stack_us_per_item"] = first / n * US
    scenario.extra["exca_lite_minus_memcpy"] = (
        tp.cast(float, scenario.exca_lite) - (scenario.peers["memcpy"])
    )
    return scenario


def bench_map_open(sizes: Sizes, tmp: Path) -> Scenario:
    dim = 16
    scenario = Scenario(
        "map_open",
        "ms",
        target="< 3 ms at 20k",
        notes=[
            "fresh process: open a cache + find which of N items are cached (all are), via "
            "embed.compute(items) / exca embed(items) unconsumed; items of 16 float32; hf = "
            "Dataset.from_file of the map's Arrow file (no per-item check: HF names a whole "
            "file by fingerprint), at the first size"
        ],
    )
    hf = _hf_libs(scenario, "hf")
    for count in sizes.open_items:
        label = _label(count)
        lite_folder = _filled("exca_lite", count, dim)
        libs = ["exca_lite", "exca"] if count <= sizes.exca_open_max else ["exca_lite"]
        if count == sizes.open_items[0]:
            libs += hf
        folders = {lib: _filled(lib, count, dim) for lib in libs}
        folders["exca_lite"] = lite_folder
        if "hf" in folders:
            folders["hf"] = hf_peer.cache_file(folders["hf"])
        samples: dict[str, list[float]] = {lib: [] for lib in libs}
        uids: list[float] = []
        for _ in range(sizes.fresh_repeat):
            for lib in libs:
                report = run_fresh("map_open", lib=lib, folder=str(folders[lib]), n=count, dim=dim)
                samples[lib].append(report["seconds"])
            report = run_fresh(
                "map_open", lib="exca_lite", folder=str(lite_folder), n=count, dim=dim, how="uids"
            )
            uids.append(report["seconds"])
        if count == sizes.open_items[0]:  # the headline figure is the smallest size
            for lib in libs:
                scenario.add(lib, samples[lib], MS)
        else:
            scenario.samples[f"exca_lite_{label}"] = [s * MS for s in samples["exca_lite"]]
        scenario.extra[f"exca_lite_{label}_ms"] = statistics.median(samples["exca_lite"]) * MS
        scenario.extra[f"exca_lite_{label}_cached_uids_ms"] = statistics.median(uids) * MS
        for peer in ("exca", "hf"):
            if peer in libs:
                scenario.extra[f"{peer}_{label}_ms"] = statistics.median(samples[peer]) * MS
    return scenario


def bench_map_one_new(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim = sizes.one_new_cache, sizes.map_dim
    big, big_dim = sizes.scale_items, sizes.scale_dim
    scenario = Scenario(
        "map_one_new",
        "ms",
        target="< 1 ms (20k), < 5 ms (1M)",
        notes=[
            f"list(embed([new_item])) on a cache of {n} items this process wrote; "
            "all_plus_one = the same with the n cached items + 1 new (compute / unconsumed call); "
            "hf = the new item mapped into its own part file, concatenate_datasets, its row read "
            f"back; *_{_label(big)}: the same on the shared {_label(big)}-item caches of "
            f"{big_dim} float32 (exca_lite: opened by a first call, untimed; it keeps the new "
            "items)"
        ],
    )
    items = list(range(n))
    feat = _featurizer(tmp / "lite", dim)
    feat.embed.compute(items)
    efeat = _exca_featurizer(tmp / "exca", dim)
    efeat.embed(items)
    hf = _hf_libs(scenario, "hf")
    hf_cache: tp.Any = None
    hf_big: tp.Any = None
    if hf:
        hf_peer.fill(tmp / "hf", n, dim)
        hf_cache = hf_peer.open_file(hf_peer.cache_file(tmp / "hf"))
        hf_big = hf_peer.open_file(hf_peer.cache_file(_filled("hf", big, big_dim)))
    # the shared big cache was written by this process (its fill); a new object opens it here
    feat_big = _featurizer(_filled("exca_lite", big, big_dim), big_dim)
    new = iter(range(2 * big, 3 * big))
    list(feat_big.embed([next(new)]))  # opens the big cache (untimed)
    samples: dict[str, list[float]] = {lib: [] for lib in ["exca_lite", "exca", *hf]}
    plus: dict[str, list[float]] = {"exca_lite": [], "exca": []}
    on_big: dict[str, list[float]] = {lib: [] for lib in ["exca_lite", *hf]}
    parts = iter(range(10 * sizes.repeat + 10))

    def hf_one(cache: tp.Any, item: int, item_dim: int) -> tuple[tp.Any, float]:
        start = time.perf_counter()
        cache, out = hf_peer.add_one(cache, item, item_dim, tmp / f"part-{next(parts)}.arrow")
        seconds = time.perf_counter() - start
        if float(out[0]) != float(np.float32(item)) or out.shape != (item_dim,):
            raise RuntimeError(f"HF read {out!r} for new item {item}")
        return cache, seconds

    for _ in range(sizes.repeat):
        item = next(new)
        samples["exca_lite"].append(timed(lambda: list(feat.embed([item]))))  # noqa: B023
        samples["exca"].append(timed(lambda: list(efeat.embed([item]))))  # noqa: B023
        if hf:
            hf_cache, seconds = hf_one(hf_cache, item, dim)
            samples["hf"].append(seconds)
        item = next(new)
        plus["exca_lite"].append(timed(lambda: feat.embed.compute([*items, item])))  # noqa: B023
        plus["exca"].append(timed(lambda: efeat.embed([*items, item])))  # noqa: B023
        item = next(new)
        on_big["exca_lite"].append(timed(lambda: list(feat_big.embed([item]))))  # noqa: B023
        if hf:
            hf_big, seconds = hf_one(hf_big, item, big_dim)
            on_big["hf"].append(seconds)
    for lib in samples:
        scenario.add(lib, samples[lib], MS)
    for lib in plus:
        scenario.extra[f"{lib}_all_plus_one_ms"] = statistics.median(plus[lib]) * MS
    for lib in on_big:
        scenario.samples[f"{lib}_{_label(big)}"] = [s * MS for s in on_big[lib]]
        scenario.extra[f"{lib}_{_label(big)}_ms"] = statistics.median(on_big[lib]) * MS
    return scenario


def _bandwidth_round(lib: str, tmp: Path, n_items: int, item_bytes: int) -> tuple[float, float]:
    """Seconds to write then read ``n_items`` blocks of ``item_bytes`` with ``lib``.

    ``os.sync()`` (untimed) before each phase: a read right after a write otherwise races the
    kernel's writeback of the same pages, which made first reads 5-10x slower, at random.
    """
    import exca_lite as xl
    from benchmarks.items import buffer
    from benchmarks.map_configs import Blob

    items = list(range(n_items))
    lite, exca, raw = tmp / "lite", tmp / "exca", tmp / "raw.bin"
    if lib not in ("exca_lite", "exca", "raw"):
        raise ValueError(lib)

    def write() -> None:
        if lib == "exca_lite":
            Blob(nbytes=item_bytes, infra=xl.MapInfra(folder=lite)).embed.compute(items)
        elif lib == "exca":
            from benchmarks.exca_configs import ExcaBlob, map_infra

            ExcaBlob(nbytes=item_bytes, infra=map_infra(folder=exca)).embed(items)
        else:
            buf = buffer(item_bytes)
            with open(raw, "wb") as f:
                for _ in items:
                    f.write(buf.data)

    def read() -> np.ndarray:
        # a fresh object: the read opens a cache it did not write
        if lib == "exca_lite":
            out: np.ndarray = Blob(nbytes=item_bytes, infra=xl.MapInfra(folder=lite)).embed.stack(
                items
            )
            return out
        if lib == "exca":
            from benchmarks.exca_configs import ExcaBlob, map_infra

            reader = ExcaBlob(nbytes=item_bytes, infra=map_infra(folder=exca))
            return np.stack(list(reader.embed(items)))
        return np.fromfile(raw, dtype=np.float32)

    _settle(drop_caches=True)
    _pretouch(n_items * item_bytes)
    write_s = timed(write)
    _settle(drop_caches=False)
    _pretouch(n_items * item_bytes)
    start = time.perf_counter()
    out = read()
    read_s = time.perf_counter() - start
    if out.nbytes != n_items * item_bytes:
        raise RuntimeError(f"{lib} read {out.nbytes} bytes, expected {n_items * item_bytes}")
    return write_s, read_s


def _settle(drop_caches: bool) -> None:
    """Flush dirty pages, and (when permitted: root on Linux) drop clean cached ones.

    On these VMs, writing 2 GiB while earlier files still fill the page cache ran at 0.4 GB/s
    instead of 4 GB/s (reclaiming cached pages is slow here): every library starts its write
    phase with the same, empty cache. Reads are not preceded by a drop (they read what the write
    left cached, as a user re-reading fresh features would).
    """
    os.sync()
    if drop_caches:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError:
            pass  # not root, or not Linux: the figures are noisier, not wrong


def _pretouch(nbytes: int) -> None:
    """Touch ``nbytes`` of memory once and free it (untimed).

    The first touch of memory on these VMs swung from 0.5 to 5 GB/s (pages the host had taken
    back), for the page cache a write fills as for the array a read fills, whatever the library:
    that, not the library, decided the figures. Memory just touched and freed is fast to take
    again, so each phase then measures its own work.
    """
    np.ones(nbytes, dtype=np.uint8)


def _bandwidth(sizes: Sizes, tmp: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    n_items = sizes.bandwidth_bytes // sizes.bandwidth_item_bytes
    writes: dict[str, list[float]] = {"exca_lite": [], "raw": [], "exca": []}
    reads: dict[str, list[float]] = {"exca_lite": [], "raw": [], "exca": []}
    mib = sizes.bandwidth_bytes / MIB
    # all repeats: a fresh 2 GiB array's first touch alone varies 5x on this VM (the first read
    # after a write swings from 0.5 to 5 GB/s for any reader), so the order rotates each round and
    # the headline is the median of per-round ratios (see _bandwidth_scenario)
    libs = list(writes)
    for r in range(sizes.repeat):
        for lib in libs[r % len(libs) :] + libs[: r % len(libs)]:
            with tempdir(f"bw-{lib}") as folder:
                write_s, read_s = _bandwidth_round(lib, folder, n_items, sizes.bandwidth_item_bytes)
            writes[lib].append(mib / write_s)
            reads[lib].append(mib / read_s)
    return writes, reads


_BANDWIDTH: dict[Sizes, tuple[dict[str, list[float]], dict[str, list[float]]]] = {}


def _bandwidth_scenario(sizes: Sizes, tmp: Path, direction: str) -> Scenario:
    if sizes not in _BANDWIDTH:  # one measurement round gives both the write and the read line
        _BANDWIDTH[sizes] = _bandwidth(sizes, tmp)
    writes, reads = _BANDWIDTH[sizes]
    samples = writes if direction == "write" else reads
    how = (
        "embed.compute / f.write per item"
        if direction == "write"
        else "stack() from a fresh object / np.fromfile / exca np.stack(list(...))"
    )
    scenario = Scenario(
        f"map_bandwidth_{direction}",
        "MiB/s",
        target=">= 80% of raw (ratio <= 1.25)",
        notes=[
            f"{sizes.bandwidth_bytes >> 20} MiB in {sizes.bandwidth_item_bytes >> 20} MiB items, "
            f"{how}; os.sync() before each phase, clean page cache dropped before writes when "
            "root (reads come from RAM)"
        ],
    )
    for lib in ("exca_lite", "raw", "exca"):
        scenario.add(lib, samples[lib])
    scenario.extra["exca_lite/raw"] = tp.cast(float, scenario.exca_lite) / scenario.peers["raw"]
    # the same two libraries in the same round see the same machine state: the paired ratio
    paired = [lite / raw for lite, raw in zip(samples["exca_lite"], samples["raw"], strict=True)]
    scenario.extra["exca_lite/raw_paired_median"] = statistics.median(paired)
    return scenario


def bench_map_bandwidth_write(sizes: Sizes, tmp: Path) -> Scenario:
    return _bandwidth_scenario(sizes, tmp, "write")


def bench_map_bandwidth_read(sizes: Sizes, tmp: Path) -> Scenario:
    return _bandwidth_scenario(sizes, tmp, "read")


def bench_map_parallel(sizes: Sizes, tmp: Path) -> Scenario:
    import exca_lite as xl
    from benchmarks.exca_configs import ExcaBurner, map_infra
    from benchmarks.map_configs import Burner

    n, work = sizes.parallel_items, sizes.parallel_work
    # exca's progress bars leave tqdm's monitor thread running, and exca_lite forks its pool
    # workers only from a single-threaded process (it spawns otherwise): without this, the peer
    # run of the previous repeat would decide how exca_lite starts its workers
    import tqdm

    tqdm.tqdm.monitor_interval = 0
    if tqdm.tqdm.monitor is not None:  # started by an earlier scenario's peer
        tqdm.tqdm.monitor.exit()
        tqdm.tqdm.monitor = None
    scenario = Scenario(
        "map_parallel",
        "s",
        target=">= 1.8x speed-up (ratio vs serial)",
        notes=[
            f"{n} CPU-bound items (pure-Python loop of {work}): processpool max_jobs=2 vs "
            "cluster=None; exca = its processpool (max_jobs=2)"
        ],
    )
    items = list(range(n))
    samples: dict[str, list[float]] = {"exca_lite": [], "serial": [], "exca": [], "exca_serial": []}
    for r in range(min(sizes.repeat, 3)):
        pool = Burner(
            work=work,
            infra=xl.MapInfra(folder=tmp / f"pool{r}", cluster="processpool", max_jobs=2),
        )
        samples["exca_lite"].append(timed(lambda: pool.embed.compute(items)))  # noqa: B023
        serial = Burner(work=work, infra=xl.MapInfra(folder=tmp / f"serial{r}"))
        samples["serial"].append(timed(lambda: serial.embed.compute(items)))  # noqa: B023
        epool = ExcaBurner(
            work=work,
            infra=map_infra(folder=tmp / f"epool{r}", cluster="processpool", max_jobs=2),
        )
        samples["exca"].append(timed(lambda: epool.embed(items)))  # noqa: B023
        eserial = ExcaBurner(work=work, infra=map_infra(folder=tmp / f"eserial{r}"))
        samples["exca_serial"].append(timed(lambda: eserial.embed(items)))  # noqa: B023
    for name, values in samples.items():
        scenario.add(name, values)
    exca_serial = scenario.peers.pop("exca_serial")
    lite = tp.cast(float, scenario.exca_lite)
    scenario.extra["exca_lite_speedup"] = scenario.peers["serial"] / lite
    # what the pool costs beyond a perfect split of the serial work over its 2 workers
    scenario.extra["exca_lite_pool_overhead_s"] = lite - scenario.peers["serial"] / 2
    scenario.extra["exca_speedup"] = exca_serial / scenario.peers["exca"]
    return scenario


# # # scale: a 1M-item cache (built once per run), an opt-in 100M-item one # # #


def _scale_folders(sizes: Sizes, libs: list[str]) -> dict[str, Path]:
    """The shared scale caches (exca_lite: its MapInfra folder; hf: the map's Arrow file)."""
    n, dim = sizes.scale_items, sizes.scale_dim
    folders = {lib: _filled(lib, n, dim) for lib in libs}
    if "hf" in folders:
        folders["hf"] = hf_peer.cache_file(folders["hf"])
    return folders


_SCALE_OPEN: dict[Sizes, tuple[dict[str, list[dict[str, tp.Any]]], list[str]]] = {}


def _scale_open(sizes: Sizes) -> tuple[dict[str, list[dict[str, tp.Any]]], list[str]]:
    """Fresh processes opening the scale cache and reading one item: their reports, per library.

    One measurement gives both map_open_one_1M (time) and map_rss_1M (memory of the same open).
    """
    if sizes not in _SCALE_OPEN:
        n, dim = sizes.scale_items, sizes.scale_dim
        notes: list[str] = []
        problem = hf_problem()
        libs = ["exca_lite"] if problem else ["exca_lite", "hf"]
        if problem:
            notes.append(f"peer hf absent: {problem}")
        folders = _scale_folders(sizes, libs)
        picks = np.random.default_rng(0).integers(0, n, size=sizes.fresh_repeat)
        reports: dict[str, list[dict[str, tp.Any]]] = {lib: [] for lib in libs}
        for item in picks:  # the same item for both libraries in a round
            for lib in libs:
                report = run_fresh(
                    "map_open_one", lib=lib, folder=str(folders[lib]), n=n, dim=dim, item=int(item)
                )
                reports[lib].append(report)
        _SCALE_OPEN[sizes] = reports, notes
    return _SCALE_OPEN[sizes]


def _scale_note(sizes: Sizes) -> str:
    n, dim = sizes.scale_items, sizes.scale_dim
    quick = f" (--quick: {_label(n)} items, not 1M)" if n != 1_000_000 else ""
    return f"a cache of {n} items of {dim} float32{quick}, filled once per run"


def bench_map_open_one_1m(sizes: Sizes, tmp: Path) -> Scenario:
    reports, notes = _scale_open(sizes)
    scenario = Scenario(
        "map_open_one_1M",
        "ms",
        target="< 10 ms",
        notes=[
            f"fresh process: open {_scale_note(sizes)} and read one item (a random one per round, "
            "the same for each library): next(embed([item])) / hf Dataset.from_file + "
            "with_format('numpy')[row]; exca not run (minutes at 1M)",
            *notes,
        ],
    )
    for lib, runs in reports.items():
        scenario.add(lib, [r["seconds"] for r in runs], MS)
    return scenario


def bench_map_rss_1m(sizes: Sizes, tmp: Path) -> Scenario:
    reports, notes = _scale_open(sizes)
    scenario = Scenario(
        "map_rss_1M",
        "MiB",
        target="< 20 MiB",
        notes=[
            "private memory added by the open and read of map_open_one_1M "
            f"({_scale_note(sizes)}), from /proc/self/smaps_rollup, not RSS: the figure is "
            "Private_Dirty (heap and written pages, the cost of every process, DataLoader "
            "workers included); *_private_mib adds Private_Clean, which also counts file pages "
            "only this process maps yet (page cache: shared once another process maps the file, "
            "dropped under pressure; HF's from_file reads through its whole Arrow file)",
            *notes,
        ],
    )
    if any("private_dirty_mib" not in r for runs in reports.values() for r in runs):
        scenario.status = "skipped"
        scenario.notes.append("/proc/self/smaps_rollup unreadable on this system")
        return scenario
    for lib, runs in reports.items():
        scenario.add(lib, [r["private_dirty_mib"] for r in runs])
        for key in ("private_mib", "anonymous_mib", "rss_mib"):
            scenario.extra[f"{lib}_{key}"] = statistics.median(r[key] for r in runs)
    return scenario


def bench_map_check_1m(sizes: Sizes, tmp: Path) -> Scenario:
    n, dim = sizes.scale_items, sizes.scale_dim
    scenario = Scenario(
        "map_check_1M",
        "ms",
        target="< 300 ms",
        notes=[
            f"fresh process: which of {n} items are cached (all are), {_scale_note(sizes)}: "
            "embed.compute(items) (names the items, opens, checks: 0 computed); "
            "exca_lite_store_missing: MapStore(folder).missing(uids), uids named untimed; "
            "hf = a re-run of Dataset.map on the saved source, found by fingerprint (one file, "
            "not per item)"
        ],
    )
    libs = ["exca_lite", *_hf_libs(scenario, "hf")]
    folders = {lib: _filled(lib, n, dim) for lib in libs}
    samples: dict[str, list[float]] = {lib: [] for lib in libs}
    store: list[float] | None = []
    for _ in range(sizes.fresh_repeat):
        for lib in libs:
            report = run_fresh("map_check", lib=lib, folder=str(folders[lib]), n=n, dim=dim)
            samples[lib].append(report["seconds"])
        if store is None:
            continue
        try:  # the store's own API: a detail figure, which must not sink the scenario
            report = run_fresh(
                "map_check",
                lib="exca_lite",
                folder=str(folders["exca_lite"]),
                n=n,
                dim=dim,
                how="store",
            )
            store.append(report["seconds"])
        except RuntimeError as e:
            scenario.notes.append(f"exca_lite_store_missing failed: {str(e).splitlines()[-1]}")
            store = None
    for lib in libs:
        scenario.add(lib, samples[lib], MS)
    if store:
        scenario.samples["exca_lite_store_missing"] = [s * MS for s in store]
        scenario.extra["exca_lite_store_missing_ms"] = statistics.median(store) * MS
    return scenario


def _disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file ``path``)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_map_scale_100m(sizes: Sizes, tmp: Path) -> Scenario:
    """Opt-in (``--scale``): fill a 100M-item cache of 4 float32 per library, open it, read one."""
    n, dim = sizes.huge_items, sizes.huge_dim
    limit_gib = sizes.huge_data_limit / (1 << 30)
    scenario = Scenario(
        "map_scale_100M",
        "ms",
        target="works: open + one item in ms, little private memory",
        notes=[
            f"{n} items of {dim} float32, each library filled once in its own process "
            "(exca_lite: MapInfra writes the first item and the cache's configs, the store's "
            "writer the rest; hf: map(batched=True) of a saved source); then fresh processes "
            "open the cache and read one random item (figure: ms; extras: private MiB added as in "
            "map_rss_1M, "
            "disk bytes per item beyond the payload); each process is stopped past "
            f"{sizes.huge_timeout_s:.0f} s or {limit_gib:g} GiB of private data (RLIMIT_DATA)"
        ],
    )
    libs = ["exca_lite", *_hf_libs(scenario, "hf")]
    paths: dict[str, Path] = {}
    payload = dim * 4

    def fresh(task: str, lib: str, **kwargs: tp.Any) -> dict[str, tp.Any] | None:
        """The child's report, or None after noting why it failed (also in the table's details)."""
        start = time.perf_counter()
        try:
            return run_fresh(
                task,
                timeout=sizes.huge_timeout_s,
                data_limit=sizes.huge_data_limit,
                lib=lib,
                n=n,
                dim=dim,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            why = f"stopped after {sizes.huge_timeout_s:.0f} s"
        except RuntimeError as e:
            last = str(e).strip().splitlines()[-1][:200]
            why = f"failed after {time.perf_counter() - start:.0f} s: {last}"
        scenario.notes.append(f"{lib} {task}: {why}")
        scenario.extra[f"{lib}_{task}"] = why
        return None

    for lib in list(libs):
        folder = tmp / lib
        report = fresh("scale_fill", lib, folder=str(folder))
        if report is None:
            libs.remove(lib)
            continue
        paths[lib] = hf_peer.cache_file(folder) if lib == "hf" else folder
        scenario.extra[f"{lib}_fill_s"] = report["seconds"]
        scenario.extra[f"{lib}_fill_us_per_item"] = report["seconds"] / n * US
        scenario.extra[f"{lib}_disk_bytes_per_item_over_payload"] = (
            _disk_bytes(paths[lib]) / n - payload
        )
    picks = np.random.default_rng(1).integers(0, n, size=min(sizes.fresh_repeat, 3))
    samples: dict[str, list[dict[str, tp.Any]]] = {lib: [] for lib in libs}
    for item in picks:
        for lib in list(libs):
            report = fresh("map_open_one", lib, folder=str(paths[lib]), item=int(item))
            if report is None:  # a failed open is not retried (it would fail again)
                libs.remove(lib)
                continue
            samples[lib].append(report)
    for lib in libs:
        scenario.add(lib, [r["seconds"] for r in samples[lib]], MS)
        for key in ("private_dirty_mib", "private_mib"):
            if all(key in r for r in samples[lib]):
                scenario.extra[f"{lib}_{key}"] = statistics.median(r[key] for r in samples[lib])
    if not libs:
        scenario.status = "failed"
    return scenario


SCENARIOS: dict[str, tp.Callable[[Sizes, Path], Scenario]] = {
    "map_fill": bench_map_fill,
    "map_hit_iter": bench_map_hit_iter,
    "map_hit_stack": bench_map_hit_stack,
    "map_open": bench_map_open,
    "map_one_new": bench_map_one_new,
    "map_open_one_1M": bench_map_open_one_1m,
    "map_rss_1M": bench_map_rss_1m,
    "map_check_1M": bench_map_check_1m,
    "map_scale_100M": bench_map_scale_100m,
    "map_bandwidth_write": bench_map_bandwidth_write,
    "map_bandwidth_read": bench_map_bandwidth_read,
    "map_parallel": bench_map_parallel,
}

# run only when asked for: ``run.py --scale`` (or ``--only map_scale_100M``)
OPT_IN = ("map_scale_100M",)

__all__ = ["OPT_IN", "SCENARIOS", "cleanup", "hf_problem", "unavailable"]
