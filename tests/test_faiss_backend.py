"""FaissExactIndex against the native kernel (_core.search): same contract, rows read in
place from the locked buffers, normalized copies released on close."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from sealvec import _core  # noqa: E402
from sealvec.faiss_backend import FaissExactIndex  # noqa: E402
from sealvec.shard import secure_copy  # noqa: E402

METRICS = ["ip", "l2", "cosine"]
DIMS = [1, 3, 97, 385]
SEGMENT_SIZES = [0, 37, 0, 50, 13]  # 100 rows, with empty shards in between


def sealed_shards(rows: np.ndarray, sizes=SEGMENT_SIZES) -> list[_core.SecureBuffer]:
    bounds = np.cumsum([0, *sizes])
    return [
        secure_copy(rows[bounds[i] : bounds[i + 1]].tobytes(), "required")
        for i in range(len(sizes))
    ]


def true_scores(rows: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """float64 scores (the quantity both backends approximate)."""
    rows64, queries64 = rows.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        return queries64 @ rows64.T
    if metric == "l2":
        return np.sqrt(((queries64[:, None, :] - rows64[None, :, :]) ** 2).sum(-1))
    dot = queries64 @ rows64.T
    denominator = np.linalg.norm(queries64, axis=1)[:, None] * np.linalg.norm(rows64, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, dot / denominator, 0.0)


def assert_same_results(got, want, rows, queries, metric, mask, tiebreak, exact):
    """Same shapes and dtypes; exact data: bit-for-bit equal. Otherwise scores within 1e-5
    relative and a row may differ from the native one only where the two rows' true scores
    are within that tolerance (a near-tie the two summation orders may resolve apart)."""
    scores, found = got
    want_scores, want_rows = want
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == want_scores.shape
    assert not np.isnan(scores).any() and (found >= 0).all() and (found < len(rows)).all()
    if mask is not None:
        assert mask[found].all()
    for q in range(len(found)):
        assert len(set(found[q].tolist())) == found.shape[1]
    if exact:
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(found, want_rows)
        return
    truth = true_scores(rows, queries, metric)
    scale = np.abs(truth).max(axis=1, keepdims=True) + 1e-30
    tol = 1e-5 * scale
    assert (np.abs(scores - want_scores) <= tol + 1e-5 * np.abs(want_scores)).all()
    got_truth = np.take_along_axis(truth, found, axis=1)
    assert (np.abs(got_truth - scores) <= tol).all()
    want_truth = np.take_along_axis(truth, want_rows, axis=1)
    differs = found != want_rows
    assert (np.abs(got_truth - want_truth)[differs] <= 2 * tol.repeat(found.shape[1], 1)[differs]).all()
    # Rows with identical vectors (exact ties) follow the tiebreak, then the row.
    tie = tiebreak if tiebreak is not None else np.arange(len(rows))
    for q in range(len(found)):
        for a, b in zip(found[q][:-1], found[q][1:]):
            if np.array_equal(rows[a], rows[b]):
                assert (tie[a], a) < (tie[b], b)


def run_both(index, buffers, dim, queries, k, metric, mask, tiebreak):
    got = index.search(queries, k, mask, tiebreak)
    want = _core.search(buffers, dim, queries, k, metric, mask, tiebreak)
    return got, want


def masks(rng, total, k, keep):
    """No mask, a random 70% mask, one that keeps 5% (at least one row), one that keeps
    exactly k rows (all but total - k), and one that keeps `keep` (duplicates) only."""
    random = (rng.random(total) < 0.7).astype(np.uint8)
    sparse = (rng.random(total) < 0.05).astype(np.uint8)
    sparse[rng.integers(total)] = 1
    all_but = np.zeros(total, np.uint8)
    all_but[rng.choice(total, size=min(k, total), replace=False)] = 1
    only = np.zeros(total, np.uint8)
    only[keep] = 1
    return [None, random, sparse, all_but, only]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_small_integers_match_native_bit_for_bit(dim, metric):
    rng = np.random.default_rng(dim * 7 + len(metric))
    total = sum(SEGMENT_SIZES)
    rows = rng.integers(-3, 4, size=(total, dim)).astype(np.float32)
    duplicates = [5, 36, 37, 60, 90, 99]  # across shard boundaries
    rows[duplicates] = rows[60]
    if metric == "cosine":
        rows[np.abs(rows).sum(1) == 0, 0] = 1.0
    queries_all = rng.integers(-3, 4, size=(64, dim)).astype(np.float32)
    queries_all[np.abs(queries_all).sum(1) == 0, 0] = 1.0
    queries_all[3] = rows[60]  # the duplicates are the best hits (ip/cosine: among them)
    buffers = sealed_shards(rows)
    index = FaissExactIndex(buffers, SEGMENT_SIZES, dim, metric)
    try:
        tiebreak = rng.permutation(total).astype(np.int64)
        for nq in [1, 7, 64]:
            queries = np.ascontiguousarray(queries_all[3 : 3 + nq])
            for k in [1, 10, total]:
                for mask in masks(rng, total, k, duplicates):
                    for tie in [None, tiebreak]:
                        got, want = run_both(index, buffers, dim, queries, k, metric, mask, tie)
                        assert_same_results(got, want, rows, queries, metric, mask, tie, True)
    finally:
        index.close()
        for buffer in buffers:
            buffer.release()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", DIMS)
def test_random_normal_within_tolerance(dim, metric):
    rng = np.random.default_rng(1000 + dim)
    total = sum(SEGMENT_SIZES)
    rows = rng.standard_normal((total, dim)).astype(np.float32)
    duplicates = [1, 2, 40, 41, 95]
    rows[duplicates] = rows[50]
    queries_all = rng.standard_normal((64, dim)).astype(np.float32)
    queries_all[0] = rows[50]
    queries_all[1] = rows[50] * 0.5 + rows[7] * 0.5
    buffers = sealed_shards(rows)
    index = FaissExactIndex(buffers, SEGMENT_SIZES, dim, metric)
    try:
        tiebreak = rng.permutation(total).astype(np.int64)
        for nq in [1, 7, 64]:
            queries = np.ascontiguousarray(queries_all[:nq])
            for k in [1, 10, total + 5]:
                for mask in masks(rng, total, k, duplicates):
                    for tie in [None, tiebreak]:
                        got, want = run_both(index, buffers, dim, queries, k, metric, mask, tie)
                        assert_same_results(got, want, rows, queries, metric, mask, tie, False)
    finally:
        index.close()
        for buffer in buffers:
            buffer.release()


@pytest.mark.parametrize("metric", METRICS)
def test_tie_groups_larger_than_k_follow_the_tiebreak(metric):
    # 40 identical best rows spread over shards; faiss returns ties in arbitrary order and
    # cuts them at k, so the index must fetch the whole group to honour the tiebreak.
    rng = np.random.default_rng(3)
    dim, sizes = 16, [30, 0, 45, 25]
    rows = rng.standard_normal((100, dim)).astype(np.float32) * 0.1
    best = rng.standard_normal(dim).astype(np.float32)
    group = rng.choice(100, size=40, replace=False)
    rows[group] = best
    queries = np.stack([best, best * 2, -best]).astype(np.float32)
    buffers = sealed_shards(rows, sizes)
    try:
        for tie in [None, rng.permutation(100).astype(np.int64), np.zeros(100, np.int64)]:
            for k in [1, 5, 39, 40, 41]:
                for mask in [None, (rng.random(100) < 0.5).astype(np.uint8)]:
                    with FaissExactIndex(buffers, sizes, dim, metric) as index:
                        got = index.search(queries, k, mask, tie)
                    want = _core.search(buffers, dim, queries, k, metric, mask, tie)
                    np.testing.assert_array_equal(got[1][:2], want[1][:2])
                    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    finally:
        for buffer in buffers:
            buffer.release()


def test_larger_shards_with_heavy_masks():
    rng = np.random.default_rng(11)
    dim, sizes = 33, [3000, 0, 1700, 2300]
    rows = rng.standard_normal((7000, dim)).astype(np.float32)
    rows[6000:6020] = rows[10]
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    queries[0] = rows[10]
    tiebreak = rng.permutation(7000).astype(np.int64)
    buffers = sealed_shards(rows, sizes)
    try:
        for metric in METRICS:
            with FaissExactIndex(buffers, sizes, dim, metric) as index:
                for keep in [1.0, 0.5, 0.02, 0.001]:
                    mask = (rng.random(7000) < keep).astype(np.uint8)
                    mask[[10, 6000, 6005]] = 1
                    for k in [1, 25, 300]:
                        got = index.search(queries, k, mask, tiebreak)
                        want = _core.search(buffers, dim, queries, k, metric, mask, tiebreak)
                        assert_same_results(
                            got, want, rows, queries, metric, mask, tiebreak, False
                        )
    finally:
        for buffer in buffers:
            buffer.release()


def test_edge_shapes_and_arguments():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    buffers = sealed_shards(rows, [4])
    try:
        with FaissExactIndex(buffers, [4], 3, "l2") as index:
            queries = np.ones((2, 3), np.float32)
            scores, found = index.search(queries, 100, None, None)
            assert scores.shape == found.shape == (2, 4)
            assert np.isfinite(scores).all() and (found >= 0).all()
            scores, found = index.search(np.zeros((0, 3), np.float32), 5, None, None)
            assert scores.shape == found.shape == (0, 4)
            scores, found = index.search(queries, 5, np.zeros(4, np.uint8), None)
            assert scores.shape == (2, 0)
            with pytest.raises(ValueError):
                index.search(queries, 0, None, None)
            with pytest.raises(ValueError):
                index.search(queries, 1, np.ones(3, np.uint8), None)
            with pytest.raises(ValueError):
                index.search(queries, 1, None, np.ones(4, np.int32))
            with pytest.raises(ValueError):
                index.search(queries.astype(np.float64), 1, None, None)
        with FaissExactIndex(buffers, [4], 3, "ip") as index:
            scores, found = index.search(queries, 100, np.array([0, 1, 0, 1], np.uint8), None)
            assert found.tolist() == [[3, 1], [3, 1]]
        with FaissExactIndex([], [], 3, "ip") as index:
            scores, found = index.search(queries, 5, None, None)
            assert scores.shape == (2, 0)
        with pytest.raises(ValueError):
            FaissExactIndex(buffers, [5], 3, "ip")
        with pytest.raises(ValueError):
            FaissExactIndex(buffers, [4], 3, "hamming")
    finally:
        buffers[0].release()


def test_cosine_zero_norm_rows_and_queries_score_zero():
    rows = np.array([[0, 0], [1, 0], [0, 0], [0, 2]], np.float32)
    buffers = sealed_shards(rows, [2, 2])
    try:
        queries = np.array([[1, 0], [0, 0]], np.float32)
        with FaissExactIndex(buffers, [2, 2], 2, "cosine") as index:
            got = index.search(queries, 4, None, None)
        want = _core.search(buffers, 2, queries, 4, "cosine")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1][1].tolist() == [0, 1, 2, 3] and not np.isnan(got[0]).any()
    finally:
        for buffer in buffers:
            buffer.release()


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_reads_the_locked_buffers_in_place(monkeypatch, metric):
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((100, 8)).astype(np.float32)
    buffers = sealed_shards(rows)
    seen: list[np.ndarray] = []
    real_knn = faiss.knn

    def recording_knn(xq, xb, k, metric=faiss.METRIC_L2, metric_arg=0.0):
        seen.append(xb)
        # faiss.knn would copy anything not already float32 C-contiguous: it must not.
        assert np.ascontiguousarray(xb, dtype="float32") is xb
        return real_knn(xq, xb, k, metric=metric, metric_arg=metric_arg)

    monkeypatch.setattr(faiss, "knn", recording_knn)
    try:
        index = FaissExactIndex(buffers, SEGMENT_SIZES, 8, metric)
        index.search(rng.standard_normal((3, 8)).astype(np.float32), 5, None, None)
        nonempty = [b for b, n in zip(buffers, SEGMENT_SIZES) if n]
        assert len(seen) == len(nonempty)
        normalized = [b for b in index.normalized_buffers if b is not None]
        for xb, buffer in zip(seen, nonempty):
            shard_bytes = np.frombuffer(buffer, dtype=np.uint8)
            if metric == "cosine":
                # The normalized copy, itself locked memory, is what faiss reads.
                assert not np.shares_memory(xb, shard_bytes)
                assert any(
                    np.shares_memory(xb, np.frombuffer(n, dtype=np.uint8)) for n in normalized
                )
            else:
                assert np.shares_memory(xb, shard_bytes)
                assert xb.ctypes.data == shard_bytes.ctypes.data
            del shard_bytes
        del xb
        if metric == "cosine":
            assert len(normalized) == len(nonempty)
            for buffer in normalized:
                assert buffer.locked and buffer.sealed and not buffer.released
            copies = np.concatenate(
                [np.frombuffer(b, dtype="<f4").reshape(-1, 8) for b in normalized]
            )
            np.testing.assert_allclose(
                copies, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-6, atol=1e-6
            )
            del copies
        seen.clear()
        assert all(b.exports > 0 for b in nonempty)  # the index's views
        index.close()
        # close() releases the normalized copies and drops every view of the shard buffers.
        for buffer in normalized:
            assert buffer.released and buffer.exports == 0
        assert all(b.exports == 0 for b in buffers)
        with pytest.raises(ValueError):
            index.search(np.ones((1, 8), np.float32), 1, None, None)
        index.close()  # idempotent
    finally:
        for buffer in buffers:
            buffer.release()


def test_masked_rows_are_over_fetched_in_one_faiss_call_per_shard(monkeypatch):
    # k + masked rows per shard leaves k allowed rows after dropping the masked ones, so
    # distinct scores need no second faiss call even when the mask excludes most rows.
    rng = np.random.default_rng(8)
    sizes = [500, 0, 300]
    rows = rng.standard_normal((800, 24)).astype(np.float32)
    buffers = sealed_shards(rows, sizes)
    calls: list[int] = []
    real_knn = faiss.knn

    def counting_knn(xq, xb, k, metric=faiss.METRIC_L2, metric_arg=0.0):
        calls.append(k)
        return real_knn(xq, xb, k, metric=metric, metric_arg=metric_arg)

    monkeypatch.setattr(faiss, "knn", counting_knn)
    try:
        queries = rng.standard_normal((9, 24)).astype(np.float32)
        for metric in METRICS:
            with FaissExactIndex(buffers, sizes, 24, metric) as index:
                for keep in [0.9, 0.3, 0.05]:
                    mask = (rng.random(800) < keep).astype(np.uint8)
                    calls.clear()
                    got = index.search(queries, 10, mask, None)
                    assert len(calls) == 2
                    masked = [int((mask[:500] == 0).sum()), int((mask[500:] == 0).sum())]
                    assert calls == [min(500, 10 + masked[0] + 5), min(300, 10 + masked[1] + 5)]
                    want = _core.search(buffers, 24, queries, 10, metric, mask)
                    assert_same_results(got, want, rows, queries, metric, mask, None, False)
    finally:
        for buffer in buffers:
            buffer.release()
