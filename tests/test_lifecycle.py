"""Long-lived collections: compaction, key rotation, forgetting, refresh."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_vectors

from sealvec import (
    Collection,
    IntegrityError,
    KeyNotFoundError,
    LocalKeyring,
    verify_store,
)
from sealvec.keys import unwrap_data_key
from sealvec.manifest import open_manifest
from sealvec.sealed import KIND_SHARD, parse_header, verify_commitment


def test_upsert_delete_compact_keeps_answers(store):
    a, b, c = (np.eye(3, dtype=np.float32) + 0.2).astype(np.float32)
    with Collection.create(store, dimension=3, metric="cosine") as collection:
        collection.upsert(["A", "B", "C"], np.stack([a, b, c]))
        collection.delete(["A"])
        assert collection.search(a, k=1)[0][0].id in ("B", "C")
        expected = collection.search(a, k=2).ids
        assert collection.count() == 2
    with Collection.open(store) as collection:
        assert collection.search(a, k=2).ids == expected and collection.count() == 2
        report = collection.compact()
        assert report["rows_dropped"] == 1
        assert collection.search(a, k=2).ids == expected and collection.count() == 2
    with Collection.open(store) as collection:
        assert collection.search(a, k=2).ids == expected and collection.count() == 2
        assert collection.stats()["deleted_rows"] == 0
    verify_store(store)


def test_compaction_merges_small_shards_and_collects_garbage(store):
    vectors = random_vectors(200, 8, seed=1)
    ids = [f"r{i:03d}" for i in range(200)]
    with Collection.create(store, dimension=8, metric="l2", retain_generations=2) as collection:
        for start in range(0, 200, 20):
            collection.add(ids[start : start + 20], vectors[start : start + 20])
        collection.delete(ids[::7])
        queries = random_vectors(5, 8, seed=2)
        before = collection.search(queries, k=10)
        assert collection.stats()["shards"] == 10
        collection.compact(target_rows=64)
        after = collection.search(queries, k=10)
        assert after.ids == before.ids
        np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
        assert collection.stats()["shards"] == 3
        # Shards the retained previous generation names survive until it is pruned.
        assert len(list((store / "shards").iterdir())) == 13
        collection.add(["x"], random_vectors(1, 8, seed=3))
        collection.add(["y"], random_vectors(1, 8, seed=4))
        assert len(list((store / "shards").iterdir())) == 5
    assert verify_store(store)["unreferenced"] == []


def test_rotate_kek_then_destroy_old_version(store):
    keyring = LocalKeyring()
    with Collection.create(store, dimension=4, key_id="local:main") as collection:
        collection.add(["before"], random_vectors(1, 4))
        new_version = keyring.rotate_key("main")
        assert collection.rotate_key_encryption_key() == new_version == "local:main/2"
        collection.add(["after"], random_vectors(1, 4, seed=1))
    LocalKeyring().remove_version("local:main/1")
    with Collection.open(store) as collection:
        assert collection.key_id == "local:main/2"
        assert [r.id for r in collection.get(["before", "after"])] == ["before", "after"]
    report = verify_store(store)
    assert report["manifests_under_destroyed_keys"]


def test_rotate_collection_key_rewraps_every_data_key(store):
    with Collection.create(store, dimension=4) as collection:
        collection.add(["a", "b"], random_vectors(2, 4))
        collection.add(["c"], random_vectors(1, 4, seed=1))
        shard_bytes = {p.name: p.read_bytes() for p in (store / "shards").iterdir()}
        collection.rotate_collection_key()
        collection.add(["d"], random_vectors(1, 4, seed=2))
    # Shards were not re-encrypted, only their keys re-wrapped.
    for name, data in shard_bytes.items():
        assert (store / "shards" / name).read_bytes() == data
    with Collection.open(store) as collection:
        assert collection.count() == 4


def test_missing_kek_version_is_named(store):
    with Collection.create(store, dimension=4, key_id="local:main") as collection:
        collection.add(["a"], random_vectors(1, 4))
    keyring = LocalKeyring()
    keyring.rotate_key("main")
    keyring.remove_version("local:main/1")
    with pytest.raises(KeyNotFoundError, match="local:main/1"):
        Collection.open(store)


def test_forget_shreds_old_shards(store, tmp_path):
    vectors = random_vectors(30, 6, seed=5)
    ids = [f"p{i}" for i in range(30)]
    with Collection.create(store, dimension=6, metric="ip") as collection:
        collection.add(ids[:15], vectors[:15], documents=[f"note {i}" for i in ids[:15]])
        collection.add(ids[15:], vectors[15:], documents=[f"note {i}" for i in ids[15:]])
        collection.upsert(["p3"], vectors[3:4] * 2)  # an older version of p3 remains
        collection.delete(["p20"])
        backup = tmp_path / "backup"
        shutil.copytree(store, backup)

        assert collection.forget(["p3", "p20", "unknown"]) == 2
        assert collection.get(["p3", "p20"]) == [None, None]
        assert collection.count() == 28
        for query in vectors:
            assert not {"p3", "p20"} & set(collection.search(query, k=30).ids[0])

    # Only the newest manifest survives; no current manifest names an old shard.
    assert len(list((store / "manifest").iterdir())) == 1
    old_shards = sorted((backup / "shards").iterdir())
    assert not any((store / "shards" / p.name).exists() for p in old_shards[:2])

    # Nothing the store or the keyring holds now opens the old shards.
    keyring = LocalKeyring()
    manifest_path = next((store / "manifest").iterdir())
    opened = open_manifest(
        manifest_path.read_bytes(), name=f"manifest/{manifest_path.name}", provider=keyring
    )
    candidate_keys = [
        unwrap_data_key(opened.collection_key, e.wrapped_data_key).material()
        for e in opened.manifest.shards
    ]
    candidate_keys.append(opened.collection_key.material())
    keyring_document = json.loads(keyring.path.read_text())
    for entry in keyring_document["keys"].values():
        candidate_keys += [base64.b64decode(k) for k in entry["versions"].values()]
    assert len(candidate_keys) >= 3
    for old in old_shards[:2]:
        header = parse_header(old.read_bytes(), expected_kind=KIND_SHARD)
        for key in candidate_keys:
            with pytest.raises(IntegrityError):
                verify_commitment(header, key)
    verify_store(store)


def test_background_refresh_follows_another_writer(store):
    with Collection.create(store, dimension=4) as writer:
        with Collection.open(store, refresh_interval=0.02) as reader:
            for i in range(5):
                writer.add([f"id{i}"], random_vectors(1, 4, seed=i))
            deadline = time.monotonic() + 10
            while reader.count() != 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert reader.count() == 5
            assert reader.last_refresh_error is None


def test_threads_search_while_one_thread_writes(store):
    dimension = 16
    batches = [random_vectors(25, dimension, seed=s) for s in range(12)]
    errors: list[BaseException] = []
    with Collection.create(store, dimension=dimension, metric="l2") as collection:
        stop = threading.Event()

        def search_loop() -> None:
            query = batches[0][0]
            try:
                while not stop.is_set():
                    results = collection.search(query, k=5)
                    hits = results[0]
                    if results.generation > 1:
                        assert hits[0].id == "b0-0" and hits[0].score == pytest.approx(0, abs=1e-4)
                        assert len(hits) == 5
                    else:
                        assert hits == []
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        searchers = [threading.Thread(target=search_loop) for _ in range(4)]
        for thread in searchers:
            thread.start()
        for number, batch in enumerate(batches):
            collection.add([f"b{number}-{i}" for i in range(25)], batch)
            if number % 4 == 3:
                collection.compact(target_rows=100)
        stop.set()
        for thread in searchers:
            thread.join()
        assert collection.count() == 300
    assert errors == []
