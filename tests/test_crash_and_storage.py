"""Durability with real processes: SIGKILL mid-write, the writer lock, a full disk."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_vectors

from sealvec import (
    Collection,
    ConflictError,
    StorageError,
    StoreLockedError,
    verify_store,
)
from sealvec.storage import LocalDirectory

BATCH = 50
DIMENSION = 32

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sealvec import Collection

    store, batch, dimension = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    collection = Collection.open(store)
    for number in range(10_000):
        rng = np.random.default_rng(number)
        vectors = rng.standard_normal((batch, dimension)).astype(np.float32)
        ids = [f"b{number}-r{row}" for row in range(batch)]
        collection.add(ids, vectors, documents=[f"doc {i}" for i in ids])
        print(number, flush=True)
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _expected_batch(number: int) -> np.ndarray:
    rng = np.random.default_rng(number)
    return rng.standard_normal((BATCH, DIMENSION)).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_sigkill_mid_ingest_keeps_exactly_the_committed_batches(store, seed):
    Collection.create(store, dimension=DIMENSION, metric="l2").close()
    child = _spawn(WRITER, str(store), str(BATCH), str(DIMENSION))
    first = child.stdout.readline()
    assert first.strip() == "0", child.stderr.read()
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    child.send_signal(signal.SIGKILL)
    printed = len(child.stdout.read().split()) + 1
    child.wait()

    with Collection.open(store) as collection:
        count = collection.count()
        batches = count // BATCH
        assert count % BATCH == 0
        # The kill may land after a commit but before its line was printed.
        assert batches in (printed, printed + 1)
        for number in range(batches):
            ids = [f"b{number}-r{row}" for row in range(BATCH)]
            records = collection.get(ids)
            assert all(r is not None for r in records)
            np.testing.assert_array_equal(
                np.stack([r.vector for r in records]), _expected_batch(number)
            )
        assert collection.get([f"b{batches}-r0"]) == [None]
        hits = collection.search(_expected_batch(0)[:1], k=1)[0]
        assert hits[0].id == "b0-r0" and hits[0].score == pytest.approx(0.0, abs=1e-3)
    verify_store(store)


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from sealvec.storage import LocalDirectory
    with LocalDirectory(sys.argv[1]).writer_lock():
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_writer_gets_store_locked_and_stale_lock_is_taken_over(store):
    with Collection.create(store, dimension=4) as collection:
        holder = _spawn(HOLD_LOCK, str(store))
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
                collection.add(["a"], random_vectors(1, 4))
            assert collection.count() == 0
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        # The dead holder's lock is gone with it: the next writer proceeds.
        collection.add(["a"], random_vectors(1, 4))
        assert collection.count() == 1


def test_create_only_put_never_replaces(tmp_path):
    storage = LocalDirectory(tmp_path)
    storage.put("manifest/1", [b"first"], create_only=True)
    with pytest.raises(ConflictError):
        storage.put("manifest/1", [b"second"], create_only=True)
    assert storage.get("manifest/1") == b"first"
    assert storage.list_temporary() == []


def test_failed_write_leaves_no_object_and_no_temp_file(tmp_path):
    storage = LocalDirectory(tmp_path)

    def chunks():
        yield b"partial"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="disk full"):
        storage.put("shards/x.svs", chunks())
    assert storage.list("") == [] and storage.list_temporary() == []


def test_object_names_cannot_escape_the_store(tmp_path):
    storage = LocalDirectory(tmp_path / "s")
    for name in ("../x", "a/../../x", "/abs", "", "a//b", ".hidden"):
        with pytest.raises(ValueError):
            storage.put(name, [b"x"])


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from sealvec import Collection, StorageError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    collection = Collection.open(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    try:
        vectors = np.random.default_rng(1).standard_normal((1000, 64)).astype(np.float32)
        collection.add([f"big{i}" for i in range(1000)], vectors)
    except StorageError as error:
        print("refused:", error, flush=True)
    print("count", collection.count(), flush=True)
    """
)


def test_write_that_cannot_fit_is_refused_and_loses_nothing(store):
    """RLIMIT_FSIZE makes writes fail (EFBIG) as a full disk would, in a real process."""
    with Collection.create(store, dimension=64) as collection:
        collection.add(["kept"], random_vectors(1, 64))
    child = _spawn(FULL_DISK, str(store))
    output, errors = child.communicate(timeout=60)
    assert "refused: cannot write shards/" in output, errors
    assert "count 1" in output
    with Collection.open(store) as collection:
        assert collection.count() == 1
        assert collection.get(["kept"])[0] is not None
    assert LocalDirectory(store).list_temporary() == []
    assert verify_store(store)["unreferenced"] == []
