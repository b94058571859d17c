#!/usr/bin/env python3
"""Approximate search benchmark: sealvec's sealed FAISS HNSW and IVF-Flat indexes
against sealvec's exact search, on the same collection, in one run.

    python benchmarks/ann.py [--quick] [--out DIR]

Also part ``ann`` of ``benchmarks/suite.py``. For each data set (the real corpus,
random normal rows, and clustered rows) it creates a sealed collection with the
public API in a temporary directory, times ``build_index`` for each kind, then
sweeps the search knob (hnsw ``ef_search``, ivf ``nprobe``) and reports, against
exact search on the same queries (the native kernel: the truth and the speed
reference):

- recall@10: the share of the exact top-10 ids found;
- QPS at batch 1 (one query per call) and at batch 64, median of alternating runs;
- speed-up: exact time / approximate time at the same batch.

Every query goes through ``Collection.search`` (masking, id lookup and result
objects included), as an application would call it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "data" / "corpus" / "stdlib-docs.minilm.npy"
KNOBS = {"hnsw": ("ef_search", (16, 32, 64, 128, 256)), "ivf": ("nprobe", (1, 2, 4, 8, 16, 32, 64))}
SEED = 20240601


def _suite():
    """benchmarks.suite (alternate, stats, run_standalone), importable from a checkout."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    import benchmarks.suite

    return benchmarks.suite


def datasets(args: argparse.Namespace) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(name, rows, queries, metric) for each data set."""
    rng = np.random.default_rng(SEED)
    out = []
    if args.corpus and CORPUS.is_file():
        rows = np.load(CORPUS).astype(np.float32)
        picked = rows[rng.choice(len(rows), args.queries, replace=False)]
        queries = picked + 0.05 * rng.standard_normal(picked.shape, dtype=np.float32)
        out.append(("stdlib corpus", rows, queries.astype(np.float32), "cosine"))
    for size in args.sizes:
        dim = args.dim
        rows = rng.standard_normal((size, dim), dtype=np.float32)
        queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
        out.append(("random", rows, queries, "ip"))
        # Clustered: 1 centre per 100 rows, spread 0.3 around unit-scale centres,
        # closer to how embeddings sit than i.i.d. normal rows.
        centres = rng.standard_normal((max(1, size // 100), dim), dtype=np.float32)
        labels = rng.integers(0, len(centres), size)
        clustered = centres[labels] + 0.3 * rng.standard_normal((size, dim), dtype=np.float32)
        q_labels = rng.integers(0, len(centres), args.queries)
        q = centres[q_labels] + 0.3 * rng.standard_normal((args.queries, dim), dtype=np.float32)
        out.append(("clustered", clustered.astype(np.float32), q.astype(np.float32), "ip"))
    return out


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / max(1, len(w)) for g, w in zip(got, want)]))


def run_ann(args: argparse.Namespace) -> dict[str, Any]:
    import sealvec

    suite = _suite()
    alternate, stats = suite.alternate, suite.stats
    results: dict[str, Any] = {"cases": [], "builds": []}
    root = Path(tempfile.mkdtemp(prefix="sealvec-ann-", dir=args.tmp))
    saved = {k: os.environ.get(k) for k in ("SEALVEC_KEYRING", "SEALVEC_STATE_DIR")}
    os.environ["SEALVEC_KEYRING"] = str(root / "keyring.json")
    os.environ["SEALVEC_STATE_DIR"] = str(root / "state")
    try:
        for name, rows, queries, metric in datasets(args):
            store = root / f"{name.replace(' ', '-')}-{len(rows)}"
            ids = [f"r{i}" for i in range(len(rows))]
            with sealvec.Collection.create(store, dimension=rows.shape[1], metric=metric) as c:
                for start in range(0, len(rows), args.shard_rows):
                    c.add(ids[start : start + args.shard_rows], rows[start : start + args.shard_rows])
                for kind in ("hnsw", "ivf"):
                    report = c.build_index(kind)
                    build = {"dataset": name, "rows": len(rows), "dim": rows.shape[1], **report}
                    results["builds"].append(build)
                    print(f"  {name} {len(rows):,} x {rows.shape[1]}: built {kind} in "
                          f"{report['build_seconds']:.2f} s ({report['bytes'] / 2**20:.1f} MiB) "
                          f"params {report['params']}")
            exact = sealvec.Collection.open(store)
            approximate = {k: sealvec.Collection.open(store, search_backend=k) for k in ("hnsw", "ivf")}
            try:
                truth = exact.search(queries, k=args.k).ids
                singles = queries[: args.single_queries]

                def one_by_one(collection, **knob):
                    return lambda: [collection.search(q, k=args.k, **knob) for q in singles]

                for kind, collection in approximate.items():
                    knob_name, values = KNOBS[kind]
                    limit = (
                        collection.stats()["indexes"][-1]["params"].get("nlist", 10**9)
                        if kind == "ivf"
                        else 10**9
                    )
                    for value in [v for v in values if v <= limit]:
                        knob = {knob_name: value}
                        found = collection.search(queries, k=args.k, **knob).ids
                        timed = alternate(
                            {
                                "exact batch 1": one_by_one(exact),
                                f"{kind} batch 1": one_by_one(collection, **knob),
                                f"exact batch {args.batch}": lambda: exact.search(
                                    queries[: args.batch], k=args.k
                                ),
                                f"{kind} batch {args.batch}": lambda: collection.search(
                                    queries[: args.batch], k=args.k, **knob
                                ),
                            },
                            args.repeats,
                            args.settle_ms / 1000,
                        )
                        case = {
                            "dataset": name,
                            "rows": len(rows),
                            "dim": rows.shape[1],
                            "metric": metric,
                            "kind": kind,
                            knob_name: value,
                            "recall_at_10": recall(found, truth),
                            "timings": {key: stats(value) for key, value in timed.items()},
                        }
                        for batch, count in (("1", len(singles)), (str(args.batch), args.batch)):
                            exact_s = case["timings"][f"exact batch {batch}"]["median_s"]
                            ann_s = case["timings"][f"{kind} batch {batch}"]["median_s"]
                            case[f"QPS_batch_{batch}"] = count / ann_s
                            case[f"exact_QPS_batch_{batch}"] = count / exact_s
                            case[f"speedup_batch_{batch}"] = exact_s / ann_s
                        results["cases"].append(case)
                        print(f"  {name} {len(rows):,} {kind} {knob_name}={value:<4} "
                              f"recall@10 {case['recall_at_10']:.3f}  batch 1: "
                              f"{case['QPS_batch_1']:8.0f} QPS (x{case['speedup_batch_1']:.2f} exact)  "
                              f"batch {args.batch}: {case[f'QPS_batch_{args.batch}']:8.0f} QPS "
                              f"(x{case[f'speedup_batch_{args.batch}']:.2f})")
            finally:
                exact.close()
                for collection in approximate.values():
                    collection.close()
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return results


def plot_ann(results: dict[str, Any], out_dir: Path) -> list[str]:
    """recall_vs_qps.png: one panel per data set, a curve per index kind and batch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    cases = results.get("cases") or []
    groups = sorted({(c["dataset"], c["rows"], c["dim"]) for c in cases})
    if not groups:
        return []
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes.ravel(), groups):
        selected = [c for c in cases if (c["dataset"], c["rows"], c["dim"]) == group]
        batches = sorted({k.rsplit("_", 1)[1] for k in selected[0] if k.startswith("QPS_batch_")},
                         key=int)
        for kind in ("hnsw", "ivf"):
            curve = [c for c in selected if c["kind"] == kind]
            for batch in batches:
                ax.plot([c["recall_at_10"] for c in curve], [c[f"QPS_batch_{batch}"] for c in curve],
                        marker="o", label=f"{kind} batch {batch}")
        for batch in batches:
            ax.axhline(selected[0][f"exact_QPS_batch_{batch}"], linestyle="--", color="grey",
                       linewidth=0.8)
            ax.annotate(f"exact batch {batch}", (0.0, selected[0][f"exact_QPS_batch_{batch}"]),
                        fontsize=6, color="grey")
        ax.set(yscale="log", xlabel="recall@10", ylabel="QPS", title=f"{group[0]} {group[1]:,} x {group[2]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "recall_vs_qps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def headline_ann(results: dict[str, Any], target: float = 0.95) -> str:
    """Per data set and kind: the fastest setting reaching ``target`` recall@10."""
    cases = results.get("cases") or []
    if not cases:
        return ""
    batch = next(k for k in cases[0] if k.startswith("QPS_batch_") and k != "QPS_batch_1").rsplit("_", 1)[1]
    lines = [
        f"| data | rows x dim | index | setting | recall@10 | QPS (1) | x exact (1) | QPS ({batch}) | x exact ({batch}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group in sorted({(c["dataset"], c["rows"], c["dim"]) for c in cases}):
        for kind in ("hnsw", "ivf"):
            curve = [c for c in cases if (c["dataset"], c["rows"], c["dim"]) == group and c["kind"] == kind]
            good = [c for c in curve if c["recall_at_10"] >= target] or curve[-1:]
            if not good:
                continue
            best = max(good, key=lambda c: c["QPS_batch_1"])
            knob = "ef_search" if kind == "hnsw" else "nprobe"
            lines.append(
                f"| {group[0]} | {group[1]:,} x {group[2]} | {kind} | {knob}={best[knob]} | "
                f"{best['recall_at_10']:.3f} | {best['QPS_batch_1']:,.0f} | {best['speedup_batch_1']:.1f} | "
                f"{best[f'QPS_batch_{batch}']:,.0f} | {best[f'speedup_batch_{batch}']:.1f} |"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("approximate search (part ann)")
    g.add_argument("--ann-sizes", dest="ann_sizes", type=lambda t: tuple(int(float(v)) for v in t.split(",")),
                   help="random/clustered rows (default 100k,300k; --quick 20k)")
    g.add_argument("--ann-dim", dest="ann_dim", type=int, default=384)
    g.add_argument("--ann-queries", dest="ann_queries", type=int, default=256)
    g.add_argument("--ann-repeats", dest="ann_repeats", type=int, help="default 5, --quick 3")


def options(args: argparse.Namespace) -> argparse.Namespace:
    """The ann part's settings from the suite's (or this script's) arguments."""
    quick = getattr(args, "quick", False)
    return argparse.Namespace(
        sizes=args.ann_sizes or ((20_000,) if quick else (100_000, 300_000)),
        dim=args.ann_dim,
        queries=args.ann_queries,
        single_queries=32 if quick else 64,
        batch=64,
        k=10,
        repeats=args.ann_repeats or (3 if quick else 5),
        settle_ms=5.0 if quick else 20.0,
        shard_rows=getattr(args, "shard_rows", 65_536),
        corpus=getattr(args, "corpus", True),
        tmp=getattr(args, "tmp", "/tmp"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="results folder (default benchmarks/results/ann-<timestamp>)")
    parser.add_argument("--tmp", default="/tmp")
    parser.add_argument("--no-corpus", dest="corpus", action="store_false")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return _suite().run_standalone(
        "ann", args.out, lambda: run_ann(options(args)), headline_ann, plot_ann
    )

if __name__ == "__main__":
    sys.exit(main())
