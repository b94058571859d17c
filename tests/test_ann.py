"""Approximate search with sealed FAISS indexes (HNSW, IVF-Flat): recall against exact
search on the real corpus, the result contract, the index's life cycle (added,
deleted, compacted, forgotten rows; key rotation; refresh), tampering, and where the
index's vectors live in memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("faiss")

from conftest import random_vectors  # noqa: E402
from sealvec import Collection, IntegrityError, ValidationError  # noqa: E402
from sealvec.ann import INDEX_PREFIX  # noqa: E402
from sealvec.verify import verify_store  # noqa: E402

KINDS = ["hnsw", "ivf"]


def recall_at(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def index_files(store) -> list:
    return sorted((store / INDEX_PREFIX).glob("*.svi"))


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory, corpus):
    """The stdlib corpus (3390 x 384, cosine) in two shards, with both indexes."""
    records, vectors = corpus
    store = tmp_path_factory.mktemp("ann") / "store"
    keyring = store.parent / "keyring.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEALVEC_KEYRING", str(keyring))
        patch.setenv("SEALVEC_STATE_DIR", str(store.parent / "state"))
        ids = [r["id"] for r in records]
        with Collection.create(store, dimension=384, metric="cosine") as collection:
            collection.add(ids[:2000], vectors[:2000])
            collection.add(ids[2000:], vectors[2000:])
            for kind in KINDS:
                collection.build_index(kind)
    return store, keyring, ids, vectors


@pytest.fixture
def opened_corpus(corpus_store, monkeypatch):
    store, keyring, ids, vectors = corpus_store
    monkeypatch.setenv("SEALVEC_KEYRING", str(keyring))
    monkeypatch.setenv("SEALVEC_STATE_DIR", str(store.parent / "state"))
    return store, ids, vectors


def corpus_queries(vectors: np.ndarray, count: int = 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    picked = vectors[rng.choice(len(vectors), count, replace=False)]
    noisy = picked + 0.05 * rng.standard_normal(picked.shape).astype(np.float32)
    return noisy.astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_recall_on_the_corpus_with_default_parameters(opened_corpus, kind):
    store, _, vectors = opened_corpus
    queries = corpus_queries(vectors)
    with Collection.open(store) as exact, Collection.open(store, search_backend=kind) as ann:
        assert ann.stats()["search_index"] == kind
        want = exact.search(queries, k=10)
        got = ann.search(queries, k=10)
    assert recall_at(got.ids, want.ids) >= 0.9
    # Where both found a record, they agree on its score (float32 rounding apart).
    for got_ids, got_scores, want_ids, want_scores in zip(
        got.ids, got.scores, want.ids, want.scores
    ):
        expected = dict(zip(want_ids, want_scores))
        for hit_id, score in zip(got_ids, got_scores):
            if hit_id in expected:
                assert score == pytest.approx(expected[hit_id], abs=2e-6)


@pytest.mark.parametrize(("kind", "knob"), [("hnsw", {"ef_search": 2000}), ("ivf", {"nprobe": 10**6})])
def test_exhaustive_settings_reach_exact_results(opened_corpus, kind, knob):
    store, _, vectors = opened_corpus
    queries = corpus_queries(vectors, 32)
    with Collection.open(store) as exact, Collection.open(store, search_backend=kind) as ann:
        want = exact.search(queries, k=10)
        got = ann.search(queries, k=10, **knob)
    assert recall_at(got.ids, want.ids) >= 0.995
    np.testing.assert_allclose(got.scores, want.scores, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_index_vectors_are_read_in_place_from_locked_memory(opened_corpus, kind):
    store, _, _ = opened_corpus
    with Collection.open(store, search_backend=kind) as collection:
        index = collection._state.ann
        assert index.vectors_in_locked_memory()
        assert index.nbytes > 3390 * 384 * 4


def test_index_objects_are_sealed(opened_corpus):
    store, ids, vectors = opened_corpus
    files = index_files(store)
    assert len(files) == 2
    for path in files:
        data = path.read_bytes()
        assert data.startswith(b"SEALVEC\x00")
        for row in (0, 1234, 3389):
            assert vectors[row].tobytes()[:32] not in data
            unit = vectors[row] / np.linalg.norm(vectors[row])
            assert unit.astype(np.float32).tobytes()[:32] not in data
        assert ids[5].encode() not in data
    report = verify_store(store)
    assert report["indexes_checked"] == 2 and report["unreferenced"] == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_contract_with_added_deleted_and_filtered_rows(store, kind, metric):
    vectors = random_vectors(1200, 16, seed=3)
    ids = [f"r{i:04d}" for i in range(1200)]
    metadata = [{"group": i % 5} for i in range(1200)]
    with Collection.create(store, dimension=16, metric=metric) as collection:
        collection.add(ids[:1000], vectors[:1000], metadata=metadata[:1000])
        # Random data has no clusters: IVF needs most lists probed for high recall.
        collection.build_index(kind, **({"nlist": 8, "nprobe": 6} if kind == "ivf" else {}))
        collection.add(ids[1000:], vectors[1000:], metadata=metadata[1000:])  # after the build
        collection.delete(ids[:1000:7])
    deleted = set(ids[:1000:7])
    with Collection.open(store) as exact, Collection.open(store, search_backend=kind) as ann:
        # A row added after the build is found (scanned exactly).
        assert ann.search(vectors[1100], k=1)[0][0].id == "r1100"
        # Deleted rows never come back, even when asked for everything.
        everything = ann.search(vectors[:3], k=1200)
        for hits in everything.ids:
            assert len(hits) == 1200 - len(deleted)
            assert not deleted & set(hits) and len(set(hits)) == len(hits)
        # A filter applies before top-k; k larger than the matches gives all matches.
        where = {"group": 3}
        matching = {i for i, m in zip(ids, metadata) if m["group"] == 3} - deleted
        result = ann.search(vectors[:4], k=len(matching) + 50, where=where)
        for hits in result.ids:
            assert set(hits) == matching
        want = exact.search(vectors[:4], k=10, where=where)
        got = ann.search(vectors[:4], k=10, where=where)
        assert recall_at(got.ids, want.ids) >= 0.9
        # Best first, ties by id; scores are the metric's.
        scores = got.scores
        assert not np.isnan(scores).any()
        if metric == "l2":
            assert (np.diff(scores, axis=1) >= 0).all() and (scores >= 0).all()
        else:
            assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_equal_scores_are_ordered_by_id(store, kind):
    # Among the candidates the index returns, ties go by id (as in exact search).
    vectors = np.repeat(random_vectors(1, 8, seed=4), 30, axis=0)
    ids = [f"dup{i:02d}" for i in reversed(range(30))]
    with Collection.create(store, dimension=8, metric="ip") as collection:
        collection.add(ids, vectors)
        collection.build_index(kind, **({"nlist": 1} if kind == "ivf" else {}))
    with Collection.open(store, search_backend=kind) as collection:
        hits = collection.search(vectors[0], k=30)[0]
    assert [h.id for h in hits] == sorted(ids)


def test_compaction_drops_the_index_and_search_falls_back_to_exact(store, caplog):
    vectors = random_vectors(600, 8, seed=5)
    ids = [f"c{i}" for i in range(600)]
    with Collection.create(store, dimension=8, metric="l2") as collection:
        collection.add(ids[:300], vectors[:300])
        collection.add(ids[300:], vectors[300:])
        collection.build_index("ivf")
        assert [i["kind"] for i in collection.stats()["indexes"]] == ["ivf"]
        collection.delete(ids[:10])
        assert collection.stats()["indexes"]  # a delete keeps the index
        collection.compact()
        assert collection.stats()["indexes"] == []
    with caplog.at_level(logging.WARNING, logger="sealvec.collection"):
        with Collection.open(store, search_backend="ivf") as collection:
            assert collection.stats()["search_index"] is None
            assert collection.search(vectors[42], k=1)[0][0].id == "c42"
    assert "no ivf index" in caplog.text


def test_forget_deletes_every_index_holding_the_record(store):
    vectors = random_vectors(400, 8, seed=6)
    ids = [f"f{i}" for i in range(400)]
    with Collection.create(store, dimension=8, metric="cosine") as collection:
        collection.add(ids[:200], vectors[:200])
        collection.add(ids[200:], vectors[200:])
        collection.build_index("hnsw")
        collection.build_index("hnsw")  # replaces the first; it stays for older manifests
        collection.build_index("ivf")
        assert len(index_files(store)) == 3
        collection.forget(["f7"])
        assert collection.stats()["indexes"] == []
    assert index_files(store) == []
    assert verify_store(store)["unreferenced"] == []


def test_replaced_index_objects_are_collected_with_their_generations(store):
    vectors = random_vectors(300, 8, seed=8)
    with Collection.create(store, dimension=8, metric="ip") as collection:
        collection.add([f"g{i}" for i in range(300)], vectors)
        for _ in range(3):
            collection.build_index("hnsw")
        assert len(collection.stats()["indexes"]) == 1
        assert len(index_files(store)) == 3  # older retained generations name two of them
        for i in range(12):  # push those generations out of retention
            collection.delete([f"g{i}"])
    assert len(index_files(store)) == 1


def test_key_rotation_keeps_the_index_readable(store):
    vectors = random_vectors(300, 8, seed=9)
    with Collection.create(store, dimension=8, metric="ip") as collection:
        collection.add([f"k{i}" for i in range(300)], vectors)
        collection.build_index("hnsw")
        collection.rotate_collection_key()
        collection.rotate_key_encryption_key()
    with Collection.open(store, search_backend="hnsw") as collection:
        assert collection.stats()["search_index"] == "hnsw"
        assert collection.search(vectors[17], k=1)[0][0].id == "k17"
    assert verify_store(store)["indexes_checked"] == 1


def test_refresh_picks_up_an_index_another_handle_built(store):
    vectors = random_vectors(300, 8, seed=10)
    with Collection.create(store, dimension=8, metric="ip") as writer:
        writer.add([f"x{i}" for i in range(300)], vectors)
        with Collection.open(store, search_backend="hnsw") as reader:
            assert reader.stats()["search_index"] is None
            writer.build_index("hnsw")
            assert reader.refresh()
            assert reader.stats()["search_index"] == "hnsw"
            index = reader._state.ann
            writer.add(["late"], vectors[:1] * 2)
            assert reader.refresh()
            assert reader._state.ann is index  # reused, not decrypted again
            assert reader.search(vectors[0] * 2, k=1)[0][0].id == "late"


def test_a_building_handle_searching_with_that_kind_uses_its_index_at_once(store):
    vectors = random_vectors(300, 8, seed=11)
    with Collection.create(store, dimension=8, metric="l2", search_backend="ivf") as collection:
        collection.add([f"y{i}" for i in range(300)], vectors)
        report = collection.build_index("ivf", nlist=4, nprobe=4)
        assert report["params"] == {"nlist": 4, "nprobe": 4, "train_rows": 256}
        assert collection.stats()["search_index"] == "ivf"
        assert collection.search(vectors[5], k=1)[0][0].id == "y5"


@pytest.mark.parametrize(
    "damage",
    ["flip_header", "flip_body", "truncate", "swap"],
)
def test_damaged_index_objects_fail_closed(store, tmp_path, damage):
    vectors = random_vectors(300, 8, seed=12)
    with Collection.create(store, dimension=8, metric="l2") as collection:
        collection.add([f"z{i}" for i in range(300)], vectors)
        collection.build_index("hnsw")
    (path,) = index_files(store)
    data = bytearray(path.read_bytes())
    if damage == "flip_header":
        data[40] ^= 1
    elif damage == "flip_body":
        data[-100] ^= 1
    elif damage == "truncate":
        data = data[:-1]
    else:  # an index of another collection with the same shape, under this name
        other = tmp_path / "other"
        with Collection.create(other, dimension=8, metric="l2") as collection:
            collection.add([f"z{i}" for i in range(300)], vectors)
            collection.build_index("hnsw")
        data = bytearray(index_files(other)[0].read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=path.name.split(".")[0]):
        Collection.open(store, search_backend="hnsw")
    with pytest.raises(IntegrityError):
        verify_store(store)
    with Collection.open(store) as collection:  # exact search does not read the index
        assert collection.search(vectors[3], k=1)[0][0].id == "z3"


def test_a_missing_index_object_is_an_integrity_failure(store):
    vectors = random_vectors(100, 8, seed=13)
    with Collection.create(store, dimension=8, metric="ip") as collection:
        collection.add([f"m{i}" for i in range(100)], vectors)
        collection.build_index("ivf")
    index_files(store)[0].unlink()
    with pytest.raises(IntegrityError, match="missing"):
        Collection.open(store, search_backend="ivf")


def test_bad_parameters_are_named(store):
    vectors = random_vectors(100, 8, seed=14)
    with Collection.create(store, dimension=8, metric="ip") as collection:
        with pytest.raises(ValidationError, match="no rows"):
            collection.build_index("hnsw")
        collection.add([f"p{i}" for i in range(100)], vectors)
        with pytest.raises(ValidationError, match="index kind"):
            collection.build_index("annoy")
        with pytest.raises(ValidationError, match="unknown hnsw parameter"):
            collection.build_index("hnsw", nlist=4)
        with pytest.raises(ValidationError, match="nlist must be at most"):
            collection.build_index("ivf", nlist=101)
        with pytest.raises(ValidationError, match="m must be between"):
            collection.build_index("hnsw", m=2)
        with pytest.raises(ValidationError, match="m must be an int"):
            collection.build_index("hnsw", m=4.5)
        with pytest.raises(ValidationError, match="apply to the hnsw and ivf"):
            collection.search(vectors[0], k=1, nprobe=3)
        assert collection.stats()["indexes"] == []
        assert index_files(store) == []
    with Collection.open(store, search_backend="hnsw") as collection:
        with pytest.raises(ValidationError, match="nprobe applies to the ivf"):
            collection.search(vectors[0], k=1, nprobe=3)
        with pytest.raises(ValidationError, match="ef_search must be between"):
            collection.search(vectors[0], k=1, ef_search=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_scores_are_exact_and_ties_ordered_across_indexed_and_later_rows(store, kind, metric):
    """Rows the index covers are scored by the native kernel, as rows added after the
    build are: equal vectors score the same and go by id, whichever part found them."""
    rng = np.random.default_rng(11)
    v = rng.standard_normal(16).astype(np.float32)
    with Collection.create(store, dimension=16, metric=metric) as collection:
        collection.add([f"r{i:04d}" for i in range(300)], random_vectors(300, 16, seed=12))
        collection.add([f"d{i:03d}" for i in range(0, 40, 2)], np.repeat(v[None], 20, 0))
        collection.build_index(kind, **({"nlist": 4, "nprobe": 4} if kind == "ivf" else {}))
        collection.add([f"d{i:03d}" for i in range(1, 40, 2)], np.repeat(v[None], 20, 0))
    queries = np.stack([v, *random_vectors(5, 16, seed=13)])
    with Collection.open(store) as exact, Collection.open(store, search_backend=kind) as ann:
        want = exact.search(queries, k=20)
        got = ann.search(queries, k=20)
        assert got.ids[0] == [f"d{i:03d}" for i in range(20)] == want.ids[0]
        assert got.scores[0].tolist() == want.scores[0].tolist()
        for query, hits in zip(queries, got):  # every score is the exact one, bit for bit
            rescored = {h.id: h.score for h in exact.search(query, k=340)[0]}
            assert [h.score for h in hits] == [rescored[h.id] for h in hits]


@pytest.mark.parametrize("kind", KINDS)
def test_narrow_filter_with_later_rows_falls_back_to_exact(store, kind):
    """The index finds fewer allowed rows than asked (a narrow filter, a weak index):
    the query is answered exactly, even though rows added after the build could fill
    the slots."""
    vectors = random_vectors(3000, 16, seed=14)
    tags = [{"tag": "rare" if i % 300 == 0 else "common"} for i in range(3000)]
    ids = [f"c{i:05d}" for i in range(3000)]
    far = random_vectors(50, 16, seed=15) + 40.0
    with Collection.create(store, dimension=16, metric="l2") as collection:
        collection.add(ids, vectors, metadata=tags)
        collection.build_index(
            kind, **({"m": 4, "ef_search": 1} if kind == "hnsw" else {"nlist": 32, "nprobe": 1})
        )
        collection.add([f"n{i:05d}" for i in range(50)], far, metadata=[{"tag": "rare"}] * 50)
    queries = vectors[::300][:10] + 0.01
    with Collection.open(store) as exact, Collection.open(store, search_backend=kind) as ann:
        want = exact.search(queries, k=10, where={"tag": "rare"})
        got = ann.search(queries, k=10, where={"tag": "rare"})
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.scores, want.scores)
