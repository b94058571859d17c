"""Integrity check of a whole store without keeping or printing any plaintext."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sealvec.errors import (
    CollectionNotFoundError,
    IntegrityError,
    KeyNotFoundError,
    StorageError,
)
from sealvec.generations import GenerationRecord
from sealvec.ann import INDEX_PREFIX, index_object_name, load_index
from sealvec.keys import KeyProvider, LocalKeyring, SecretKey, unwrap_data_key
from sealvec.manifest import (
    MANIFEST_PREFIX,
    load_manifest_shard,
    manifest_name,
    open_manifest,
    parse_manifest_name,
)
from sealvec.shard import shard_object_name
from sealvec.storage import LocalDirectory, Storage


def verify_store(
    location: str | os.PathLike[str] | Storage,
    *,
    key_provider: KeyProvider | None = None,
    memory_lock: str = "required",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Authenticate every retained manifest, and every shard and index of the newest.

    Each object is decrypted into locked memory one at a time and released at once.
    Raises IntegrityError on the first failure; returns counts otherwise.
    """
    storage = location if isinstance(location, Storage) else LocalDirectory(location)
    provider = key_provider or LocalKeyring()
    generations = sorted(
        g for g in map(parse_manifest_name, storage.list(MANIFEST_PREFIX)) if g is not None
    )
    if not storage.exists() or not generations:
        raise CollectionNotFoundError(f"no collection at {storage.location}")

    # Every retained manifest must authenticate and belong to the same collection.
    cached: tuple[str, bytes, SecretKey] | None = None
    unverifiable: list[int] = []
    referenced: set[str] = set()
    collection_id = None
    opened = None
    try:
        for generation in generations:
            name = manifest_name(generation)
            try:
                opened = open_manifest(
                    storage.get(name),
                    name=name,
                    provider=provider,
                    cached_key=cached,
                    memory_lock=memory_lock,
                )
            except KeyNotFoundError:
                # An older generation wrapped under a KEK version since destroyed.
                if generation == generations[-1]:
                    raise
                unverifiable.append(generation)
                continue
            if opened.unwrapped_now:
                if cached is not None:
                    cached[2].close()
                cached = (opened.key_id, opened.wrapped_collection_key, opened.collection_key)
            if collection_id is None:
                collection_id = opened.manifest.collection_id
            elif opened.manifest.collection_id != collection_id:
                raise IntegrityError(f"manifest {name} belongs to another collection")
            referenced.update(shard_object_name(s.shard_id) for s in opened.manifest.shards)
            referenced.update(shard_object_name(i) for i, _ in opened.manifest.retired)
            referenced.update(index_object_name(i.index_id) for i in opened.manifest.indexes)
            referenced.update(index_object_name(i) for i, _ in opened.manifest.retired_indexes)
            check_shard_sizes(storage, opened.manifest, name)

        # Decrypt every shard of the newest generation, one at a time.
        if opened is None or cached is None:
            raise CollectionNotFoundError(f"no readable manifest at {storage.location}")
        manifest = opened.manifest
        rows = 0
        total = len(manifest.shards) + len(manifest.indexes)
        for done, entry in enumerate(manifest.shards, start=1):
            load_manifest_shard(storage, manifest, entry, cached[2], memory_lock).release()
            rows += entry.rows
            if on_progress:
                on_progress(done, total)
        for done, index in enumerate(manifest.indexes, start=len(manifest.shards) + 1):
            data_key = unwrap_data_key(cached[2], index.wrapped_data_key, memory_lock)
            try:
                load_index(
                    storage,
                    collection_id=manifest.collection_id,
                    dimension=manifest.dimension,
                    metric=manifest.metric,
                    entry=index,
                    data_key=data_key,
                    memory_lock=memory_lock,
                ).release()
            finally:
                data_key.close()
            if on_progress:
                on_progress(done, total)
    finally:
        if cached is not None:
            cached[2].close()

    # The newest generation must not be older than one this machine has seen.
    record = GenerationRecord()
    record.check(manifest.collection_id, storage.location, generations[-1])
    record.record(manifest.collection_id, storage.location, generations[-1])

    stored = storage.list("shards/") + storage.list(INDEX_PREFIX)
    unreferenced = sorted(set(stored) - referenced)
    return {
        "location": storage.location,
        "generation": generations[-1],
        "manifests_checked": len(generations) - len(unverifiable),
        "manifests_under_destroyed_keys": unverifiable,
        "shards_checked": len(manifest.shards),
        "indexes_checked": len(manifest.indexes),
        "rows": rows,
        "live_rows": manifest.live_rows,
        "unreferenced": unreferenced,
    }


def describe_store(
    location: str | os.PathLike[str] | Storage,
    *,
    key_provider: KeyProvider | None = None,
    memory_lock: str = "required",
) -> dict[str, Any]:
    """Counts and sizes from the newest manifest alone: one key-provider call, no
    shard decrypted, no contents."""
    from sealvec.collection import _read_latest_manifest

    storage = location if isinstance(location, Storage) else LocalDirectory(location)
    if not storage.exists():
        raise CollectionNotFoundError(f"no collection at {storage.location}")
    name, raw = _read_latest_manifest(storage)
    opened = open_manifest(
        raw, name=name, provider=key_provider or LocalKeyring(), memory_lock=memory_lock
    )
    opened.collection_key.close()
    manifest = opened.manifest
    record = GenerationRecord()
    record.check(manifest.collection_id, storage.location, manifest.generation)
    check_shard_sizes(storage, manifest, name)
    record.record(manifest.collection_id, storage.location, manifest.generation)
    return {
        "location": storage.location,
        "collection_id": manifest.collection_id.hex(),
        "generation": manifest.generation,
        "dimension": manifest.dimension,
        "metric": manifest.metric,
        "model": manifest.model,
        "key_id": opened.key_id,
        "records": manifest.live_rows,
        "deleted_rows": sum(len(s.deleted) for s in manifest.shards),
        "shards": len(manifest.shards),
        "stored_bytes": sum(s.size for s in manifest.shards),
        "indexes": [
            {"kind": i.kind, "rows": i.rows, "params": i.params, "stored_bytes": i.size}
            for i in manifest.indexes
        ],
        "retain_generations": manifest.settings.get("retain_generations"),
    }


def check_shard_sizes(storage: Storage, manifest, manifest_name: str) -> None:
    """Every shard a manifest names exists with the recorded size (no decryption)."""
    for entry in manifest.shards:
        name = shard_object_name(entry.shard_id)
        try:
            size = storage.size(name)
        except StorageError as error:
            if isinstance(error.__cause__, FileNotFoundError):
                raise IntegrityError(
                    f"{name} is named by {manifest_name} but missing from {storage.location}"
                ) from None
            raise
        if size != entry.size:
            raise IntegrityError(f"{name} named by {manifest_name} has the wrong size")
    for index in manifest.indexes:
        name = index_object_name(index.index_id)
        try:
            size = storage.size(name)
        except StorageError as error:
            if isinstance(error.__cause__, FileNotFoundError):
                raise IntegrityError(
                    f"{name} is named by {manifest_name} but missing from {storage.location}"
                ) from None
            raise
        if size != index.size:
            raise IntegrityError(f"{name} named by {manifest_name} has the wrong size")
