"""The bfloat16 scan with exact float32 re-scoring: conversion, every SIMD variant (and the
native bfloat16 dot product where the CPU has it) against numpy oracles, the result contract,
and the collection's bf16 search backend."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_vectors
from sealvec import Collection, ValidationError, _core
from test_kernel import oracle_search, split

LEVELS = _core.supported_simd_levels()
METRICS = ["ip", "l2", "cosine"]
DIMS = [1, 3, 31, 33, 97, 385, 1537]
# (level, native bfloat16 dot product allowed)
VARIANTS = [(level, False) for level in LEVELS] + [("avx512", True)] * ("avx512" in LEVELS)


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}{'-native' if v[1] else ''}")
def variant(request):
    previous = _core.simd_level()
    level, native = request.param
    _core.set_simd_level(level)
    _core.set_bf16_native_dot(native)
    yield _core.bf16_dot()
    _core.set_simd_level(previous)
    _core.set_bf16_native_dot(True)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """numpy reference: float32 -> bfloat16 bits, round to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def reduced(segments: list[np.ndarray], dim: int):
    halves, norms = [], []
    for segment in segments:
        h = np.empty(segment.shape, np.uint16)
        n = np.empty(len(segment), np.float32)
        _core.to_bfloat16(np.ascontiguousarray(segment), dim, h, n)
        halves.append(h)
        norms.append(n)
    return halves, norms


def test_conversion_rounds_to_nearest_even_and_norms_are_exact():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((64, 33)).astype(np.float32) * 1e3
    rows[0, :4] = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 0.0]  # halfway cases
    halves = np.empty(rows.shape, np.uint16)
    norms = np.empty(64, np.float32)
    _core.to_bfloat16(rows, 33, halves, norms)
    np.testing.assert_array_equal(halves, bf16_round(rows))
    assert widen(halves[0, :4]).tolist() == [1.0, 1.0 + 2**-6, -1.0, 0.0]
    np.testing.assert_array_equal(norms, (rows.astype(np.float64) ** 2).sum(1).astype(np.float32))
    with pytest.raises(ValueError, match="bf16_out must hold"):
        _core.to_bfloat16(rows, 33, np.empty((64, 32), np.uint16), norms)
    with pytest.raises(ValueError, match="writable"):
        _core.to_bfloat16(rows, 33, bytes(64 * 33 * 2), norms)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_all_candidates_give_the_exact_results_bit_for_bit(variant, dim, metric, threads):
    # With every row a candidate, the scan only orders; exact scoring decides everything.
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((100, dim)).astype(np.float32)
    rows[40] = rows[7]  # ties, broken by the tiebreak then the row
    queries = rng.standard_normal((9, dim)).astype(np.float32)
    segments = split(rows)
    halves, norms = reduced(segments, dim)
    mask = (rng.random(100) < 0.8).astype(np.uint8)
    tiebreak = rng.permutation(100).astype(np.int64)
    for k in (1, 10, 100, 120):
        want = _core.search(segments, dim, queries, k, metric, mask, tiebreak, threads)
        got = _core.search(segments, dim, queries, k, metric, mask, tiebreak, threads,
                           bf16_segments=halves, sq_norms=norms, candidates=100)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_scan_picks_the_oracles_candidates(variant, dim, metric):
    # Values exactly representable in bfloat16 (small integers times powers of two): the
    # scan's inner products are exact, so with candidates = k it must keep exactly the
    # rows exact search keeps.
    rng = np.random.default_rng(50 + dim)
    rows = (rng.integers(-8, 9, size=(100, dim)) * 2.0 ** rng.integers(-2, 3, size=(100, dim)))
    rows = rows.astype(np.float32)
    rows[np.abs(rows).sum(1) == 0, 0] = 1.0
    queries = rng.integers(-8, 9, size=(7, dim)).astype(np.float32)
    queries[np.abs(queries).sum(1) == 0, 0] = 1.0
    segments = split(rows)
    halves, norms = reduced(segments, dim)
    for k in (1, 5, 10):
        want_scores, want_rows = oracle_search(rows, queries, k, metric)
        scores, found = _core.search(segments, dim, queries, k, metric,
                                     bf16_segments=halves, sq_norms=norms, candidates=k)
        if metric == "ip":  # the approximate key is the exact score: same rows, same order
            np.testing.assert_array_equal(found, want_rows)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("metric", METRICS)
def test_rounded_scan_follows_the_bfloat16_oracle_then_scores_exactly(variant, metric):
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((300, 97)).astype(np.float32)
    queries = rng.standard_normal((5, 97)).astype(np.float32)
    halves, norms = reduced([rows], 97)
    k = 8
    scores, found = _core.search([rows], 97, queries, k, metric,
                                 bf16_segments=halves, sq_norms=norms, candidates=k)
    # Oracle: the approximate keys from the bfloat16 values (float64), best k of them.
    approx_rows = widen(halves[0]).astype(np.float64)
    approx_queries = widen(bf16_round(queries)).astype(np.float64)
    dot = approx_queries @ approx_rows.T
    n = norms[0].astype(np.float64)
    qn = (queries.astype(np.float64) ** 2).sum(1)
    if metric == "ip":
        key = dot
    elif metric == "l2":
        key = -(n[None, :] + qn[:, None] - 2 * dot)
    else:
        key = dot / np.sqrt(n)[None, :] / np.sqrt(qn)[:, None]
    exact = _core.search([rows], 97, queries, 300, metric)
    exact_score = {(q, int(r)): s for q in range(5) for r, s in zip(exact[1][q], exact[0][q])}
    for q in range(5):
        order = np.argsort(-key[q], kind="stable")
        cut = key[q][order[k - 1]]
        sure = set(order[key[q][order] > cut + 1e-3 * abs(cut)].tolist())
        possible = set(order[key[q][order] >= cut - 1e-3 * abs(cut)].tolist())
        assert sure <= set(found[q].tolist()) <= possible
        # Every kept row carries its exact float32 score, best first.
        assert [exact_score[(q, int(r))] for r in found[q]] == scores[q].tolist()


def test_argument_errors():
    rows = np.ones((4, 3), np.float32)
    halves, norms = reduced([rows], 3)
    queries = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="go together"):
        _core.search([rows], 3, queries, 1, "ip", bf16_segments=halves)
    with pytest.raises(ValueError, match="one entry per segment"):
        _core.search([rows], 3, queries, 1, "ip", bf16_segments=halves * 2, sq_norms=norms)
    with pytest.raises(ValueError, match="bf16_segments\\[0\\] must hold 4 rows"):
        _core.search([rows], 3, queries, 1, "ip", bf16_segments=[halves[0][:2]], sq_norms=norms)
    with pytest.raises(ValueError, match="sq_norms\\[0\\]"):
        _core.search([rows], 3, queries, 1, "ip", bf16_segments=halves, sq_norms=[norms[0][:1]])
    with pytest.raises(ValueError, match="candidates"):
        _core.search([rows], 3, queries, 1, "ip", bf16_segments=halves, sq_norms=norms,
                     candidates=-1)


# --------------------------------------------------------------------------- collections


def test_bf16_backend_on_the_corpus_matches_exact_search(store, corpus):
    records, vectors = corpus
    ids = [r["id"] for r in records]
    queries = vectors[::53] + 0.05 * random_vectors(len(vectors[::53]), 384, seed=3)
    with Collection.create(store, dimension=384, metric="cosine") as collection:
        collection.add(ids[:2000], vectors[:2000])
        collection.add(ids[2000:], vectors[2000:])
        collection.delete(ids[::17])
    with Collection.open(store) as exact, Collection.open(store, search_backend="bf16") as fast:
        assert fast.stats()["search_backend"] == "bf16"
        for where in (None, {"nothing": 1}):
            want = exact.search(queries, k=10, where=where)
            got = fast.search(queries, k=10, where=where)
            assert got.ids == want.ids
            np.testing.assert_array_equal(got.scores, want.scores)
        # Few candidates still give k exact scores, best first.
        want = exact.search(queries, k=10)
        narrow = fast.search(queries, k=10, candidates=10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(narrow.ids, want.ids)])
        assert recall >= 0.95
        everything = fast.search(queries[:2], k=5000)
        assert [len(h) for h in everything.ids] == [3390 - len(ids[::17])] * 2


def test_bf16_copies_follow_the_shards(store):
    vectors = random_vectors(300, 16, seed=4)
    with Collection.create(store, dimension=16, metric="l2", search_backend="bf16") as writer:
        writer.add([f"a{i}" for i in range(150)], vectors[:150])
        assert len(writer._reduced) == 1
        writer.add([f"a{i}" for i in range(150, 300)], vectors[150:])
        assert len(writer._reduced) == 2
        assert writer.search(vectors[200], k=1)[0][0].id == "a200"
        writer.compact()
        assert len(writer._reduced) == 1  # the merged shard's copy; the old ones released
        copies = list(writer._reduced.values())[0]
    assert writer._reduced == {}
    for buffer in copies:
        with pytest.raises(ValueError):
            memoryview(buffer)


def test_candidates_are_checked(store):
    vectors = random_vectors(10, 4, seed=5)
    with Collection.create(store, dimension=4, metric="ip") as collection:
        collection.add([str(i) for i in range(10)], vectors)
        with pytest.raises(ValidationError, match="candidates applies to the bf16"):
            collection.search(vectors[0], k=1, candidates=5)
    with Collection.open(store, search_backend="bf16") as collection:
        for bad in (0, -3, 2.5, True, 2**40 + 1, 10**20):
            with pytest.raises(ValidationError, match=r"candidates must be an int from 1 to 2\*\*40"):
                collection.search(vectors[0], k=1, candidates=bad)
