"""Real processes against one store: a writer and a refreshing reader, racing
writers, and SIGKILL at random points of every kind of write."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from sealvec import Collection, verify_store
from sealvec.storage import LocalDirectory

DIMENSION = 16


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def batch_vectors(number: int, rows: int = 10) -> np.ndarray:
    return np.random.default_rng(number).standard_normal((rows, DIMENSION)).astype(np.float32)


WRITER_20_GENERATIONS = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from sealvec import Collection
    DIMENSION = 16
    with Collection.open(sys.argv[1]) as collection:
        for number in range(20):
            vectors = np.random.default_rng(number).standard_normal((10, DIMENSION)).astype(np.float32)
            collection.add([f"g{number}-{i}" for i in range(10)], vectors)
            if number % 5 == 4:
                collection.delete([f"g{number - 1}-{i}" for i in range(10)])
            time.sleep(0.02)
    print("done", flush=True)
    """
)


def _vm_lck() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmLck:\s+(\d+) kB", text).group(1)) * 1024


def test_reader_sees_only_whole_generations_while_a_writer_commits(store):
    Collection.create(store, dimension=DIMENSION, metric="l2", retain_generations=50).close()
    query = batch_vectors(0)[3] + 0.01
    seen: dict[int, list[str]] = {}
    with Collection.open(store) as reader:
        writer = _spawn(WRITER_20_GENERATIONS, str(store))
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            reader.refresh()
            results = reader.search(query, k=15)
            seen.setdefault(results.generation, results.ids[0])
        assert writer.wait() == 0, writer.stderr.read()
        reader.refresh()
        results = reader.search(query, k=15)
        seen[results.generation] = results.ids[0]
        live = sum(s.nbytes for s in reader._state.shards)
        assert _vm_lck() >= live

    # Every result equals exact search over one committed generation.
    assert len(seen) >= 3
    for generation, ids in seen.items():
        expected = _expected_at(store, generation, query)
        assert ids == expected, generation


def _expected_at(store: Path, generation: int, query: np.ndarray) -> list[str]:
    """Exact top-15 after the writes that made ``generation`` (1 = empty)."""
    records: dict[str, np.ndarray] = {}
    commits = 1
    for number in range(20):
        if commits == generation:
            break
        for i, vector in enumerate(batch_vectors(number)):
            records[f"g{number}-{i}"] = vector
        commits += 1
        if commits == generation:
            break
        if number % 5 == 4:
            for i in range(10):
                records.pop(f"g{number - 1}-{i}", None)
            commits += 1
    ids = sorted(records)
    if not ids:
        return []
    matrix = np.stack([records[i] for i in ids])
    distances = np.sqrt(((matrix - query) ** 2).sum(axis=1))
    order = sorted(range(len(ids)), key=lambda i: (distances[i], ids[i].encode()))
    return [ids[i] for i in order[:15]]


def test_dropped_shards_memory_is_released_after_refresh(store):
    with Collection.create(store, dimension=256, metric="ip") as writer:
        for number in range(4):
            vectors = np.random.default_rng(number).standard_normal((500, 256)).astype(np.float32)
            writer.add([f"{number}-{i}" for i in range(500)], vectors)
        with Collection.open(store) as reader:
            before = _vm_lck()
            writer.compact(target_rows=2000)
            assert reader.refresh()
            live = sum(s.nbytes for s in reader._state.shards)
            # Both handles swapped four shards for one merged shard of the same size:
            # the old shards' locked memory was released, not kept alongside.
            assert _vm_lck() <= before + 4 * 8192
            assert reader.stats()["shards"] == 1 and live >= 2000 * 256 * 4


class UnlockedDirectory(LocalDirectory):
    """A backend without a writer lock, like object stores: only create-only
    manifest commits keep racing writers apart."""

    exclusive_writer_lock = False

    @contextmanager
    def writer_lock(self):
        yield


def test_racing_writers_never_both_win(store):
    Collection.create(UnlockedDirectory(store), dimension=DIMENSION).close()
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with Collection.open(UnlockedDirectory(store)) as collection:
                for number in range(10):
                    collection.add(
                        [f"{name}-{number}-{i}" for i in range(5)],
                        batch_vectors(number, rows=5),
                    )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Collection.open(store) as collection:
        assert collection.count() == 100
        assert collection.generation == 21
        ids = [f"{w}-{n}-{i}" for w in "ab" for n in range(10) for i in range(5)]
        assert all(r is not None for r in collection.get(ids))


MIXED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sealvec import Collection
    sys.path.insert(0, sys.argv[2])
    from test_concurrency import operations
    with Collection.open(sys.argv[1]) as collection:
        for index, (kind, argument) in enumerate(operations()):
            if kind == "add":
                collection.add(*argument)
            elif kind == "upsert":
                collection.upsert(*argument)
            elif kind == "forget":
                collection.forget(argument)
            elif kind == "compact":
                collection.compact(target_rows=argument)
            print(index, flush=True)
    """
)


def operations():
    """A fixed sequence of writes: adds, upserts, forgets and compactions."""
    sequence = []
    for number in range(40):
        ids = [f"r{number}-{i}" for i in range(8)]
        sequence.append(("add", (ids, batch_vectors(number, rows=8), [f"d{i}" for i in ids])))
        if number % 3 == 1:
            previous = [f"r{number - 1}-{i}" for i in range(4)]
            sequence.append(("upsert", (previous, batch_vectors(1000 + number, rows=4))))
        if number % 5 == 2:
            sequence.append(("forget", [f"r{number - 2}-0", f"r{number}-7"]))
        if number % 7 == 6:
            sequence.append(("compact", 24))
    return sequence


def expected_state(done: int) -> dict[str, np.ndarray]:
    records: dict[str, np.ndarray] = {}
    for kind, argument in operations()[:done]:
        if kind in ("add", "upsert"):
            for record_id, vector in zip(argument[0], argument[1]):
                records[record_id] = vector
        elif kind == "forget":
            for record_id in argument:
                records.pop(record_id, None)
    return records


@pytest.mark.parametrize("seed", range(50))
def test_sigkill_at_random_points_of_every_kind_of_write(store, seed):
    Collection.create(store, dimension=DIMENSION, metric="l2", retain_generations=3).close()
    tests_dir = str(Path(__file__).parent)
    child = _spawn(MIXED_WRITER, str(store), tests_dir)
    rng = random.Random(seed)
    # Wait for a random number of completed operations, then a random extra delay.
    target = rng.randrange(0, 25)
    printed = 0
    while printed <= target:
        line = child.stdout.readline()
        if not line:
            break
        printed = int(line) + 1
    time.sleep(rng.uniform(0, 0.05))
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read().split()
    child.wait()
    printed = int(rest[-1]) + 1 if rest else printed

    with Collection.open(store) as collection:
        candidates = [expected_state(printed), expected_state(printed + 1)]
        actual_count = collection.count()
        matches = []
        for expected in candidates:
            if len(expected) != actual_count:
                continue
            ids = sorted(expected)
            records = collection.get(ids, include=("vectors",))
            if all(r is not None for r in records) and all(
                np.array_equal(r.vector, expected[i]) for r, i in zip(records, ids)
            ):
                matches.append(expected)
        assert matches, f"state after {printed} ops matches neither expectation"
    verify_store(store)
