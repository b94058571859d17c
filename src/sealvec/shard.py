"""Shards: immutable sealed objects holding a batch of vectors, ids and payloads.

Sections (see ``docs/format.md``):

- vectors: ``rows x dimension`` float32, row-major, little-endian; segments hold a
  whole number of rows.
- ids: ``rows + 1`` little-endian uint64 offsets, then the UTF-8 ids back to back.
- payloads: the same layout; each entry is the JSON object
  ``{"document": str | null, "metadata": {...}}``.
- attributes: the metadata again, column by column, for filters (see
  ``sealvec.attributes``).

A loaded shard keeps each section decrypted in its own ``SecureBuffer`` (locked,
non-dumpable memory), sealed read-only once filled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sealvec import _core
from sealvec.attributes import gather_attributes, parse_attributes
from sealvec.errors import IntegrityError, StorageError
from sealvec.keys import SecretKey
from sealvec.sealed import (
    DEFAULT_SEGMENT_SIZE,
    DTYPE_FLOAT32,
    KIND_SHARD,
    MAX_HEADER_SIZE,
    SECTION_ATTRIBUTES,
    SECTION_IDS,
    SECTION_PAYLOADS,
    SECTION_VECTORS,
    TAG_SIZE,
    Header,
    SealedWriter,
    SectionDecryptor,
    zero_fill,
    decrypt_section_into,
    parse_header,
    read_exact,
    verify_commitment,
)
from sealvec.storage import Storage

logger = logging.getLogger(__name__)

_HEADER_LEN_FIELD = struct.Struct("<I")
_HEADER_LEN_OFFSET = 12


SHARD_PREFIX = "shards/"


def shard_object_name(shard_id: bytes) -> str:
    return f"{SHARD_PREFIX}{shard_id.hex()}.svs"


def vector_segment_size(dimension: int, target: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Segment size for the vectors section: whole rows, about ``target`` bytes."""
    row_bytes = 4 * dimension
    return max(1, target // row_bytes) * row_bytes


def encode_strings(values: Sequence[bytes]) -> bytes:
    """Offsets table (len+1 little-endian uint64) followed by the values."""
    offsets = np.zeros(len(values) + 1, dtype="<u8")
    if values:
        np.cumsum([len(v) for v in values], out=offsets[1:])
    return offsets.tobytes() + b"".join(values)


_PAYLOAD_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_EMPTY_PAYLOAD = _PAYLOAD_ENCODER.encode({"document": None, "metadata": {}}).encode("utf-8")


def encode_payload(document: str | None, metadata: dict | None) -> bytes:
    if document is None and not metadata:
        return _EMPTY_PAYLOAD
    return _PAYLOAD_ENCODER.encode({"document": document, "metadata": metadata or {}}).encode(
        "utf-8"
    )


@dataclass(frozen=True)
class WrittenShard:
    shard_id: bytes
    rows: int
    header_sha256: str
    size: int


def secure_copy(data, memory_lock: str) -> _core.SecureBuffer:
    """A sealed SecureBuffer holding a copy of ``data`` (any bytes-like object)."""
    view = memoryview(data).cast("B")
    buffer = _core.SecureBuffer(view.nbytes, memory_lock)
    try:
        if view.nbytes:
            with memoryview(buffer) as out:
                out[:] = view
        buffer.seal()
    except BaseException:
        buffer.release()
        raise
    return buffer


def write_shard(
    storage: Storage,
    *,
    collection_id: bytes,
    shard_id: bytes,
    data_key: SecretKey,
    rows: int,
    dimension: int,
    vectors: _core.SecureBuffer,
    ids: _core.SecureBuffer,
    payloads: _core.SecureBuffer,
    attributes: _core.SecureBuffer,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> WrittenShard:
    """Encrypt a shard from its sections in locked memory and store it durably."""
    if vectors.nbytes != 4 * rows * dimension:
        raise ValueError("vectors section does not hold rows x dimension float32")
    writer = SealedWriter(
        kind=KIND_SHARD,
        root_key=data_key.material(),
        collection_id=collection_id,
        object_id=shard_id,
        dimension=dimension,
        dtype=DTYPE_FLOAT32,
        row_count=rows,
        sections=[
            (SECTION_VECTORS, vectors.nbytes, vector_segment_size(dimension, segment_size)),
            (SECTION_IDS, ids.nbytes, segment_size),
            (SECTION_PAYLOADS, payloads.nbytes, segment_size),
            (SECTION_ATTRIBUTES, attributes.nbytes, segment_size),
        ],
    )

    def chunks() -> Iterator[bytes]:
        yield writer.header_bytes()
        for section_id, buffer in (
            (SECTION_VECTORS, vectors),
            (SECTION_IDS, ids),
            (SECTION_PAYLOADS, payloads),
            (SECTION_ATTRIBUTES, attributes),
        ):
            with memoryview(buffer) as view:
                yield from writer.seal_section(section_id, view)

    storage.put(shard_object_name(shard_id), chunks(), create_only=True)
    header_sha256 = hashlib.sha256(writer.header_bytes()).hexdigest()
    return WrittenShard(shard_id, rows, header_sha256, writer.total_size)


def gather_rows(
    selections: Sequence[tuple[LoadedShard, np.ndarray]], dimension: int, memory_lock: str
) -> tuple[int, list[_core.SecureBuffer]]:
    """Copy selected rows of loaded shards into new sections, locked memory to locked
    memory, without making Python objects of their contents.

    Returns rows and the [vectors, ids, payloads, attributes] buffers, sealed.
    """
    rows = int(sum(len(selected) for _, selected in selections))
    buffers: list[_core.SecureBuffer] = []
    try:
        vectors = _core.SecureBuffer(4 * rows * dimension, memory_lock)
        buffers.append(vectors)
        if rows:
            with memoryview(vectors) as out:
                target = np.frombuffer(out, dtype="<f4").reshape(rows, dimension)
                position = 0
                for shard, selected in selections:
                    source = shard.vector_array()
                    target[position : position + len(selected)] = source[selected]
                    position += len(selected)
                    del source
                del target
        vectors.seal()
        for which in ("ids", "payloads"):
            buffers.append(_gather_strings(selections, rows, which, memory_lock))
        views = [memoryview(shard.attributes) for shard, _ in selections]
        try:
            sources = [
                (parse_attributes(view, shard.rows), np.asarray(selected, dtype=np.int64))
                for view, (shard, selected) in zip(views, selections)
            ]
            buffers.append(gather_attributes(sources, memory_lock))
            del sources
        finally:
            for view in views:
                view.release()
    except BaseException:
        for buffer in buffers:
            buffer.release()
        raise
    return rows, buffers


def _gather_strings(
    selections: Sequence[tuple[LoadedShard, np.ndarray]],
    rows: int,
    which: str,
    memory_lock: str,
) -> _core.SecureBuffer:
    sources = []
    lengths = []
    for shard, selected in selections:
        offsets_view, data_view = (
            (shard.ids_offsets, shard.ids_data)
            if which == "ids"
            else (shard.payload_offsets, shard.payload_data)
        )
        offsets = np.frombuffer(offsets_view, dtype="<u8")
        starts, ends = offsets[selected], offsets[np.asarray(selected) + 1]
        sources.append((data_view, starts, ends))
        lengths.append(ends - starts)
        del offsets
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype="<u8")
    table = np.zeros(rows + 1, dtype="<u8")
    np.cumsum(all_lengths, out=table[1:])
    table_bytes = 8 * (rows + 1)
    buffer = _core.SecureBuffer(table_bytes + int(table[-1]), memory_lock)
    try:
        with memoryview(buffer) as out:
            out[:table_bytes] = table.tobytes()
            position = table_bytes
            for data_view, starts, ends in sources:
                for start, end in zip(starts.tolist(), ends.tolist()):
                    out[position : position + end - start] = data_view[start:end]
                    position += end - start
        buffer.seal()
    except BaseException:
        buffer.release()
        raise
    return buffer


def read_header(stream, object_size: int) -> Header:
    """Read and parse a shard header from the start of ``stream``."""
    if object_size < _HEADER_LEN_OFFSET + 4:
        raise IntegrityError("shard is truncated (shorter than its header)")
    first = bytearray(_HEADER_LEN_OFFSET + 4)
    read_exact(stream, memoryview(first))
    (header_len,) = _HEADER_LEN_FIELD.unpack_from(first, _HEADER_LEN_OFFSET)
    if not len(first) <= header_len <= min(MAX_HEADER_SIZE, object_size):
        raise IntegrityError("shard header length is out of range or truncated")
    rest = bytearray(header_len - len(first))
    read_exact(stream, memoryview(rest))
    return parse_header(bytes(first + rest), expected_kind=KIND_SHARD)


class LoadedShard:
    """One shard decrypted into locked memory.

    ``holders`` counts the collection states that use it; the collection releases
    the memory when the last one lets go.
    """

    def __init__(
        self,
        shard_id: bytes,
        rows: int,
        dimension: int,
        vectors: _core.SecureBuffer,
        ids: _core.SecureBuffer,
        payloads: _core.SecureBuffer,
        attributes: _core.SecureBuffer,
    ) -> None:
        self.shard_id = shard_id
        self.rows = rows
        self.dimension = dimension
        self.vectors = vectors
        self.ids = ids
        self.payloads = payloads
        self.attributes = attributes
        self.holders = 0
        self._lock = threading.Lock()
        self.ids_offsets, self.ids_data = _split_strings(ids, rows, "ids")
        self.payload_offsets, self.payload_data = _split_strings(payloads, rows, "payloads")
        with memoryview(attributes) as view:
            parse_attributes(view, rows)  # fail closed now, not at the first filter

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in (self.vectors, self.ids, self.payloads, self.attributes))

    def vector_array(self) -> np.ndarray:
        """A read-only numpy view of the vectors (no copy)."""
        return np.frombuffer(self.vectors, dtype="<f4").reshape(self.rows, self.dimension)

    def payload(self, row: int) -> dict:
        offsets = np.frombuffer(self.payload_offsets, dtype="<u8")
        start, end = int(offsets[row]), int(offsets[row + 1])
        try:
            return json.loads(bytes(self.payload_data[start:end]).decode("utf-8"))
        except ValueError:
            raise IntegrityError("a shard payload is not valid JSON") from None

    def release(self) -> None:
        """Zero and unlock the shard's memory (deferred while views are in use)."""
        with self._lock:
            for view in (self.ids_offsets, self.ids_data, self.payload_offsets, self.payload_data):
                view.release()
            for buffer in (self.vectors, self.ids, self.payloads, self.attributes):
                buffer.release()


def _split_strings(
    buffer: _core.SecureBuffer, rows: int, what: str
) -> tuple[memoryview, memoryview]:
    """Check an offsets+values section and return views of its two parts."""
    table_bytes = 8 * (rows + 1)
    if buffer.nbytes < table_bytes:
        raise IntegrityError(f"shard {what} section is shorter than its offsets table")
    view = memoryview(buffer)
    offsets = np.frombuffer(view[:table_bytes], dtype="<u8")
    data_len = buffer.nbytes - table_bytes
    if offsets[0] != 0 or offsets[-1] != data_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        del offsets
        view.release()
        raise IntegrityError(f"shard {what} section has inconsistent offsets")
    del offsets
    offsets_view, data_view = view[:table_bytes], view[table_bytes:]
    view.release()
    return offsets_view, data_view


def load_shard(storage: Storage, *, shard_id: bytes, **options) -> LoadedShard:
    """Authenticate a shard and decrypt it into locked memory (see ``_load_shard``).

    Every integrity failure names the shard; a shard the manifest names but storage
    lacks is an integrity failure too.
    """
    name = shard_object_name(shard_id)
    try:
        return _load_shard(storage, shard_id=shard_id, **options)
    except IntegrityError as error:
        message = str(error)
        if shard_id.hex() in message:
            raise
        raise IntegrityError(f"{name}: {message}") from None
    except StorageError as error:
        if isinstance(error.__cause__, FileNotFoundError):
            raise IntegrityError(
                f"{name} is named by the manifest but missing from {storage.location}"
            ) from None
        raise


def _load_shard(
    storage: Storage,
    *,
    collection_id: bytes,
    shard_id: bytes,
    dimension: int,
    rows: int,
    header_sha256: str,
    size: int,
    data_key: SecretKey,
    memory_lock: str = "required",
) -> LoadedShard:
    """Authenticate a shard and decrypt it into locked memory.

    Every check runs before any plaintext is exposed: object size, header checksum,
    header digest recorded in the manifest, collection and shard ids, key
    commitment; then each segment's GCM tag as it is decrypted.
    """
    name = shard_object_name(shard_id)
    actual_size = storage.size(name)
    if actual_size != size:
        raise IntegrityError(f"shard {shard_id.hex()} has {actual_size} bytes, expected {size}")
    buffers: list[_core.SecureBuffer] = []
    with storage.open(name) as stream:
        header = read_header(stream, actual_size)
        if hashlib.sha256(header.raw).hexdigest() != header_sha256:
            raise IntegrityError(f"shard {shard_id.hex()} is not the shard the manifest names")
        if header.collection_id != collection_id or header.object_id != shard_id:
            raise IntegrityError(f"shard {shard_id.hex()} belongs to another collection or slot")
        if header.dimension != dimension or header.row_count != rows or header.dtype != DTYPE_FLOAT32:
            raise IntegrityError(f"shard {shard_id.hex()} header disagrees with the manifest")
        if header.total_size != actual_size:
            raise IntegrityError(f"shard {shard_id.hex()} is truncated or has trailing bytes")
        if [s.section_id for s in header.sections] != [
            SECTION_VECTORS,
            SECTION_IDS,
            SECTION_PAYLOADS,
            SECTION_ATTRIBUTES,
        ] or header.section(SECTION_VECTORS).plain_len != 4 * rows * dimension:
            raise IntegrityError(f"shard {shard_id.hex()} has an unexpected section table")
        segment_key = verify_commitment(header, data_key.material())

        # Decrypt each section straight into its own locked buffer: segments in
        # parallel when the object is a local file, else one after another.
        try:
            for entry in header.sections:
                buffers.append(_core.SecureBuffer(entry.plain_len, memory_lock))
            file_descriptor = _file_descriptor(stream)
            if file_descriptor is not None and header.total_size >= _PARALLEL_MIN_BYTES:
                _decrypt_segments_in_parallel(file_descriptor, header, segment_key, buffers)
            else:
                scratch = bytearray()
                for entry, buffer in zip(header.sections, buffers):
                    with memoryview(buffer) as out:
                        decrypt_section_into(
                            stream, header, segment_key, entry.section_id, out, scratch
                        )
            for buffer in buffers:
                buffer.seal()
            return LoadedShard(shard_id, rows, dimension, *buffers)
        except BaseException:
            for buffer in buffers:
                buffer.release()
            raise


_PARALLEL_MIN_BYTES = 4 << 20
_segment_pool: ThreadPoolExecutor | None = None
_segment_pool_lock = threading.Lock()


def _shared_segment_pool() -> ThreadPoolExecutor:
    """One pool for segment decryption, shared by every shard being loaded
    (``cryptography`` releases the GIL while it decrypts)."""
    global _segment_pool
    with _segment_pool_lock:
        if _segment_pool is None:
            _segment_pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="sealvec-decrypt"
            )
        return _segment_pool


def _file_descriptor(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _decrypt_segments_in_parallel(
    file_descriptor: int, header: Header, segment_key: bytes, buffers: list
) -> None:
    """Read (pread) and decrypt every segment of every section on the shared pool.

    Each task holds one segment of ciphertext; on any failure every section's
    plaintext is zeroed before the error is raised.
    """
    local = threading.local()
    views = [memoryview(buffer) for buffer in buffers]
    try:
        tasks = []
        for entry, out in zip(header.sections, views):
            decryptor = SectionDecryptor(header, segment_key, entry.section_id)
            position = entry.offset
            for index in range(entry.segment_count):
                start, length = entry.segment_bounds(index)
                tasks.append((decryptor, index, position, length, out[start : start + length]))
                position += length + TAG_SIZE

        def run(task) -> None:
            decryptor, index, position, length, out = task
            scratch = getattr(local, "scratch", None)
            if scratch is None or len(scratch) < length + TAG_SIZE:
                scratch = local.scratch = bytearray(max(length + TAG_SIZE, DEFAULT_SEGMENT_SIZE + TAG_SIZE))
            with memoryview(scratch)[: length + TAG_SIZE] as sealed:
                got = os.preadv(file_descriptor, [sealed], position)
                if got != length + TAG_SIZE:
                    raise IntegrityError("sealed object is truncated")
                decryptor.decrypt_segment_into(index, sealed, out)

        futures = [_shared_segment_pool().submit(run, task) for task in tasks]
        errors = []
        for future in futures:
            try:
                future.result()
            except BaseException as error:  # noqa: BLE001 - raised once below
                errors.append(error)
        if errors:
            for view in views:
                zero_fill(view)
            raise errors[0]
    finally:
        for task in locals().get("tasks", []):
            task[4].release()
        for view in views:
            view.release()
