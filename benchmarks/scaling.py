#!/usr/bin/env python3
"""Thread scaling of sealvec's exact-search kernel, beside faiss.knn on the same data.

    python benchmarks/scaling.py [--quick] [--out DIR]

Also part ``threads`` of ``benchmarks/suite.py``. For each case (rows x dim, batch)
it times ``_core.search`` with 1, 2, 4, ... threads up to the machine's cores, and
``faiss.knn`` with the same OpenMP thread counts, alternating, and reports the
speed-up over one thread and the parallel efficiency (speed-up / threads). A small
case shows whether small collections pay thread start-up: its time with all cores
should not exceed its one-thread time (sealvec keeps small searches on the calling
thread).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 20240601



def _suite():
    """benchmarks.suite (alternate, stats, run_standalone), importable from a checkout."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    import benchmarks.suite

    return benchmarks.suite

def thread_counts(cores: int) -> list[int]:
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from sealvec import _core

    suite = _suite()
    alternate, stats = suite.alternate, suite.stats

    cores = os.cpu_count() or 1
    counts = thread_counts(cores)
    rng = np.random.default_rng(SEED)
    results: dict[str, Any] = {"cores": cores, "thread_counts": counts, "cases": []}
    for rows, dim, batch in args.cases:
        data = rng.standard_normal((rows, dim), dtype=np.float32)
        queries = rng.standard_normal((batch, dim), dtype=np.float32)
        contenders = {}
        for threads in counts:
            contenders[f"sealvec {threads}T"] = (
                lambda t=threads: _core.search([data], dim, queries, 10, "ip", threads=t)
            )

            def faiss_call(t=threads):
                faiss.omp_set_num_threads(t)
                faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)

            contenders[f"faiss.knn {threads}T"] = faiss_call
        for call in contenders.values():  # warm: pools started, pages touched
            call()
        timed = alternate(contenders, args.repeats, args.settle_ms / 1000)
        faiss.omp_set_num_threads(cores)
        case: dict[str, Any] = {"rows": rows, "dim": dim, "batch": batch, "timings": {}}
        for name, seconds in timed.items():
            case["timings"][name] = stats(seconds)
        for library in ("sealvec", "faiss.knn"):
            one = case["timings"][f"{library} 1T"]["median_s"]
            case[library] = {
                str(t): {
                    "speedup": one / case["timings"][f"{library} {t}T"]["median_s"],
                    "efficiency": one / case["timings"][f"{library} {t}T"]["median_s"] / t,
                    "GFLOP_per_s": 2 * rows * dim * batch
                    / case["timings"][f"{library} {t}T"]["median_s"]
                    / 1e9,
                }
                for t in counts
            }
        results["cases"].append(case)
        line = ", ".join(
            f"{t}T x{case['sealvec'][str(t)]['speedup']:.2f} "
            f"(faiss x{case['faiss.knn'][str(t)]['speedup']:.2f})"
            for t in counts
        )
        print(f"  {rows:>9,} x {dim:<5} batch {batch:<4} speed-up over 1 thread: {line}")
    return results


def headline_scaling(results: dict[str, Any]) -> str:
    cases = results.get("cases") or []
    if not cases:
        return ""
    counts = results["thread_counts"]
    lines = [
        "| rows x dim | batch | "
        + " | ".join(f"sealvec {t}T (faiss)" for t in counts)
        + " |",
        "|---|---|" + "---|" * len(counts),
    ]
    for case in cases:
        cells = [
            f"x{case['sealvec'][str(t)]['speedup']:.2f} (x{case['faiss.knn'][str(t)]['speedup']:.2f})"
            for t in counts
        ]
        lines.append(f"| {case['rows']:,} x {case['dim']} | {case['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def options(args: argparse.Namespace) -> argparse.Namespace:
    quick = getattr(args, "quick", False)
    cases = (
        [(2_000, 384, 1), (200_000, 384, 1), (50_000, 384, 64)]
        if quick
        else [(2_000, 384, 1), (1_000_000, 384, 1), (300_000, 768, 1), (200_000, 768, 64),
              (100_000, 768, 256)]
    )
    return argparse.Namespace(
        cases=cases,
        repeats=getattr(args, "scaling_repeats", None) or (3 if quick else 7),
        settle_ms=5.0 if quick else 20.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="results folder (default benchmarks/results/threads-<timestamp>)")
    parser.add_argument("--scaling-repeats", type=int)
    args = parser.parse_args(argv)
    return _suite().run_standalone(
        "threads", args.out, lambda: run_scaling(options(args)), headline_scaling
    )

if __name__ == "__main__":
    sys.exit(main())
