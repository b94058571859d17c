"""What an attacker with the storage sees or changes: ciphertext only, and any change
is caught as one IntegrityError before anything is served."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import random_vectors

from sealvec import Collection, IntegrityError, verify_store
from sealvec.keys import default_keyring_path

SECRET_STRINGS = ["PATIENT-7781-SECRET", "diagnosis: hypertensive crisis", "tenant-zeta"]


def all_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def make_store(store: Path, rows: int = 40, dimension: int = 8) -> np.ndarray:
    vectors = random_vectors(rows, dimension, seed=42)
    with Collection.create(store, dimension=dimension, metric="cosine") as collection:
        half = rows // 2
        ids = [f"{SECRET_STRINGS[0]}-{i}" for i in range(rows)]
        documents = [f"{SECRET_STRINGS[1]} #{i}" for i in range(rows)]
        metadata = [{"tenant": SECRET_STRINGS[2]} for _ in range(rows)]
        collection.add(ids[:half], vectors[:half], documents[:half], metadata[:half])
        collection.add(ids[half:], vectors[half:], documents[half:], metadata[half:])
    return vectors


def test_no_plaintext_or_vector_bytes_in_store_or_keyring(store, corpus):
    records, corpus_vectors = corpus
    vectors = make_store(store)
    with Collection.open(store) as collection:
        collection.add(
            [r["id"] for r in records[:300]],
            np.ascontiguousarray(corpus_vectors[:300, :8]),
            documents=[r["text"] for r in records[:300]],
        )
    stored = vectors.tobytes() + np.ascontiguousarray(corpus_vectors[:300, :8]).tobytes()
    runs = {stored[i : i + 16] for i in range(0, len(stored) - 15, 4)}
    needles = [s.encode() for s in SECRET_STRINGS] + [
        r["text"][:40].encode() for r in records[:300]
    ]
    files = all_files(store, default_keyring_path().parent)
    assert len(files) >= 4
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"plaintext found in {path.name}"
        for offset in range(0, max(len(data) - 15, 0)):
            assert data[offset : offset + 16] not in runs, f"vector bytes in {path.name}"


def test_keyring_is_owner_only_and_outside_store(store):
    make_store(store, rows=4)
    mode = os.stat(default_keyring_path()).st_mode & 0o777
    assert mode == 0o600
    with pytest.raises(Exception, match="outside the store"):
        from sealvec import LocalKeyring

        Collection.open(store, key_provider=LocalKeyring(store / "keyring.json"))


def test_locked_and_non_dumpable_while_open(store):
    make_store(store, rows=2000, dimension=384)
    vector_bytes = 2000 * 384 * 4

    def vm_lck() -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(r"VmLck:\s+(\d+) kB", text).group(1)) * 1024

    before = vm_lck()
    with Collection.open(store) as collection:
        assert vm_lck() - before >= vector_bytes
        smaps = Path("/proc/self/smaps").read_text().split("\n")
        flags = [line for line in smaps if line.startswith("VmFlags")]
        locked_dumpless = [f for f in flags if " lo" in f and " dd" in f]
        sizes = []
        block = []
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                block = [line]
            else:
                block.append(line)
            if line.startswith("VmFlags") and " lo" in line and " dd" in line:
                size_line = next(b for b in block if b.startswith("Size:"))
                sizes.append(int(size_line.split()[1]) * 1024)
        assert locked_dumpless and sum(sizes) >= vector_bytes
        assert collection.count() == 2000
    assert vm_lck() - before < vector_bytes


def _open_and_query(store: Path) -> None:
    with Collection.open(store) as collection:
        collection.search(random_vectors(1, collection.dimension, seed=5), k=3)


def _shards(store: Path) -> list[Path]:
    return sorted((store / "shards").iterdir())


def _manifests(store: Path) -> list[Path]:
    return sorted((store / "manifest").iterdir())


@pytest.mark.parametrize("target", ["shard", "manifest"])
def test_flipping_any_byte_is_an_integrity_error(store, target):
    make_store(store, rows=6, dimension=4)
    path = _shards(store)[0] if target == "shard" else _manifests(store)[-1]
    original = path.read_bytes()
    for offset in range(len(original)):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError):
            _open_and_query(store)
    path.write_bytes(original)
    _open_and_query(store)


@pytest.mark.parametrize("target", ["shard", "manifest"])
def test_truncation_is_an_integrity_error(store, target):
    make_store(store, rows=6, dimension=4)
    path = _shards(store)[0] if target == "shard" else _manifests(store)[-1]
    original = path.read_bytes()
    for length in sorted({0, 1, 11, 16, 100, len(original) // 2, len(original) - 16, len(original) - 1}):
        path.write_bytes(original[:length])
        with pytest.raises(IntegrityError):
            _open_and_query(store)
    path.write_bytes(original + b"\x00")
    with pytest.raises(IntegrityError):
        _open_and_query(store)


def test_swapped_shards_are_an_integrity_error(store):
    make_store(store)
    first, second = _shards(store)
    first_bytes, second_bytes = first.read_bytes(), second.read_bytes()
    first.write_bytes(second_bytes)
    second.write_bytes(first_bytes)
    with pytest.raises(IntegrityError):
        _open_and_query(store)
    with pytest.raises(IntegrityError):
        verify_store(store)


def test_shard_from_another_collection_is_refused(store, tmp_path):
    make_store(store)
    other = tmp_path / "other"
    make_store(other)
    target = _shards(store)[0]
    shutil.copyfile(_shards(other)[0], target)
    with pytest.raises(IntegrityError):
        _open_and_query(store)


def test_older_manifest_put_back_is_refused(store):
    make_store(store)
    manifests = _manifests(store)
    assert len(manifests) == 3
    manifests[-1].write_bytes(manifests[0].read_bytes())
    with pytest.raises(IntegrityError, match="rolled back"):
        _open_and_query(store)


def test_rollback_by_deleting_newer_manifests_is_refused_by_a_later_process(store):
    make_store(store)
    _manifests(store)[-1].unlink()
    with pytest.raises(IntegrityError, match="rollback refused"):
        _open_and_query(store)


def test_rollback_by_deleting_newer_manifests_is_refused_by_an_open_reader(store):
    make_store(store)
    with Collection.open(store) as reader:
        newest = _manifests(store)[-1]
        newest.unlink()
        with pytest.raises(IntegrityError, match="rollback"):
            reader.refresh()


def test_missing_shard_is_a_clear_error(store):
    make_store(store)
    _shards(store)[0].unlink()
    with pytest.raises(IntegrityError, match="named by the manifest but missing"):
        _open_and_query(store)


def test_verify_passes_on_intact_store_and_reports_garbage(store):
    make_store(store)
    (store / "shards" / ("ab" * 16 + ".svs")).write_bytes(b"left by a crashed writer")
    report = verify_store(store)
    assert report["shards_checked"] == 2 and report["rows"] == 40
    assert report["unreferenced"] == ["shards/" + "ab" * 16 + ".svs"]


def test_large_shard_decrypts_in_parallel_and_fails_closed(store):
    """Shards of 4 MiB and more are decrypted segment by segment on a thread pool."""
    vectors = random_vectors(3000, 768, seed=3)
    ids = [f"doc-{i}" for i in range(3000)]
    with Collection.create(store, dimension=768, metric="ip") as collection:
        collection.add(ids, vectors, documents=[f"text {i}" for i in ids])
    with Collection.open(store) as collection:
        np.testing.assert_array_equal(collection.get(["doc-2999"])[0].vector, vectors[2999])
        assert collection.search(vectors[1234], k=1, include=["documents"])[0][0].document == "text doc-1234"
    shard = _shards(store)[0]
    original = shard.read_bytes()
    assert len(original) > 8 << 20
    for offset in (200, len(original) // 3, len(original) // 2 + 7, len(original) - 20, len(original) - 1):
        damaged = bytearray(original)
        damaged[offset] ^= 0x80
        shard.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError, match="shards/"):
            _open_and_query(store)
    shard.write_bytes(original[: len(original) - 4096])
    with pytest.raises(IntegrityError):
        _open_and_query(store)
    shard.write_bytes(original)
    _open_and_query(store)
