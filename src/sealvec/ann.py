"""Approximate top-k search: FAISS IVF-Flat and HNSW indexes, sealed like shards.

An index is built from the collection's locked shard buffers, serialized with FAISS's
own writer, copied into a ``SecureBuffer`` and sealed as one object
(``indexes/<id>.svi``, kind 3, one section: the serialized index) under its own data
key, wrapped by the collection key like a shard's. The manifest names it with the
shards it covers; it is dropped from the manifest as soon as one of those shards
leaves the live list (compaction, forget), so an index never holds rows that are
gone from the collection.

Loading decrypts the object into a sealed ``SecureBuffer`` and reads it with FAISS's
``ZeroCopyIOReader``: the index's vector storage (HNSW's flat storage, IVF's
centroids and inverted lists) and HNSW's graph are views of the locked buffer, not
copies (``LoadedIndex.vectors_in_locked_memory`` checks it). FAISS keeps a few small
owned arrays (list sizes, labels, level tables) on its own heap.

Building passes the vectors through FAISS's own heap, which sealvec cannot lock: the
index under construction holds a copy of every vector, and k-means training (IVF)
keeps temporary centroids. sealvec reserves the index's arrays up front so they are
not reallocated, zeroes the index's vector storage, centroids and serialized bytes
once they are copied into locked memory, and frees them; FAISS's training temporaries
are freed without being zeroed.

FAISS labels are positions in the concatenation of the covered shards, in the order
the index entry lists them (all rows, deleted ones included: the collection masks
them at search time with an ``IDSelectorBitmap``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealvec import _core
from sealvec.errors import IntegrityError, SealvecError, StorageError, ValidationError
from sealvec.keys import SecretKey
from sealvec.manifest import INDEX_KINDS, IndexEntry
from sealvec.sealed import (
    DEFAULT_SEGMENT_SIZE,
    DTYPE_NONE,
    KIND_INDEX,
    MAX_HEADER_SIZE,
    SECTION_INDEX,
    SealedWriter,
    decrypt_section_into,
    parse_header,
    read_exact,
    verify_commitment,
)
from sealvec.storage import Storage

logger = logging.getLogger(__name__)

INDEX_PREFIX = "indexes/"
_CHUNK_ROWS = 8192
_HEADER_LEN_OFFSET = 12  # u32 header_len in the fixed part (docs/format.md §2.1)

# Build and search parameters, with their defaults and allowed ranges.
_HNSW_DEFAULTS = {"m": 32, "ef_construction": 100, "ef_search": 64}
_HNSW_RANGES = {"m": (4, 256), "ef_construction": (8, 8192), "ef_search": (1, 65536)}
_IVF_RANGES = {"nlist": (1, 1 << 20), "nprobe": (1, 1 << 20), "train_rows": (1, 1 << 40)}


def index_object_name(index_id: bytes) -> str:
    return f"{INDEX_PREFIX}{index_id.hex()}.svi"


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ValidationError(
            "approximate search needs faiss: pip install 'sealvec[faiss]'"
        ) from None
    if not hasattr(faiss, "ZeroCopyIOReader"):
        raise ValidationError(
            f"approximate search reads indexes in place with faiss's ZeroCopyIOReader "
            f"(faiss-cpu 1.11 or newer); this is faiss {faiss.__version__}"
        )
    return faiss


def _positive_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValidationError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def resolve_params(kind: str, params: dict[str, Any], rows: int) -> dict[str, int]:
    """Build parameters with defaults filled in, checked against ``rows``.

    hnsw: ``m`` (graph degree, 32), ``ef_construction`` (100), ``ef_search`` (default
    for queries, 64). ivf: ``nlist`` (lists, default about 4 sqrt(rows), at most one
    per 39 rows), ``nprobe`` (default for queries: nlist / 8, at least 1),
    ``train_rows`` (rows sampled for k-means, default min(rows, 64 nlist)).
    """
    if kind not in INDEX_KINDS:
        raise ValidationError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    if rows < 1:
        raise ValidationError("the collection has no rows to index")
    if kind == "hnsw":
        unknown = set(params) - set(_HNSW_DEFAULTS)
        if unknown:
            raise ValidationError(
                f"unknown hnsw parameter(s) {sorted(unknown)}; known: {sorted(_HNSW_DEFAULTS)}"
            )
        resolved = dict(_HNSW_DEFAULTS)
        for name, value in params.items():
            if value is not None:
                resolved[name] = _positive_int(name, value, *_HNSW_RANGES[name])
        return resolved
    unknown = set(params) - set(_IVF_RANGES)
    if unknown:
        raise ValidationError(
            f"unknown ivf parameter(s) {sorted(unknown)}; known: {sorted(_IVF_RANGES)}"
        )
    given = {
        name: _positive_int(name, value, *_IVF_RANGES[name])
        for name, value in params.items()
        if value is not None
    }
    nlist = given.get("nlist", max(1, min(round(4 * math.sqrt(rows)), rows // 39)))
    if nlist > rows:
        raise ValidationError(f"nlist must be at most the number of rows ({rows}), got {nlist}")
    nprobe = min(given.get("nprobe", max(1, nlist // 8)), nlist)
    train_rows = given.get("train_rows", min(rows, 64 * nlist))
    if not nlist <= train_rows <= rows:
        raise ValidationError(
            f"train_rows must be between nlist ({nlist}) and the rows ({rows}), got {train_rows}"
        )
    return {"nlist": nlist, "nprobe": nprobe, "train_rows": train_rows}


def search_params(kind: str, ef_search: int | None, nprobe: int | None) -> dict[str, int]:
    """Per-query overrides, checked; the other kind's knob is refused."""
    if kind == "hnsw":
        if nprobe is not None:
            raise ValidationError("nprobe applies to the ivf backend; hnsw takes ef_search")
        if ef_search is None:
            return {}
        return {"ef_search": _positive_int("ef_search", ef_search, *_HNSW_RANGES["ef_search"])}
    if ef_search is not None:
        raise ValidationError("ef_search applies to the hnsw backend; ivf takes nprobe")
    if nprobe is None:
        return {}
    return {"nprobe": _positive_int("nprobe", nprobe, *_IVF_RANGES["nprobe"])}


# --------------------------------------------------------------------------- FAISS memory


def _address(pointer) -> int:
    return int(pointer)


def _vector_regions(faiss, index) -> list[tuple[int, int]]:
    """(address, bytes) of every array of ``index`` that holds vectors or centroids."""
    regions = []
    if isinstance(index, faiss.IndexHNSW):
        codes = faiss.downcast_index(index.storage).codes
        regions.append((_address(codes.data()), codes.size()))
    else:
        ivf = faiss.extract_index_ivf(index)
        centroids = faiss.downcast_index(ivf.quantizer).codes
        regions.append((_address(centroids.data()), centroids.size()))
        lists = ivf.invlists
        for list_no in range(lists.nlist):
            size = lists.list_size(list_no)
            if size:
                regions.append((_address(lists.get_codes(list_no)), size * lists.code_size))
    return [(address, size) for address, size in regions if size]


def _wipe(faiss, regions: list[tuple[int, int]]) -> None:
    for address, size in regions:
        faiss.rev_swig_ptr(faiss.cast_integer_to_uint8_ptr(address), size).fill(0)


def _buffer_address(buffer: _core.SecureBuffer) -> int:
    return np.frombuffer(buffer, dtype=np.uint8).ctypes.data if buffer.nbytes else 0


# --------------------------------------------------------------------------- building


def _gather_vectors(
    shards: Sequence[Any], dimension: int, normalize: bool, memory_lock: str
) -> _core.SecureBuffer:
    """Every row of ``shards`` in one locked buffer (unit length when ``normalize``)."""
    rows = sum(s.rows for s in shards)
    buffer = _core.SecureBuffer(4 * rows * dimension, memory_lock)
    try:
        with memoryview(buffer) as view:
            _fill(np.frombuffer(view, dtype=np.float32).reshape(rows, dimension), shards, normalize)
        buffer.seal()
    except BaseException:
        buffer.release()
        raise
    return buffer


def _fill(out: np.ndarray, shards: Sequence[Any], normalize: bool) -> None:
    start = 0
    for shard in shards:
        if shard.rows:
            out[start : start + shard.rows] = shard.vector_array()
        start += shard.rows
    if normalize:
        # Row norms without a squared copy of the vectors; in place, chunk by chunk.
        for begin in range(0, len(out), _CHUNK_ROWS):
            chunk = out[begin : begin + _CHUNK_ROWS]
            norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
            chunk /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]


def build_index(
    kind: str,
    shards: Sequence[Any],
    dimension: int,
    metric: str,
    params: dict[str, int],
    memory_lock: str,
) -> _core.SecureBuffer:
    """Build a FAISS index over every row of ``shards`` and return it serialized, in a
    sealed SecureBuffer. ``params`` come from ``resolve_params``."""
    faiss = _import_faiss()
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    vectors = _gather_vectors(shards, dimension, metric == "cosine", memory_lock)
    index = None
    regions: list[tuple[int, int]] = []
    writer = None
    try:
        rows = vectors.nbytes // (4 * dimension)
        data = np.frombuffer(vectors, dtype=np.float32).reshape(rows, dimension)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dimension, params["m"], faiss_metric)
            index.hnsw.efConstruction = params["ef_construction"]
            index.hnsw.efSearch = params["ef_search"]
            index.add(data)  # one resize of the flat storage: no stale copies
        else:
            quantizer = faiss.IndexFlat(dimension, faiss_metric)
            index = faiss.IndexIVFFlat(quantizer, dimension, params["nlist"], faiss_metric)
            sample = np.sort(
                np.random.default_rng(0).choice(rows, params["train_rows"], replace=False)
            )
            training = _core.SecureBuffer(4 * len(sample) * dimension, memory_lock)
            try:
                with memoryview(training) as view:
                    picked = np.frombuffer(view, dtype=np.float32).reshape(len(sample), dimension)
                    np.take(data, sample, axis=0, out=picked)
                    index.train(picked)
                    del picked
            finally:
                training.release()
            index.nprobe = params["nprobe"]
            _reserve_lists(faiss, index, data)
            index.add(data)
        regions = _vector_regions(faiss, index)

        # Serialize into a vector reserved up front (no reallocated copies), then
        # copy into locked memory.
        writer = faiss.VectorIOWriter()
        estimate = _serialized_estimate(faiss, index, dimension)
        writer.data.resize(estimate)
        writer.data.resize(0)
        faiss.write_index(index, writer)
        size = writer.data.size()
        if size > estimate:
            logger.debug("serialized index outgrew its reservation (%d > %d bytes)", size, estimate)
        serialized = _core.SecureBuffer(size, memory_lock)
        try:
            with memoryview(serialized) as out:
                np.frombuffer(out, dtype=np.uint8)[:] = faiss.rev_swig_ptr(writer.data.data(), size)
            serialized.seal()
        except BaseException:
            serialized.release()
            raise
        return serialized
    finally:
        if index is not None:
            _wipe(faiss, regions or _vector_regions(faiss, index))
        if writer is not None and writer.data.size():
            faiss.rev_swig_ptr(writer.data.data(), writer.data.size()).fill(0)
        del index, writer
        vectors.release()


def _reserve_lists(faiss, index, data: np.ndarray) -> None:
    """Give every inverted list its final capacity before adding, so the lists are
    filled in place rather than grown (and copied) step by step."""
    _, assignment = index.quantizer.search(data, 1)
    counts = np.bincount(assignment.ravel(), minlength=index.nlist)
    lists = faiss.extract_index_ivf(index).invlists
    lists = faiss.downcast_InvertedLists(lists)
    for list_no in np.flatnonzero(counts).tolist():
        lists.resize(list_no, int(counts[list_no]))
        lists.resize(list_no, 0)


def _serialized_estimate(faiss, index, dimension: int) -> int:
    ntotal = index.ntotal
    estimate = 4 * ntotal * dimension + (1 << 20)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        estimate += 4 * hnsw.neighbors.size() + 4 * hnsw.levels.size() + 8 * hnsw.offsets.size()
        estimate += 8 * hnsw.assign_probas.size() + 4 * hnsw.cum_nneighbor_per_level.size()
    else:
        estimate += 8 * ntotal + 4 * index.nlist * dimension + 16 * index.nlist
    return estimate


def write_index(
    storage: Storage,
    *,
    collection_id: bytes,
    index_id: bytes,
    data_key: SecretKey,
    serialized: _core.SecureBuffer,
    rows: int,
    dimension: int,
) -> tuple[str, int]:
    """Seal a serialized index under ``data_key`` and store it create-only; returns
    (header SHA-256 hex, object size)."""
    writer = SealedWriter(
        kind=KIND_INDEX,
        root_key=data_key.material(),
        collection_id=collection_id,
        object_id=index_id,
        dimension=dimension,
        dtype=DTYPE_NONE,
        row_count=rows,
        sections=[(SECTION_INDEX, serialized.nbytes, DEFAULT_SEGMENT_SIZE)],
    )

    def chunks():
        yield writer.header_bytes()
        with memoryview(serialized) as view:
            yield from writer.seal_section(SECTION_INDEX, view)

    storage.put(index_object_name(index_id), chunks(), create_only=True)
    return hashlib.sha256(writer.header_bytes()).hexdigest(), writer.total_size


# --------------------------------------------------------------------------- loading


class LoadedIndex:
    """A FAISS index read in place from a sealed, locked buffer.

    ``holders`` counts the collection states that use it; the collection releases it
    when the last one lets go. ``search`` may run from many threads at once.
    """

    def __init__(self, entry: IndexEntry, serialized: _core.SecureBuffer, metric: str) -> None:
        faiss = _import_faiss()
        self.entry = entry
        self.metric = metric
        self.holders = 0
        self._faiss = faiss
        self._buffer = serialized
        self._lock = threading.Lock()
        array = np.frombuffer(serialized, dtype=np.uint8)
        try:
            reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(array), array.size)
            index = faiss.read_index(reader)
        except RuntimeError:
            raise SealvecError(
                f"index {entry.index_id.hex()} authenticated but this faiss "
                f"({faiss.__version__}) cannot read it; build the index again"
            ) from None
        expected = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        kind_class = faiss.IndexHNSWFlat if entry.kind == "hnsw" else faiss.IndexIVFFlat
        if (
            not isinstance(index, kind_class)
            or index.ntotal != entry.rows
            or index.metric_type != expected
        ):
            raise IntegrityError(f"index {entry.index_id.hex()} disagrees with the manifest")
        self._index = index

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes

    def vectors_in_locked_memory(self) -> bool:
        """Whether every array of the index holding vectors lies in the locked buffer."""
        start = _buffer_address(self._buffer)
        end = start + self._buffer.nbytes
        return all(
            start <= address and address + size <= end
            for address, size in _vector_regions(self._faiss, self._index)
        )

    def search(
        self,
        queries: np.ndarray,
        k: int,
        bitmap: np.ndarray | None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's (distances, labels) for ``queries`` (already unit length for cosine);
        ``bitmap`` (little-endian bit per label, 1 = allowed) or None for all."""
        faiss = self._faiss
        params = self.entry.params
        if self.kind == "hnsw":
            options = faiss.SearchParametersHNSW()
            options.efSearch = max(ef_search or params["ef_search"], k)
        else:
            options = faiss.SearchParametersIVF()
            options.nprobe = min(nprobe or params["nprobe"], params["nlist"])
        selector = None
        if bitmap is not None:
            selector = faiss.IDSelectorBitmap(self.entry.rows, faiss.swig_ptr(bitmap))
            options.sel = selector
        with self._lock:
            index = self._index
        if index is None:
            raise SealvecError("the index was released")
        distances, labels = index.search(queries, k, params=options)
        del selector
        return distances, labels

    def release(self) -> None:
        """Drop the FAISS index (its owned arrays are freed), then zero and unlock the
        buffer its vectors live in."""
        with self._lock:
            self._index = None
        self._buffer.release()


def _read_index_header(stream, object_size: int):
    first = bytearray(_HEADER_LEN_OFFSET + 4)
    if object_size < len(first):
        raise IntegrityError("index object is truncated (shorter than its header)")
    read_exact(stream, memoryview(first))
    header_len = int.from_bytes(first[_HEADER_LEN_OFFSET:], "little")
    if not len(first) <= header_len <= min(MAX_HEADER_SIZE, object_size):
        raise IntegrityError("index header length is out of range or truncated")
    rest = bytearray(header_len - len(first))
    read_exact(stream, memoryview(rest))
    return parse_header(bytes(first + rest), expected_kind=KIND_INDEX)


def load_index(storage: Storage, *, entry: IndexEntry, **options) -> LoadedIndex:
    """Authenticate an index object and read it into locked memory (see
    ``_load_index``). Every integrity failure names the object."""
    name = index_object_name(entry.index_id)
    try:
        return _load_index(storage, entry=entry, **options)
    except IntegrityError as error:
        if name in str(error):
            raise
        raise IntegrityError(f"{name}: {error}") from None


def _load_index(
    storage: Storage,
    *,
    collection_id: bytes,
    dimension: int,
    metric: str,
    entry: IndexEntry,
    data_key: SecretKey,
    memory_lock: str,
) -> LoadedIndex:
    """Authenticate an index object and read it into locked memory.

    Every check runs before FAISS sees a byte: object size, header digest recorded in
    the manifest, collection and index ids, rows, key commitment, each segment's tag.
    """
    name = index_object_name(entry.index_id)
    try:
        actual_size = storage.size(name)
    except StorageError as error:
        if isinstance(error.__cause__, FileNotFoundError):
            raise IntegrityError(
                f"{name} is named by the manifest but missing from {storage.location}"
            ) from None
        raise
    if actual_size != entry.size:
        raise IntegrityError(f"{name} has {actual_size} bytes, expected {entry.size}")
    with storage.open(name) as stream:
        header = _read_index_header(stream, actual_size)
        if hashlib.sha256(header.raw).hexdigest() != entry.header_sha256:
            raise IntegrityError(f"{name} is not the index the manifest names")
        if header.collection_id != collection_id or header.object_id != entry.index_id:
            raise IntegrityError(f"{name} belongs to another collection or slot")
        if header.dimension != dimension or header.row_count != entry.rows:
            raise IntegrityError(f"{name} header disagrees with the manifest")
        if header.total_size != actual_size:
            raise IntegrityError(f"{name} is truncated or has trailing bytes")
        if [s.section_id for s in header.sections] != [SECTION_INDEX]:
            raise IntegrityError(f"{name} has an unexpected section table")
        segment_key = verify_commitment(header, data_key.material())
        section = header.section(SECTION_INDEX)
        buffer = _core.SecureBuffer(section.plain_len, memory_lock)
        try:
            with memoryview(buffer) as out:
                decrypt_section_into(stream, header, segment_key, SECTION_INDEX, out)
            buffer.seal()
            return LoadedIndex(entry, buffer, metric)
        except BaseException:
            buffer.release()
            raise
