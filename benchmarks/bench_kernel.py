#!/usr/bin/env python3
"""Time sealvec's native brute-force kernel against faiss.knn and numpy.

All three contenders search the same random float32 rows with the same queries in
one process; each repetition runs every contender once, cycling through every
order of the three from one repetition to the next, so drift in the machine's
speed (turbo, other load) and after-effects of the previous call fall on all of
them alike. Before timing, each case checks once that the
three agree on the top-k row ids (a differing id is accepted only where its exact
score ties the k-th best).

Usage:
    python benchmarks/bench_kernel.py --quick
    python benchmarks/bench_kernel.py --sizes 10000,100000 --json results.json

Report results with the BLAS line this prints: numpy's speed depends on which
OpenBLAS kernel it runs, which OPENBLAS_CORETYPE can change.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Idle worker threads of the BLAS and OpenMP pools spin for a while after each call
# (OpenBLAS about 0.1 s, LLVM OpenMP 0.2 s), taking a core from whichever contender
# runs next. Contenders here run one at a time with pauses, so spinning helps none of
# them; let idle threads sleep at once. Set before numpy and faiss start their pools.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

SearchResult = tuple[np.ndarray, np.ndarray]
Contender = Callable[[np.ndarray], SearchResult]

CONTENDER_NAMES = ("sealvec", "faiss", "numpy")
FULL_SIZES = (10_000, 100_000)
FULL_DIMS = (384, 768, 1536)
FULL_BATCHES = (1, 16, 64)
QUICK_SIZES = (1_000, 5_000)
QUICK_REPEATS = 3
FULL_REPEATS = 7
FLOAT32_BYTES = 4


@dataclass
class Timing:
    seconds: list[float]
    median_s: float
    min_s: float
    max_s: float
    queries_per_s: float
    gigabytes_per_s: float


@dataclass
class CaseResult:
    rows: int
    dim: int
    batch: int
    k: int
    metric: str
    segments: int
    timings: dict[str, Timing] = field(default_factory=dict)
    time_ratios: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, str] = field(default_factory=dict)


def parse_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints: {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints: {text!r}")
    return values


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_int_list, help="rows, e.g. 10000,100000")
    parser.add_argument("--dims", type=parse_int_list, default=FULL_DIMS)
    parser.add_argument("--batches", type=parse_int_list, default=FULL_BATCHES)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, help="timed calls per contender")
    parser.add_argument(
        "--segments", type=int, default=1, help="split the rows into this many "
        "segments for sealvec (faiss and numpy always get one array)"
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="threads for every contender (0: each library's default)",
    )
    parser.add_argument(
        "--settle-ms", type=float,
        help="pause before each timed call (default 20, --quick 5), so worker "
        "threads still spinning from the previous contender's call (OpenMP, "
        "OpenBLAS) do not steal the cores",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--quick", action="store_true",
        help=f"sizes {QUICK_SIZES}, {QUICK_REPEATS} repeats: a smoke run (< 30 s)",
    )
    parser.add_argument("--json", dest="json_path", help="write the results here")
    arguments = parser.parse_args(argv)
    if arguments.sizes is None:
        arguments.sizes = QUICK_SIZES if arguments.quick else FULL_SIZES
    if arguments.settle_ms is None:
        arguments.settle_ms = 5.0 if arguments.quick else 20.0
    if arguments.repeats is None:
        arguments.repeats = QUICK_REPEATS if arguments.quick else FULL_REPEATS
    if arguments.repeats < 1 or arguments.k < 1 or arguments.segments < 1:
        parser.error("--repeats, --k and --segments must be at least 1")
    if arguments.k > min(arguments.sizes):
        parser.error("--k must not exceed the smallest of --sizes (faiss pads with -1)")
    if arguments.segments > min(arguments.sizes):
        parser.error("--segments must not exceed the smallest of --sizes")
    return arguments


def blas_report() -> list[dict[str, Any]]:
    """threadpoolctl's view of the BLAS and OpenMP libraries now loaded."""
    try:
        import threadpoolctl
    except ImportError:
        return [{"error": "threadpoolctl not installed: pip install threadpoolctl"}]
    return threadpoolctl.threadpool_info()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_report(core: Any, faiss: Any) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
        "sealvec_simd_level": str(core.simd_level()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "threadpools": blas_report(),
    }


def print_environment(environment: dict[str, Any]) -> None:
    print(
        f"python {environment['python']}  numpy {environment['numpy']}  "
        f"faiss {environment['faiss']}  sealvec simd: "
        f"{environment['sealvec_simd_level']}"
    )
    print(f"cpu: {environment['cpu']} ({environment['cpu_count']} logical)")
    print(
        f"OPENBLAS_CORETYPE={environment['OPENBLAS_CORETYPE'] or '(unset)'}  "
        f"OPENBLAS_L2_SIZE={environment['OPENBLAS_L2_SIZE'] or '(unset)'}"
    )
    for pool in environment["threadpools"]:
        if "error" in pool:
            print(f"threadpoolctl: {pool['error']}")
            continue
        library = os.path.basename(str(pool.get("filepath", "?")))
        print(
            f"  {pool.get('user_api')}: {pool.get('internal_api')} "
            f"{pool.get('version') or ''} kernel={pool.get('architecture', '-')} "
            f"threads={pool.get('num_threads')} ({library})"
        )


def numpy_search(database: np.ndarray, queries: np.ndarray, k: int) -> SearchResult:
    """Exact inner-product top-k: matmul, argpartition, then sort the k."""
    scores = queries @ database.T
    kk = min(k, database.shape[0])
    if kk < database.shape[0]:
        candidate_rows = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        candidate_rows = np.broadcast_to(np.arange(kk), (queries.shape[0], kk))
    candidate_scores = np.take_along_axis(scores, candidate_rows, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    return (
        np.take_along_axis(candidate_scores, order, axis=1),
        np.take_along_axis(candidate_rows, order, axis=1).astype(np.int64),
    )


def make_contenders(
    core: Any, faiss: Any, database: np.ndarray, segments: int, k: int, threads: int
) -> dict[str, Contender]:
    dim = database.shape[1]
    sealvec_segments = [
        np.ascontiguousarray(part) for part in np.array_split(database, segments)
    ]

    def run_sealvec(queries: np.ndarray) -> SearchResult:
        return core.search(sealvec_segments, dim, queries, k, "ip", threads=threads)

    def run_faiss(queries: np.ndarray) -> SearchResult:
        return faiss.knn(queries, database, k, metric=faiss.METRIC_INNER_PRODUCT)

    def run_numpy(queries: np.ndarray) -> SearchResult:
        return numpy_search(database, queries, k)

    return {"sealvec": run_sealvec, "faiss": run_faiss, "numpy": run_numpy}


def exact_inner_products(database64: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return queries.astype(np.float64) @ database64.T


def check_agreement(
    database: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int,
    result: SearchResult,
) -> str:
    """'ok', 'ok (N tie swaps)' or what is wrong with one contender's top-k.

    Ids are judged by exact (float64) scores: every returned id must score at
    least the exact k-th best, less a float32 rounding allowance; an id outside
    the exact top-k that passes is counted as a tie swap.
    """
    scores, rows = (np.asarray(part) for part in result)
    kk = min(k, database.shape[0])
    if rows.shape != (queries.shape[0], kk) or scores.shape != rows.shape:
        return f"wrong shape: rows {rows.shape}, scores {scores.shape}"
    largest_row_norm = float(np.linalg.norm(database, axis=1).max())
    largest_query_norm = float(np.linalg.norm(queries, axis=1).max())
    allowance = (
        4 * float(np.finfo(np.float32).eps) * np.sqrt(database.shape[1])
        * largest_row_norm * largest_query_norm
    )
    tie_swaps = 0
    for query_index in range(queries.shape[0]):
        returned = rows[query_index]
        if returned.min() < 0 or returned.max() >= database.shape[0]:
            return f"query {query_index}: row id out of range"
        if len(set(returned.tolist())) != kk:
            return f"query {query_index}: duplicate row ids"
        best_rows = np.argsort(-exact[query_index], kind="stable")[:kk]
        kth_best_score = exact[query_index, best_rows[-1]]
        returned_exact = exact[query_index, returned]
        if returned_exact.min() < kth_best_score - allowance:
            return f"query {query_index}: a returned row is not in the top {kk}"
        if np.abs(returned_exact - scores[query_index]).max() > allowance:
            return f"query {query_index}: scores differ from exact scores"
        if np.any(np.diff(scores[query_index]) > allowance):
            return f"query {query_index}: scores not in descending order"
        tie_swaps += len(set(returned.tolist()) - set(best_rows.tolist()))
    return "ok" if tie_swaps == 0 else f"ok ({tie_swaps} tie swaps)"


def summarize(seconds: list[float], batch: int, bytes_per_call: int) -> Timing:
    median_s = statistics.median(seconds)
    return Timing(
        seconds=seconds,
        median_s=median_s,
        min_s=min(seconds),
        max_s=max(seconds),
        queries_per_s=batch / median_s,
        gigabytes_per_s=bytes_per_call / median_s / 1e9,
    )


def run_case(
    contenders: dict[str, Contender],
    database: np.ndarray,
    database64: np.ndarray,
    queries: np.ndarray,
    case: CaseResult,
    repeats: int,
    settle_s: float,
) -> None:
    exact = exact_inner_products(database64, queries)
    for name, contender in contenders.items():  # first call: warm-up and check
        case.agreement[name] = check_agreement(
            database, queries, exact, case.k, contender(queries)
        )
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    # Cycle through every order, so no contender always runs first or always
    # right after the same other one.
    orders = list(itertools.permutations(names))
    for repetition in range(repeats):
        for name in orders[repetition % len(orders)]:
            time.sleep(settle_s)
            started = time.perf_counter()
            contenders[name](queries)
            seconds[name].append(time.perf_counter() - started)
    bytes_per_call = database.shape[0] * database.shape[1] * FLOAT32_BYTES
    for name in names:
        case.timings[name] = summarize(seconds[name], case.batch, bytes_per_call)
    sealvec_median = case.timings["sealvec"].median_s
    for other in ("faiss", "numpy"):
        other_median = case.timings[other].median_s
        case.time_ratios[f"sealvec/{other}"] = sealvec_median / other_median


def print_header() -> None:
    print(
        f"\n{'rows':>7} {'dim':>5} {'nq':>3}  {'contender':<8} {'median s':>10} "
        f"{'min..max s':>21} {'QPS':>10} {'GB/s':>7}  check"
    )


def print_case(case: CaseResult) -> None:
    for name, timing in case.timings.items():
        print(
            f"{case.rows:>7} {case.dim:>5} {case.batch:>3}  {name:<8} "
            f"{timing.median_s:>10.6f} {timing.min_s:>10.6f}..{timing.max_s:<10.6f} "
            f"{timing.queries_per_s:>10.1f} {timing.gigabytes_per_s:>7.2f}  "
            f"{case.agreement[name]}"
        )
    ratios = "  ".join(f"{key} {value:.2f}" for key, value in case.time_ratios.items())
    print(f"{'':>19}time ratio (below 1: sealvec faster): {ratios}")


def limit_threads(threads: int, faiss: Any) -> Any:
    """Apply --threads to BLAS/OpenMP pools and faiss; returns a limiter to keep."""
    if threads <= 0:
        return None
    faiss.omp_set_num_threads(threads)
    try:
        import threadpoolctl
    except ImportError:
        print("warning: threadpoolctl missing, numpy's BLAS threads not limited")
        return None
    return threadpoolctl.threadpool_limits(limits=threads)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        import sealvec._core as core
    except ImportError as exc:
        print(f"cannot import sealvec._core ({exc}); build and install sealvec first "
              "(pip install .)", file=sys.stderr)
        return 2
    try:
        import faiss
    except ImportError:
        print("faiss is not installed: pip install faiss-cpu", file=sys.stderr)
        return 2

    thread_limiter = limit_threads(arguments.threads, faiss)
    environment = environment_report(core, faiss)
    environment["threads"] = arguments.threads
    print_environment(environment)
    print(f"k={arguments.k} metric=ip segments={arguments.segments} "
          f"repeats={arguments.repeats} seed={arguments.seed}")

    random = np.random.default_rng(arguments.seed)
    cases: list[CaseResult] = []
    started = time.perf_counter()
    print_header()
    for dim in arguments.dims:
        # One array per dim at the largest size; smaller sizes are leading rows.
        all_rows = random.standard_normal((max(arguments.sizes), dim), np.float32)
        all_rows64 = all_rows.astype(np.float64)  # for the exact-score check
        for rows in arguments.sizes:
            database = all_rows[:rows]
            contenders = make_contenders(
                core, faiss, database, arguments.segments, arguments.k,
                arguments.threads,
            )
            for batch in arguments.batches:
                queries = random.standard_normal((batch, dim), np.float32)
                case = CaseResult(
                    rows=rows, dim=dim, batch=batch, k=arguments.k, metric="ip",
                    segments=arguments.segments,
                )
                run_case(
                    contenders, database, all_rows64[:rows], queries, case,
                    arguments.repeats, arguments.settle_ms / 1000,
                )
                print_case(case)
                cases.append(case)
        del all_rows, all_rows64
    elapsed = time.perf_counter() - started
    disagreements = [
        (case.rows, case.dim, case.batch, name, verdict)
        for case in cases
        for name, verdict in case.agreement.items()
        if not verdict.startswith("ok")
    ]
    print(f"\n{len(cases)} cases in {elapsed:.1f} s; "
          f"{'all contenders agree' if not disagreements else 'DISAGREEMENT'}")
    for disagreement in disagreements:
        print(f"  rows={disagreement[0]} dim={disagreement[1]} nq={disagreement[2]} "
              f"{disagreement[3]}: {disagreement[4]}")
    if arguments.json_path:
        with open(arguments.json_path, "w", encoding="utf-8") as json_file:
            json.dump(
                {"environment": environment, "arguments": vars(arguments),
                 "cases": [asdict(case) for case in cases]},
                json_file, indent=1,
            )
        print(f"results written to {arguments.json_path}")
    del thread_limiter
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
