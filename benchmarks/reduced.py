#!/usr/bin/env python3
"""Reduced precision: sealvec's bfloat16 scan with exact float32 re-scoring, beside its
exact float32 kernel and faiss.knn, on the same data in one run.

    python benchmarks/reduced.py [--quick] [--out DIR]

Also part ``bf16`` of ``benchmarks/suite.py``. For each case (rows x dim, batch, k=10,
inner product) it times ``_core.search`` exact, ``_core.search`` with the bfloat16 copies
(``candidates`` = max(2k, k + 32), as the collection's ``bf16`` backend uses) and
``faiss.knn``, alternating, and reports QPS, the float32 bytes scanned per second (what
the exact scan reads; the bfloat16 scan reads half), recall@10 against exact search,
and the time ratios. The real corpus (3390 x 384, cosine) runs too.
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
CORPUS = HERE.parent / "data" / "corpus" / "stdlib-docs.minilm.npy"
SEED = 20240601



def _suite():
    """benchmarks.suite (alternate, stats, run_standalone), importable from a checkout."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    import benchmarks.suite

    return benchmarks.suite

def run_reduced(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from sealvec import _core

    suite = _suite()
    alternate, stats = suite.alternate, suite.stats

    rng = np.random.default_rng(SEED)
    results: dict[str, Any] = {"bf16_dot": _core.bf16_dot(), "cases": []}
    data_sets = []
    if args.corpus and CORPUS.is_file():
        data_sets.append(("stdlib corpus", np.load(CORPUS).astype(np.float32), "cosine"))
    for rows in args.sizes:
        for dim in args.dims:
            data_sets.append(("random", rng.standard_normal((rows, dim), dtype=np.float32), "ip"))
    for name, data, metric in data_sets:
        rows, dim = data.shape
        halves = np.empty(data.shape, np.uint16)
        norms = np.empty(rows, np.float32)
        _core.to_bfloat16(data, dim, halves, norms)
        faiss_metric = faiss.METRIC_INNER_PRODUCT
        search_rows = data
        if metric == "cosine":  # faiss.knn gets unit rows and queries (the same ranking)
            search_rows = data / np.linalg.norm(data, axis=1, keepdims=True)
        for batch in args.batches:
            queries = rng.standard_normal((batch, dim), dtype=np.float32)
            if name == "stdlib corpus":
                picked = data[rng.choice(rows, batch, replace=False)]
                queries = (picked + 0.05 * queries).astype(np.float32)
            unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
            candidates = max(2 * args.k, args.k + 32)

            def exact():
                return _core.search([data], dim, queries, args.k, metric)

            def reduced():
                return _core.search([data], dim, queries, args.k, metric, bf16_segments=[halves],
                                    sq_norms=[norms], candidates=candidates)

            def faiss_knn():
                q = unit_queries if metric == "cosine" else queries
                return faiss.knn(q, search_rows, args.k, metric=faiss_metric)

            truth = exact()[1]
            found = reduced()[1]
            recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth)]))
            timed = alternate({"sealvec": exact, "sealvec bf16": reduced, "faiss.knn": faiss_knn},
                              args.repeats, args.settle_ms / 1000)
            case: dict[str, Any] = {"dataset": name, "rows": rows, "dim": dim, "batch": batch,
                                    "k": args.k, "metric": metric, "candidates": candidates,
                                    "recall_at_10": recall, "timings": {}}
            for contender, seconds in timed.items():
                entry = stats(seconds)
                entry["QPS"] = batch / entry["median_s"]
                entry["float32_GB_per_s"] = data.nbytes / entry["median_s"] / 1e9
                case["timings"][contender] = entry
            t = {c: case["timings"][c]["median_s"] for c in case["timings"]}
            case["speedup_vs_exact"] = t["sealvec"] / t["sealvec bf16"]
            case["speedup_vs_faiss"] = t["faiss.knn"] / t["sealvec bf16"]
            case["exact_vs_faiss"] = t["faiss.knn"] / t["sealvec"]
            results["cases"].append(case)
            print(f"  {name:>13} {rows:>9,} x {dim:<5} batch {batch:<4} recall@10 {recall:.4f}  "
                  f"bf16 {case['timings']['sealvec bf16']['QPS']:9.0f} QPS "
                  f"({case['timings']['sealvec bf16']['float32_GB_per_s']:5.1f} GB/s of float32)  "
                  f"x{case['speedup_vs_exact']:.2f} exact, x{case['speedup_vs_faiss']:.2f} faiss.knn")
    return results


def headline_reduced(results: dict[str, Any]) -> str:
    cases = results.get("cases") or []
    if not cases:
        return ""
    lines = [
        f"bfloat16 dot products: {results.get('bf16_dot')}",
        "",
        "| data | rows x dim | queries | recall@10 | bf16 QPS | x exact sealvec | x faiss.knn |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c['dataset']} | {c['rows']:,} x {c['dim']} | {c['batch']} | "
            f"{c['recall_at_10']:.4f} | {c['timings']['sealvec bf16']['QPS']:,.0f} | "
            f"{c['speedup_vs_exact']:.2f} | {c['speedup_vs_faiss']:.2f} |"
        )
    return "\n".join(lines)


def options(args: argparse.Namespace) -> argparse.Namespace:
    quick = getattr(args, "quick", False)
    return argparse.Namespace(
        sizes=getattr(args, "bf16_sizes", None) or ((50_000,) if quick else (100_000, 1_000_000)),
        dims=getattr(args, "bf16_dims", None) or ((384,) if quick else (384, 768, 1536)),
        batches=(1, 64) if quick else (1, 16, 64, 256),
        k=10,
        repeats=3 if quick else 7,
        settle_ms=5.0 if quick else 20.0,
        corpus=getattr(args, "corpus", True),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="results folder (default benchmarks/results/bf16-<timestamp>)")
    parser.add_argument("--no-corpus", dest="corpus", action="store_false")
    parser.add_argument("--bf16-sizes", type=lambda t: tuple(int(float(v)) for v in t.split(",")))
    parser.add_argument("--bf16-dims", type=lambda t: tuple(int(v) for v in t.split(",")))
    args = parser.parse_args(argv)
    return _suite().run_standalone(
        "bf16", args.out, lambda: run_reduced(options(args)), headline_reduced
    )

if __name__ == "__main__":
    sys.exit(main())
