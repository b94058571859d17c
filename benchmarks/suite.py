#!/usr/bin/env python3
"""sealvec benchmark suite: machine limits, exact search, thread scaling, bfloat16
scan, cold open, ingest, approximate search, BLAS setup.

One command, one process (plus a few child processes where a fresh process is the
measurement: peak RSS of an open, and the exact-search re-run under another BLAS
environment):

    python benchmarks/suite.py [--quick] [--out DIR] [--parts limits,exact,...]

Parts (see benchmarks/README.md for what each measures and how):

limits   memory read bandwidth (numpy reductions over a 1-2 GiB float32 array, one
         and two threads), AES-256-GCM throughput of ``cryptography`` (1 and 4 MiB
         messages, one and two threads; decrypt into preallocated buffers, into
         fresh SecureBuffers, and encrypt), durable writes and page-cache reads.
exact    sealvec's kernel vs faiss.knn, faiss IndexFlatIP/L2, numpy and usearch
         exact search on the same data; QPS, GB/s, GFLOP/s, ratios; every case
         checks once that all contenders return the exact top-k (ties allowed).
threads  the kernel on 1, 2, 4, ... threads beside faiss.knn (benchmarks/scaling.py).
bf16     the bfloat16 scan with exact float32 re-scoring: recall@10 and speed vs
         exact sealvec and faiss.knn (benchmarks/reduced.py).
open     Collection.open of a sealed collection vs raw AES-GCM decrypt of the
         same bytes on the same cores; peak RSS of the open vs plaintext size.
ingest   Collection.add (encrypt + durable commit) vs raw AES-GCM encrypt and a
         durable write of the same bytes.
ann      sealed FAISS HNSW and IVF-Flat indexes: recall@10 and speed-up over exact
         search through Collection.search (benchmarks/ann.py).
blas     part exact again in a child process with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
         removed (or, where unset, set to --blas-coretype), kernels recorded.

Contenders alternate within each repetition (rotating order, a short settle pause
before each timed call); results are medians with min-max. Writes results.json and
PNG plots to --out (default benchmarks/results/<timestamp>), prints a markdown
headline table at the end. Exit status 1 if any contender disagrees with the exact
top-k, 2 if a dependency is missing.

Importable: ``main(argv)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Idle worker threads of the BLAS and OpenMP pools spin for a while after each call
# (OpenBLAS about 0.1 s, LLVM OpenMP 0.2 s), taking a core from whichever contender
# runs next. Contenders here run one at a time with pauses, so spinning helps none of
# them; let idle threads sleep at once. Set before numpy and faiss start their pools.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_kernel import cpu_model  # noqa: E402  (one definition for both scripts)
DEFAULT_RESULTS = HERE / "results"
CORPUS = HERE.parent / "data" / "corpus" / "stdlib-docs.minilm.npy"
MiB = 1 << 20
GiB = 1 << 30
F32 = 4
SEED = 20240601
PARTS = ("limits", "exact", "threads", "bf16", "open", "ingest", "ann", "blas")
# Parts whose code lives in a sibling module: part name -> module in benchmarks/.
PART_MODULES = {"threads": "scaling", "bf16": "reduced", "ann": "ann"}


def part_module(part: str) -> Any:
    """benchmarks/<module>.py of a part, imported as benchmarks.<module>."""
    import importlib

    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    return importlib.import_module(f"benchmarks.{PART_MODULES[part]}")
EXACT_NAMES = ("sealvec", "faiss.knn", "faiss.IndexFlat", "numpy", "usearch")
BLAS_PEERS = ("faiss.knn", "faiss.IndexFlat", "numpy")


# --------------------------------------------------------------------------- helpers


def stats(seconds: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
        "seconds": [round(s, 9) for s in seconds],
    }


def alternate(
    contenders: dict[str, Callable[[], Any]], repeats: int, settle_s: float
) -> dict[str, list[float]]:
    """Time every contender once per repetition, rotating (and on odd repetitions
    reversing) the order so none always runs first or after the same peer."""
    names = list(contenders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        order = names[shift:] + names[:shift]
        if repetition % 2:
            order.reverse()
        for name in order:
            if settle_s:
                time.sleep(settle_s)
            started = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(p.replace("_", ""))) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints: {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints: {text!r}")
    return values


def parse_words(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def mem_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GiB


def threadpools() -> list[dict[str, Any]]:
    try:
        import threadpoolctl
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    return [
        {key: value for key, value in pool.items()}
        for pool in threadpoolctl.threadpool_info()
    ]


def blas_kernels(pools: list[dict[str, Any]]) -> dict[str, str]:
    """{library file: OpenBLAS kernel} from threadpoolctl's report."""
    return {
        os.path.basename(str(p.get("filepath", p.get("prefix", "?")))): str(
            p.get("architecture", "-")
        )
        for p in pools
        if p.get("user_api") == "blas"
    }


def environment(core: Any) -> dict[str, Any]:
    versions = {}
    for module in ("faiss", "usearch", "cryptography", "threadpoolctl", "matplotlib"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            versions[module] = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        **versions,
        "sealvec_simd_level": str(core.simd_level()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_available_bytes": mem_available(),
        "memlock_limit": resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "threadpools": threadpools(),
    }


# --------------------------------------------------------------------------- 1. limits


def measure_bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    """Read bandwidth: numpy reductions over one large float32 array.

    np.add.reduce is what the brief names; numpy's float32 sum is pairwise and may be
    compute-bound on some cores, so np.maximum.reduce (SIMD, trivially cheap per
    element) runs too and the faster of the two is the limit. Two threads: each
    reduces one half (numpy releases the GIL inside the loop). BLAS pools are limited
    to one thread throughout (reductions do not use BLAS; this just keeps them idle).
    """
    import threadpoolctl

    nbytes = int(args.bandwidth_gib * GiB) // 64 * 64
    array = np.ones(nbytes // F32, np.float32)  # writes every page: no faults later
    halves = np.array_split(array, 2)
    pool = ThreadPoolExecutor(2)
    results: dict[str, Any] = {"bytes": array.nbytes, "method": {}}
    try:
        with threadpoolctl.threadpool_limits(1):
            for label, ufunc in (("add.reduce", np.add), ("maximum.reduce", np.maximum)):
                ufunc.reduce(array)  # warm
                seconds = alternate(
                    {
                        "1 thread": lambda u=ufunc: u.reduce(array),
                        "2 threads": lambda u=ufunc: list(pool.map(u.reduce, halves)),
                    },
                    args.limit_repeats,
                    args.settle_ms / 1000,
                )
                for threads, times in seconds.items():
                    entry = stats(times)
                    entry["GB_per_s"] = array.nbytes / entry["median_s"] / 1e9
                    results["method"][f"{label} {threads}"] = entry
    finally:
        pool.shutdown()
        del array, halves
        gc.collect()
    for threads in ("1 thread", "2 threads"):
        best = max(
            (value["GB_per_s"], key)
            for key, value in results["method"].items()
            if key.endswith(threads)
        )
        results[f"limit_{threads.replace(' ', '_')}_GB_per_s"] = best[0]
        results[f"limit_{threads.replace(' ', '_')}_method"] = best[1]
    return results


def _aes_messages(total: int, size: int) -> tuple[bytes, list[tuple[bytes, bytes, bytes]]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = os.urandom(32)
    aead = AESGCM(key)
    messages = []
    for index in range(max(2, total // size)):
        nonce = index.to_bytes(12, "big")
        plain = np.random.default_rng(index).bytes(size)
        sealed = aead.encrypt(nonce, plain, None)
        messages.append((nonce, sealed[:-16], sealed[-16:]))
    return key, messages


def measure_aes(args: argparse.Namespace, core: Any) -> dict[str, Any]:
    """AES-256-GCM via cryptography's Cipher/update_into (what sealvec uses)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    lock = lock_mode(core, 2 * args.aes_total_mib * MiB)
    results: dict[str, Any] = {"memory_lock": lock, "message": {}}
    pool = ThreadPoolExecutor(2)
    for size in args.aes_sizes:
        total = args.aes_total_mib * MiB
        key, messages = _aes_messages(total, size)
        plains = [bytearray(size) for _ in messages]  # preallocated, pre-touched
        outs = [bytearray(size) for _ in messages]
        for out in outs:
            out[::4096] = b"\1" * len(out[::4096])
        halves = [list(range(0, len(messages), 2)), list(range(1, len(messages), 2))]
        fresh: list[Any] = []
        locked = [0, 0]

        def decrypt_pre(indices: list[int]) -> None:
            for i in indices:
                nonce, ct, tag = messages[i]
                d = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
                d.update_into(ct, outs[i])
                d.finalize()

        def decrypt_fresh(indices: list[int]) -> None:
            for i in indices:
                nonce, ct, tag = messages[i]
                buffer = core.SecureBuffer(size, lock)
                with memoryview(buffer) as view:
                    d = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
                    d.update_into(ct, view)
                    d.finalize()
                fresh.append(buffer)  # released after the timed call

        def encrypt_pre(indices: list[int]) -> None:
            for i in indices:
                nonce, ct, _ = messages[i]
                e = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
                e.update_into(ct, plains[i])
                e.finalize()

        def one(fn: Callable[[list[int]], None]) -> Callable[[], None]:
            return lambda: fn(list(range(len(messages))))

        def two(fn: Callable[[list[int]], None]) -> Callable[[], None]:
            return lambda: list(pool.map(fn, halves))

        contenders = {
            "decrypt prealloc 1T": one(decrypt_pre),
            "decrypt prealloc 2T": two(decrypt_pre),
            "decrypt SecureBuffer 1T": one(decrypt_fresh),
            "decrypt SecureBuffer 2T": two(decrypt_fresh),
            "encrypt prealloc 1T": one(encrypt_pre),
            "encrypt prealloc 2T": two(encrypt_pre),
        }

        # Time each call, then release fresh buffers outside the timed region.
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for name in names:  # warm
            contenders[name]()
            for buffer in fresh:
                buffer.release()
            fresh.clear()
        for repetition in range(args.limit_repeats):
            shift = repetition % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                time.sleep(args.settle_ms / 1000)
                started = time.perf_counter()
                contenders[name]()
                seconds[name].append(time.perf_counter() - started)
                for buffer in fresh:
                    locked[0] += buffer.locked
                    locked[1] += 1
                    buffer.release()
                fresh.clear()
        nbytes = size * len(messages)
        entry: dict[str, Any] = {"bytes_per_call": nbytes, "messages": len(messages)}
        for name, times in seconds.items():
            timing = stats(times)
            timing["GB_per_s"] = nbytes / timing["median_s"] / 1e9
            entry[name] = timing
        entry["securebuffers_locked_fraction"] = locked[0] / max(locked[1], 1)
        results["message"][f"{size // MiB} MiB"] = entry
        del messages, plains, outs
        gc.collect()
    pool.shutdown()
    return results


def run_standalone(
    prefix: str,
    out: str | None,
    run: Callable[[], dict[str, Any]],
    headline: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], list[str]] | None = None,
) -> int:
    """One part as its own script: run it, then write results.json, headline.md (and
    plots) to `out` (default benchmarks/results/<prefix>-<timestamp>) and print the table."""
    out_dir = Path(out) if out else DEFAULT_RESULTS / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run()
    if plot is not None:
        results["plots"] = plot(results, out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    table = headline(results)
    (out_dir / "headline.md").write_text(table + "\n")
    print("\n" + table + f"\n\nresults: {out_dir / 'results.json'}")
    return 0


def run_workers(work: Callable[[int], None], threads: int) -> None:
    """work(0), ..., work(threads - 1), on that many threads (this one alone for 1)."""
    if threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))


WRITEBACK_BYTES = 8 * MiB  # as sealvec's LocalDirectory asks for writeback


def write_files(directory: Path, sizes: Sequence[int], block: bytes, core: Any | None) -> list[Path]:
    """Write one new file per size in `directory` from 1 MiB blocks, fsync each, then
    fsync the directory: what a durable put costs. With `core`, ask for writeback
    every 8 MiB while writing (core.start_writeback), as sealvec does."""
    start_writeback = getattr(core, "start_writeback", None)
    paths = []
    for size in sizes:
        path = directory / f".bench-{os.urandom(8).hex()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = started = 0
            while written < size:
                written += os.write(fd, memoryview(block)[: min(len(block), size - written)])
                if start_writeback is not None and written - started >= WRITEBACK_BYTES:
                    start_writeback(fd, started, written - started)
                    started = written
            os.fsync(fd)
        finally:
            os.close(fd)
        paths.append(path)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return paths


def read_files(files: Sequence[tuple[Path, int]], threads: int, scratch: list[bytearray]) -> None:
    """pread every file in 1 MiB pieces into per-thread scratch, `threads` threads each
    taking a contiguous run of pieces: what reading sealed shards from the page cache
    costs before any decryption."""
    pieces = []
    for path, size in files:
        fd = os.open(path, os.O_RDONLY)
        pieces += [(fd, offset, min(MiB, size - offset)) for offset in range(0, size, MiB)]
    fds = {fd for fd, _, _ in pieces}

    def work(worker: int) -> None:
        view = memoryview(scratch[worker])
        for fd, offset, length in pieces[len(pieces) * worker // threads:
                                         len(pieces) * (worker + 1) // threads]:
            os.preadv(fd, [view[:length]], offset)

    try:
        run_workers(work, threads)
    finally:
        for fd in fds:
            os.close(fd)


def measure_storage(args: argparse.Namespace, core: Any) -> dict[str, Any]:
    """Durable writes and page-cache reads in a directory under --tmp (where the open
    and ingest stores live): write + fsync file + fsync directory of --storage-mib in
    1 MiB writes, with and without early writeback; pread of that file back from the
    page cache on one and two threads. The faster write is the limit."""
    directory = Path(tempfile.mkdtemp(prefix="sealvec-storage-", dir=args.tmp))
    nbytes = args.storage_mib * MiB
    block = os.urandom(MiB)
    scratch = [bytearray(MiB) for _ in range(2)]
    written: list[Path] = []
    kept: list[Path] = write_files(directory, [nbytes], block, None)  # read back below
    contenders = {
        "write+fsync": lambda: written.extend(write_files(directory, [nbytes], block, None)),
        "write+fsync, early writeback": lambda: written.extend(
            write_files(directory, [nbytes], block, core)),
        "pread page cache 1T": lambda: read_files([(kept[0], nbytes)], 1, scratch),
        "pread page cache 2T": lambda: read_files([(kept[0], nbytes)], 2, scratch),
    }
    if not hasattr(core, "start_writeback"):  # an older sealvec: no writeback helper
        del contenders["write+fsync, early writeback"]
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    try:
        for repetition in range(args.limit_repeats):
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(args.settle_ms / 1000)
                seconds[name].append(_timed(contenders[name]))
                for path in written:  # outside the timed region
                    path.unlink()
                written.clear()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results: dict[str, Any] = {"bytes": nbytes, "directory_parent": str(args.tmp), "method": {}}
    for name, times in seconds.items():
        entry = stats(times)
        entry["GB_per_s"] = nbytes / entry["median_s"] / 1e9
        results["method"][name] = entry
    writes = [k for k in results["method"] if k.startswith("write")]
    best = max(writes, key=lambda k: results["method"][k]["GB_per_s"])
    results["write_limit_GB_per_s"] = results["method"][best]["GB_per_s"]
    results["write_limit_method"] = best
    return results


# --------------------------------------------------------------------------- 2. exact


def numpy_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of higher-is-better scores: argpartition, then sort the k."""
    kk = min(k, scores.shape[1])
    if kk < scores.shape[1]:
        rows = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        rows = np.broadcast_to(np.arange(kk), (scores.shape[0], kk))
    top = np.take_along_axis(scores, rows, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(rows, order, axis=1)


def make_contenders(
    core: Any, faiss: Any, usearch_index: Any, db: np.ndarray, metric: str,
    threads: int, names: Sequence[str],
) -> tuple[dict[str, Callable[[np.ndarray, int], Any]], list[Any]]:
    """{name: f(queries, k) -> top-k row ids}; the list holds what they keep alive."""
    dim = db.shape[1]
    keep: list[Any] = []
    contenders: dict[str, Callable[[np.ndarray, int], Any]] = {}
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if "sealvec" in names:
        contenders["sealvec"] = lambda q, k: core.search([db], dim, q, k, metric, threads=threads)[1]
    if "faiss.knn" in names:
        contenders["faiss.knn"] = lambda q, k: faiss.knn(q, db, k, metric=faiss_metric)[1]
    if "faiss.IndexFlat" in names:
        index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        index.add(db)  # a copy, as a FAISS user would hold it
        keep.append(index)
        contenders["faiss.IndexFlat"] = lambda q, k: index.search(q, k)[1]
    if "numpy" in names:
        if metric == "ip":
            contenders["numpy"] = lambda q, k: numpy_topk(q @ db.T, k)[1]
        else:  # rank by 2 q.x - |x|^2 (norms precomputed, as IndexFlatL2 keeps none)
            half_norms = 0.5 * np.einsum("ij,ij->i", db, db)
            keep.append(half_norms)
            contenders["numpy"] = lambda q, k: numpy_topk(q @ db.T - half_norms, k)[1]
    if "usearch" in names:
        kind = usearch_index.MetricKind.IP if metric == "ip" else usearch_index.MetricKind.L2sq
        contenders["usearch"] = lambda q, k: usearch_index.search(
            db, q, k, kind, exact=True, threads=threads
        ).keys
    return contenders, keep


def exact_truth(
    db: np.ndarray, queries: np.ndarray, kmax: int, sizes: Sequence[int], chunk: int = 16384
) -> dict[tuple[str, int], np.ndarray]:
    """Exact (float64) top-kmax canonical scores per query, for each prefix size.

    Canonical scores are higher-is-better: ip = q.x; l2 = 2 q.x - |x|^2 (the
    ranking of -|q-x|^2). One pass over the rows; snapshots at each size.
    """
    q64 = queries.astype(np.float64)
    best = {m: np.full((len(queries), 0), -np.inf) for m in ("ip", "l2")}
    truth: dict[tuple[str, int], np.ndarray] = {}
    boundaries = sorted(set(sizes))
    start = 0
    for boundary in boundaries:
        while start < boundary:
            stop = min(start + chunk, boundary)
            block = db[start:stop].astype(np.float64)
            ip = q64 @ block.T
            for metric, scores in (("ip", ip), ("l2", 2 * ip - np.einsum("ij,ij->i", block, block))):
                merged = np.concatenate([best[metric], scores], axis=1)
                if merged.shape[1] > kmax:
                    merged = -np.partition(-merged, kmax - 1, axis=1)[:, :kmax]
                best[metric] = merged
            start = stop
        for metric in ("ip", "l2"):
            truth[(metric, boundary)] = -np.sort(-best[metric], axis=1)
    return truth


def check_ids(
    db: np.ndarray, queries: np.ndarray, truth: np.ndarray, metric: str, k: int, rows: Any
) -> str:
    """'ok', 'ok (N tie swaps)', or what is wrong with one contender's top-k ids.

    Every returned id must score (exactly, float64) at least the exact k-th best less
    a float32 rounding allowance, ids must be distinct and in range, and best first.
    """
    nq = len(queries)
    kk = min(k, db.shape[0])
    rows = np.asarray(rows).astype(np.int64).reshape(nq, -1)
    if rows.shape != (nq, kk):
        return f"wrong shape {rows.shape}, expected {(nq, kk)}"
    eps = float(np.finfo(np.float32).eps)
    max_x = float(np.sqrt(np.einsum("ij,ij->i", db[:4096], db[:4096]).max()))
    max_x = max(max_x, float(np.linalg.norm(db[rows.ravel()], axis=1).max()))
    max_q = float(np.linalg.norm(queries, axis=1).max())
    if metric == "ip":
        allowance = 4 * eps * np.sqrt(db.shape[1]) * max_x * max_q
    else:
        allowance = 8 * eps * np.sqrt(db.shape[1]) * (max_x + max_q) ** 2
    swaps = 0
    for i in range(nq):
        ids = rows[i]
        if ids.min() < 0 or ids.max() >= db.shape[0]:
            return f"query {i}: row id out of range"
        if len(set(ids.tolist())) != kk:
            return f"query {i}: duplicate row ids"
        x = db[ids].astype(np.float64)
        got = x @ queries[i].astype(np.float64)
        if metric == "l2":
            got = 2 * got - np.einsum("ij,ij->i", x, x)
        kth = truth[i, kk - 1]
        if got.min() < kth - allowance:
            return f"query {i}: a returned row is not in the exact top {kk}"
        if np.any(np.diff(got) > allowance):
            return f"query {i}: not best first"
        # below the exact k-th best (beyond float64 rounding) yet within the allowance
        swaps += int((got < kth - 1e-6 * allowance).sum())
    return "ok" if swaps == 0 else f"ok ({swaps} tie swaps)"


def exact_cases(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(metric, k, batch) per (dataset, rows, dim): the primary metric and k (the first
    of --metrics; k=10 if listed) at every batch, other combinations at --sweep-batches."""
    primary = (args.metrics[0], 10 if 10 in args.ks else args.ks[0])
    cases = []
    for metric in args.metrics:
        for k in args.ks:
            batches = args.batches if (metric, k) == primary else args.sweep_batches
            cases.extend((metric, k, batch) for batch in batches)
    return cases


def run_exact(args: argparse.Namespace, core: Any) -> dict[str, Any]:
    import faiss
    import usearch.index as usearch_index

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)
    max_batch = max((*args.batches, *args.sweep_batches))
    kmax = max(args.ks)
    datasets: list[tuple[str, int, list[int]]] = []
    if args.corpus and CORPUS.exists():
        datasets.append(("minilm-corpus", 384, [int(np.load(CORPUS, mmap_mode="r").shape[0])]))
    for dim in args.dims:
        datasets.append(("random", dim, sorted(args.sizes)))
    out: dict[str, Any] = {"cases": [], "skipped": [], "disagreements": []}
    settle = args.settle_ms / 1000
    for dataset, dim, sizes in datasets:
        # Memory: rows + IndexFlat copy + a batch of scores + float64 truth chunk.
        fits = [
            n for n in sizes
            if n * dim * F32 * 2.2 + max_batch * n * F32 * 2 < args.mem_fraction * mem_available()
        ]
        for n in sizes:
            if n not in fits:
                out["skipped"].append({"dataset": dataset, "rows": n, "dim": dim,
                                       "why": "memory (MemAvailable x --mem-fraction)"})
                print(f"  skip {dataset} rows={n} dim={dim}: not enough memory")
        if not fits:
            continue
        if dataset == "minilm-corpus":
            all_rows = np.ascontiguousarray(np.load(CORPUS), dtype=np.float32)
            picks = rng.choice(len(all_rows), max_batch, replace=len(all_rows) < max_batch)
            noisy = all_rows[picks] + 0.05 * rng.standard_normal((max_batch, dim), np.float32)
            queries_all = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        else:
            all_rows = rng.standard_normal((max(fits), dim), np.float32)
            queries_all = rng.standard_normal((max_batch, dim), np.float32)
        started = time.perf_counter()
        truth = exact_truth(all_rows, queries_all, kmax, fits)
        print(f"  [{dataset} dim={dim}] exact float64 truth in {time.perf_counter() - started:.1f} s")
        for n in fits:
            db = all_rows[:n]
            for metric in args.metrics:
                contenders, keep = make_contenders(
                    core, faiss, usearch_index, db, metric, args.threads, args.contenders
                )
                for metric_, k, batch in exact_cases(args):
                    if metric_ != metric or k > n:
                        continue
                    if 2 * n * dim * batch / 1e9 > args.max_gflop:
                        out["skipped"].append({"dataset": dataset, "rows": n, "dim": dim,
                                               "metric": metric, "k": k, "batch": batch,
                                               "why": f"over --max-gflop {args.max_gflop}"})
                        continue
                    run_case(args, out, dataset, db, queries_all[:batch],
                             truth[(metric, n)][:batch], metric, k, contenders, settle)
                del contenders, keep
                gc.collect()
        del all_rows, queries_all, truth
        gc.collect()
    return out


def run_case(
    args: argparse.Namespace, out: dict[str, Any], dataset: str, db: np.ndarray,
    queries: np.ndarray, truth: np.ndarray, metric: str, k: int,
    contenders: dict[str, Callable[[np.ndarray, int], Any]], settle: float,
) -> None:
    n, dim = db.shape
    nq = len(queries)
    case: dict[str, Any] = {"dataset": dataset, "rows": n, "dim": dim, "batch": nq, "k": k,
                            "metric": metric, "agreement": {}, "timings": {}, "ratios": {}}
    first_call = {}
    for name, fn in contenders.items():  # warm-up call doubles as the check
        time.sleep(settle)
        started = time.perf_counter()
        rows = fn(queries, k)
        first_call[name] = time.perf_counter() - started
        verdict = check_ids(db, queries, truth, metric, k, rows)
        case["agreement"][name] = verdict
        if not verdict.startswith("ok"):
            out["disagreements"].append({**{x: case[x] for x in ("dataset", "rows", "dim",
                                          "batch", "k", "metric")}, "contender": name,
                                         "verdict": verdict})
    per_rep = sum(first_call.values()) + settle * len(contenders)
    repeats = int(min(args.repeats, max(args.min_repeats, args.case_budget_s // max(per_rep, 1e-9))))
    seconds = alternate({name: (lambda f=fn: f(queries, k)) for name, fn in contenders.items()},
                        repeats, settle)
    nbytes = n * dim * F32
    flops = 2.0 * n * dim * nq
    for name, times in seconds.items():
        timing = stats(times)
        timing["QPS"] = nq / timing["median_s"]
        timing["GB_per_s"] = nbytes / timing["median_s"] / 1e9
        timing["GFLOP_per_s"] = flops / timing["median_s"] / 1e9
        case["timings"][name] = timing
    if "sealvec" in seconds:
        ours = case["timings"]["sealvec"]["median_s"]
        for name in seconds:
            if name != "sealvec":
                case["ratios"][f"sealvec/{name}"] = ours / case["timings"][name]["median_s"]
    out["cases"].append(case)
    print_case(case)


def print_case(case: dict[str, Any]) -> None:
    label = (f"{case['dataset'][:6]:>6} {case['rows']:>8} {case['dim']:>5} {case['metric']:>2} "
             f"k={case['k']:<3} nq={case['batch']:<3}")
    for name, t in case["timings"].items():
        print(f"{label} {name:<15} {t['median_s'] * 1e3:>9.3f} ms "
              f"[{t['min_s'] * 1e3:.3f}..{t['max_s'] * 1e3:.3f}] {t['QPS']:>10.1f} QPS "
              f"{t['GB_per_s']:>6.2f} GB/s {t['GFLOP_per_s']:>7.1f} GF/s  {case['agreement'][name]}")
        label = " " * len(label)
    if case["ratios"]:
        print(" " * len(label) + " time ratio (<1: sealvec faster): " + "  ".join(
            f"{k.split('/')[1]} {v:.2f}" for k, v in case["ratios"].items()))


# --------------------------------------------------------------------------- 3/4. open, ingest


def raw_aes_pool(nbytes: int, segment: int = MiB) -> tuple[bytes, list[tuple[bytes, bytes, bytes]], list[bytearray]]:
    """Ciphertext of up to 256 MiB in 1 MiB segments (sealvec's segment size) with
    pre-touched output buffers; decrypting it k times stands in for nbytes."""
    key, messages = _aes_messages(min(nbytes, 256 * MiB), segment)
    outs = [bytearray(segment) for _ in messages]
    for out in outs:
        out[::4096] = b"\1" * len(out[::4096])
    return key, messages, outs


def raw_aes(key: bytes, messages: list, outs: list, nbytes: int, threads: int, decrypt: bool) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    count = -(-nbytes // len(outs[0]))

    def work(worker: int) -> None:
        for j in range(worker, count, threads):
            i = j % len(messages)
            nonce, ct, tag = messages[i]
            if decrypt:
                c = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
            else:
                c = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
            c.update_into(ct, outs[i])
            c.finalize()

    run_workers(work, threads)


def raw_aes_fresh(core: Any, key: bytes, messages: list, nbytes: int, threads: int,
                  buffer_bytes: int, lock: str, keep: list) -> None:
    """Decrypt nbytes (the 1 MiB messages, cycled) into fresh SecureBuffers of about
    buffer_bytes each (as a shard's vectors section), `threads` threads each taking a
    contiguous run of segments. Mapping and locking the buffers is timed, as the kernel
    zeroing their pages on first write is; `keep` gets the buffers, for the caller to
    release outside the timed region."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    segment = len(messages[0][1])
    count = -(-nbytes // segment)
    per_buffer = max(1, buffer_bytes // segment)
    sizes = [segment * min(per_buffer, count - first) for first in range(0, count, per_buffer)]
    buffers = [core.SecureBuffer(size, lock) for size in sizes]
    keep.extend(buffers)
    views = [memoryview(buffer) for buffer in buffers]

    def work(worker: int) -> None:
        for j in range(count * worker // threads, count * (worker + 1) // threads):
            nonce, ct, tag = messages[j % len(messages)]
            offset = (j % per_buffer) * segment
            with views[j // per_buffer][offset:offset + segment] as out:
                c = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
                c.update_into(ct, out)
                c.finalize()

    try:
        run_workers(work, threads)
    finally:
        for view in views:
            view.release()


def proc_status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child_open(path: str, memory_lock: str, threads: int) -> None:
    """Child-process mode: open once, print one JSON line.

    Peak RSS is /proc/self/status VmHWM (this process's high-water mark). ru_maxrss is
    recorded too, but Linux carries it across execve from the forked parent, so in a
    child of a large parent it starts at the parent's size and can hide the open.
    """
    import sealvec
    from sealvec import _core

    before = proc_status_bytes("VmHWM")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    collection = sealvec.Collection.open(path, memory_lock=memory_lock, threads=threads)
    elapsed = time.perf_counter() - started
    peak = proc_status_bytes("VmHWM")
    maxrss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    info = collection.stats()
    locked = _core.locked_bytes()
    collection.close()
    print(json.dumps({"open_s": elapsed, "hwm_before": before, "hwm_peak": peak,
                      "ru_maxrss_before": maxrss_before, "ru_maxrss_peak": maxrss_peak,
                      "plaintext_bytes": info["locked_bytes"], "stored_bytes": info["stored_bytes"],
                      "shards": info["shards"], "mlocked_bytes": locked}))


def lock_mode(core: Any, nbytes: int) -> str:
    """'required' where this process can mlock nbytes (RLIMIT_MEMLOCK, or CAP_IPC_LOCK
    as root ignores it), else 'best_effort' (the library then runs unlocked beyond
    the limit; results record how many bytes were actually locked)."""
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if memlock == resource.RLIM_INFINITY or nbytes <= memlock - MiB:
        return "required"
    try:  # can we lock past the limit (CAP_IPC_LOCK)?
        core.SecureBuffer(memlock + 16 * MiB, "required").release()
        return "required"
    except Exception:  # noqa: BLE001 - any refusal means no
        return "best_effort"


def run_open_ingest(args: argparse.Namespace, parts: set[str], core: Any) -> dict[str, Any]:
    import sealvec

    rng = np.random.default_rng(SEED + 1)
    dim = args.open_dim
    threads = args.threads or os.cpu_count() or 1
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    settle = args.settle_ms / 1000
    out: dict[str, Any] = {"dim": dim, "threads": threads, "shard_rows": args.shard_rows,
                           "memlock_limit": memlock, "open": [], "ingest": []}
    tmp = Path(tempfile.mkdtemp(prefix="sealvec-bench-", dir=args.tmp))
    saved = {v: os.environ.get(v) for v in ("SEALVEC_KEYRING", "SEALVEC_STATE_DIR")}
    os.environ["SEALVEC_KEYRING"] = str(tmp / "keyring.json")
    os.environ["SEALVEC_STATE_DIR"] = str(tmp / "state")
    try:
        for n in args.open_sizes:
            if n * dim * F32 * 3 > args.mem_fraction * mem_available():
                print(f"  skip open/ingest rows={n}: not enough memory")
                out["open"].append({"rows": n, "skipped": "memory"})
                continue
            vectors = rng.standard_normal((n, dim), np.float32)
            ids = [f"row-{i:09d}" for i in range(n)]
            plain_vec = vectors.nbytes
            lock = lock_mode(core, int(plain_vec * 1.2) + 4 * MiB)
            key, messages, outs = raw_aes_pool(plain_vec)
            names = ["ingest", "encrypt 1T", f"encrypt {threads}T", "write+fsync"]
            if hasattr(core, "start_writeback"):  # absent in older sealvec builds
                names.append("write+fsync, early writeback")
            seconds: dict[str, list[float]] = {name: [] for name in names}
            block = os.urandom(MiB)
            stored_sizes: list[int] = []  # every object of the last store: shards, manifests
            store = None
            ingest_reps = 1 if "ingest" not in parts else max(1, args.ingest_repeats)
            for rep in range(ingest_reps):
                if store is not None:
                    shutil.rmtree(store, ignore_errors=True)
                store = tmp / f"store-{n}-{rep}"

                def ingest() -> None:
                    with sealvec.Collection.create(store, dimension=dim, metric="ip",
                                                   memory_lock=lock) as col:
                        for start in range(0, n, args.shard_rows):
                            col.add(ids[start:start + args.shard_rows],
                                    vectors[start:start + args.shard_rows])

                written: list[Path] = []

                def write_same(early_writeback: bool) -> None:
                    directory = store / "shards"
                    directory.mkdir(parents=True, exist_ok=True)
                    written.extend(write_files(directory, stored_sizes, block,
                                               core if early_writeback else None))

                contenders = {
                    "ingest": ingest,
                    "encrypt 1T": lambda: raw_aes(key, messages, outs, plain_vec, 1, False),
                    f"encrypt {threads}T": lambda: raw_aes(key, messages, outs, plain_vec,
                                                           threads, False),
                    "write+fsync": lambda: write_same(False),
                    "write+fsync, early writeback": lambda: write_same(True),
                }
                # The first repetition ingests first (the writes copy its objects' sizes);
                # later ones rotate the order, reversed every other time.
                order = names[rep % len(names):] + names[:rep % len(names)]
                if rep % 2:
                    order.reverse()
                for name in order if "ingest" in parts else ["ingest"]:
                    time.sleep(settle)
                    seconds[name].append(_timed(contenders[name]))
                    for path in written:  # outside the timed region
                        path.unlink()
                    written.clear()
                    if name == "ingest":
                        stored_sizes = [path.stat().st_size for path in sorted(store.rglob("*"))
                                        if path.is_file() and not path.name.startswith(".")]
            if "ingest" in parts:
                t = statistics.median(seconds["ingest"])
                e1 = statistics.median(seconds["encrypt 1T"])
                e2 = statistics.median(seconds[f"encrypt {threads}T"])
                writes = {k: statistics.median(seconds[k]) for k in names if k.startswith("write")}
                w_method = min(writes, key=writes.get)
                w = writes[w_method]
                entry = {"rows": n, "dim": dim, "vector_bytes": plain_vec, "memory_lock": lock,
                         "threads": threads, "stored_bytes": sum(stored_sizes),
                         "stored_objects": len(stored_sizes),
                         "add": stats(seconds["ingest"]), "encrypt_1T": stats(seconds["encrypt 1T"]),
                         f"encrypt_{threads}T": stats(seconds[f"encrypt {threads}T"]),
                         "storage_write": {k: stats(seconds[k]) for k in writes},
                         "storage_write_limit_method": w_method,
                         "add_GB_per_s": plain_vec / t / 1e9,
                         "storage_write_limit_GB_per_s": sum(stored_sizes) / w / 1e9,
                         # time ratios (above 1: add is slower)
                         "ratio_add_vs_encrypt_1T": t / e1, f"ratio_add_vs_encrypt_{threads}T": t / e2,
                         "ratio_add_vs_storage_write": t / w,
                         # throughput as a fraction of each limit (1: at the limit)
                         "throughput_vs_raw_encrypt_1T": e1 / t,
                         f"throughput_vs_raw_encrypt_{threads}T": e2 / t,
                         "throughput_vs_storage_write": w / t,
                         "goal": {"throughput_vs_raw_encrypt (same cores) >= 0.5": e2 / t >= 0.5}}
                out["ingest"].append(entry)
                print(f"  ingest rows={n} dim={dim}: add {t:.3f} s ({entry['add_GB_per_s']:.2f} GB/s)"
                      f" [{min(seconds['ingest']):.3f}..{max(seconds['ingest']):.3f}]; raw encrypt "
                      f"1T {e1:.3f} s, {threads}T {e2:.3f} s; durable write of the same "
                      f"{sum(stored_sizes) / MiB:.0f} MiB {w:.3f} s ({w_method}); throughput "
                      f"x{e1 / t:.2f} of encrypt 1T, x{e2 / t:.2f} of {threads}T, x{w / t:.2f} of "
                      f"the write (lock={lock})")
            del vectors, ids
            gc.collect()
            if "open" in parts:
                out["open"].append(measure_open(args, core, store, lock, threads, key, messages,
                                                outs, n, dim))
            shutil.rmtree(store, ignore_errors=True)
            del messages, outs
            gc.collect()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure_open(args: argparse.Namespace, core: Any, store: Path, lock: str, threads: int,
                 key: bytes, messages: list, outs: list, n: int, dim: int) -> dict[str, Any]:
    """Alternate: a fresh child process opens the store / this process, on `threads`
    threads, decrypts the same number of bytes with raw AES-GCM into preallocated buffers
    and into fresh SecureBuffers (shard-sized), and preads the store's files from the
    page cache."""
    import sealvec

    # The child imports the same sealvec as this process (installed, or src/ with a
    # built _core), not whatever src/ holds.
    env = dict(os.environ)
    package_root = str(Path(sealvec.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    files = [(path, path.stat().st_size) for path in sorted(store.rglob("*"))
             if path.is_file() and not path.name.startswith(".")]
    scratch = [bytearray(MiB) for _ in range(threads)]
    children: list[dict[str, Any]] = []
    seconds: dict[str, list[float]] = {"raw": [], "fresh": [], "read": []}
    plaintext = None
    fresh: list[Any] = []
    command = [sys.executable, str(Path(__file__).resolve()), "--_child-open", str(store),
               "--_child-lock", lock, "--threads", str(threads)]
    names = ["child", "raw", "fresh", "read"]
    for rep in range(args.open_repeats):
        steps = names[rep % len(names):] + names[:rep % len(names)]
        if rep % 2:
            steps.reverse()
        for step in steps:
            time.sleep(args.settle_ms / 1000)
            nbytes = plaintext or n * dim * F32
            if step == "child":
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"open child failed: {done.stderr[-2000:]}")
                children.append(json.loads(done.stdout.strip().splitlines()[-1]))
                plaintext = children[-1]["plaintext_bytes"]
            elif step == "raw":
                seconds["raw"].append(_timed(lambda: raw_aes(key, messages, outs, nbytes,
                                                             threads, True)))
            elif step == "fresh":
                seconds["fresh"].append(_timed(lambda: raw_aes_fresh(
                    core, key, messages, nbytes, threads, args.shard_rows * dim * F32, lock, fresh)))
                for buffer in fresh:  # outside the timed region
                    buffer.release()
                fresh.clear()
            else:
                seconds["read"].append(_timed(lambda: read_files(files, threads, scratch)))
    open_s = [c["open_s"] for c in children]
    peak = statistics.median(c["hwm_peak"] for c in children)
    before = statistics.median(c["hwm_before"] for c in children)
    t = statistics.median(open_s)
    r, f, rd = (statistics.median(seconds[k]) for k in ("raw", "fresh", "read"))
    growth = (peak - before) / plaintext
    entry = {
        "rows": n, "dim": dim, "plaintext_bytes": plaintext, "stored_bytes": children[0]["stored_bytes"],
        "shards": children[0]["shards"], "memory_lock": lock,
        "mlocked_bytes_after_open": children[0]["mlocked_bytes"], "threads": threads,
        "open": stats(open_s), "raw_decrypt": stats(seconds["raw"]),
        "raw_decrypt_fresh_securebuffer": stats(seconds["fresh"]),
        "read_page_cache": stats(seconds["read"]),
        "open_GB_per_s": plaintext / t / 1e9, "raw_decrypt_GB_per_s": plaintext / r / 1e9,
        "raw_decrypt_fresh_GB_per_s": plaintext / f / 1e9,
        "read_page_cache_GB_per_s": children[0]["stored_bytes"] / rd / 1e9,
        # time ratio (above 1: the open is slower)
        "ratio_open_vs_raw_decrypt": t / r,
        # throughput as a fraction of each limit (1: at the limit)
        "throughput_vs_raw_decrypt_prealloc": r / t,
        "throughput_vs_raw_decrypt_fresh": f / t,
        "throughput_vs_read_then_decrypt_fresh": (rd + f) / t,
        "peak_rss_bytes": peak, "rss_before_open_bytes": before, "rss_method":
            "VmHWM in a fresh child (ru_maxrss also in 'children', inherited across exec)",
        "children": children,
        "ratio_peak_rss_vs_plaintext": peak / plaintext,
        "ratio_rss_growth_vs_plaintext": growth,
        "goal": {"throughput_vs_raw_decrypt_prealloc >= 0.8": r / t >= 0.8,
                 "rss_growth_vs_plaintext <= 1.1": growth <= 1.1},
        "note": "store files in page cache (just written); open = manifest + unwrap + "
                "read + decrypt into SecureBuffers",
    }
    print(f"  open rows={n} dim={dim} ({plaintext / MiB:.1f} MiB plaintext, {entry['shards']} shards, "
          f"lock={lock}, {entry['mlocked_bytes_after_open'] / MiB:.1f} MiB mlocked): "
          f"{t:.3f} s [{min(open_s):.3f}..{max(open_s):.3f}] ({plaintext / t / 1e9:.2f} GB/s); "
          f"{threads}T raw decrypt {r:.3f} s, into fresh SecureBuffers {f:.3f} s, pread {rd:.3f} s "
          f"-> throughput x{r / t:.2f} of raw, x{f / t:.2f} of fresh, x{(rd + f) / t:.2f} of "
          f"pread+fresh; peak RSS {peak / MiB:.0f} MiB = {peak / plaintext:.2f}x plaintext, "
          f"growth {(peak - before) / MiB:.0f} MiB = {growth:.2f}x")
    return entry


# --------------------------------------------------------------------------- 5. BLAS env


def run_blas_alternate(args: argparse.Namespace, out_dir: Path, main_exact: dict[str, Any] | None,
                       main_env: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    if env.get("OPENBLAS_CORETYPE") or env.get("OPENBLAS_L2_SIZE"):
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
        change = "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed"
    elif args.blas_coretype:
        env["OPENBLAS_CORETYPE"] = args.blas_coretype
        change = f"OPENBLAS_CORETYPE={args.blas_coretype} set (unset in the main run)"
    else:
        note = ("OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are not set here, so a run without "
                "them is the main run; pass --blas-coretype NAME to compare against a forced kernel")
        print(f"  {note}")
        return {"skipped": note, "main_kernels": blas_kernels(main_env["threadpools"])}
    child_dir = out_dir / "blas-alternate"
    command = [sys.executable, str(Path(__file__).resolve()), "--parts", "exact", "--no-plots",
               "--out", str(child_dir), "--contenders", ",".join(args.contenders)]
    for flag in ("sizes", "dims", "batches", "sweep_batches", "ks", "metrics"):
        command += [f"--{flag.replace('_', '-')}", ",".join(map(str, getattr(args, flag)))]
    command += ["--repeats", str(args.repeats), "--settle-ms", str(args.settle_ms),
                "--threads", str(args.threads), "--case-budget-s", str(args.case_budget_s),
                "--max-gflop", str(args.max_gflop), "--mem-fraction", str(args.mem_fraction)]
    if not args.corpus:
        command.append("--no-corpus")
    print(f"  re-running exact search with {change}")
    done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        return {"change": change, "error": done.stderr[-3000:]}
    alt = json.loads((child_dir / "results.json").read_text())
    comparison = []
    main_cases = {_case_key(c): c for c in (main_exact or {}).get("cases", [])}
    for case in alt["exact"]["cases"]:
        base = main_cases.get(_case_key(case))
        if not base:
            continue
        comparison.append({**{x: case[x] for x in ("dataset", "rows", "dim", "batch", "k", "metric")},
                           "alt_over_main_time": {n: case["timings"][n]["median_s"] / base["timings"][n]["median_s"]
                                                  for n in case["timings"] if n in base["timings"]}})
    result = {"change": change, "main_kernels": blas_kernels(main_env["threadpools"]),
              "alternate_kernels": blas_kernels(alt["environment"]["threadpools"]),
              "alternate_disagreements": alt["exact"]["disagreements"],
              "comparison": comparison, "alternate_results": str(child_dir / "results.json")}
    print(f"  kernels main {result['main_kernels']}  alternate {result['alternate_kernels']}")
    for row in comparison:
        print(f"  {row['dataset'][:6]} rows={row['rows']} dim={row['dim']} nq={row['batch']} k={row['k']} "
              f"{row['metric']}: alt/main time " + "  ".join(
                  f"{n} {v:.2f}" for n, v in row["alt_over_main_time"].items()))
    return result


def _case_key(case: dict[str, Any]) -> tuple:
    return tuple(case[x] for x in ("dataset", "rows", "dim", "batch", "k", "metric"))


# --------------------------------------------------------------------------- 6. plots, table


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed: no plots")
        return []
    written = []
    exact = results.get("exact") or {}
    cases = [c for c in exact.get("cases", [])]
    if cases:
        primary = [c for c in cases if c["k"] == 10 and c["metric"] == "ip"] or cases
        groups = sorted({(c["dataset"], c["rows"], c["dim"]) for c in primary})
        cols = min(3, len(groups))
        rows_ = -(-len(groups) // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 3.6 * rows_), squeeze=False)
        for ax, group in zip(axes.ravel(), groups):
            sel = sorted((c for c in primary if (c["dataset"], c["rows"], c["dim"]) == group),
                         key=lambda c: c["batch"])
            for name in sel[0]["timings"]:
                ax.plot([c["batch"] for c in sel], [c["timings"][name]["QPS"] for c in sel],
                        marker="o", label=name)
            ax.set(xscale="log", yscale="log", xlabel="batch (queries per call)", ylabel="QPS",
                   title=f"{group[0]} {group[1]:,} x {group[2]} (k={sel[0]['k']}, {sel[0]['metric']})")
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(groups):]:
            ax.axis("off")
        axes.ravel()[0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "qps_vs_batch.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

        fig, ax = plt.subplots(figsize=(8, 4.5))
        names = list(primary[0]["timings"])
        labels = [f"{c['rows'] // 1000}k x{c['dim']} nq{c['batch']}" for c in primary]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar(np.arange(len(primary)) + i * width,
                   [c["timings"][name]["GB_per_s"] for c in primary], width, label=name)
        limits = results.get("limits", {}).get("bandwidth", {})
        for key, style in (("limit_1_thread_GB_per_s", ":"), ("limit_2_threads_GB_per_s", "--")):
            if key in limits:
                ax.axhline(limits[key], color="k", linestyle=style,
                           label=f"read bandwidth {key.split('_')[1]}T ({limits[key]:.1f} GB/s)")
        ax.set_xticks(np.arange(len(primary)) + 0.4 - width / 2, labels, rotation=90, fontsize=6)
        ax.set(ylabel="GB/s of vectors scanned", title="exact search: vector bytes per second vs machine limit")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "gbps_vs_bandwidth.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    opens = [o for o in (results.get("open_ingest") or {}).get("open", []) if "open" in o]
    if opens:
        fig, ax = plt.subplots(figsize=(6, 4))
        mib = [o["plaintext_bytes"] / MiB for o in opens]
        ax.plot(mib, [o["open"]["median_s"] for o in opens], marker="o", label="Collection.open")
        ax.plot(mib, [o["raw_decrypt"]["median_s"] for o in opens], marker="s",
                label=f"raw AES-GCM decrypt ({opens[0]['threads']}T)")
        ax.plot(mib, [o["raw_decrypt_fresh_securebuffer"]["median_s"] for o in opens], marker="^",
                label=f"raw decrypt into fresh SecureBuffers ({opens[0]['threads']}T)")
        ax.set(xscale="log", yscale="log", xlabel="plaintext MiB", ylabel="seconds",
               title=f"open vs size (dim {opens[0]['dim']})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "open_vs_size.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def headline(results: dict[str, Any]) -> str:
    lines = []
    limits = results.get("limits") or {}
    bw = limits.get("bandwidth") or {}
    aes = (limits.get("aes") or {}).get("message") or {}
    if bw or aes:
        lines += ["| machine limit | 1 thread | 2 threads |", "|---|---|---|"]
        if bw:
            lines.append(f"| memory read (numpy {bw['limit_1_thread_method'].split()[0]}) | "
                         f"{bw['limit_1_thread_GB_per_s']:.1f} GB/s | {bw['limit_2_threads_GB_per_s']:.1f} GB/s |")
        for size, entry in aes.items():
            for op in ("decrypt prealloc", "decrypt SecureBuffer", "encrypt prealloc"):
                lines.append(f"| AES-256-GCM {op} ({size}) | {entry[op + ' 1T']['GB_per_s']:.2f} GB/s | "
                             f"{entry[op + ' 2T']['GB_per_s']:.2f} GB/s |")
        storage = limits.get("storage") or {}
        methods = storage.get("method", {})
        if methods:
            lines.append(f"| pread from page cache | {methods['pread page cache 1T']['GB_per_s']:.2f} GB/s | "
                         f"{methods['pread page cache 2T']['GB_per_s']:.2f} GB/s |")
            for name in (k for k in methods if k.startswith("write")):
                lines.append(f"| durable write ({name}, {storage['bytes'] // MiB} MiB) | "
                             f"{methods[name]['GB_per_s']:.2f} GB/s | - |")
        lines.append("")
    cases = (results.get("exact") or {}).get("cases", [])
    picked = [c for c in cases if c["k"] == 10 and c["metric"] == "ip" and c["batch"] in (1, 64)]
    if picked:
        peers = [n for n in picked[0]["timings"] if n != "sealvec"]
        lines += ["| data | rows x dim | nq | sealvec QPS | GB/s | GFLOP/s | "
                  + " | ".join(f"x {p}" for p in peers) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(peers)]
        for c in picked:
            s = c["timings"]["sealvec"]
            lines.append(f"| {c['dataset']} | {c['rows']:,} x {c['dim']} | {c['batch']} | {s['QPS']:,.0f} | "
                         f"{s['GB_per_s']:.1f} | {s['GFLOP_per_s']:.0f} | " + " | ".join(
                             f"{1 / c['ratios'][f'sealvec/{p}']:.2f}" for p in peers) + " |")
        lines += ["", "(x peer: peer time / sealvec time, k=10, inner product; above 1: sealvec faster)", ""]
    oi = results.get("open_ingest") or {}
    opens = [o for o in oi.get("open", []) if "open" in o]
    ingests = oi.get("ingest", [])
    if opens:
        lines += ["| open | plaintext | s | GB/s | x raw decrypt | x raw decrypt, fresh SecureBuffers "
                  "| x pread + fresh | RSS growth / plaintext (peak) |",
                  "|---|---|---|---|---|---|---|---|"]
        for o in opens:
            lines.append(
                f"| {o['rows']:,} x {o['dim']}, {o['shards']} shards | {o['plaintext_bytes'] / MiB:.0f} MiB | "
                f"{o['open']['median_s']:.3f} | {o['open_GB_per_s']:.2f} | "
                f"{o['throughput_vs_raw_decrypt_prealloc']:.2f} | {o['throughput_vs_raw_decrypt_fresh']:.2f} | "
                f"{o['throughput_vs_read_then_decrypt_fresh']:.2f} | "
                f"{o['ratio_rss_growth_vs_plaintext']:.2f} ({o['ratio_peak_rss_vs_plaintext']:.2f}) |")
        lines += ["", f"(x limit: limit time / open time on {opens[0]['threads']} threads; 1 = at the "
                  "limit; goal >= 0.8 of raw decrypt, RSS growth <= 1.1)", ""]
    if ingests:
        threads = ingests[0]["threads"]
        lines += [f"| ingest | vectors | s | GB/s | x raw encrypt 1T | x raw encrypt {threads}T "
                  "| x durable write of the same bytes |",
                  "|---|---|---|---|---|---|---|"]
        for i in ingests:
            lines.append(
                f"| {i['rows']:,} x {i['dim']} | {i['vector_bytes'] / MiB:.0f} MiB | {i['add']['median_s']:.3f} | "
                f"{i['add_GB_per_s']:.2f} | {i['throughput_vs_raw_encrypt_1T']:.2f} | "
                f"{i[f'throughput_vs_raw_encrypt_{threads}T']:.2f} | {i['throughput_vs_storage_write']:.2f} |")
        lines += ["", "(x limit: limit time / add time; goal >= 0.5 of raw encrypt)", ""]
    for part, title, function in (
        ("threads", "Thread scaling: speed-up over one thread, sealvec (faiss.knn)", "headline_scaling"),
        ("bf16", "bfloat16 scan, exact float32 re-scoring", "headline_reduced"),
        ("ann", "Approximate search (sealed FAISS indexes) against exact search", "headline_ann"),
    ):
        if results.get(part):
            table = getattr(part_module(part), function)(results[part])
            if table:
                lines += [f"{title}:", "", table, ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (a few minutes)")
    p.add_argument("--out", help="results folder (default benchmarks/results/<timestamp>)")
    p.add_argument("--parts", type=parse_words, default=PARTS, help=",".join(PARTS))
    p.add_argument("--no-plots", action="store_true")
    g = p.add_argument_group("exact search")
    g.add_argument("--sizes", type=parse_ints, help="rows (default 10k,100k,1M; --quick 10k,50k)")
    g.add_argument("--dims", type=parse_ints, help="default 384,768,1536 (--quick 384)")
    g.add_argument("--batches", type=parse_ints, default=(1, 16, 64, 256))
    g.add_argument("--sweep-batches", type=parse_ints, default=(1, 64),
                   help="batches for the non-primary k and metric (primary: ip, k=10)")
    g.add_argument("--ks", type=parse_ints, default=(1, 10, 100))
    g.add_argument("--metrics", type=parse_words, default=("ip", "l2"))
    g.add_argument("--contenders", type=parse_words, default=EXACT_NAMES)
    g.add_argument("--no-corpus", dest="corpus", action="store_false",
                   help="skip the real corpus (data/corpus/stdlib-docs.minilm.npy)")
    g.add_argument("--repeats", type=int, help="timed calls per contender (default 7, --quick 3)")
    g.add_argument("--min-repeats", type=int, default=3)
    g.add_argument("--case-budget-s", type=float, default=20.0,
                   help="fewer repeats (not below --min-repeats) for cases slower than this")
    g.add_argument("--max-gflop", type=float, default=100.0,
                   help="skip cases over 2 x rows x dim x batch / 1e9 (the slowest peers run "
                   "~3 GFLOP/s on two busy cores)")
    g.add_argument("--threads", type=int, default=0, help="threads per library (0: defaults)")
    g.add_argument("--settle-ms", type=float, help="pause before each timed call (default 20, --quick 5)")
    g.add_argument("--mem-fraction", type=float, default=0.6,
                   help="skip sizes whose estimated memory exceeds this share of MemAvailable")
    g = p.add_argument_group("limits, open, ingest, blas")
    g.add_argument("--bandwidth-gib", type=float, help="array size (default 2, --quick 1)")
    g.add_argument("--aes-sizes", type=lambda t: tuple(v * MiB for v in parse_ints(t)),
                   default=(MiB, 4 * MiB), help="message sizes in MiB (default 1,4)")
    g.add_argument("--aes-total-mib", type=int, default=64, help="bytes per timed AES call")
    g.add_argument("--limit-repeats", type=int, help="default 7, --quick 3")
    g.add_argument("--open-sizes", type=parse_ints, help="rows (default 10k,100k,300k,1M; --quick 10k,50k)")
    g.add_argument("--open-dim", type=int, help="default 768 (--quick 384)")
    g.add_argument("--shard-rows", type=int, default=65536, help="rows per add() call (one shard each)")
    g.add_argument("--open-repeats", type=int, help="default 5, --quick 3")
    g.add_argument("--ingest-repeats", type=int, help="default 3, --quick 2")
    g.add_argument("--storage-mib", type=int, help="bytes per durable-write limit call "
                   "(default 512, --quick 192)")
    g.add_argument("--tmp", default="/tmp", help="parent of the temporary store")
    g.add_argument("--blas-coretype", help="where OPENBLAS_CORETYPE is unset, the BLAS re-run sets it to this")
    g = p.add_argument_group("thread scaling (part threads), bfloat16 scan (part bf16)")
    g.add_argument("--scaling-repeats", type=int, help="default 7, --quick 3")
    g.add_argument("--bf16-sizes", type=parse_ints, help="rows (default 100k,1M; --quick 50k)")
    g.add_argument("--bf16-dims", type=parse_ints, help="default 384,768,1536 (--quick 384)")
    part_module("ann").add_arguments(p)
    p.add_argument("--_child-open", dest="child_open", help=argparse.SUPPRESS)
    p.add_argument("--_child-lock", dest="child_lock", default="best_effort", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quick = a.quick
    defaults = {
        "sizes": (10_000, 50_000) if quick else (10_000, 100_000, 1_000_000),
        "dims": (384,) if quick else (384, 768, 1536),
        "repeats": 3 if quick else 7,
        "settle_ms": 5.0 if quick else 20.0,
        "bandwidth_gib": 1.0 if quick else 2.0,
        "limit_repeats": 3 if quick else 7,
        "open_sizes": (10_000, 50_000) if quick else (10_000, 100_000, 300_000, 1_000_000),
        "open_dim": 384 if quick else 768,
        "open_repeats": 3 if quick else 5,
        "ingest_repeats": 2 if quick else 3,
        "storage_mib": 192 if quick else 512,
    }
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if not a.parts:
        p.error(f"--parts names none; choose from {','.join(PARTS)}")
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    unknown = set(a.contenders) - set(EXACT_NAMES)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}; choose from {','.join(EXACT_NAMES)}")
    if set(a.metrics) - {"ip", "l2"}:
        p.error("--metrics: ip and/or l2")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.child_open:
        child_open(args.child_open, args.child_lock, args.threads)
        return 0
    parts = set(args.parts)
    try:
        from sealvec import _core as core
        import cryptography  # noqa: F401
        import threadpoolctl  # noqa: F401
        if "exact" in parts or "blas" in parts:
            import faiss  # noqa: F401
            import usearch.index  # noqa: F401
    except ImportError as error:
        print(f"missing dependency: {error} (pip install 'sealvec[bench]', or faiss-cpu usearch threadpoolctl "
              "matplotlib; build sealvec or set PYTHONPATH=src)", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else DEFAULT_RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(core)
    results: dict[str, Any] = {"environment": env, "arguments": {
        k: v for k, v in vars(args).items() if not k.startswith("child")}}
    print(f"python {env['python']} numpy {env['numpy']} faiss {env['faiss']} usearch {env['usearch']} "
          f"cryptography {env['cryptography']} sealvec simd {env['sealvec_simd_level']}")
    print(f"cpu {env['cpu']} x{env['cpu_count']}, MemAvailable {env['mem_available_bytes'] / GiB:.1f} GiB, "
          f"RLIMIT_MEMLOCK {env['memlock_limit'] / MiB:.0f} MiB; OPENBLAS_CORETYPE="
          f"{env['OPENBLAS_CORETYPE'] or '(unset)'} OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE'] or '(unset)'}")
    print(f"BLAS kernels: {blas_kernels(env['threadpools'])}")
    started = time.perf_counter()

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - started
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))

    if "limits" in parts:
        print("\n## 1. machine limits")
        results["limits"] = {"bandwidth": measure_bandwidth(args), "aes": measure_aes(args, core),
                             "storage": measure_storage(args, core)}
        bw = results["limits"]["bandwidth"]
        for key, value in bw["method"].items():
            print(f"  read bandwidth {key:<26} {value['GB_per_s']:6.2f} GB/s "
                  f"[{bw['bytes'] / value['max_s'] / 1e9:.2f}..{bw['bytes'] / value['min_s'] / 1e9:.2f}]")
        for size, entry in results["limits"]["aes"]["message"].items():
            for name, value in entry.items():
                if isinstance(value, dict):
                    print(f"  AES-256-GCM {size:>5} {name:<24} {value['GB_per_s']:6.2f} GB/s "
                          f"[{entry['bytes_per_call'] / value['max_s'] / 1e9:.2f}.."
                          f"{entry['bytes_per_call'] / value['min_s'] / 1e9:.2f}]")
            print(f"  (SecureBuffers memory_lock={results['limits']['aes']['memory_lock']}, "
                  f"locked: {entry['securebuffers_locked_fraction']:.0%})")
        storage = results["limits"]["storage"]
        for name, value in storage["method"].items():
            print(f"  storage {storage['bytes'] // MiB} MiB {name:<30} {value['GB_per_s']:6.2f} GB/s "
                  f"[{storage['bytes'] / value['max_s'] / 1e9:.2f}.."
                  f"{storage['bytes'] / value['min_s'] / 1e9:.2f}]")
        save()
    if "exact" in parts:
        print("\n## 2. exact search")
        results["exact"] = run_exact(args, core)
        save()
    for part, title, runner in (("threads", "thread scaling", "run_scaling"),
                                ("bf16", "bfloat16 scan with exact re-scoring", "run_reduced")):
        if part in parts:
            print(f"\n## {title}")
            module = part_module(part)
            results[part] = getattr(module, runner)(module.options(args))
            save()
    if "open" in parts or "ingest" in parts:
        print("\n## 3-4. cold open and ingest")
        results["open_ingest"] = run_open_ingest(args, parts, core)
        save()
    if "ann" in parts:
        print("\n## approximate search (sealed FAISS HNSW and IVF-Flat)")
        ann = part_module("ann")
        results["ann"] = ann.run_ann(ann.options(args))
        save()
    if "blas" in parts:
        print("\n## 5. BLAS environment")
        results["blas"] = run_blas_alternate(args, out_dir, results.get("exact"), env)
        save()
    if not args.no_plots:
        results["plots"] = plot(results, out_dir)
        if results.get("ann"):
            results["plots"] += part_module("ann").plot_ann(results["ann"], out_dir)
    save()
    disagreements = (results.get("exact") or {}).get("disagreements", [])
    table = headline(results)
    if table:
        print("\n## headline\n\n" + table)
    (out_dir / "headline.md").write_text(table)
    print(f"\nresults: {out_dir / 'results.json'} ({results['elapsed_s']:.0f} s)")
    if disagreements:
        print(f"DISAGREEMENT in {len(disagreements)} contender-cases:", file=sys.stderr)
        for d in disagreements:
            print(f"  {d}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
