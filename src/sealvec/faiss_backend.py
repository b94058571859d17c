"""Exact top-k search with FAISS over the locked vector buffers, same contract as
``sealvec._core.search``.

``FaissExactIndex`` runs ``faiss.knn`` shard by shard directly on zero-copy numpy views of
the shards' sealed ``SecureBuffer``s, then merges per query across shards. The result
contract is the native kernel's:

- global row = position in the concatenation of the shards;
- ``"ip"``: dot product, higher is better; ``"l2"``: Euclidean distance (not squared),
  lower is better; ``"cosine"``: dot / (|row| |query|), higher is better, 0 where a norm
  is 0;
- ``mask`` (uint8 per global row, 0 = skip), ``kk = min(k, allowed rows)`` results per
  query, best first, ties by smaller ``tiebreak[row]`` then smaller row; never -1 rows.

How exactness is kept:

- Masks: ``faiss.knn`` cannot skip rows, so each shard is asked for ``k + masked rows in
  that shard`` (capped at its rows), which leaves at least ``k`` allowed rows when they exist.
- FAISS's float32 scores (BLAS or SIMD summation; ``||x||^2 + ||q||^2 - 2 x.q`` for l2) are
  only used to *select* candidates. Every candidate within a rigorous float32 error bound
  of the k-th best is re-scored with the oracle formulas (float64 sums rounded to float32,
  the same formulas ``tests/test_kernel.py`` checks the native kernel against), and the
  final order is (score, tiebreak, row). A shard whose cut-off (its worst returned FAISS
  score) is not clear of that band is fetched again with a larger k, so tie groups are never
  cut at k and exact duplicates always follow the tiebreak.
- Scores therefore match the native kernel to ~1e-5 relative (bit for bit where both are
  exact, e.g. small-integer data); where two rows' true scores differ by less than that,
  their order may differ from the native kernel's, but rows with equal re-scored scores
  (exact duplicates in particular) are ordered by the tiebreak, then the row.

Memory: FAISS reads the locked buffers in place (no copy of the vectors into unlocked
memory by this module). Cosine keeps, per shard, a normalized copy in a new locked
``SecureBuffer``; re-scoring gathers its candidate rows into a per-call locked scratch
``SecureBuffer``. ``close()`` releases the normalized copies and drops the views of the
shard buffers (while this index holds them, a shard buffer's ``release()`` is deferred).
Caveat: for large query batches FAISS may use BLAS sgemm, whose implementation packs
blocks of the database matrix into its own (unlocked, not wiped) work buffers.

Threads: FAISS uses OpenMP; its settings are left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import faiss
import numpy as np

from sealvec import _core

METRICS = ("ip", "l2", "cosine")

_U = 2.0**-24  # float32 unit roundoff
_SCRATCH_BYTES = 1 << 20  # locked scratch for re-scoring, per search call
_NORM_CHUNK_ROWS = 4096
_FETCH_MARGIN = 4  # extra rows asked of faiss per shard beyond k + masked rows


class FaissExactIndex:
    """Exact search over per-shard locked float32 buffers with ``faiss.knn``.

    ``buffers[i]`` holds ``rows[i] x dimension`` little-endian float32 values (a sealed
    ``SecureBuffer`` or any buffer); they are read in place and must outlive the index
    (the index holds views of them until ``close()``).
    """

    def __init__(
        self,
        buffers: Sequence[object],
        rows: Sequence[int],
        dimension: int,
        metric: str,
        memory_lock: str = "required",
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        dimension = int(dimension)
        if dimension < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        if len(buffers) != len(rows):
            raise ValueError(f"{len(buffers)} buffers but {len(rows)} row counts")
        self._dimension = dimension
        self._metric = metric
        self._memory_lock = memory_lock
        self._lock = threading.Lock()
        self._closed = False
        self._rows = [int(r) for r in rows]
        self._starts = np.concatenate([[0], np.cumsum(self._rows, dtype=np.int64)]).astype(
            np.int64
        )
        self._total = int(self._starts[-1])
        self._views: list[np.ndarray] = []  # zero-copy views of the caller's buffers
        self._normalized: list[_core.SecureBuffer | None] = []
        self._search_views: list[np.ndarray] = []  # what faiss.knn reads
        self._max_norms = np.zeros(len(self._rows), dtype=np.float64)
        try:
            for index, (buffer, count) in enumerate(zip(buffers, self._rows)):
                nbytes = memoryview(buffer).nbytes
                if count < 0 or nbytes != 4 * count * dimension:
                    raise ValueError(
                        f"buffer {index} holds {nbytes} bytes, expected {count} rows x "
                        f"{dimension} float32 = {4 * count * dimension} bytes"
                    )
                if count == 0:
                    view = np.zeros((0, dimension), dtype=np.float32)
                else:
                    view = np.frombuffer(buffer, dtype="<f4").reshape(count, dimension)
                self._views.append(view)
                if metric == "cosine":
                    normalized = self._normalized_copy(view) if count else None
                    self._normalized.append(normalized)
                    self._search_views.append(
                        np.frombuffer(normalized, dtype="<f4").reshape(count, dimension)
                        if normalized is not None
                        else view
                    )
                    self._max_norms[index] = 1.0
                else:
                    self._search_views.append(view)
                    self._max_norms[index] = _max_norm(view)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ properties

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def total_rows(self) -> int:
        return self._total

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def normalized_buffers(self) -> list[_core.SecureBuffer | None]:
        """The locked normalized copies (cosine only; None for empty shards)."""
        return list(self._normalized)

    def search_views(self) -> list[np.ndarray]:
        """The arrays handed to ``faiss.knn``, one per shard (for audits and tests)."""
        return list(self._search_views)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the normalized copies and drop the views of the shard buffers.
        Idempotent; a search already running keeps its own references until it returns."""
        with self._lock:
            self._closed = True
            normalized, self._normalized = self._normalized, []
            self._views = []
            self._search_views = []
        for buffer in normalized:
            if buffer is not None:
                buffer.release()

    def __enter__(self) -> FaissExactIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: np.ndarray,
        k: int,
        mask: np.ndarray | None = None,
        tiebreak: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: (scores float32 (nq, kk), rows int64 (nq, kk)), best first."""
        with self._lock:
            if self._closed:
                raise ValueError("the FAISS index is closed")
            views, search_views = self._views, self._search_views
        dim, metric, total = self._dimension, self._metric, self._total
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        queries = np.asarray(queries)
        if queries.dtype != np.float32 or queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must be float32 of shape (nq, {dim})")
        queries = np.ascontiguousarray(queries)
        mask_array = _row_array(mask, np.uint8, total, "mask")
        tie_array = _row_array(tiebreak, np.int64, total, "tiebreak")
        if tie_array is None:
            tie_array = np.arange(total, dtype=np.int64)
        allowed = total if mask_array is None else int(np.count_nonzero(mask_array))
        kk = min(k, allowed)
        nq = len(queries)
        out_scores = np.zeros((nq, kk), dtype=np.float32)
        out_rows = np.zeros((nq, kk), dtype=np.int64)
        if nq == 0 or kk == 0:
            return out_scores, out_rows

        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        queries64 = queries.astype(np.float64)
        query_norms = np.sqrt((queries64 * queries64).sum(axis=1))
        if metric == "cosine":
            with np.errstate(divide="ignore", invalid="ignore"):
                unit = queries64 / query_norms[:, None]
            search_queries = np.where(query_norms[:, None] > 0, unit, 0.0).astype(np.float32)
        else:
            search_queries = queries

        # Per shard: faiss candidates as "keys" (higher is better: -distance^2 for l2).
        shards: list[_ShardPass] = []
        for index, count in enumerate(self._rows):
            if count == 0:
                continue
            start = int(self._starts[index])
            shard_mask = None if mask_array is None else mask_array[start : start + count]
            shard_allowed = count if shard_mask is None else int(np.count_nonzero(shard_mask))
            if shard_allowed == 0:
                continue
            # k allowed rows even if every masked row ranks first, plus a few more so that
            # the cut-off usually lies clear of the k-th score's error band.
            fetch = min(count, k + (count - shard_allowed) + _FETCH_MARGIN + k // 8)
            shard = _ShardPass(index, start, count, shard_mask, search_views[index], fetch)
            shard.run(search_queries, faiss_metric, metric)
            shards.append(shard)

        # A: the kk-th best faiss key among allowed rows (exact as a value, see module doc);
        # tol bounds |faiss key - re-scored key| for every row of every shard.
        keys = np.concatenate([s.allowed_keys() for s in shards], axis=1)
        finite = np.isfinite(keys)
        enough = finite.sum(axis=1) >= kk
        kth = -np.partition(-np.where(finite, keys, -np.inf), kk - 1, axis=1)[:, kk - 1]
        max_norm = float(self._max_norms.max(initial=0.0))
        slack = 2.0 * (dim + 8) * _U
        if metric == "ip":
            tol = slack * query_norms * max_norm
        elif metric == "l2":
            tol = slack * (query_norms + max_norm) ** 2
        else:
            tol = np.full(nq, slack)
        threshold = kth - 2.0 * tol
        # Queries where faiss saw non-finite values, returned -1, or the bound overflowed
        # are re-scored over every allowed row.
        exhaustive = ~enough | ~np.isfinite(threshold) | ~np.isfinite(tol)
        for shard in shards:
            exhaustive |= shard.missing.any(axis=1)
        threshold = np.where(exhaustive, -np.inf, threshold)

        # Extend shards whose cut-off is not strictly below the band (ties cut at k).
        for shard in shards:
            while True:
                need = shard.incomplete(threshold) & ~exhaustive
                if not need.any():
                    break
                shard.fetch_more(search_queries, np.flatnonzero(need), faiss_metric, metric)
                for q in np.flatnonzero(need):
                    if shard.query_missing(q):
                        exhaustive[q] = True
                threshold = np.where(exhaustive, -np.inf, threshold)

        sign = np.float32(-1.0) if metric == "l2" else np.float32(1.0)
        block = max(1, _SCRATCH_BYTES // (dim * 20))
        scratch = _core.SecureBuffer(block * dim * 20, self._memory_lock)
        try:
            raw = np.frombuffer(scratch, dtype=np.uint8)
            gathered = raw[: block * dim * 4].view(np.float32).reshape(block, dim)
            rows64 = raw[block * dim * 4 : block * dim * 12].view(np.float64).reshape(block, dim)
            work64 = raw[block * dim * 12 : block * dim * 20].view(np.float64).reshape(block, dim)
            for q in range(nq):
                if exhaustive[q]:
                    parts = []
                    for shard in shards:
                        local = (
                            np.arange(shard.count, dtype=np.int64)
                            if shard.mask is None
                            else np.flatnonzero(shard.mask).astype(np.int64)
                        )
                        parts.append((shard, local))
                else:
                    parts = [(s, s.candidates(q, threshold[q])) for s in shards]
                candidate_rows = []
                candidate_scores = []
                for shard, local in parts:
                    if not len(local):
                        continue
                    scores = np.empty(len(local), dtype=np.float32)
                    view = views[shard.index]
                    for begin in range(0, len(local), block):
                        chunk = local[begin : begin + block]
                        n = len(chunk)
                        np.take(view, chunk, axis=0, out=gathered[:n], mode="clip")
                        np.copyto(rows64[:n], gathered[:n])
                        scores[begin : begin + n] = _rescore(
                            rows64[:n], work64[:n], queries64[q], metric
                        )
                    candidate_rows.append(shard.start + local)
                    candidate_scores.append(scores)
                found = np.concatenate(candidate_rows)
                scores = np.concatenate(candidate_scores)
                scores = np.where(np.isnan(scores), -np.inf * sign, scores).astype(np.float32)
                order = np.lexsort((found, tie_array[found], -sign * scores))[:kk]
                if len(order) < kk:  # cannot happen: every allowed row was considered
                    raise RuntimeError("FAISS search produced fewer candidates than k")
                out_scores[q] = scores[order]
                out_rows[q] = found[order]
            del raw, gathered, rows64, work64
        finally:
            scratch.release()
        return out_scores, out_rows

    # ------------------------------------------------------------------ helpers

    def _normalized_copy(self, view: np.ndarray) -> _core.SecureBuffer:
        """row / |row| for every row, in a new sealed locked buffer (zero rows stay 0)."""
        count, dim = view.shape
        buffer = _core.SecureBuffer(4 * count * dim, self._memory_lock)
        try:
            out = np.frombuffer(buffer, dtype="<f4").reshape(count, dim)
            for begin in range(0, count, _NORM_CHUNK_ROWS):
                rows = view[begin : begin + _NORM_CHUNK_ROWS]
                dst = out[begin : begin + _NORM_CHUNK_ROWS]
                # Scale by the largest |component| first so the sum of squares cannot
                # overflow; every intermediate lives in the locked destination.
                scale = np.maximum(rows.max(axis=1), -rows.min(axis=1))
                nonzero = (scale > 0)[:, None]
                dst[...] = 0
                np.divide(rows, scale[:, None], out=dst, where=nonzero)
                norms = np.sqrt(np.einsum("ij,ij->i", dst, dst))
                np.divide(dst, norms[:, None], out=dst, where=nonzero)
                del rows, dst
            del out
            buffer.seal()
        except BaseException:
            buffer.release()
            raise
        return buffer


class _ShardPass:
    """One shard's faiss results for a query batch, with per-query re-fetches."""

    def __init__(self, index, start, count, mask, view, fetch):
        self.index, self.start, self.count, self.mask, self.view = index, start, count, mask, view
        self.first_fetch = fetch
        self.fetch = np.zeros(0, dtype=np.int64)  # per query: rows asked of faiss
        self.keys: list[np.ndarray] = []  # per query: faiss keys of the returned rows
        self.ids: list[np.ndarray] = []  # per query: local rows returned (-1 = none)
        self.missing = np.zeros((0, 1), dtype=bool)  # per query: faiss gave -1 / non-finite
        self.boundary = np.zeros(0)  # per query: worst returned key, -inf if not truncated

    def run(self, queries, faiss_metric, metric) -> None:
        nq = len(queries)
        self.fetch = np.full(nq, self.first_fetch, dtype=np.int64)
        distances, ids = faiss.knn(queries, self.view, self.first_fetch, metric=faiss_metric)
        keys = -distances if metric == "l2" else distances
        self.keys = list(keys)
        self.ids = list(ids)
        self._summarize(range(nq))

    def fetch_more(self, queries, selected, faiss_metric, metric) -> None:
        fetch = int(min(self.count, 2 * self.fetch[selected].max()))
        subset = np.ascontiguousarray(queries[selected])
        distances, ids = faiss.knn(subset, self.view, fetch, metric=faiss_metric)
        keys = -distances if metric == "l2" else distances
        for position, q in enumerate(selected):
            self.keys[q] = keys[position]
            self.ids[q] = ids[position]
            self.fetch[q] = fetch
        self._summarize(selected)

    def _summarize(self, selected) -> None:
        if len(self.missing) != len(self.keys):
            self.missing = np.zeros((len(self.keys), 1), dtype=bool)
            self.boundary = np.full(len(self.keys), -np.inf)
        for q in selected:
            ids, keys = self.ids[q], self.keys[q]
            self.missing[q, 0] = bool((ids < 0).any() or not np.isfinite(keys).all())
            truncated = self.fetch[q] < self.count
            self.boundary[q] = keys[-1] if truncated else -np.inf

    def query_missing(self, q) -> bool:
        return bool(self.missing[q, 0])

    def allowed_keys(self) -> np.ndarray:
        """(nq, first_fetch) faiss keys, -inf where the row is masked out or missing."""
        keys = np.stack([k[: self.first_fetch] for k in self.keys])
        ids = np.stack([i[: self.first_fetch] for i in self.ids])
        ok = ids >= 0
        if self.mask is not None:
            ok &= self.mask[np.where(ok, ids, 0)] != 0
        return np.where(ok, keys, -np.inf)

    def incomplete(self, threshold: np.ndarray) -> np.ndarray:
        """Queries for which rows this shard did not return may still reach the band."""
        return (self.fetch < self.count) & ~(self.boundary < threshold)

    def candidates(self, q: int, threshold: float) -> np.ndarray:
        """Local allowed rows whose faiss key is within the band."""
        ids, keys = self.ids[q], self.keys[q]
        keep = (ids >= 0) & (keys >= threshold)
        if self.mask is not None:
            keep &= self.mask[np.where(ids >= 0, ids, 0)] != 0
        return ids[keep].astype(np.int64)


def _rescore(
    rows64: np.ndarray, work64: np.ndarray, query64: np.ndarray, metric: str
) -> np.ndarray:
    """The oracle formulas (float64 sums rounded to float32), row by row deterministic."""
    if metric == "l2":
        np.subtract(rows64, query64, out=work64)
        np.multiply(work64, work64, out=work64)
        return np.sqrt(work64.sum(axis=1).astype(np.float32))
    np.multiply(rows64, query64, out=work64)
    dot = work64.sum(axis=1).astype(np.float32)
    if metric == "ip":
        return dot
    np.multiply(rows64, rows64, out=work64)
    row_norm = np.sqrt(work64.sum(axis=1).astype(np.float32))
    q_norm = np.sqrt((query64 * query64).sum().astype(np.float32))
    denominator = q_norm * row_norm
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = dot / denominator
    return np.where(denominator > 0, scores, np.float32(0)).astype(np.float32)


def _max_norm(view: np.ndarray) -> float:
    """Largest row norm (float64), read in place chunk by chunk."""
    best = 0.0
    for begin in range(0, len(view), _NORM_CHUNK_ROWS):
        rows = view[begin : begin + _NORM_CHUNK_ROWS]
        scale = float(max(rows.max(), -rows.min(), 0.0))
        if scale == 0.0:
            continue
        # float32 sums of squares; einsum reads the rows in place (no copy of them).
        sums = np.einsum("ij,ij->i", rows, rows)
        if not np.isfinite(sums).all():
            return np.inf
        best = max(best, float(np.sqrt(sums.max(initial=0.0))))
    return best * (1.0 + 4.0 * (view.shape[1] + 2) * _U) if np.isfinite(best) else best


def _row_array(value, dtype, total: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype != dtype or array.ndim != 1 or array.size != total:
        raise ValueError(
            f"{name} must have one {np.dtype(dtype).name} per row ({total} values), "
            f"got {array.dtype} of shape {array.shape}"
        )
    return array
