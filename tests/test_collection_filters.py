"""Metadata filters through the collection: applied before top-k, in exact order."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_vectors

from sealvec import Collection, ValidationError


def test_filter_before_top_k_returns_k_matches_in_exact_order(store):
    rng = np.random.default_rng(7)
    e1 = np.zeros(32, dtype=np.float32)
    e1[0] = 1
    near = (e1 + 0.01 * rng.standard_normal((1000, 32))).astype(np.float32)
    far = (-e1 + 0.5 * rng.standard_normal((10, 32))).astype(np.float32)
    ids = [f"near-{i}" for i in range(1000)] + [f"far-{i}" for i in range(10)]
    vectors = np.concatenate([near, far])
    metadata = [{"tenant": "t0"}] * 1000 + [{"tenant": "t1"}] * 10
    with Collection.create(store, dimension=32, metric="cosine") as collection:
        collection.add(ids[:600], vectors[:600], metadata=metadata[:600])
        collection.add(ids[600:], vectors[600:], metadata=metadata[600:])
        hits = collection.search(e1, k=5, where={"tenant": "t1"}, include=["metadata"])[0]
        scores = far @ e1 / np.linalg.norm(far, axis=1)
        expected = [f"far-{i}" for i in np.argsort(-scores, kind="stable")[:5]]
        assert [h.id for h in hits] == expected
        assert all(h.metadata == {"tenant": "t1"} for h in hits)
        np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:5], rtol=1e-5)
        assert len(collection.search(e1, k=50, where={"tenant": "t1"})[0]) == 10
        assert collection.search(e1, k=5, where={"tenant": "nobody"})[0] == []


def test_filter_operators_survive_reopen_compaction_and_deletes(store):
    vectors = random_vectors(60, 8, seed=11)
    metadata = [
        {"year": 2000 + i % 30, "tenant": f"t{i % 3}", "flag": i % 2 == 0, "note": None}
        for i in range(60)
    ]
    ids = [f"r{i:02d}" for i in range(60)]

    def matching(where_python) -> set[str]:
        return {ids[i] for i in range(60) if where_python(metadata[i]) and ids[i] not in gone}

    gone: set[str] = set()
    with Collection.create(store, dimension=8, metric="l2") as collection:
        for start in range(0, 60, 15):
            collection.add(ids[start : start + 15], vectors[start : start + 15],
                           metadata=metadata[start : start + 15])
        collection.delete(["r03", "r04"])
        gone |= {"r03", "r04"}
        cases = [
            ({"year": {"$gte": 2020}, "tenant": {"$in": ["t1", "t2"]}},
             lambda m: m["year"] >= 2020 and m["tenant"] in ("t1", "t2")),
            ({"$or": [{"flag": True}, {"year": {"$lt": 2003}}]},
             lambda m: m["flag"] or m["year"] < 2003),
            ({"tenant": {"$ne": "t0"}, "note": None}, lambda m: m["tenant"] != "t0"),
            ({"year": {"$nin": [2001, 2002]}, "flag": False},
             lambda m: m["year"] not in (2001, 2002) and not m["flag"]),
        ]
        query = random_vectors(1, 8, seed=12)[0]
        for phase in ("open", "compacted", "reopened"):
            if phase == "compacted":
                collection.compact(target_rows=100)
            for where, oracle in cases:
                got = {h.id for h in collection.search(query, k=60, where=where)[0]}
                assert got == matching(oracle), (phase, where)
    with Collection.open(store) as collection:
        for where, oracle in cases:
            got = {h.id for h in collection.search(query, k=60, where=where)[0]}
            assert got == matching(oracle), where


@pytest.mark.parametrize(
    "where",
    [{}, {"$xor": []}, {"a": {"$regex": "x"}}, {"a": {"$gt": True}}, {"a": [1, 2]},
     {"a": {"$in": 3}}, {"$and": {}}, {"a": {"$gt": float("nan")}}],
)
def test_bad_filters_are_rejected(store, where):
    with Collection.create(store, dimension=4) as collection:
        collection.add(["a"], random_vectors(1, 4), metadata=[{"a": 1}])
        with pytest.raises(ValidationError):
            collection.search(random_vectors(1, 4), k=1, where=where)
