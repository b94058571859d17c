"""The collection API: writes, reads, exact search, input validation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_vectors

import sealvec
from sealvec import Collection, ValidationError


def exact_top_k(matrix: np.ndarray, ids: list[str], query: np.ndarray, k: int, metric: str):
    """Numpy oracle: scores and ids, best first, ties broken by id."""
    if metric == "cosine":
        scores = (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i].encode()))
    elif metric == "ip":
        scores = matrix @ query
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i].encode()))
    else:
        scores = np.sqrt(((matrix - query) ** 2).sum(axis=1))
        order = sorted(range(len(ids)), key=lambda i: (scores[i], ids[i].encode()))
    top = order[:k]
    return [ids[i] for i in top], scores[top]


def test_corpus_top10_equals_numpy(store, corpus):
    records, vectors = corpus
    ids = [r["id"] for r in records]
    with Collection.create(store, dimension=384, metric="cosine") as collection:
        for start in range(0, len(ids), 1000):
            collection.add(
                ids[start : start + 1000],
                vectors[start : start + 1000],
                documents=[r["text"] for r in records[start : start + 1000]],
            )
        queries = vectors[[0, 17, 400, 2500, 3389]] + 0.01
        results = collection.search(queries.astype(np.float32), k=10)
        for query, hits in zip(queries.astype(np.float32), results):
            expected_ids, expected_scores = exact_top_k(vectors, ids, query, 10, "cosine")
            assert [h.id for h in hits] == expected_ids
            np.testing.assert_allclose([h.score for h in hits], expected_scores, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_search_matches_oracle_after_reopen(store, metric):
    vectors = random_vectors(300, 16, seed=3)
    ids = [f"doc-{i:04d}" for i in range(300)]
    with Collection.create(store, dimension=16, metric=metric) as collection:
        collection.add(ids[:100], vectors[:100])
        collection.add(ids[100:], vectors[100:])
    query = random_vectors(1, 16, seed=9)[0]
    with Collection.open(store) as collection:
        hits = collection.search(query, k=7)[0]
    expected_ids, expected_scores = exact_top_k(vectors, ids, query, 7, metric)
    assert [h.id for h in hits] == expected_ids
    np.testing.assert_allclose([h.score for h in hits], expected_scores, rtol=1e-5, atol=1e-5)


def test_ties_are_broken_by_id(store):
    vectors = np.ones((5, 4), dtype=np.float32)
    ids = ["e", "b", "d", "a", "c"]
    with Collection.create(store, dimension=4, metric="ip") as collection:
        collection.add(ids[:2], vectors[:2])
        collection.add(ids[2:], vectors[2:])
        hits = collection.search(np.ones(4, dtype=np.float32), k=3)[0]
    assert [h.id for h in hits] == ["a", "b", "c"]


def test_k_larger_than_collection_and_empty_collection(store):
    with Collection.create(store, dimension=8, metric="l2") as collection:
        empty = collection.search(random_vectors(2, 8), k=5)
        assert [list(h) for h in empty] == [[], []]
        assert empty.scores.shape == (2, 0)
        collection.add(["a", "b", "c"], random_vectors(3, 8))
        results = collection.search(random_vectors(2, 8, seed=1), k=50)
        assert results.scores.shape == (2, 3)
        assert all(sorted(h.id for h in hits) == ["a", "b", "c"] for hits in results)
        assert np.isfinite(results.scores).all()


def test_add_get_documents_metadata(store):
    vectors = random_vectors(3, 8)
    with Collection.create(store, dimension=8) as collection:
        collection.add(
            ["x", "y", "z"],
            vectors,
            documents=["first", None, "третий"],
            metadata=[{"tenant": "t1", "year": 2021}, None, {"ok": True}],
        )
    with Collection.open(store) as collection:
        x, missing, z = collection.get(["x", "nope", "z"])
        assert missing is None
        assert x.document == "first" and x.metadata == {"tenant": "t1", "year": 2021}
        assert z.document == "третий"
        np.testing.assert_array_equal(x.vector, vectors[0])
        hits = collection.search(vectors[2], k=1, include=["documents", "metadata"])[0]
        assert hits[0].id == "z" and hits[0].document == "третий"
        assert hits[0].metadata == {"ok": True}


def test_add_refuses_existing_and_duplicate_ids_whole_batch(store):
    with Collection.create(store, dimension=4) as collection:
        collection.add(["a", "b"], random_vectors(2, 4))
        generation = collection.generation
        with pytest.raises(ValidationError, match="already exist"):
            collection.add(["c", "a"], random_vectors(2, 4, seed=1))
        with pytest.raises(ValidationError, match="repeats an id"):
            collection.add(["d", "e", "d"], random_vectors(3, 4, seed=2))
        assert collection.count() == 2
        assert collection.generation == generation
        assert collection.get(["c", "d"]) == [None, None]


def test_upsert_delete_count_and_reopen(store):
    a, b, c = np.eye(3, dtype=np.float32) + 0.1
    with Collection.create(store, dimension=3, metric="cosine") as collection:
        collection.upsert(["A", "B", "C"], np.stack([a, b, c]))
        assert collection.delete(["A", "missing"]) == 1
        assert collection.delete(["A"]) == 0
        assert collection.count() == 2
        close_to_a = (a + 0.3 * b).astype(np.float32)
        assert collection.search(close_to_a, k=1)[0][0].id == "B"
        collection.upsert(["B"], np.stack([c]), documents=["new b"])
        assert collection.count() == 2
        assert collection.get(["B"])[0].document == "new b"
        np.testing.assert_array_equal(collection.get(["B"])[0].vector, c)
        collection.add(["A"], np.stack([a]))
        assert collection.count() == 3
    with Collection.open(store) as collection:
        assert collection.count() == 3
        assert collection.search(a, k=1)[0][0].id == "A"


def test_ids_are_exact_strings(store):
    with Collection.create(store, dimension=2, metric="ip") as collection:
        collection.add(["Id", "id", "id "], np.array([[1, 0], [0, 1], [1, 1]], np.float32))
        assert [r.id for r in collection.get(["id", "Id", "id "])] == ["id", "Id", "id "]
        assert collection.get(["ID"]) == [None]


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.zeros((2, 4), dtype=np.float64) + 1, "must be float32"),
        (np.ones((2, 5), dtype=np.float32), r"shape \(n, 4\)"),
        (np.ones((2, 2, 4), dtype=np.float32), "shape"),
        (np.array([[1, 2, 3, np.nan], [1, 1, 1, 1]], np.float32), "row 0 contains NaN"),
        (np.array([[1, 1, 1, 1], [np.inf, 1, 1, 1]], np.float32), "row 1 contains NaN"),
        (np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.float32), "row 1 is all zeros"),
        ([[1.0, 2.0, 3.0, 4.0]] * 2, "numpy float32 array"),
    ],
)
def test_bad_vectors_are_rejected_and_nothing_changes(store, vectors, message):
    with Collection.create(store, dimension=4, metric="cosine") as collection:
        with pytest.raises(ValidationError, match=message):
            collection.add(["a", "b"], vectors)
        assert collection.count() == 0
        assert collection.generation == 1


def test_bad_arguments(store):
    with Collection.create(store, dimension=4) as collection:
        with pytest.raises(ValidationError, match="rows for 3 ids"):
            collection.add(["a", "b", "c"], random_vectors(2, 4))
        with pytest.raises(ValidationError, match="must be str"):
            collection.add(["a", 7], random_vectors(2, 4))
        with pytest.raises(ValidationError, match="list of str"):
            collection.add("ab", random_vectors(2, 4))
        with pytest.raises(ValidationError, match="is empty"):
            collection.add([""], random_vectors(1, 4))
        with pytest.raises(ValidationError, match="documents has 1 entries"):
            collection.add(["a", "b"], random_vectors(2, 4), documents=["x"])
        with pytest.raises(ValidationError, match="must be str, int"):
            collection.add(["a"], random_vectors(1, 4), metadata=[{"k": [1, 2]}])
        with pytest.raises(ValidationError, match=r"k must be an int from 1 to 2\*\*40"):
            collection.search(random_vectors(1, 4), k=0)
        with pytest.raises(ValidationError, match="include takes"):
            collection.search(random_vectors(1, 4), k=1, include=["secrets"])
        with pytest.raises(ValidationError, match="zeros"):
            collection.search(np.zeros(4, np.float32), k=1)
    with pytest.raises(ValidationError, match="dimension"):
        Collection.create(store / "other", dimension=0)
    with pytest.raises(ValidationError, match="metric"):
        Collection.create(store / "other", dimension=3, metric="hamming")


def test_callers_arrays_are_not_modified(store):
    vectors = random_vectors(10, 6)
    strided = np.asfortranarray(vectors)
    copy = vectors.copy()
    with Collection.create(store, dimension=6) as collection:
        collection.add([str(i) for i in range(10)], strided)
        collection.search(strided[:3], k=2)
    np.testing.assert_array_equal(vectors, copy)
    np.testing.assert_array_equal(strided, copy)


def test_create_refuses_existing_and_open_missing(store, tmp_path):
    Collection.create(store, dimension=4).close()
    with pytest.raises(sealvec.CollectionExistsError):
        Collection.create(store, dimension=4)
    with pytest.raises(sealvec.CollectionNotFoundError):
        Collection.open(tmp_path / "nothing-here")


def test_closed_collection_refuses_use(store):
    collection = Collection.create(store, dimension=4)
    collection.close()
    collection.close()
    with pytest.raises(sealvec.ClosedError):
        collection.search(random_vectors(1, 4), k=1)


def test_two_handles_see_each_others_commits(store):
    with Collection.create(store, dimension=4) as writer, Collection.open(store) as reader:
        writer.add(["a"], random_vectors(1, 4))
        assert reader.count() == 0
        assert reader.refresh() is True
        assert reader.count() == 1
        reader.add(["b"], random_vectors(1, 4, seed=1))
        assert writer.count() == 1
        writer.add(["c"], random_vectors(1, 4, seed=2))  # catches up before committing
        assert writer.count() == 3


def test_byte_swapped_float32_is_copied_not_rejected(store):
    vectors = random_vectors(5, 4, seed=8)
    swapped = vectors.astype(">f4")
    with Collection.create(store, dimension=4, metric="l2") as collection:
        collection.add([str(i) for i in range(5)], swapped)
        np.testing.assert_array_equal(collection.get(["3"])[0].vector, vectors[3])
        assert collection.search(swapped[3], k=1)[0][0].id == "3"
    assert swapped.dtype.byteorder == ">"


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_faiss_backend_gives_the_same_answers(store, metric):
    vectors = random_vectors(500, 24, seed=21)
    ids = [f"v{i:03d}" for i in range(500)]
    metadata = [{"group": i % 4} for i in range(500)]
    with Collection.create(store, dimension=24, metric=metric) as collection:
        collection.add(ids[:250], vectors[:250], metadata=metadata[:250])
        collection.add(ids[250:], vectors[250:], metadata=metadata[250:])
        collection.delete(ids[::9])
    queries = random_vectors(6, 24, seed=22)
    with Collection.open(store) as native, Collection.open(store, search_backend="faiss") as faiss:
        assert faiss.stats()["search_backend"] == "faiss"
        for where in (None, {"group": {"$in": [1, 3]}}):
            expected = native.search(queries, k=15, where=where)
            got = faiss.search(queries, k=15, where=where)
            assert got.ids == expected.ids
            np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValidationError, match="search_backend"):
        Collection.open(store, search_backend="annoy")


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["ok", "x" * 1025], r"ids\[1\] is 1025 bytes"),
        (["ok", "bad\ud800"], r"ids\[1\] is not valid Unicode"),
        (["ok", ""], r"ids\[1\] is empty"),
        (["ok", b"bytes"], r"ids\[1\] must be str"),
        (["a", "b", "a"], "repeats an id at position 2"),
    ],
)
def test_bad_ids_are_named(store, ids, message):
    with Collection.create(store, dimension=2, metric="ip") as collection:
        with pytest.raises(ValidationError, match=message):
            collection.add(ids, np.ones((len(ids), 2), dtype=np.float32))
        assert collection.count() == 0
