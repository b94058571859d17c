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

import collections
import hashlib
import itertools
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from sealvec import _core
from sealvec.attributes import gather_attributes, parse_attributes
from sealvec.errors import IntegrityError, StorageError, ValidationError
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
    decrypt_section_into,
    parse_header,
    read_exact,
    verify_commitment,
)
from sealvec.storage import Storage
from sealvec.validation import vector_problem

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


def encode_payloads(documents: Sequence[str | None], metadata: Sequence[dict]) -> list[bytes]:
    """One encoded payload per row (see ``encode_payload``)."""
    if documents.count(None) == len(documents) and not any(metadata):
        return [_EMPTY_PAYLOAD] * len(documents)
    return [encode_payload(d, m) for d, m in zip(documents, metadata)]


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
    vector_source: np.ndarray | None = None,
    metric: str = "ip",
    threads: int = 0,
) -> WrittenShard:
    """Encrypt a shard from its sections in locked memory and store it durably.

    With ``vector_source`` (C-contiguous float32 rows), ``vectors`` starts empty and
    unsealed: each segment is copied in from the source just before it is sealed, and
    the buffer is sealed read-only once the shard is stored. The copy is checked again
    (``validation.vector_problem`` under ``metric``) before the object is committed, so
    a source changed by another thread after the caller checked it cannot store NaN.
    Segments are sealed on up to ``threads`` threads (default: one per core) a few
    ahead of the one being written, so encryption overlaps the writes.
    """
    if vectors.nbytes != 4 * rows * dimension:
        raise ValueError("vectors section does not hold rows x dimension float32")
    if vector_source is not None and memoryview(vector_source).nbytes != vectors.nbytes:
        raise ValueError("vector_source does not hold rows x dimension float32")
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
    sections = [
        (SECTION_VECTORS, vectors),
        (SECTION_IDS, ids),
        (SECTION_PAYLOADS, payloads),
        (SECTION_ATTRIBUTES, attributes),
    ]
    views = [memoryview(buffer) for _, buffer in sections]
    source = memoryview(vector_source).cast("B") if vector_source is not None else None
    segments = _SealedSegments(writer, threads or os.cpu_count() or 1)

    def check_copied_vectors() -> None:
        array = np.frombuffer(views[0], dtype=np.float32).reshape(rows, dimension)
        problem = vector_problem(array, metric)
        del array  # before the view can be released
        if problem is not None:
            raise ValidationError(f"{problem} (changed while it was being added)")

    try:
        for (section_id, _), view in zip(sections, views):
            if section_id == SECTION_VECTORS and source is not None:
                segments.add_section(section_id, view, source, then=check_copied_vectors)
            else:
                segments.add_section(section_id, view, None)
        storage.put(
            shard_object_name(shard_id),
            itertools.chain([writer.header_bytes()], segments),
            create_only=True,
        )
    finally:
        segments.close()
        for view in views:
            view.release()
        if source is not None:
            source.release()
    if vector_source is not None:
        vectors.seal()
    header_sha256 = hashlib.sha256(writer.header_bytes()).hexdigest()
    return WrittenShard(shard_id, rows, header_sha256, writer.total_size)


class _SealedSegments:
    """Every segment of a sealed object's sections, in order, sealed a few ahead on the
    shared pool while the consumer writes the earlier ones.

    Iterating yields views into a small ring of buffers: each is valid only until the
    next one is requested (``Storage.put`` writes or copies a chunk before asking for
    the next). ``close()`` waits for sealing in progress; call it in all cases.
    """

    def __init__(self, writer: SealedWriter, threads: int) -> None:
        self._writer = writer
        self._depth = threads + 1  # segments sealed or being sealed ahead of the writer
        self._jobs: list[tuple[int, int, memoryview, memoryview | None]] = []
        # Called once the job at that position and every one before it are sealed.
        self._then: dict[int, Callable[[], None]] = {}
        self._pending: collections.deque = collections.deque()
        self._ring: list[bytearray] = []
        self._submitted = 0

    def add_section(
        self,
        section_id: int,
        plain: memoryview,
        source: memoryview | None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Queue a section's segments; with ``source``, each segment's plaintext is
        first copied from it into ``plain`` (at the same offsets). ``then`` runs once
        the whole section is sealed, before its last segment is handed on; an error
        it raises stops the write."""
        entry = self._writer.section_entry(section_id)
        for index in range(entry.segment_count):
            self._jobs.append((section_id, index, plain, source))
        if then is not None:
            if entry.segment_count:
                self._then[len(self._jobs) - 1] = then
            else:
                then()

    def __iter__(self) -> Iterator[memoryview]:
        largest = max(
            (self._writer.section_entry(job[0]).segment_size for job in self._jobs), default=0
        )
        self._ring = _take_segment_buffers(
            min(self._depth + 1, len(self._jobs)), largest + TAG_SIZE
        )
        while self._submitted < min(self._depth, len(self._jobs)):
            self._submit()
        for position in range(len(self._jobs)):
            ring_index, future = self._pending.popleft()
            written = future.result()
            if position in self._then:
                self._then[position]()
            if self._submitted < len(self._jobs):
                self._submit()  # reuses the buffer yielded before this one: written out
            with memoryview(self._ring[ring_index])[:written] as chunk:
                yield chunk

    def _submit(self) -> None:
        ring_index = self._submitted % len(self._ring)
        job = self._jobs[self._submitted]
        future = _shared_pool().submit(self._seal, job, self._ring[ring_index])
        self._pending.append((ring_index, future))
        self._submitted += 1

    def _seal(self, job, out: bytearray) -> int:
        section_id, index, plain, source = job
        start, length = self._writer.section_entry(section_id).segment_bounds(index)
        with plain[start : start + length] as segment:
            if source is not None:
                with source[start : start + length] as copied:
                    _copy_bytes(segment, copied)
            return self._writer.seal_segment_into(section_id, index, segment, out)

    def close(self) -> None:
        interrupted = None
        for _, future in self._pending:
            while not future.cancel() and not future.done():
                try:
                    wait([future])
                except KeyboardInterrupt as error:  # finish waiting, then raise it
                    interrupted = error
        self._pending.clear()
        self._jobs.clear()
        _return_segment_buffers(self._ring)
        self._ring = []
        if interrupted is not None:
            raise interrupted


# Ciphertext buffers of finished writes, kept for the next (fresh pages cost a fault
# and zeroing each); at most a few per core.
_spare_segment_buffers: list[bytearray] = []
_spare_lock = threading.Lock()


def _take_segment_buffers(count: int, size: int) -> list[bytearray]:
    with _spare_lock:
        taken = [b for b in _spare_segment_buffers if len(b) >= size][:count]
        for buffer in taken:
            _spare_segment_buffers.remove(buffer)
    return taken + [bytearray(size) for _ in range(count - len(taken))]


def _return_segment_buffers(buffers: list[bytearray]) -> None:
    with _spare_lock:
        room = 2 * (os.cpu_count() or 1) + 2 - len(_spare_segment_buffers)
        _spare_segment_buffers.extend(buffers[: max(0, room)])


def _copy_bytes(target: memoryview, source: memoryview) -> None:
    """``target[:] = source``, through numpy, which releases the GIL while it copies."""
    np.copyto(np.frombuffer(target, dtype=np.uint8), np.frombuffer(source, dtype=np.uint8))


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


@dataclass(frozen=True)
class ShardSource:
    """What a manifest says about one shard, with its data key: enough to load it."""

    collection_id: bytes
    shard_id: bytes
    dimension: int
    rows: int
    header_sha256: str
    size: int
    data_key: SecretKey


def load_shard(
    storage: Storage, *, memory_lock: str = "required", threads: int = 0, **source
) -> LoadedShard:
    """Authenticate one shard and decrypt it into locked memory (see ``load_shards``);
    ``source`` holds the fields of a ``ShardSource``."""
    return load_shards(storage, [ShardSource(**source)], memory_lock=memory_lock, threads=threads)[0]


def load_shards(
    storage: Storage,
    sources: Sequence[ShardSource],
    *,
    memory_lock: str = "required",
    threads: int = 0,
) -> list[LoadedShard]:
    """Authenticate shards and decrypt them into locked memory, all in parallel.

    Every check runs before any plaintext is exposed: object size, header checksum,
    header digest recorded in the manifest, collection and shard ids, key
    commitment; then each segment's GCM tag as it is decrypted. Every integrity
    failure names its shard; a shard that storage lacks is an integrity failure too.

    Up to ``threads`` threads (default: one per core) share the work: this one and
    those of a pool kept for the process. Segments of local files are read with
    ``pread`` and decrypted independently, each thread holding one segment of
    ciphertext at a time; other storage streams each shard in order.
    """
    threads = threads or os.cpu_count() or 1
    opened: list[_OpenedShard | None] = [None] * len(sources)

    def open_one(position: int) -> None:
        with _errors_named(storage, sources[position].shard_id):
            opened[position] = _OpenedShard.open(storage, sources[position], memory_lock)

    loaded: list[LoadedShard] = []
    try:
        # Headers first (a round trip each on network storage), mapping the buffers.
        _run_in_parallel([partial(open_one, i) for i in range(len(sources))], threads)
        tasks = [task for shard in opened for task in shard.decrypt_tasks(storage)]
        _run_in_parallel(tasks, threads)
        for shard in opened:
            with _errors_named(storage, shard.source.shard_id):
                loaded.append(shard.finish())
        return loaded
    except BaseException:
        for shard in loaded:
            shard.release()
        for shard in opened[len(loaded) :]:
            if shard is not None:
                shard.abandon()
        raise


@contextmanager
def _errors_named(storage: Storage, shard_id: bytes) -> Iterator[None]:
    """Name the shard in integrity failures; a missing shard is one too."""
    name = shard_object_name(shard_id)
    try:
        yield
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


# Segments per decryption task of a local file: a few MiB of plaintext, so threads
# rarely write into (and fault in) the same huge page at once.
_SEGMENTS_PER_TASK = 4


class _OpenedShard:
    """A shard whose header is authenticated and whose locked buffers are mapped
    (pages are locked as decryption first writes them), ready to decrypt."""

    def __init__(self, source, stream, header, segment_key, buffers) -> None:
        self.source = source
        self.stream = stream
        self.header = header
        self.segment_key = segment_key
        self.buffers = buffers
        self.views = [memoryview(buffer) for buffer in buffers]

    @classmethod
    def open(cls, storage: Storage, source: ShardSource, memory_lock: str) -> _OpenedShard:
        shard_id, rows, dimension = source.shard_id, source.rows, source.dimension
        name = shard_object_name(shard_id)
        actual_size = storage.size(name)
        if actual_size != source.size:
            raise IntegrityError(
                f"shard {shard_id.hex()} has {actual_size} bytes, expected {source.size}"
            )
        stream = storage.open(name)
        buffers: list[_core.SecureBuffer] = []
        try:
            header = read_header(stream, actual_size)
            if hashlib.sha256(header.raw).hexdigest() != source.header_sha256:
                raise IntegrityError(f"shard {shard_id.hex()} is not the shard the manifest names")
            if header.collection_id != source.collection_id or header.object_id != shard_id:
                raise IntegrityError(
                    f"shard {shard_id.hex()} belongs to another collection or slot"
                )
            if (
                header.dimension != dimension
                or header.row_count != rows
                or header.dtype != DTYPE_FLOAT32
            ):
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
            segment_key = verify_commitment(header, source.data_key.material())
            for entry in header.sections:
                buffers.append(_core.SecureBuffer(entry.plain_len, memory_lock))
            return cls(source, stream, header, segment_key, buffers)
        except BaseException:
            for buffer in buffers:
                buffer.release()
            stream.close()
            raise

    def decrypt_tasks(self, storage: Storage) -> list[Callable[[], None]]:
        """Callables that together decrypt every section into its buffer."""
        shard_id = self.source.shard_id
        file_descriptor = _file_descriptor(self.stream)
        if file_descriptor is None:
            return [partial(self._decrypt_streaming, storage)]
        tasks = []
        for entry, out in zip(self.header.sections, self.views):
            decryptor = SectionDecryptor(self.header, self.segment_key, entry.section_id)
            for first in range(0, entry.segment_count, _SEGMENTS_PER_TASK):
                last = min(first + _SEGMENTS_PER_TASK, entry.segment_count)
                tasks.append(
                    partial(
                        _decrypt_segments, storage, shard_id, file_descriptor, decryptor,
                        range(first, last), out,
                    )
                )
        return tasks

    def _decrypt_streaming(self, storage: Storage) -> None:
        with _errors_named(storage, self.source.shard_id):
            scratch = _thread_scratch(0)
            for entry, out in zip(self.header.sections, self.views):
                decrypt_section_into(
                    self.stream, self.header, self.segment_key, entry.section_id, out, scratch
                )

    def finish(self) -> LoadedShard:
        """Seal the buffers read-only and hand them to a LoadedShard."""
        self._drop_views()
        source = self.source
        for buffer in self.buffers:
            buffer.seal()
        return LoadedShard(source.shard_id, source.rows, source.dimension, *self.buffers)

    def abandon(self) -> None:
        """Zero and unmap whatever was decrypted (after every task has stopped)."""
        self._drop_views()
        for buffer in self.buffers:
            buffer.release()

    def _drop_views(self) -> None:
        for view in self.views:
            view.release()
        self.views = []
        self.stream.close()


def _decrypt_segments(
    storage: Storage,
    shard_id: bytes,
    file_descriptor: int,
    decryptor: SectionDecryptor,
    indices: range,
    out: memoryview,
) -> None:
    """Read (pread) and decrypt some consecutive segments of one section into ``out``,
    one segment of ciphertext at a time in this thread's scratch buffer."""
    entry = decryptor.entry
    with _errors_named(storage, shard_id):
        position = entry.offset + indices.start * (entry.segment_size + TAG_SIZE)
        for index in indices:
            start, length = entry.segment_bounds(index)
            scratch = _thread_scratch(length + TAG_SIZE)
            with memoryview(scratch)[: length + TAG_SIZE] as sealed, out[
                start : start + length
            ] as plain:
                if os.preadv(file_descriptor, [sealed], position) != length + TAG_SIZE:
                    raise IntegrityError("sealed object is truncated")
                decryptor.decrypt_segment_into(index, sealed, plain)
            position += length + TAG_SIZE


_thread_local = threading.local()


def _thread_scratch(size: int) -> bytearray:
    """This thread's ciphertext scratch, at least ``size`` bytes (kept for reuse)."""
    scratch = getattr(_thread_local, "scratch", None)
    if scratch is None or len(scratch) < size:
        scratch = bytearray(max(size, DEFAULT_SEGMENT_SIZE + TAG_SIZE))
        _thread_local.scratch = scratch
    return scratch


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor:
    """Threads kept for the process, shared by every shard being loaded or sealed
    (``cryptography`` releases the GIL while it encrypts or decrypts)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="sealvec-crypt"
            )
        return _pool


def _reset_after_fork() -> None:
    """A forked child has none of the parent's pool threads (an inherited executor
    would queue work that never runs), and a lock may have been held by a thread
    that does not exist there: start over with a new pool on first use."""
    global _pool, _pool_lock, _spare_lock
    _pool = None
    _pool_lock = threading.Lock()
    _spare_lock = threading.Lock()
    _spare_segment_buffers.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _run_in_parallel(tasks: Sequence[Callable[[], None]], threads: int) -> None:
    """Run ``tasks`` on up to ``threads`` threads: this one and the shared pool's.

    Returns only when no task is running any more. After a failure, tasks not yet
    started are skipped, and the failure of the first failed task (in list order) is
    raised. This thread works through the list itself, so a busy pool only slows it.
    """
    if not tasks:
        return
    next_task = itertools.count()
    failures: dict[int, BaseException] = {}
    stop = False

    def work() -> None:
        while not stop and not failures:
            index = next(next_task)
            if index >= len(tasks):
                return
            try:
                tasks[index]()
            except BaseException as error:  # noqa: BLE001 - raised once below
                failures[index] = error

    pool = _shared_pool()
    helpers = [pool.submit(work) for _ in range(min(threads, len(tasks)) - 1)]
    try:
        work()
    finally:
        stop = True
        interrupted = None
        for helper in helpers:
            while not helper.cancel() and not helper.done():
                try:
                    wait([helper])
                except KeyboardInterrupt as error:  # finish waiting, then raise it
                    interrupted = error
        if interrupted is not None:
            raise interrupted
    if failures:
        raise failures[min(failures)]


def _file_descriptor(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
