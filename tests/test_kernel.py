"""Search kernel against a numpy oracle, for every SIMD variant this CPU supports."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sealvec import _core

LEVELS = _core.supported_simd_levels()
METRICS = ["ip", "l2", "cosine"]
DIMS = [1, 3, 97, 385, 1537]
SEGMENT_SIZES = [0, 37, 0, 50, 13]  # 100 rows, with empty segments in between


@pytest.fixture(params=LEVELS)
def simd_level(request):
    previous = _core.simd_level()
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(previous)


def oracle_scores(rows: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """float32 scores computed with the kernel's formulas (exact for small-integer data)."""
    rows64, queries64 = rows.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        return (queries64 @ rows64.T).astype(np.float32)
    if metric == "l2":
        sumsq = ((queries64[:, None, :] - rows64[None, :, :]) ** 2).sum(-1).astype(np.float32)
        return np.sqrt(sumsq)
    dot = (queries64 @ rows64.T).astype(np.float32)
    row_norm = np.sqrt((rows64**2).sum(-1).astype(np.float32))
    query_norm = np.sqrt((queries64**2).sum(-1).astype(np.float32))
    denominator = query_norm[:, None] * row_norm[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = dot / denominator
    return np.where(denominator > 0, scores, np.float32(0)).astype(np.float32)


def oracle_search(rows, queries, k, metric, mask=None, tiebreak=None):
    """Full sort by (score best first, tiebreak, row); returns the top min(k, allowed)."""
    scores = oracle_scores(rows, queries, metric)
    allowed = np.flatnonzero(mask) if mask is not None else np.arange(len(rows))
    tie = tiebreak if tiebreak is not None else np.arange(len(rows), dtype=np.int64)
    kept = min(k, len(allowed))
    out_scores = np.zeros((len(queries), kept), np.float32)
    out_rows = np.zeros((len(queries), kept), np.int64)
    for q in range(len(queries)):
        s = scores[q, allowed]
        key = s if metric == "l2" else -s
        order = np.lexsort((allowed, tie[allowed], key))[:kept]
        out_scores[q], out_rows[q] = s[order], allowed[order]
    return out_scores, out_rows


def split(rows: np.ndarray, sizes=SEGMENT_SIZES) -> list[np.ndarray]:
    bounds = np.cumsum([0, *sizes])
    return [rows[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_exact_against_oracle_small_integers(simd_level, dim, metric, threads):
    rng = np.random.default_rng(dim * 7 + len(metric))
    total = sum(SEGMENT_SIZES)
    rows = rng.integers(-3, 4, size=(total, dim)).astype(np.float32)
    rows[5] = rows[60]  # explicit duplicates → ties
    rows[90] = rows[60]
    if metric == "cosine":
        rows[np.abs(rows).sum(1) == 0, 0] = 1.0  # caller guarantees no zero vectors
    queries_all = rng.integers(-3, 4, size=(64, dim)).astype(np.float32)
    queries_all[np.abs(queries_all).sum(1) == 0, 0] = 1.0
    segments = split(rows)
    mask = (rng.random(total) < 0.7).astype(np.uint8)
    mask[[5, 60, 90]] = 1
    tiebreak = rng.permutation(total).astype(np.int64)
    for nq in [0, 1, 7, 64]:
        queries = np.ascontiguousarray(queries_all[:nq])
        for k in [1, 10, total, total + 5]:
            for use_mask, use_tie in [(False, False), (True, False), (False, True), (True, True)]:
                m = mask if use_mask else None
                t = tiebreak if use_tie else None
                scores, found = _core.search(segments, dim, queries, k, metric, m, t, threads)
                want_scores, want_rows = oracle_search(rows, queries, k, metric, m, t)
                assert scores.dtype == np.float32 and found.dtype == np.int64
                assert scores.shape == want_scores.shape
                np.testing.assert_array_equal(scores, want_scores)
                np.testing.assert_array_equal(found, want_rows)
                assert not np.isnan(scores).any() and (found >= 0).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_random_normal_against_oracle(simd_level, dim, metric):
    rng = np.random.default_rng(1000 + dim)
    rows = rng.standard_normal((100, dim)).astype(np.float32)
    queries = rng.standard_normal((7, dim)).astype(np.float32)
    scores, found = _core.search(split(rows), dim, queries, 10, metric)
    exact = oracle_scores(rows, queries, metric)
    want_scores, _ = oracle_search(rows, queries, 10, metric)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # Each returned row's true score matches the score returned for it.
    np.testing.assert_allclose(
        np.take_along_axis(exact, found, axis=1), scores, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [3, 64])  # 3: threads split rows; 64: threads split queries
def test_threads_are_deterministic_on_large_workloads(simd_level, metric, nq):
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((20000, 97)).astype(np.float32)
    rows[15000:15010] = rows[3]  # ties that span both threads' row ranges
    queries = rng.standard_normal((nq, 97)).astype(np.float32)
    queries[0] = rows[3]
    mask = (rng.random(len(rows)) < 0.9).astype(np.uint8)
    tiebreak = rng.permutation(len(rows)).astype(np.int64)
    segments = [rows[:7000], rows[7000:7000], rows[7000:]]
    results = [
        _core.search(segments, 97, queries, 25, metric, mask, tiebreak, threads)
        for threads in (1, 2, 3, 0)
    ]
    for scores, found in results[1:]:
        np.testing.assert_array_equal(scores, results[0][0])
        np.testing.assert_array_equal(found, results[0][1])
    want_scores, _ = oracle_search(rows, queries, 25, metric, mask, tiebreak)
    np.testing.assert_allclose(results[0][0], want_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", [3, 97, 1537])
def test_batch_results_equal_single_query_results_bit_for_bit(simd_level, dim, metric):
    # Every batch size takes its own register-tile shapes (few-query streaming, full query
    # groups, remainders); a pair's score must not depend on them, nor on the thread count.
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((211, dim)).astype(np.float32)
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    segments = [rows[:100], rows[100:]]
    singles = [_core.search(segments, dim, queries[i : i + 1], 7, metric) for i in range(40)]
    for nq in [*range(1, 14), 24, 40]:
        for threads in (1, 2):
            scores, found = _core.search(segments, dim, queries[:nq], 7, metric, threads=threads)
            for i in range(nq):
                np.testing.assert_array_equal(scores[i], singles[i][0][0])
                np.testing.assert_array_equal(found[i], singles[i][1][0])


def test_duplicate_rows_ordered_by_tiebreak_then_row(simd_level):
    row = np.array([1.0, 2.0, 3.0], np.float32)
    rows = np.stack([row] * 6 + [row[::-1]])  # row 6 is strictly worse
    query = row[None, :]
    for metric in METRICS:
        _, found = _core.search([rows[:2], rows[2:]], 3, query, 6, metric)
        assert found[0].tolist() == [0, 1, 2, 3, 4, 5]
        tiebreak = np.array([5, 4, 3, 2, 1, 0, -1], np.int64)
        _, found = _core.search([rows], 3, query, 3, metric, tiebreak=tiebreak)
        assert found[0].tolist() == [5, 4, 3]
        same_tie = np.zeros(7, np.int64)  # equal tiebreaks fall back to the row index
        _, found = _core.search([rows], 3, query, 7, metric, tiebreak=same_tie)
        assert found[0].tolist()[:6] == [0, 1, 2, 3, 4, 5]


def test_k_larger_than_rows_returns_every_allowed_row_without_sentinels(simd_level):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    queries = np.ones((2, 3), np.float32)
    scores, found = _core.search([rows], 3, queries, 100, "l2")
    assert scores.shape == found.shape == (2, 4)
    assert sorted(found[0].tolist()) == [0, 1, 2, 3]
    assert np.isfinite(scores).all()
    mask = np.array([0, 1, 0, 1], np.uint8)
    scores, found = _core.search([rows], 3, queries, 100, "ip", mask)
    assert found.tolist() == [[3, 1], [3, 1]]


def test_empty_shapes(simd_level):
    queries = np.ones((3, 4), np.float32)
    scores, found = _core.search([], 4, queries, 5, "ip")
    assert scores.shape == found.shape == (3, 0)
    scores, found = _core.search([np.zeros((0, 4), np.float32), b""], 4, queries, 5, "l2")
    assert scores.shape == (3, 0)
    rows = np.ones((10, 4), np.float32)
    scores, found = _core.search([rows], 4, np.zeros((0, 4), np.float32), 5, "ip")
    assert scores.shape == found.shape == (0, 5)
    scores, found = _core.search([rows], 4, queries, 5, "ip", np.zeros(10, np.uint8))
    assert scores.shape == (3, 0)


def test_cosine_zero_norm_scores_zero_not_nan(simd_level):
    rows = np.array([[0, 0], [1, 0]], np.float32)
    scores, found = _core.search([rows], 2, np.array([[1, 0], [0, 0]], np.float32), 2, "cosine")
    assert not np.isnan(scores).any()
    assert found[0].tolist() == [1, 0] and scores[0].tolist() == [1.0, 0.0]
    assert scores[1].tolist() == [0.0, 0.0]


def test_accepts_secure_buffers_and_bytes(simd_level):
    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    buffer = _core.SecureBuffer(rows.nbytes)
    memoryview(buffer)[:] = rows.tobytes()
    buffer.seal()
    queries = rows[:2].copy()
    a = _core.search([buffer], 4, queries, 3, "l2")
    b = _core.search([rows[:3].tobytes(), rows[3:]], 4, queries, 3, "l2")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert buffer.exports == 0  # the kernel's views are gone after the call
    buffer.release()
    with pytest.raises(ValueError, match="released"):
        _core.search([buffer], 4, queries, 3, "l2")


def test_argument_errors():
    rows = np.zeros((4, 3), np.float32)
    queries = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="dtype float32"):
        _core.search([rows], 3, queries.astype(np.float64), 1, "ip")
    with pytest.raises(ValueError, match="numpy.ndarray"):
        _core.search([rows], 3, [[0.0, 0.0, 0.0]], 1, "ip")
    with pytest.raises(ValueError, match="dim=4"):
        _core.search([rows], 4, queries, 1, "ip")
    with pytest.raises(ValueError, match="2-D"):
        _core.search([rows], 3, np.zeros(3, np.float32), 1, "ip")
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.search([rows], 3, np.zeros((3, 6), np.float32)[:, ::2], 1, "ip")
    with pytest.raises(ValueError, match=r"segments\[1\]"):
        _core.search([rows, b"12345"], 3, queries, 1, "ip")
    with pytest.raises(ValueError, match=r"segments\[0\]"):
        _core.search([object()], 3, queries, 1, "ip")
    with pytest.raises(ValueError, match="mask"):
        _core.search([rows], 3, queries, 1, "ip", np.ones(3, np.uint8))
    with pytest.raises(ValueError, match="tiebreak"):
        _core.search([rows], 3, queries, 1, "ip", None, np.ones(4, np.int32))
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be positive"):
            _core.search([rows], 3, queries, k, "ip")
    with pytest.raises(ValueError, match="metric"):
        _core.search([rows], 3, queries, 1, "dot")
    with pytest.raises(ValueError, match="dim"):
        _core.search([rows], 0, queries, 1, "ip")
    with pytest.raises(ValueError, match="threads"):
        _core.search([rows], 3, queries, 1, "ip", threads=-1)


def test_simd_level_controls():
    assert "scalar" in LEVELS and _core.simd_level() in LEVELS
    with pytest.raises(ValueError):
        _core.set_simd_level("sse9")
    for level in ("avx2", "avx512"):
        if level not in LEVELS:
            with pytest.raises(ValueError, match="not supported"):
                _core.set_simd_level(level)


def _import_with_env(value: str) -> subprocess.CompletedProcess:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "from sealvec import _core; print('LEVEL', _core.simd_level())\n"
    )
    env = dict(os.environ, SEALVEC_SIMD=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("level", LEVELS)
def test_env_var_forces_level(level):
    result = _import_with_env(level)
    assert f"LEVEL {level}" in result.stdout
    assert f"sealvec.kernel sealvec search kernel uses the {level} variant" in result.stderr


def test_env_var_unsupported_falls_back_with_warning():
    for value in ("avx512", "bogus"):
        if value in LEVELS:
            continue
        result = _import_with_env(value)
        assert f"LEVEL {LEVELS[-1]}" in result.stdout
        assert "sealvec.kernel" in result.stderr and f"SEALVEC_SIMD={value}" in result.stderr
