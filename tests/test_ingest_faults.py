"""Faults around sealing a batch: a fork after the pools started, a failure after the
manifest is in place, a caller's array changed while it is being added, extreme values
and bad thread counts."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from conftest import random_vectors

import sealvec.collection
import sealvec.storage
from sealvec import Collection, StorageError, ValidationError

DIMENSION = 16


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def test_forked_child_adds_after_the_parent_used_the_pools(store):
    """The process-wide pools do not survive fork; a child must make its own, not wait
    forever on an inherited executor without threads (multiprocessing's default)."""
    with Collection.create(store, dimension=DIMENSION) as collection:
        collection.add(ids("parent", 20), random_vectors(20, DIMENSION, seed=1))
    with Collection.open(store) as collection:  # decrypts on the pool too
        assert collection.count() == 20
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            signal.alarm(60)  # a hang ends the child (SIGALRM), failing the test
            with Collection.open(store) as child:
                child.add(ids("child", 3_000), random_vectors(3_000, DIMENSION, seed=2))
                status = 0 if child.count() == 3_020 else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with Collection.open(store) as collection:
        assert collection.count() == 3_020


@pytest.mark.parametrize("failure", ["interrupt", "sync"])
def test_failure_after_the_manifest_is_in_place_keeps_the_generation(store, monkeypatch, failure):
    """An interrupt or a failed directory sync after the manifest's link: the generation
    is committed, so the shards it names must stay, in storage and in the collection."""
    first = random_vectors(30, DIMENSION, seed=3)
    second = random_vectors(30, DIMENSION, seed=4)
    collection = Collection.create(store, dimension=DIMENSION)
    collection.add(ids("a", 30), first)
    real = sealvec.storage._fsync_directory

    def fail_after_manifest(directory):
        real(directory)
        if directory.name == "manifest":
            monkeypatch.setattr(sealvec.storage, "_fsync_directory", real)
            if failure == "interrupt":
                raise KeyboardInterrupt
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sealvec.storage, "_fsync_directory", fail_after_manifest)
    expected = KeyboardInterrupt if failure == "interrupt" else StorageError
    with pytest.raises(expected) as raised:
        collection.add(ids("b", 30), second)
    if failure == "sync":
        assert "in place" in str(raised.value) and "may not survive a crash" in str(raised.value)
    assert collection.count() == 60  # the committed generation is this collection's state
    (found,) = collection.get(["b7"], include=["vectors"])
    np.testing.assert_array_equal(found.vector, second[7])
    collection.close()
    with Collection.open(store) as reopened:
        assert reopened.count() == 60
        hits = reopened.search(second[:5], k=1)
        assert [h[0].id for h in hits] == ids("b", 5)


def test_failure_before_the_manifest_lands_removes_the_new_shard(store, monkeypatch):
    collection = Collection.create(store, dimension=DIMENSION)
    collection.add(ids("a", 10), random_vectors(10, DIMENSION, seed=5))
    shards_before = sorted(p.name for p in (store / "shards").iterdir())
    real = sealvec.storage.LocalDirectory.put

    def refuse_manifests(self, name, chunks, *, create_only=False):
        if name.startswith("manifest/"):
            raise StorageError("cannot write the manifest (injected)")
        return real(self, name, chunks, create_only=create_only)

    monkeypatch.setattr(sealvec.storage.LocalDirectory, "put", refuse_manifests)
    with pytest.raises(StorageError, match="injected"):
        collection.add(ids("b", 10), random_vectors(10, DIMENSION, seed=6))
    assert sorted(p.name for p in (store / "shards").iterdir()) == shards_before
    assert collection.count() == 10
    collection.close()


def test_vectors_changed_after_the_check_are_refused(store, monkeypatch):
    """add() checks the caller's array, then copies it segment by segment while sealing;
    a change in between (another thread, a memmap rewritten) must not store NaN."""
    vectors = random_vectors(40_000, DIMENSION, seed=7)  # several 1 MiB segments
    real_check = sealvec.collection.check_vectors

    def check_then_change(values, *args, **kwargs):
        checked = real_check(values, *args, **kwargs)
        if kwargs.get("name", "vectors") == "vectors" and len(checked) == len(vectors):
            checked[39_990, 3] = np.nan  # as if another thread wrote it just now
        return checked

    with Collection.create(store, dimension=DIMENSION) as collection:
        collection.add(ids("keep", 5), random_vectors(5, DIMENSION, seed=8))
        with monkeypatch.context() as patch:
            patch.setattr(sealvec.collection, "check_vectors", check_then_change)
            with pytest.raises(ValidationError, match="row 39990 contains NaN.*changed while"):
                collection.add(ids("x", 40_000), vectors)
        assert collection.count() == 5
    assert sorted(p.name for p in store.rglob("*") if p.name.startswith(".tmp")) == []
    with Collection.open(store) as reopened:
        assert reopened.count() == 5
        assert len(list((store / "shards").iterdir())) == 1


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_values_that_would_overflow_scores_are_refused(store, metric):
    with Collection.create(store, dimension=4, metric=metric) as collection:
        huge = np.array([[1, 2, 3, 4], [1, 2e16, 0, 0]], np.float32)
        with pytest.raises(ValidationError, match="row 1 has a value of magnitude 2\\*\\*54"):
            collection.add(["a", "b"], huge)
        largest = np.array([[1.7e16, -1.7e16, 1.7e16, -1.7e16]], np.float32)
        collection.add(["big"], largest)
        with pytest.raises(ValidationError, match="queries row 0 has a value of magnitude"):
            collection.search(np.full(4, 3e38, np.float32), k=1)
        (hit,) = collection.search(largest[0] * -1, k=1)[0]
        assert np.isfinite(hit.score)


def test_cosine_refuses_rows_too_close_to_zero(store):
    with Collection.create(store, dimension=3, metric="cosine") as collection:
        tiny = np.array([[1, 0, 0], [1e-45, 1e-45, 0]], np.float32)
        with pytest.raises(ValidationError, match="row 1 is too close to zero"):
            collection.add(["a", "b"], tiny)
        collection.add(["small"], np.array([[1e-18, 0, 0]], np.float32))
        (hit,) = collection.search(np.array([1, 0, 0], np.float32), k=1)[0]
        assert hit.id == "small" and hit.score == pytest.approx(1.0)
    with Collection.create(store / "ip", dimension=3, metric="ip") as collection:
        collection.add(["tiny"], np.array([[1e-45, 0, 0]], np.float32))  # fine under ip


@pytest.mark.parametrize("threads", [-1, 2.5, "2", True, None, 5000])
def test_bad_thread_counts_are_refused_up_front(store, threads):
    with pytest.raises(ValidationError, match="threads must be an int"):
        Collection.create(store, dimension=4, threads=threads)
    with Collection.create(store, dimension=4) as collection:
        collection.add(["a"], np.ones((1, 4), np.float32))
    with pytest.raises(ValidationError, match="threads must be an int"):
        Collection.open(store, threads=threads)


