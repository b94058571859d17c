"""Manifests: one sealed object per committed generation of a collection.

``manifest/<generation, 20 digits>`` holds, in its authenticated plaintext header,
the versioned id of the key-encryption key and the wrapped collection key; its
sealed body is a JSON document listing the live shards (wrapped data keys, row
counts, header digests, deleted rows), the dimension, metric and model label.

Writers commit generation N+1 create-only, so two writers never both win.
Readers refuse a manifest whose stored name and sealed generation disagree, and a
generation older than one they have already seen (rollback).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from sealvec.errors import IntegrityError
from sealvec.keys import KeyProvider, SecretKey, unwrap_data_key
from sealvec.shard import LoadedShard, load_shard
from sealvec.storage import Storage
from sealvec.sealed import (
    DEFAULT_SEGMENT_SIZE,
    KIND_MANIFEST,
    SECTION_MANIFEST_BODY,
    TAG_SIZE,
    SealedWriter,
    SectionDecryptor,
    parse_header,
    verify_commitment,
)

MANIFEST_PREFIX = "manifest/"
MANIFEST_FORMAT = 1
MAX_MANIFEST_BODY = 1 << 30
METRICS = ("cosine", "ip", "l2")


def manifest_name(generation: int) -> str:
    return f"{MANIFEST_PREFIX}{generation:020d}"


def parse_manifest_name(name: str) -> int | None:
    tail = name[len(MANIFEST_PREFIX) :]
    if name.startswith(MANIFEST_PREFIX) and len(tail) == 20 and tail.isdigit():
        return int(tail)
    return None


@dataclass(frozen=True)
class ShardEntry:
    shard_id: bytes
    rows: int
    wrapped_data_key: bytes
    header_sha256: str
    size: int
    deleted: tuple[int, ...] = ()

    @property
    def live_rows(self) -> int:
        return self.rows - len(self.deleted)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.shard_id.hex(),
            "rows": self.rows,
            "wrapped_data_key": base64.b64encode(self.wrapped_data_key).decode("ascii"),
            "header_sha256": self.header_sha256,
            "size": self.size,
            "deleted": list(self.deleted),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ShardEntry:
        entry = cls(
            shard_id=bytes.fromhex(value["id"]),
            rows=int(value["rows"]),
            wrapped_data_key=base64.b64decode(value["wrapped_data_key"]),
            header_sha256=str(value["header_sha256"]),
            size=int(value["size"]),
            deleted=tuple(int(r) for r in value["deleted"]),
        )
        if len(entry.shard_id) != 16 or entry.rows < 0 or entry.size <= 0:
            raise ValueError("bad shard entry")
        if any(not 0 <= r < entry.rows for r in entry.deleted):
            raise ValueError("deleted row out of range")
        if len(set(entry.deleted)) != len(entry.deleted):
            raise ValueError("deleted rows repeat")
        return entry


INDEX_KINDS = ("hnsw", "ivf")


@dataclass(frozen=True)
class IndexEntry:
    """A sealed FAISS index over the rows of some live shards (approximate search).

    FAISS labels are positions in the concatenation of ``shards`` (all their rows,
    deleted ones included; those are masked at search time). The entry is dropped
    from the manifest as soon as one of its shards leaves the live list.
    """

    index_id: bytes
    kind: str
    params: dict[str, Any]
    shards: tuple[bytes, ...]
    rows: int
    wrapped_data_key: bytes
    header_sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.index_id.hex(),
            "kind": self.kind,
            "params": self.params,
            "shards": [shard_id.hex() for shard_id in self.shards],
            "rows": self.rows,
            "wrapped_data_key": base64.b64encode(self.wrapped_data_key).decode("ascii"),
            "header_sha256": self.header_sha256,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> IndexEntry:
        entry = cls(
            index_id=bytes.fromhex(value["id"]),
            kind=str(value["kind"]),
            params=dict(value["params"]),
            shards=tuple(bytes.fromhex(s) for s in value["shards"]),
            rows=int(value["rows"]),
            wrapped_data_key=base64.b64decode(value["wrapped_data_key"]),
            header_sha256=str(value["header_sha256"]),
            size=int(value["size"]),
        )
        if len(entry.index_id) != 16 or entry.kind not in INDEX_KINDS:
            raise ValueError("bad index entry")
        if entry.rows <= 0 or entry.size <= 0 or not entry.shards:
            raise ValueError("bad index entry")
        if any(len(s) != 16 for s in entry.shards) or len(set(entry.shards)) != len(entry.shards):
            raise ValueError("bad index entry shards")
        return entry


@dataclass(frozen=True)
class Manifest:
    collection_id: bytes
    generation: int
    dimension: int
    metric: str
    model: str | None
    shards: tuple[ShardEntry, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    # Shards dropped from the live list, with the generation that dropped them: older
    # retained manifests still name them, so they are kept until those are pruned.
    retired: tuple[tuple[bytes, int], ...] = ()
    # Approximate-search indexes over live shards, and dropped ones still named by
    # older retained manifests (with the generation that dropped them).
    indexes: tuple[IndexEntry, ...] = ()
    retired_indexes: tuple[tuple[bytes, int], ...] = ()

    @property
    def live_rows(self) -> int:
        return sum(s.live_rows for s in self.shards)

    def next(
        self,
        shards: tuple[ShardEntry, ...],
        retired: tuple[tuple[bytes, int], ...],
        indexes: tuple[IndexEntry, ...] = (),
        retired_indexes: tuple[tuple[bytes, int], ...] = (),
    ) -> Manifest:
        return replace(
            self,
            generation=self.generation + 1,
            shards=shards,
            retired=retired,
            indexes=indexes,
            retired_indexes=retired_indexes,
        )

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "collection_id": self.collection_id.hex(),
            "generation": self.generation,
            "dimension": self.dimension,
            "metric": self.metric,
            "model": self.model,
            "settings": self.settings,
            "shards": [s.to_json() for s in self.shards],
            "retired": [[shard_id.hex(), generation] for shard_id, generation in self.retired],
        }
        # Written only when present, so manifests without indexes keep their v1 bytes.
        if self.indexes:
            body["indexes"] = [i.to_json() for i in self.indexes]
        if self.retired_indexes:
            body["retired_indexes"] = [
                [index_id.hex(), generation] for index_id, generation in self.retired_indexes
            ]
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            value = json.loads(raw)
            if value["format"] != MANIFEST_FORMAT:
                raise IntegrityError(f"unsupported manifest format {value['format']}")
            manifest = cls(
                collection_id=bytes.fromhex(value["collection_id"]),
                generation=int(value["generation"]),
                dimension=int(value["dimension"]),
                metric=str(value["metric"]),
                model=value["model"],
                settings=dict(value.get("settings") or {}),
                shards=tuple(ShardEntry.from_json(s) for s in value["shards"]),
                retired=tuple(
                    (bytes.fromhex(shard_id), int(generation))
                    for shard_id, generation in value.get("retired", [])
                ),
                indexes=tuple(IndexEntry.from_json(i) for i in value.get("indexes", [])),
                retired_indexes=tuple(
                    (bytes.fromhex(index_id), int(generation))
                    for index_id, generation in value.get("retired_indexes", [])
                ),
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("manifest body is malformed") from None
        if manifest.metric not in METRICS or not 0 < manifest.dimension <= 65536:
            raise IntegrityError("manifest names an unknown metric or bad dimension")
        if len({s.shard_id for s in manifest.shards}) != len(manifest.shards):
            raise IntegrityError("manifest lists a shard twice")
        live = {s.shard_id: s.rows for s in manifest.shards}
        for index in manifest.indexes:
            if any(s not in live for s in index.shards) or index.rows != sum(
                live[s] for s in index.shards
            ):
                raise IntegrityError("manifest names an index over shards it does not list")
        if len({i.index_id for i in manifest.indexes}) != len(manifest.indexes):
            raise IntegrityError("manifest lists an index twice")
        return manifest


def seal_manifest(
    manifest: Manifest, collection_key: SecretKey, key_id: str, wrapped_collection_key: bytes
) -> bytes:
    """The sealed bytes of ``manifest`` (header with the wrapped CK, then the body)."""
    body = manifest.to_json()
    writer = SealedWriter(
        kind=KIND_MANIFEST,
        root_key=collection_key.material(),
        collection_id=manifest.collection_id,
        object_id=os.urandom(16),
        generation=manifest.generation,
        dimension=manifest.dimension,
        key_id=key_id,
        wrapped_key=wrapped_collection_key,
        sections=[(SECTION_MANIFEST_BODY, len(body), DEFAULT_SEGMENT_SIZE)],
    )
    return writer.header_bytes() + b"".join(writer.seal_section(SECTION_MANIFEST_BODY, body))


@dataclass
class OpenedManifest:
    manifest: Manifest
    key_id: str
    wrapped_collection_key: bytes
    collection_key: SecretKey
    unwrapped_now: bool


def open_manifest(
    raw: bytes,
    *,
    name: str,
    provider: KeyProvider,
    cached_key: tuple[str, bytes, SecretKey] | None = None,
    memory_lock: str = "required",
) -> OpenedManifest:
    """Authenticate and decrypt a manifest.

    ``cached_key`` is (key id, wrapped CK, CK) from an earlier generation: when the
    header carries the same wrapped key, the provider is not called again. Every
    integrity failure names the manifest.
    """
    try:
        return _open_manifest(
            raw, name=name, provider=provider, cached_key=cached_key, memory_lock=memory_lock
        )
    except IntegrityError as error:
        message = str(error)
        if name in message:
            raise
        raise IntegrityError(f"{name}: {message}") from None


def _open_manifest(
    raw: bytes,
    *,
    name: str,
    provider: KeyProvider,
    cached_key: tuple[str, bytes, SecretKey] | None,
    memory_lock: str,
) -> OpenedManifest:
    header = parse_header(raw, expected_kind=KIND_MANIFEST)
    expected_generation = parse_manifest_name(name)
    if expected_generation is None or header.generation != expected_generation:
        raise IntegrityError(
            f"manifest {name} holds generation {header.generation}: replaced or rolled back"
        )
    if header.total_size != len(raw):
        raise IntegrityError(f"manifest {name} is truncated or has trailing bytes")
    if [s.section_id for s in header.sections] != [SECTION_MANIFEST_BODY]:
        raise IntegrityError(f"manifest {name} has an unexpected section table")
    entry = header.sections[0]
    if entry.plain_len > MAX_MANIFEST_BODY:
        raise IntegrityError(f"manifest {name} body is too large")

    # One provider call per collection open; later generations reuse the key.
    if cached_key and cached_key[0] == header.key_id and cached_key[1] == header.wrapped_key:
        collection_key, unwrapped_now = cached_key[2], False
    else:
        material = provider.unwrap_key(header.key_id, header.wrapped_key)
        if len(material) != 32:
            raise IntegrityError(f"the collection key unwrapped by {header.key_id} is not 32 bytes")
        collection_key, unwrapped_now = SecretKey(material, memory_lock), True
        del material
    try:
        segment_key = verify_commitment(header, collection_key.material())
        decryptor = SectionDecryptor(header, segment_key, SECTION_MANIFEST_BODY)
        body = bytearray(entry.plain_len)
        body_view = memoryview(body)
        position = entry.offset
        for index in range(entry.segment_count):
            start, length = entry.segment_bounds(index)
            sealed = memoryview(raw)[position : position + length + TAG_SIZE]
            decryptor.decrypt_segment_into(index, sealed, body_view[start : start + length])
            position += length + TAG_SIZE
        manifest = Manifest.from_json(bytes(body))
        if (
            manifest.generation != header.generation
            or manifest.collection_id != header.collection_id
            or manifest.dimension != header.dimension
        ):
            raise IntegrityError(f"manifest {name} body disagrees with its header")
    except BaseException:
        if unwrapped_now:
            collection_key.close()
        raise
    return OpenedManifest(manifest, header.key_id, header.wrapped_key, collection_key, unwrapped_now)


def load_manifest_shard(
    storage: Storage,
    manifest: Manifest,
    entry: ShardEntry,
    collection_key: SecretKey,
    memory_lock: str,
) -> LoadedShard:
    """Unwrap a shard's data key and decrypt the shard into locked memory."""
    data_key = unwrap_data_key(collection_key, entry.wrapped_data_key, memory_lock)
    try:
        return load_shard(
            storage,
            collection_id=manifest.collection_id,
            shard_id=entry.shard_id,
            dimension=manifest.dimension,
            rows=entry.rows,
            header_sha256=entry.header_sha256,
            size=entry.size,
            data_key=data_key,
            memory_lock=memory_lock,
        )
    finally:
        data_key.close()
