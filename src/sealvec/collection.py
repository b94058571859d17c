"""Collections: the public API over sealed shards, manifests and locked memory.

A collection's state is one committed manifest generation plus its shards,
decrypted into locked memory. Every write (add, upsert, delete) commits a new
generation atomically: new shards are made durable first, then the manifest that
names them is created (never replaced). Queries run on an immutable snapshot of the
state, so a query in flight finishes on the generation it started on while a write
or refresh swaps in the next one.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sealvec import _core
from sealvec.ann import (
    INDEX_PREFIX,
    LoadedIndex,
    build_index,
    index_object_name,
    load_index,
    resolve_params,
    search_params,
    write_index,
)
from sealvec.attributes import compile_where, encode_attributes
from sealvec.errors import (
    ClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConflictError,
    IntegrityError,
    MemoryLockError,
    SealvecError,
    StorageError,
    ValidationError,
)
from sealvec.generations import GenerationRecord
from sealvec.keys import (
    KeyProvider,
    LocalKeyring,
    SecretKey,
    parse_local_key_id,
    unwrap_data_key,
    wrap_data_key,
)
from sealvec.manifest import (
    INDEX_KINDS,
    MANIFEST_PREFIX,
    METRICS,
    IndexEntry,
    Manifest,
    OpenedManifest,
    ShardEntry,
    manifest_name,
    open_manifest,
    parse_manifest_name,
    seal_manifest,
)
from sealvec.shard import (
    LoadedShard,
    ShardSource,
    encode_payloads,
    gather_rows,
    load_shards,
    secure_copy,
    SHARD_PREFIX,
    shard_object_name,
    write_shard,
)
from sealvec.storage import LocalDirectory, Storage
from sealvec.validation import (
    check_documents,
    check_ids,
    check_include,
    check_k,
    check_metadata,
    check_unique,
    check_vectors,
)

logger = logging.getLogger(__name__)

DEFAULT_KEY_ID = "local:default"
SEARCH_BACKENDS = ("native", "faiss", *INDEX_KINDS, "bf16")
DEFAULT_RETAIN_GENERATIONS = 10
MEMORY_LOCK_CHOICES = ("required", "best_effort")
_COMMIT_ATTEMPTS = 20


@dataclass
class Hit:
    """One search result. ``score`` is cosine similarity or inner product (higher is
    better) or Euclidean distance (lower is better), by the collection's metric."""

    id: str
    score: float
    document: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


class SearchResults(Sequence[list[Hit]]):
    """Results of a query batch: one list of hits per query, best first."""

    def __init__(
        self, ids: list[list[str]], scores: np.ndarray, hits: list[list[Hit]], generation: int
    ):
        self.ids = ids
        self.scores = scores
        self.generation = generation  # the committed generation these results come from
        self._hits = hits

    def __getitem__(self, index):  # type: ignore[override]
        return self._hits[index]

    def __len__(self) -> int:
        return len(self._hits)

    def __repr__(self) -> str:
        return f"SearchResults(queries={len(self._hits)}, k={self.scores.shape[1]})"


@dataclass
class Record:
    id: str
    vector: np.ndarray | None
    document: str | None
    metadata: dict[str, Any] | None


@dataclass
class _Change:
    """What a write makes of the newest state: the next live shard list, the shards
    it sealed (already loaded), and optionally a new collection-key wrapping."""

    shards: list[ShardEntry]
    loaded: dict[bytes, LoadedShard] = field(default_factory=dict)
    key: tuple[str, bytes, SecretKey] | None = None
    forget_history: bool = False
    # The next generation's index list; None keeps the current one. Either way an
    # index is dropped once one of its shards leaves the live list.
    indexes: tuple[IndexEntry, ...] | None = None
    ready_index: LoadedIndex | None = None  # a just-built index, already in memory

    def abandon(self, storage: Storage) -> None:
        """Undo a change whose manifest did not commit."""
        for shard in self.loaded.values():
            shard.release()
            storage.delete(shard_object_name(shard.shard_id))
        if self.key is not None:
            self.key[2].close()

    def release(self) -> None:
        """Free a change's memory, keeping its stored objects (when it is not known
        whether its manifest committed)."""
        for shard in self.loaded.values():
            shard.release()
        if self.key is not None:
            self.key[2].close()


class _State:
    """An immutable snapshot: one manifest generation and its loaded shards."""

    def __init__(self, manifest: Manifest, shards: list[LoadedShard]) -> None:
        self.manifest = manifest
        self.shards = shards
        counts = np.array([s.rows for s in shards], dtype=np.int64)
        self.row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total_rows = int(self.row_starts[-1])
        self.mask = np.ones(self.total_rows, dtype=np.uint8)
        for start, entry in zip(self.row_starts, manifest.shards):
            if entry.deleted:
                self.mask[start + np.asarray(entry.deleted, dtype=np.int64)] = 0
        self.live_rows = int(self.mask.sum())
        self.id_table = _core.IdTable(
            [s.ids_offsets for s in shards], [s.ids_data for s in shards]
        )
        self.ranks = self.id_table.ranks()
        self.users = 0
        self.retired = False
        self.faiss_index = None  # set when the collection searches with FAISS
        self.ann = None  # a LoadedIndex when searching with hnsw or ivf and one exists
        self.ann_rows = np.zeros(0, dtype=np.int64)  # FAISS label -> global row
        self.uncovered: list[int] = list(range(len(shards)))  # shards the index lacks

    def locate(self, row: int) -> tuple[LoadedShard, int]:
        index = int(np.searchsorted(self.row_starts, row, side="right")) - 1
        return self.shards[index], row - int(self.row_starts[index])

    def lookup(self, ids: list[str]) -> np.ndarray:
        return self.id_table.lookup(ids, self.mask)


def _as_storage(location: str | os.PathLike[str] | Storage) -> Storage:
    if isinstance(location, Storage):
        return location
    return LocalDirectory(location)


def _check_keyring_outside(storage: Storage, provider: KeyProvider) -> None:
    provider = getattr(provider, "local", provider)  # a routing provider's keyring
    if isinstance(provider, LocalKeyring) and isinstance(storage, LocalDirectory):
        keyring = provider.path.expanduser().absolute()
        if keyring.is_relative_to(storage.root):
            raise ValidationError(
                f"the keyring {keyring} must live outside the store {storage.root}"
            )


def _check_memory_lock(memory_lock: str) -> None:
    if memory_lock not in MEMORY_LOCK_CHOICES:
        raise ValidationError(
            f"memory_lock must be 'required' or 'best_effort', got {memory_lock!r}"
        )


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 4096:
        raise ValidationError(
            f"threads must be an int from 0 (one per core) to 4096, got {threads!r}"
        )


def _read_latest_manifest(storage: Storage) -> tuple[str, bytes]:
    """Name and bytes of the newest manifest; re-lists if a writer pruned it meanwhile."""
    for attempt in range(3):
        generation = _latest_generation(storage)
        if generation is None:
            raise CollectionNotFoundError(f"no collection at {storage.location}")
        name = manifest_name(generation)
        try:
            return name, storage.get(name)
        except StorageError as error:
            if not isinstance(error.__cause__, FileNotFoundError) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _latest_generation(storage: Storage) -> int | None:
    generations = [
        g for g in map(parse_manifest_name, storage.list(MANIFEST_PREFIX)) if g is not None
    ]
    return max(generations) if generations else None


class Collection:
    """An encrypted collection of vectors, ids and documents.

    Create one with :meth:`create`, open one with :meth:`open`; use it as a context
    manager or call :meth:`close`, which zeroes and unlocks its memory.
    """

    def __init__(
        self,
        storage: Storage,
        provider: KeyProvider,
        opened: OpenedManifest,
        *,
        memory_lock: str,
        threads: int,
        search_backend: str = "native",
    ) -> None:
        if search_backend not in SEARCH_BACKENDS:
            raise ValidationError(
                f"search_backend must be one of {SEARCH_BACKENDS}, got {search_backend!r}"
            )
        if search_backend not in ("native", "bf16"):
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ValidationError(
                    f"search_backend={search_backend!r} needs faiss: "
                    "pip install 'sealvec[faiss]'"
                ) from None
        self._search_backend = search_backend
        # bf16 backend: per shard id, its bfloat16 copy and row norms in locked memory,
        # released with the shard.
        self._reduced: dict[bytes, tuple[_core.SecureBuffer, _core.SecureBuffer]] = {}
        self._storage = storage
        self._provider = provider
        self._memory_lock = memory_lock
        self._threads = threads
        self._key_id = opened.key_id
        self._wrapped_collection_key = opened.wrapped_collection_key
        self._collection_key = opened.collection_key
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._seen_generation = opened.manifest.generation
        self._generations = GenerationRecord()
        self._generations.check(
            opened.manifest.collection_id, storage.location, opened.manifest.generation
        )
        self._generations.record(
            opened.manifest.collection_id, storage.location, opened.manifest.generation
        )
        self._refresher: tuple[threading.Event, threading.Thread] | None = None
        self.last_refresh_error: SealvecError | None = None
        self._state: _State = self._build_state(opened.manifest, {})

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        location: str | os.PathLike[str] | Storage,
        *,
        dimension: int,
        metric: str = "cosine",
        key_id: str = DEFAULT_KEY_ID,
        key_provider: KeyProvider | None = None,
        model: str | None = None,
        memory_lock: str = "required",
        threads: int = 0,
        retain_generations: int = DEFAULT_RETAIN_GENERATIONS,
        search_backend: str = "native",
    ) -> Collection:
        """Create an empty collection; refuses a location that already holds one."""
        if isinstance(dimension, bool) or not isinstance(dimension, int) or not 0 < dimension <= 65536:
            raise ValidationError(f"dimension must be an int from 1 to 65536, got {dimension!r}")
        if metric not in METRICS:
            raise ValidationError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if not isinstance(retain_generations, int) or retain_generations < 1:
            raise ValidationError("retain_generations must be a positive int")
        _check_memory_lock(memory_lock)
        _check_threads(threads)
        storage = _as_storage(location)
        provider = key_provider or LocalKeyring()
        _check_keyring_outside(storage, provider)
        if isinstance(provider, LocalKeyring) and key_id.startswith("local:"):
            name, version = parse_local_key_id(key_id)
            if version is None:
                provider.create_key(name)  # returns the existing key if there is one

        storage.initialise()
        with storage.writer_lock():
            if _latest_generation(storage) is not None:
                raise CollectionExistsError(f"a collection already exists at {storage.location}")
            collection_key = SecretKey.generate(memory_lock)
            try:
                versioned_id, wrapped = provider.wrap_key(key_id, collection_key.material())
                manifest = Manifest(
                    collection_id=os.urandom(16),
                    generation=1,
                    dimension=dimension,
                    metric=metric,
                    model=model,
                    settings={"retain_generations": retain_generations},
                )
                raw = seal_manifest(manifest, collection_key, versioned_id, wrapped)
                storage.put(manifest_name(1), [raw], create_only=True)
            except BaseException:
                collection_key.close()
                raise
        logger.info(
            "created collection %s (dimension %d, metric %s, key %s)",
            manifest.collection_id.hex(),
            dimension,
            metric,
            versioned_id,
        )
        opened = OpenedManifest(manifest, versioned_id, wrapped, collection_key, True)
        return cls(
            storage,
            provider,
            opened,
            memory_lock=memory_lock,
            threads=threads,
            search_backend=search_backend,
        )

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str] | Storage,
        *,
        key_provider: KeyProvider | None = None,
        memory_lock: str = "required",
        threads: int = 0,
        refresh_interval: float | None = None,
        search_backend: str = "native",
    ) -> Collection:
        """Open the newest committed generation: one key-provider call in all.

        With ``refresh_interval`` (seconds) a background thread picks up generations
        that other writers commit. ``search_backend="faiss"`` answers exact searches
        with ``faiss.knn`` over the same locked memory (results follow the same
        contract; the native kernel is faster on most machines). ``"hnsw"`` and
        ``"ivf"`` answer approximately from the collection's sealed index of that kind
        (see :meth:`build_index`), searching rows added since the build exactly; with
        no such index they search exactly, with a warning.
        """
        _check_memory_lock(memory_lock)
        _check_threads(threads)
        storage = _as_storage(location)
        provider = key_provider or LocalKeyring()
        _check_keyring_outside(storage, provider)
        if not storage.exists():
            raise CollectionNotFoundError(f"no collection at {storage.location}")
        name, raw = _read_latest_manifest(storage)
        opened = open_manifest(raw, name=name, provider=provider, memory_lock=memory_lock)
        try:
            collection = cls(
                storage,
                provider,
                opened,
                memory_lock=memory_lock,
                threads=threads,
                search_backend=search_backend,
            )
        except BaseException:
            opened.collection_key.close()
            raise
        if refresh_interval is not None:
            collection.start_auto_refresh(refresh_interval)
        return collection

    def close(self) -> None:
        """Zero and unlock every key and vector this collection holds. Idempotent."""
        self.stop_auto_refresh()
        with self._write_lock, self._state_lock:
            if self._closed:
                return
            self._closed = True
            state = self._state
            state.retired = True
            if state.users == 0:
                self._dispose(state)
        self._collection_key.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # ------------------------------------------------------------------ properties

    @property
    def dimension(self) -> int:
        return self._state.manifest.dimension

    @property
    def metric(self) -> str:
        return self._state.manifest.metric

    @property
    def model(self) -> str | None:
        return self._state.manifest.model

    @property
    def generation(self) -> int:
        return self._state.manifest.generation

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def location(self) -> str:
        return self._storage.location

    def count(self) -> int:
        """Live records."""
        with self._snapshot() as state:
            return state.live_rows

    def stats(self) -> dict[str, Any]:
        """Counts and sizes only; never contents."""
        with self._snapshot() as state:
            manifest = state.manifest
            return {
                "location": self._storage.location,
                "collection_id": manifest.collection_id.hex(),
                "generation": manifest.generation,
                "dimension": manifest.dimension,
                "metric": manifest.metric,
                "model": manifest.model,
                "key_id": self._key_id,
                "records": state.live_rows,
                "deleted_rows": state.total_rows - state.live_rows,
                "shards": len(state.shards),
                "stored_bytes": sum(s.size for s in manifest.shards),
                "locked_bytes": sum(s.nbytes for s in state.shards),
                "simd": _core.simd_level(),
                "search_backend": self._search_backend,
                "indexes": [
                    {"kind": i.kind, "rows": i.rows, "params": i.params, "stored_bytes": i.size}
                    for i in manifest.indexes
                ],
                "search_index": state.ann.kind if state.ann is not None else None,
            }

    # ------------------------------------------------------------------ state

    @contextmanager
    def _snapshot(self) -> Iterator[_State]:
        with self._state_lock:
            if self._closed:
                raise ClosedError("the collection is closed")
            state = self._state
            state.users += 1
        try:
            yield state
        finally:
            with self._state_lock:
                state.users -= 1
                if state.retired and state.users == 0:
                    self._dispose(state)

    def _dispose(self, state: _State) -> None:
        """Release a retired state; shards no other state holds are wiped."""
        if state.faiss_index is not None:
            state.faiss_index.close()  # drops its views of the shard buffers first
        if state.ann is not None:
            state.ann.holders -= 1
            if state.ann.holders == 0:
                state.ann.release()
        state.id_table.close()
        for shard in state.shards:
            shard.holders -= 1
            if shard.holders == 0:
                shard.release()
                self._release_reduced(shard.shard_id)

    def _release_reduced(self, shard_id: bytes) -> None:
        for buffer in self._reduced.pop(shard_id, ()):
            buffer.release()

    def _reduce_shards(self, shards: list[LoadedShard], dimension: int) -> None:
        """bfloat16 copies (and squared row norms) of shards that lack them."""
        for shard in shards:
            if shard.shard_id in self._reduced:
                continue
            halves = _core.SecureBuffer(2 * shard.rows * dimension, self._memory_lock)
            norms = _core.SecureBuffer(4 * shard.rows, self._memory_lock)
            try:
                with memoryview(halves) as out, memoryview(norms) as norms_out:
                    _core.to_bfloat16(shard.vectors, dimension, out, norms_out)
                halves.seal()
                norms.seal()
            except BaseException:
                halves.release()
                norms.release()
                raise
            self._reduced[shard.shard_id] = (halves, norms)

    def _install(self, state: _State) -> None:
        with self._state_lock:
            old = self._state
            self._state = state
            self._seen_generation = max(self._seen_generation, state.manifest.generation)
            old.retired = True
            if old.users == 0:
                self._dispose(old)
        self._generations.record(
            state.manifest.collection_id, self._storage.location, state.manifest.generation
        )

    def _build_state(
        self,
        manifest: Manifest,
        ready: dict[bytes, LoadedShard],
        ready_index: LoadedIndex | None = None,
    ) -> _State:
        """Load what ``manifest`` names (reusing ``ready``, ``ready_index`` and the
        current state)."""
        current = getattr(self, "_state", None)
        known = {s.shard_id: s for s in current.shards} if current else {}
        known.update(ready)
        missing = [e for e in manifest.shards if e.shard_id not in known]
        loaded = self._load_shards(manifest, missing)
        ann = None
        state = None
        try:
            shards = [known.get(e.shard_id) or loaded[e.shard_id] for e in manifest.shards]
            for shard, entry in zip(shards, manifest.shards):
                if shard.rows != entry.rows:
                    raise IntegrityError(f"shard {shard.shard_id.hex()} changed its row count")
            state = _State(manifest, shards)
            if self._search_backend == "faiss":
                from sealvec.faiss_backend import FaissExactIndex

                state.faiss_index = FaissExactIndex(
                    [s.vectors for s in shards],
                    [s.rows for s in shards],
                    manifest.dimension,
                    manifest.metric,
                    memory_lock=self._memory_lock,
                )
            if self._search_backend in INDEX_KINDS:
                ann = self._index_for(manifest, current, ready_index)
                if ann is not None:
                    _attach_index(state, ann)
            if self._search_backend == "bf16":
                self._reduce_shards(shards, manifest.dimension)
        except BaseException:
            if state is not None:  # drop its views of the shards before releasing them
                if state.faiss_index is not None:
                    state.faiss_index.close()
                state.id_table.close()
            for shard in loaded.values():
                shard.release()
                self._release_reduced(shard.shard_id)
            if ann is not None and ann.holders == 0:
                ann.release()
            raise
        for shard in shards:
            shard.holders += 1
        if ann is not None:
            ann.holders += 1
        return state

    def _index_for(
        self, manifest: Manifest, current: _State | None, ready: LoadedIndex | None
    ) -> LoadedIndex | None:
        """The newest index of the search backend's kind that ``manifest`` names:
        reused from ``ready`` or the current state, else decrypted now."""
        entries = [i for i in manifest.indexes if i.kind == self._search_backend]
        if not entries:
            logger.warning(
                "generation %d has no %s index: searching exactly (build one with "
                "build_index or `sealvec index`)",
                manifest.generation,
                self._search_backend,
            )
            return None
        entry = entries[-1]
        for candidate in (ready, current.ann if current else None):
            if candidate is not None and candidate.entry.index_id == entry.index_id:
                return candidate
        started = time.perf_counter()
        data_key = unwrap_data_key(
            self._collection_key, entry.wrapped_data_key, self._memory_lock
        )
        try:
            ann = load_index(
                self._storage,
                collection_id=manifest.collection_id,
                dimension=manifest.dimension,
                metric=manifest.metric,
                entry=entry,
                data_key=data_key,
                memory_lock=self._memory_lock,
            )
        finally:
            data_key.close()
        logger.info(
            "decrypted %s index (%d rows, %d bytes) in %.3f s",
            entry.kind,
            entry.rows,
            ann.nbytes,
            time.perf_counter() - started,
        )
        return ann

    def _load_shards(
        self, manifest: Manifest, entries: list[ShardEntry]
    ) -> dict[bytes, LoadedShard]:
        """Decrypt shards, their segments in parallel threads (cryptography releases
        the GIL)."""
        if not entries:
            return {}
        started = time.perf_counter()
        data_keys: list[SecretKey] = []
        try:
            for entry in entries:
                data_keys.append(
                    unwrap_data_key(
                        self._collection_key, entry.wrapped_data_key, self._memory_lock
                    )
                )
            sources = [
                ShardSource(
                    manifest.collection_id,
                    entry.shard_id,
                    manifest.dimension,
                    entry.rows,
                    entry.header_sha256,
                    entry.size,
                    data_key,
                )
                for entry, data_key in zip(entries, data_keys)
            ]
            shards = load_shards(
                self._storage, sources, memory_lock=self._memory_lock, threads=self._threads
            )
        except MemoryLockError as error:
            needed = sum(e.size for e in entries)
            raise MemoryLockError(
                f"opening {self._storage.location} needs about {needed} bytes of locked "
                f"memory for {len(entries)} shards; {error}"
            ) from None
        finally:
            for data_key in data_keys:
                data_key.close()
        loaded = {shard.shard_id: shard for shard in shards}
        logger.info(
            "decrypted %d shards (%d bytes) in %.3f s",
            len(loaded),
            sum(s.nbytes for s in loaded.values()),
            time.perf_counter() - started,
        )
        return loaded

    # ------------------------------------------------------------------ refresh

    def refresh(self) -> bool:
        """Load a newer committed generation if there is one; True if it did."""
        with self._write_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        if self._closed:
            raise ClosedError("the collection is closed")
        latest = _latest_generation(self._storage)
        if latest is None or latest < self._seen_generation:
            raise IntegrityError(
                f"the store's newest manifest generation ({latest}) is older than "
                f"generation {self._seen_generation} already seen: rollback refused"
            )
        if latest == self._state.manifest.generation:
            return False
        name, raw = _read_latest_manifest(self._storage)
        latest = parse_manifest_name(name)
        opened = open_manifest(
            raw,
            name=name,
            provider=self._provider,
            cached_key=(self._key_id, self._wrapped_collection_key, self._collection_key),
            memory_lock=self._memory_lock,
        )
        if opened.manifest.collection_id != self._state.manifest.collection_id:
            raise IntegrityError("the store now holds a different collection")
        if opened.unwrapped_now:
            old_key = self._collection_key
            self._collection_key = opened.collection_key
            self._key_id = opened.key_id
            self._wrapped_collection_key = opened.wrapped_collection_key
            old_key.close()
        self._install(self._build_state(opened.manifest, {}))
        logger.info("refreshed to generation %d", latest)
        return True

    # ------------------------------------------------------------------ writes

    def _commit(self, mutate: Callable[[_State], _Change]) -> Manifest:
        """Run ``mutate`` on the newest state and commit the next generation.

        Holds the store's writer lock and catches up with other writers first. A
        lost create-only race (a backend without locks) retries on the newer state.
        After the commit: manifests past retention are pruned, then shards that no
        retained manifest names any more are deleted.
        """
        with self._write_lock, self._storage.writer_lock():
            for attempt in range(_COMMIT_ATTEMPTS):
                self._refresh_locked()
                state = self._state
                change = mutate(state)
                manifest, collectable = self._next_manifest(state.manifest, change)
                key_id, wrapped, collection_key = change.key or (
                    self._key_id,
                    self._wrapped_collection_key,
                    self._collection_key,
                )
                raw = seal_manifest(manifest, collection_key, key_id, wrapped)
                name = manifest_name(manifest.generation)
                try:
                    self._storage.put(name, [raw], create_only=True)
                except BaseException as error:
                    landed = False if isinstance(error, ConflictError) else self._landed(name, raw)
                    if landed is None:
                        # Not known whether the generation committed: keep its objects (at
                        # worst unreferenced files) rather than delete what it may name.
                        change.release()
                        raise
                    if landed:
                        # It committed before the failure (an interrupt, or a failed
                        # directory sync after the manifest was in place): finish it, then
                        # report the failure.
                        self._finish_commit(manifest, change, key_id, wrapped, collection_key,
                                            collectable)
                        raise
                    change.abandon(self._storage)
                    if isinstance(error, ConflictError) and attempt < _COMMIT_ATTEMPTS - 1:
                        # Back off a random while so racing writers stop colliding.
                        time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                        continue
                    raise
                self._finish_commit(manifest, change, key_id, wrapped, collection_key,
                                    collectable)
                return manifest
        raise ConflictError("could not commit: other writers kept committing first")

    def _landed(self, name: str, raw: bytes) -> bool | None:
        """Whether storage holds exactly ``raw`` under ``name`` (None: cannot tell)."""
        try:
            if self._storage.size(name) != len(raw):
                return False
            return self._storage.get(name) == raw
        except StorageError as error:
            return False if isinstance(error.__cause__, FileNotFoundError) else None
        except BaseException:  # noqa: BLE001 - an interrupt or I/O error: unknown
            return None

    def _finish_commit(
        self,
        manifest: Manifest,
        change: _Change,
        key_id: str,
        wrapped: bytes,
        collection_key: SecretKey,
        collectable: set[str],
    ) -> None:
        """Adopt a committed generation: its key, its state, then garbage collection."""
        if change.key is not None:
            old_key = self._collection_key
            self._key_id, self._wrapped_collection_key = key_id, wrapped
            self._collection_key = collection_key
            if old_key is not collection_key:
                old_key.close()
        self._install(self._build_state(manifest, change.loaded, change.ready_index))
        logger.info(
            "committed generation %d (%d shards, %d live rows)",
            manifest.generation,
            len(manifest.shards),
            manifest.live_rows,
        )
        self._collect_garbage(manifest, collectable, forget_history=change.forget_history)

    def _next_manifest(self, current: Manifest, change: _Change) -> tuple[Manifest, set[str]]:
        """The next generation's manifest, and the object names it lets go of for good."""
        generation = current.generation + 1
        retain = int(current.settings.get("retain_generations", DEFAULT_RETAIN_GENERATIONS))
        oldest_kept = generation if change.forget_history else max(1, generation - retain + 1)
        live = {e.shard_id for e in change.shards}
        indexes = tuple(
            i
            for i in (current.indexes if change.indexes is None else change.indexes)
            if all(shard_id in live for shard_id in i.shards)
        )
        retired, dropped_shards = _retire(
            current.retired,
            {e.shard_id for e in current.shards} - live,
            oldest_kept,
            generation,
        )
        retired_indexes, dropped_indexes = _retire(
            current.retired_indexes,
            {i.index_id for i in current.indexes} - {i.index_id for i in indexes},
            oldest_kept,
            generation,
        )
        collectable = {shard_object_name(s) for s in dropped_shards} | {
            index_object_name(i) for i in dropped_indexes
        }
        manifest = current.next(tuple(change.shards), retired, indexes, retired_indexes)
        return manifest, collectable

    def _collect_garbage(
        self, manifest: Manifest, collectable: set[bytes], *, forget_history: bool
    ) -> None:
        """Delete pruned manifests, released shards and leftovers of crashed writers.

        Leftovers are swept only under an exclusive writer lock, when no other
        writer can have uncommitted shards.
        """
        retain = int(manifest.settings.get("retain_generations", DEFAULT_RETAIN_GENERATIONS))
        oldest_kept = manifest.generation if forget_history else manifest.generation - retain + 1
        for name in self._storage.list(MANIFEST_PREFIX):
            generation = parse_manifest_name(name)
            if generation is not None and generation < oldest_kept:
                self._storage.delete(name)
        for name in sorted(collectable):
            self._storage.delete(name)
        if not self._storage.exclusive_writer_lock:
            return
        named = _named_objects(manifest)
        for name in self._storage.list(SHARD_PREFIX) + self._storage.list(INDEX_PREFIX):
            if name not in named:
                logger.info("deleting unreferenced object %s", name)
                self._storage.delete(name)
        self._storage.remove_temporary()

    def _write_new_shard(
        self,
        state: _State,
        ids: list[str],
        vectors: np.ndarray,
        documents: list[str | None],
        metadata: list[dict[str, Any]],
    ) -> tuple[ShardEntry, LoadedShard]:
        """Pack a caller's batch into locked memory and seal it as a new shard; the
        vectors are copied in segment by segment as they are sealed."""
        lock = self._memory_lock
        buffers = []
        try:
            buffers.append(_core.SecureBuffer(vectors.nbytes, lock))
            buffers.append(_core.pack_strings(ids, lock))
            buffers.append(_core.pack_strings(encode_payloads(documents, metadata), lock))
            buffers.append(secure_copy(encode_attributes(metadata), lock))
        except BaseException:
            for buffer in buffers:
                buffer.release()
            raise
        return self._seal_shard(state, len(ids), *buffers, vector_source=vectors)

    def _seal_shard(
        self,
        state: _State,
        rows: int,
        vectors: _core.SecureBuffer,
        ids: _core.SecureBuffer,
        payloads: _core.SecureBuffer,
        attributes: _core.SecureBuffer,
        vector_source: np.ndarray | None = None,
    ) -> tuple[ShardEntry, LoadedShard]:
        """Encrypt sections held in locked memory under a fresh DEK; they become the
        new shard's loaded form (no decrypt round trip). With ``vector_source`` the
        vectors buffer is filled from it while sealing (see ``write_shard``)."""
        manifest = state.manifest
        shard_id = os.urandom(16)
        try:
            data_key = SecretKey.generate(self._memory_lock)
            try:
                written = write_shard(
                    self._storage,
                    collection_id=manifest.collection_id,
                    shard_id=shard_id,
                    data_key=data_key,
                    rows=rows,
                    dimension=manifest.dimension,
                    vectors=vectors,
                    ids=ids,
                    payloads=payloads,
                    attributes=attributes,
                    vector_source=vector_source,
                    metric=manifest.metric,
                    threads=self._threads,
                )
                wrapped = wrap_data_key(self._collection_key, data_key)
            finally:
                data_key.close()
            loaded = LoadedShard(
                shard_id, rows, manifest.dimension, vectors, ids, payloads, attributes
            )
        except BaseException:
            for buffer in (vectors, ids, payloads, attributes):
                buffer.release()
            raise
        entry = ShardEntry(shard_id, rows, wrapped, written.header_sha256, written.size)
        return entry, loaded

    def _prepare_batch(
        self, ids: Any, vectors: Any, documents: Any, metadata: Any
    ) -> tuple[list[str], np.ndarray, list[str | None], list[dict[str, Any]]]:
        with self._snapshot() as state:
            dimension, metric = state.manifest.dimension, state.manifest.metric
        ids = check_ids(ids)
        check_unique(ids)
        vectors = check_vectors(vectors, dimension, metric)
        if len(vectors) != len(ids):
            raise ValidationError(f"vectors has {len(vectors)} rows for {len(ids)} ids")
        return ids, vectors, check_documents(documents, len(ids)), check_metadata(
            metadata, len(ids)
        )

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> int:
        """Add new records as one atomic batch; refuses ids that already exist."""
        ids, vectors, documents, metadata = self._prepare_batch(ids, vectors, documents, metadata)
        if not ids:
            return 0

        def mutate(state: _State):
            rows = state.lookup(ids)
            if (rows >= 0).any():
                existing = int((rows >= 0).sum())
                first = int(np.argmax(rows >= 0))  # a position: ids are not put in messages
                raise ValidationError(
                    f"{existing} of the ids already exist (first: ids[{first}]); "
                    "use upsert to replace them. Nothing was added"
                )
            entry, loaded = self._write_new_shard(state, ids, vectors, documents, metadata)
            return _Change([*state.manifest.shards, entry], {entry.shard_id: loaded})

        self._commit(mutate)
        return len(ids)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> int:
        """Insert or replace records (vector and payload together) atomically."""
        ids, vectors, documents, metadata = self._prepare_batch(ids, vectors, documents, metadata)
        if not ids:
            return 0

        def mutate(state: _State):
            rows = state.lookup(ids)
            shards = _with_deleted_rows(state, rows[rows >= 0])
            entry, loaded = self._write_new_shard(state, ids, vectors, documents, metadata)
            return _Change([*shards, entry], {entry.shard_id: loaded})

        self._commit(mutate)
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed and were removed."""
        ids = check_ids(ids)
        if not ids:
            return 0
        removed = 0

        def mutate(state: _State):
            nonlocal removed
            rows = np.unique(state.lookup(ids))
            rows = rows[rows >= 0]
            removed = len(rows)
            return _Change(_with_deleted_rows(state, rows))

        with self._snapshot() as state:
            if not (state.lookup(ids) >= 0).any():
                return 0
        self._commit(mutate)
        return removed

    def forget(self, ids: Sequence[str]) -> int:
        """Remove records so that no copy of an old file can give them back.

        Every shard holding any version of these ids (live, deleted or replaced) is
        rewritten without them under a fresh data key; the old shards are deleted,
        and so are all older manifest generations, which held the old wrapped data
        keys. A copy of an old shard then decrypts under nothing the store or the
        keyring holds. (A copy of an old *manifest* still opens with the key-
        encryption key that wrapped it: rotate the KEK and remove the old version
        to shred those too.) Returns how many of the ids were found.
        """
        ids = check_ids(ids)
        found = 0

        def mutate(state: _State) -> _Change:
            nonlocal found
            rows = _all_rows(state, ids)
            found = len(set(state.id_table.ids_at(rows))) if len(rows) else 0
            doomed: dict[int, set[int]] = {}
            for row in rows.tolist():
                index = int(np.searchsorted(state.row_starts, row, side="right")) - 1
                doomed.setdefault(index, set()).add(row - int(state.row_starts[index]))
            change = _Change(list(state.manifest.shards), forget_history=True)
            try:
                for index in sorted(doomed, reverse=True):
                    entry = state.manifest.shards[index]
                    keep = np.array(
                        sorted(set(range(entry.rows)) - doomed[index] - set(entry.deleted)),
                        dtype=np.int64,
                    )
                    if len(keep):
                        new_entry, loaded = self._rewrite(state, [(index, keep)])
                        change.shards[index] = new_entry
                        change.loaded[new_entry.shard_id] = loaded
                    else:
                        del change.shards[index]
            except BaseException:
                change.abandon(self._storage)
                raise
            return change

        with self._snapshot() as state:
            if not len(_all_rows(state, ids)):
                return 0
        self._commit(mutate)
        logger.info("forgot %d ids", found)
        return found

    def compact(self, *, target_rows: int = 65_536) -> dict[str, int]:
        """Merge small shards and drop deleted rows, writing shards of up to
        ``target_rows`` rows under fresh data keys. Returns counts."""
        if isinstance(target_rows, bool) or not isinstance(target_rows, int) or target_rows < 1:
            raise ValidationError(f"target_rows must be a positive int, got {target_rows!r}")
        report = {"shards_before": 0, "shards_after": 0, "rows_dropped": 0}

        def mutate(state: _State) -> _Change:
            entries = state.manifest.shards
            report["shards_before"] = len(entries)
            chosen = [
                i for i, e in enumerate(entries) if e.deleted or e.rows < target_rows // 2
            ]
            if len(chosen) == 1 and not entries[chosen[0]].deleted:
                chosen = []
            kept = [e for i, e in enumerate(entries) if i not in set(chosen)]
            change = _Change(kept)
            pending: list[tuple[int, np.ndarray]] = []
            pending_rows = 0
            try:
                for index in chosen:
                    entry = entries[index]
                    report["rows_dropped"] += len(entry.deleted)
                    live = np.setdiff1d(
                        np.arange(entry.rows, dtype=np.int64),
                        np.asarray(entry.deleted, dtype=np.int64),
                    )
                    while len(live):
                        take = live[: target_rows - pending_rows]
                        live = live[len(take) :]
                        pending.append((index, take))
                        pending_rows += len(take)
                        if pending_rows == target_rows:
                            self._flush_rewrite(state, change, pending)
                            pending, pending_rows = [], 0
                if pending:
                    self._flush_rewrite(state, change, pending)
            except BaseException:
                change.abandon(self._storage)
                raise
            report["shards_after"] = len(change.shards)
            return change

        self._commit(mutate)
        logger.info("compacted %(shards_before)d shards into %(shards_after)d", report)
        return report

    def build_index(self, kind: str = "hnsw", **params: int) -> dict[str, Any]:
        """Build an approximate-search index over every row now in the collection,
        seal it like a shard (its own data key, wrapped by the collection key) and
        commit it in a new generation. Returns a report (kind, rows, parameters,
        bytes, seconds).

        ``kind`` is "hnsw" (parameters ``m``, ``ef_construction``, ``ef_search``) or
        "ivf" (``nlist``, ``nprobe``, ``train_rows``); see ``sealvec.ann``. It
        replaces an earlier index of the same kind. Collections opened with
        ``search_backend=kind`` use it; rows added later are searched exactly until
        the next build, deleted rows are skipped, and compaction or forget drop it
        (an index never outlives a shard it covers): build again after those.
        """
        if kind not in INDEX_KINDS:
            raise ValidationError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        started = time.perf_counter()

        # Build from a snapshot, without holding the writer lock: FAISS takes a while.
        with self._snapshot() as state:
            manifest = state.manifest
            resolved = resolve_params(kind, params, state.total_rows)
            covered = tuple(s.shard_id for s in state.shards)
            rows = state.total_rows
            serialized = build_index(
                kind, state.shards, manifest.dimension, manifest.metric, resolved,
                self._memory_lock,
            )
        built_seconds = time.perf_counter() - started
        nbytes = serialized.nbytes
        index_id = os.urandom(16)
        name = index_object_name(index_id)
        ready: LoadedIndex | None = None
        stale = False
        try:
            data_key = SecretKey.generate(self._memory_lock)
            try:
                header_sha256, size = write_index(
                    self._storage,
                    collection_id=manifest.collection_id,
                    index_id=index_id,
                    data_key=data_key,
                    serialized=serialized,
                    rows=rows,
                    dimension=manifest.dimension,
                )
                if self._search_backend == kind:
                    provisional = IndexEntry(
                        index_id, kind, resolved, covered, rows, b"", header_sha256, size
                    )
                    ready = LoadedIndex(provisional, serialized, manifest.metric)

                def mutate(state: _State) -> _Change:
                    nonlocal stale
                    live = {e.shard_id for e in state.manifest.shards}
                    if not all(shard_id in live for shard_id in covered):
                        stale = True
                        raise ConflictError(
                            "shards the index covers were compacted or forgotten while it "
                            "was built; build it again"
                        )
                    entry = IndexEntry(
                        index_id,
                        kind,
                        resolved,
                        covered,
                        rows,
                        wrap_data_key(self._collection_key, data_key),
                        header_sha256,
                        size,
                    )
                    if ready is not None:
                        ready.entry = entry
                    others = tuple(i for i in state.manifest.indexes if i.kind != kind)
                    return _Change(
                        list(state.manifest.shards),
                        indexes=others + (entry,),
                        ready_index=ready,
                    )

                self._commit(mutate)
            finally:
                data_key.close()
        except BaseException:
            if ready is None:
                serialized.release()
            elif ready.holders == 0:
                ready.release()
            if stale:  # certainly not committed: nothing names the object
                self._storage.delete(name)
            raise
        if ready is None:
            serialized.release()
        report = {
            "kind": kind,
            "rows": rows,
            "params": resolved,
            "bytes": nbytes,
            "build_seconds": built_seconds,
            "seconds": time.perf_counter() - started,
            "generation": self.generation,
        }
        logger.info("built %s index over %d rows in %.2f s", kind, rows, built_seconds)
        return report

    def _flush_rewrite(
        self, state: _State, change: _Change, pending: list[tuple[int, np.ndarray]]
    ) -> None:
        entry, loaded = self._rewrite(state, pending)
        change.shards.append(entry)
        change.loaded[entry.shard_id] = loaded

    def _rewrite(
        self, state: _State, selections: list[tuple[int, np.ndarray]]
    ) -> tuple[ShardEntry, LoadedShard]:
        """Seal selected rows of loaded shards as one new shard (fresh data key)."""
        rows, buffers = gather_rows(
            [(state.shards[index], rows) for index, rows in selections],
            state.manifest.dimension,
            self._memory_lock,
        )
        return self._seal_shard(state, rows, *buffers)

    def rotate_key_encryption_key(self, key_id: str | None = None) -> str:
        """Re-wrap the collection key under ``key_id`` (default: the current version of
        the key now in use): one provider call, no data re-encrypted. Returns the new
        versioned key id. Afterwards the old KEK version may be destroyed."""
        target = key_id or self._provider.unversioned(self._key_id)
        new_key_id = ""

        def mutate(state: _State) -> _Change:
            nonlocal new_key_id
            new_key_id, wrapped = self._provider.wrap_key(target, self._collection_key.material())
            return _Change(list(state.manifest.shards), key=(new_key_id, wrapped, self._collection_key))

        self._commit(mutate)
        logger.info("collection key re-wrapped under %s", new_key_id)
        return new_key_id

    def rotate_collection_key(self) -> str:
        """Replace the collection key: every shard's data key is re-wrapped under a new
        one (shards are not re-encrypted). Returns the versioned KEK id used."""
        new_key_id = ""

        def mutate(state: _State) -> _Change:
            nonlocal new_key_id
            collection_key = SecretKey.generate(self._memory_lock)
            try:
                new_key_id, wrapped = self._provider.wrap_key(
                    self._provider.unversioned(self._key_id), collection_key.material()
                )
                shards = []
                for entry in state.manifest.shards:
                    data_key = unwrap_data_key(
                        self._collection_key, entry.wrapped_data_key, self._memory_lock
                    )
                    try:
                        rewrapped = wrap_data_key(collection_key, data_key)
                    finally:
                        data_key.close()
                    shards.append(replace(entry, wrapped_data_key=rewrapped))
                indexes = []
                for index in state.manifest.indexes:
                    data_key = unwrap_data_key(
                        self._collection_key, index.wrapped_data_key, self._memory_lock
                    )
                    try:
                        rewrapped = wrap_data_key(collection_key, data_key)
                    finally:
                        data_key.close()
                    indexes.append(replace(index, wrapped_data_key=rewrapped))
            except BaseException:
                collection_key.close()
                raise
            return _Change(
                shards, key=(new_key_id, wrapped, collection_key), indexes=tuple(indexes)
            )

        self._commit(mutate)
        logger.info("collection key rotated (%s)", new_key_id)
        return new_key_id

    # ------------------------------------------------------------------ background refresh

    def start_auto_refresh(self, interval: float) -> None:
        """Poll for new generations every ``interval`` seconds in a daemon thread.

        Failures are logged (never contents) and kept in ``last_refresh_error``; the
        collection keeps serving the generation it has.
        """
        if not interval > 0:
            raise ValidationError(f"interval must be a positive number of seconds, got {interval!r}")
        self.stop_auto_refresh()
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.refresh()
                    self.last_refresh_error = None
                except ClosedError:
                    return
                except SealvecError as error:
                    self.last_refresh_error = error
                    logger.warning("background refresh failed: %s", type(error).__name__)

        thread = threading.Thread(target=loop, name="sealvec-refresh", daemon=True)
        self._refresher = (stop, thread)
        thread.start()

    def stop_auto_refresh(self) -> None:
        refresher = getattr(self, "_refresher", None)
        if refresher is not None:
            stop, thread = refresher
            stop.set()
            if thread is not threading.current_thread():
                thread.join()
            self._refresher = None

    # ------------------------------------------------------------------ reads

    def get(
        self, ids: Sequence[str], include: Sequence[str] = ("documents", "metadata", "vectors")
    ) -> list[Record | None]:
        """Records by id, in the order asked; None where an id does not exist."""
        ids = check_ids(ids)
        wanted = check_include(include)
        with self._snapshot() as state:
            rows = state.lookup(ids)
            records: list[Record | None] = []
            for record_id, row in zip(ids, rows):
                if row < 0:
                    records.append(None)
                    continue
                shard, local = state.locate(int(row))
                payload = shard.payload(local) if wanted & {"documents", "metadata"} else {}
                records.append(
                    Record(
                        id=record_id,
                        vector=shard.vector_array()[local].copy() if "vectors" in wanted else None,
                        document=payload.get("document") if "documents" in wanted else None,
                        metadata=payload.get("metadata") if "metadata" in wanted else None,
                    )
                )
            return records

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        include: Sequence[str] = (),
        where: dict[str, Any] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        candidates: int | None = None,
    ) -> SearchResults:
        """Top-k for each query (rows of ``queries``, or one 1-D query): exact, or
        approximate with the hnsw and ivf backends.

        Each query gets min(k, matching live records) hits, best first; equal scores
        are ordered by id. ``include`` may name "documents", "metadata", "vectors".
        ``where`` filters on metadata before top-k (see ``attributes.compile_where``):
        ``{"tenant": "t1", "year": {"$gte": 2020}}``. ``ef_search`` (hnsw) and
        ``nprobe`` (ivf) override the index's defaults for this call: larger is slower
        and closer to exact. ``candidates`` (bf16) is how many rows per query the
        bfloat16 scan keeps for exact scoring (default max(2k, k + 32)).
        """
        k = check_k(k)
        wanted = check_include(include)
        if self._search_backend in INDEX_KINDS:
            overrides = search_params(self._search_backend, ef_search, nprobe)
        elif ef_search is not None or nprobe is not None:
            raise ValidationError(
                "ef_search and nprobe apply to the hnsw and ivf search backends; this "
                f"collection searches with {self._search_backend!r}"
            )
        if candidates is not None:
            if self._search_backend != "bf16":
                raise ValidationError(
                    "candidates applies to the bf16 search backend; this collection "
                    f"searches with {self._search_backend!r}"
                )
            candidates = check_k(candidates, name="candidates")
        program = compile_where(where) if where is not None else None
        with self._snapshot() as state:
            manifest = state.manifest
            queries = check_vectors(
                queries, manifest.dimension, manifest.metric, name="queries", allow_1d=True
            )
            mask = state.mask
            if program is not None and state.total_rows:
                mask = _core.filter_mask(
                    [s.attributes for s in state.shards],
                    [s.rows for s in state.shards],
                    program,
                    base_mask=state.mask,
                )
            if state.total_rows == 0 or not mask.any():
                empty = np.zeros((len(queries), 0), dtype=np.float32)
                return SearchResults(
                    [[] for _ in queries], empty, [[] for _ in queries], manifest.generation
                )
            if state.faiss_index is not None:
                scores, rows = state.faiss_index.search(queries, k, mask, state.ranks)
            elif state.ann is not None:
                scores, rows = self._approximate_search(state, queries, k, mask, overrides)
            elif self._search_backend == "bf16":
                reduced = [self._reduced[s.shard_id] for s in state.shards]
                scores, rows = _core.search(
                    [s.vectors for s in state.shards],
                    manifest.dimension,
                    queries,
                    k,
                    manifest.metric,
                    mask=mask,
                    tiebreak=state.ranks,
                    threads=self._threads,
                    bf16_segments=[halves for halves, _ in reduced],
                    sq_norms=[norms for _, norms in reduced],
                    candidates=candidates or max(2 * k, k + 32),
                )
            else:
                scores, rows = _core.search(
                    [s.vectors for s in state.shards],
                    manifest.dimension,
                    queries,
                    k,
                    manifest.metric,
                    mask=mask,
                    tiebreak=state.ranks,
                    threads=self._threads,
                )
            flat_ids = state.id_table.ids_at(rows.reshape(-1))
            width = rows.shape[1]
            ids = [flat_ids[i * width : (i + 1) * width] for i in range(len(rows))]
            hits = []
            for query_ids, query_scores, query_rows in zip(ids, scores, rows):
                query_hits = []
                for hit_id, score, row in zip(query_ids, query_scores, query_rows):
                    hit = Hit(hit_id, float(score))
                    if wanted:
                        shard, local = state.locate(int(row))
                        if wanted & {"documents", "metadata"}:
                            payload = shard.payload(local)
                            if "documents" in wanted:
                                hit.document = payload.get("document")
                            if "metadata" in wanted:
                                hit.metadata = payload.get("metadata")
                        if "vectors" in wanted:
                            hit.vector = shard.vector_array()[local].copy()
                    query_hits.append(hit)
                hits.append(query_hits)
            return SearchResults(ids, scores, hits, manifest.generation)

    def _approximate_search(
        self,
        state: _State,
        queries: np.ndarray,
        k: int,
        mask: np.ndarray,
        overrides: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k from the state's index over the rows it covers, merged with an exact
        scan of the shards added since it was built. A query for which the index finds
        fewer than min(k, allowed rows) is answered exactly instead."""
        manifest = state.manifest
        metric = manifest.metric
        kept = min(k, int(np.count_nonzero(mask)))
        parts: list[tuple[np.ndarray, np.ndarray]] = []

        # Rows the index covers: FAISS with a bitmap of the allowed labels finds them;
        # the native kernel scores them exactly (FAISS's own distances differ in the last
        # bits), ordered as an exact search orders them.
        label_mask = mask[state.ann_rows]
        covered = int(np.count_nonzero(label_mask))
        short = np.zeros(len(queries), dtype=bool)
        if covered:
            bitmap = None
            if covered < len(label_mask):
                bitmap = np.packbits(label_mask, bitorder="little")
            wanted = min(k, covered)
            _, labels = self._index_search(state.ann, queries, wanted, bitmap, metric, overrides)
            found = np.ascontiguousarray(
                np.where(labels >= 0, state.ann_rows[np.maximum(labels, 0)], -1), dtype=np.int64
            )
            short |= (found < 0).any(axis=1)  # the index came short of min(k, covered)
            scores, rows = _core.search(
                [s.vectors for s in state.shards],
                manifest.dimension,
                queries,
                wanted,
                metric,
                mask=mask,
                tiebreak=state.ranks,
                candidate_rows=found,
            )
            parts.append((scores, rows))

        # Shards added since the build: the native kernel, exactly.
        if state.uncovered:
            starts = state.row_starts
            global_rows = np.concatenate(
                [np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in state.uncovered]
            )
            sub_mask = np.ascontiguousarray(mask[global_rows])
            if sub_mask.any():
                scores, local = _core.search(
                    [state.shards[i].vectors for i in state.uncovered],
                    manifest.dimension,
                    queries,
                    k,
                    metric,
                    mask=sub_mask,
                    tiebreak=np.ascontiguousarray(state.ranks[global_rows]),
                    threads=self._threads,
                )
                parts.append((scores, global_rows[local]))

        # Merge: best score first, ties by id rank; invalid (-1) candidates last.
        scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
        rows = np.concatenate([p[1] for p in parts], axis=1)
        primary, secondary = _ordering_keys(metric, scores, rows, state.ranks)
        order = np.lexsort((secondary, primary), axis=-1)[:, :kept]
        scores = np.take_along_axis(scores, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)

        # The count contract: fall back to an exact search where the index came short.
        short = np.flatnonzero(short | (rows < 0).any(axis=1))
        if len(short):
            logger.info("%d queries answered exactly: the index found too few rows", len(short))
            exact_scores, exact_rows = _core.search(
                [s.vectors for s in state.shards],
                manifest.dimension,
                np.ascontiguousarray(queries[short]),
                k,
                metric,
                mask=mask,
                tiebreak=state.ranks,
                threads=self._threads,
            )
            scores[short] = exact_scores
            rows[short] = exact_rows
        return scores, rows

    def _index_search(
        self,
        ann: LoadedIndex,
        queries: np.ndarray,
        k: int,
        bitmap: np.ndarray | None,
        metric: str,
        overrides: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search; cosine queries are normalized in locked scratch memory."""
        if metric != "cosine":
            return ann.search(queries, k, bitmap, **overrides)
        scratch = _core.SecureBuffer(queries.nbytes, self._memory_lock)
        try:
            with memoryview(scratch) as view:
                unit = np.frombuffer(view, dtype=np.float32).reshape(queries.shape)
                np.copyto(unit, queries)
                norms = np.sqrt(np.einsum("ij,ij->i", unit, unit, dtype=np.float64))
                unit /= norms.astype(np.float32)[:, None]
                result = ann.search(unit, k, bitmap, **overrides)
                del unit
            return result
        finally:
            scratch.release()


def _ordering_keys(metric: str, scores: np.ndarray, rows: np.ndarray, ranks: np.ndarray):
    """(primary, secondary) sort keys, ascending = better; invalid rows (-1) last."""
    valid = rows >= 0
    primary = np.where(valid, scores if metric == "l2" else -scores, np.inf)
    secondary = np.where(valid, ranks[np.where(valid, rows, 0)], np.iinfo(np.int64).max)
    return primary, secondary


def _retire(
    retired: tuple[tuple[bytes, int], ...],
    dropped: set[bytes],
    oldest_kept: int,
    generation: int,
) -> tuple[tuple[tuple[bytes, int], ...], set[bytes]]:
    """Objects dropped from the live list stay ``retired`` while a retained manifest
    still names them; returns (still retired, ids no retained manifest names)."""
    kept = []
    collectable = set()
    # An object dropped at generation g is named only by manifests older than g.
    for object_id, dropped_at in retired:
        if dropped_at > oldest_kept:
            kept.append((object_id, dropped_at))
        else:
            collectable.add(object_id)
    if oldest_kept < generation:
        kept.extend((object_id, generation) for object_id in sorted(dropped))
    else:
        collectable |= dropped
    return tuple(kept), collectable


def _named_objects(manifest: Manifest) -> set[str]:
    """Every shard and index object the manifest, or a retained older one, names."""
    return (
        {shard_object_name(e.shard_id) for e in manifest.shards}
        | {shard_object_name(shard_id) for shard_id, _ in manifest.retired}
        | {index_object_name(i.index_id) for i in manifest.indexes}
        | {index_object_name(index_id) for index_id, _ in manifest.retired_indexes}
    )


def _attach_index(state: _State, ann: LoadedIndex) -> None:
    """Map the index's FAISS labels to the state's global rows."""
    position = {s.shard_id: i for i, s in enumerate(state.shards)}
    pieces = []
    for shard_id in ann.entry.shards:
        index = position[shard_id]
        start = int(state.row_starts[index])
        pieces.append(np.arange(start, start + state.shards[index].rows, dtype=np.int64))
    state.ann = ann
    state.ann_rows = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    covered = set(ann.entry.shards)
    state.uncovered = [i for i, s in enumerate(state.shards) if s.shard_id not in covered]


def _all_rows(state: _State, ids: list[str]) -> np.ndarray:
    """Every physical row holding any of ``ids``: live, deleted or replaced."""
    mask = np.ones(state.total_rows, dtype=np.uint8)
    found: list[np.ndarray] = []
    while True:
        rows = state.id_table.lookup(ids, mask)
        rows = rows[rows >= 0]
        if not len(rows):
            break
        found.append(rows)
        mask[rows] = 0
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _with_deleted_rows(state: _State, rows: np.ndarray) -> list[ShardEntry]:
    """The manifest's shard entries with the given global rows marked deleted."""
    by_shard: dict[int, list[int]] = {}
    for row in np.asarray(rows, dtype=np.int64):
        index = int(np.searchsorted(state.row_starts, row, side="right")) - 1
        by_shard.setdefault(index, []).append(int(row - state.row_starts[index]))
    entries = list(state.manifest.shards)
    for index, local_rows in by_shard.items():
        entry = entries[index]
        deleted = tuple(sorted(set(entry.deleted) | set(local_rows)))
        entries[index] = ShardEntry(
            entry.shard_id,
            entry.rows,
            entry.wrapped_data_key,
            entry.header_sha256,
            entry.size,
            deleted,
        )
    return entries


def collection_exists(location: str | os.PathLike[str] | Storage) -> bool:
    storage = _as_storage(location)
    return storage.exists() and _latest_generation(storage) is not None


def default_store_path() -> Path:
    return Path(os.environ.get("SEALVEC_STORE", "./sealvec-store"))


__all__ = [
    "Collection",
    "Hit",
    "Record",
    "SearchResults",
    "StorageError",
]
