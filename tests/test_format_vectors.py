"""The sealed format v1 against fixed test vectors and an independent reader.

(a) the stored vectors decode with tests/independent_reader.py (no sealvec import)
    to exactly the inputs in tests/vectors/shard-v1.json;
(b) sealvec's writers, given the same fixed inputs, reproduce the files byte for
    byte, so any change of the format breaks this test;
(c) sealvec's own reader decodes them (low level, load_shard/open_manifest, and a
    whole Collection.open on a copy of the vector store);
(d) the independent reader (and sealvec's) rejects a flipped byte in every region,
    a wrong key, truncation, extension, reordered segments and a swapped shard;
(e) random small shards round-trip through sealvec's writer and the independent
    reader.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import inspect
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
sys.path.insert(0, str(HERE))

import independent_reader as ir  # noqa: E402

from sealvec.errors import IntegrityError  # noqa: E402
from sealvec.keys import SecretKey  # noqa: E402
from sealvec.manifest import Manifest, ShardEntry, open_manifest, seal_manifest  # noqa: E402
from sealvec.sealed import (  # noqa: E402
    DTYPE_FLOAT32,
    KIND_MANIFEST,
    KIND_SHARD,
    SECTION_IDS,
    SECTION_PAYLOADS,
    SECTION_VECTORS,
    SealedWriter,
    decrypt_section_into,
    parse_header,
    verify_commitment,
)
from sealvec.shard import (  # noqa: E402
    encode_payload,
    encode_strings,
    load_shard,
    vector_segment_size,
    write_shard,
)
from sealvec.storage import LocalDirectory  # noqa: E402

DOC = json.loads((VECTORS / "shard-v1.json").read_text(encoding="utf-8"))
SHARDS = DOC["shards"]
MANIFEST = DOC["manifest"]
COLLECTION_ID = bytes.fromhex(DOC["collection_id"])
KEK = bytes.fromhex(DOC["kek"]["key"])
LOCK = "best_effort"


def _file(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def _shard_ids(shard: dict) -> str:
    return shard["name"]


# ------------------------------------------------------------------ (a) stored files


@pytest.mark.parametrize("rel", sorted(DOC["sha256"]))
def test_stored_files_match_recorded_sha256(rel):
    assert hashlib.sha256(_file(rel)).hexdigest() == DOC["sha256"][rel]


def test_generator_is_deterministic_and_up_to_date():
    spec = importlib.util.spec_from_file_location("_sv_generate", VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files, doc = module.build()
    assert doc == DOC
    for rel, data in files.items():
        assert data == _file(rel), rel
    files_again, _ = module.build()
    assert files_again == files


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_independent_reader_decodes_shard(shard):
    ids, vectors, payloads = ir.read_shard(
        _file(shard["file"]),
        bytes.fromhex(shard["data_key"]),
        collection_id=COLLECTION_ID,
        shard_id=bytes.fromhex(shard["shard_id"]),
        header_sha256=shard["header_sha256"],
    )
    assert ids == shard["ids"]
    assert vectors == shard["vectors"]  # exactly representable float32 values
    assert payloads == shard["payloads"]


def test_independent_reader_decodes_manifest_and_follows_it_to_the_shards():
    data = _file(MANIFEST["file"])
    body = ir.read_manifest(data, MANIFEST["name"], KEK)
    assert body.pop("_key_id") == DOC["kek"]["key_id"]
    collection_key = body.pop("_collection_key")
    assert collection_key.hex() == DOC["collection_key"]
    assert body == MANIFEST["body"]
    assert body["generation"] == MANIFEST["generation"]
    by_id = {s["shard_id"]: s for s in SHARDS}
    assert [e["id"] for e in body["shards"]] == [s["shard_id"] for s in SHARDS]
    for entry in body["shards"]:
        expected = by_id[entry["id"]]
        assert entry["size"] == len(_file(expected["file"])) == expected["size"]
        dek = ir.unwrap_data_key(collection_key, entry["wrapped_data_key"])
        assert dek.hex() == expected["data_key"]
        ids, vectors, payloads = ir.read_shard(
            _file(f"store/shards/{entry['id']}.svs"),
            dek,
            collection_id=bytes.fromhex(body["collection_id"]),
            shard_id=bytes.fromhex(entry["id"]),
            header_sha256=entry["header_sha256"],
        )
        assert (ids, vectors, payloads) == (
            expected["ids"], expected["vectors"], expected["payloads"]
        )


def test_segment_boundary_vector_really_spans_segments():
    shard = next(s for s in SHARDS if s["segment_size"] == 32)
    h = ir.parse(_file(shard["file"]), ir.KIND_SHARD)
    counts = {s["id"]: (s["segment_size"], s["plain_len"], s["segment_count"]) for s in h["sections"]}
    assert counts[1] == (32, 80, 3)  # 32 + 32 + 16: whole rows of 16 bytes
    assert counts[2] == (32, 64, 2)  # exactly two full segments
    assert counts[3][2] > 3


# ------------------------------------------------------------------ (b) byte for byte


class _FixedRandom:
    """Stands in for os.urandom: hands out the expected values in order."""

    def __init__(self, values: list[bytes]):
        self.values = list(values)

    def __call__(self, n: int) -> bytes:
        value = self.values.pop(0)
        assert len(value) == n, f"urandom({n}) but the next fixed value has {len(value)} bytes"
        return value


def _sealvec_shard_inputs(shard: dict):
    vectors = np.asarray(shard["vectors"], dtype=np.float32)
    ids_section = encode_strings([i.encode("utf-8") for i in shard["ids"]])
    payloads_section = encode_strings(
        [encode_payload(p["document"], p["metadata"]) for p in shard["payloads"]]
    )
    return vectors, ids_section, payloads_section


def _secure(data: bytes):
    from sealvec import _core

    buffer = _core.SecureBuffer(len(data), LOCK)
    if data:
        with memoryview(buffer) as out:
            out[:] = data
    buffer.seal()
    return buffer


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_write_shard_reproduces_stored_bytes(shard, tmp_path, monkeypatch):
    vectors, ids_section, payloads_section = _sealvec_shard_inputs(shard)
    fixed = _FixedRandom([bytes.fromhex(shard["salt"]), bytes.fromhex(shard["nonce_prefix"])])
    monkeypatch.setattr(os, "urandom", fixed)
    storage = LocalDirectory(tmp_path / "store")
    storage.initialise()
    common = dict(
        collection_id=COLLECTION_ID,
        shard_id=bytes.fromhex(shard["shard_id"]),
        data_key=SecretKey(bytes.fromhex(shard["data_key"]), LOCK),
        segment_size=shard["segment_size"],
    )
    if "ids_section" in inspect.signature(write_shard).parameters:
        written = write_shard(
            storage, vectors=vectors, ids_section=ids_section,
            payloads_section=payloads_section, **common,
        )
    else:  # sections passed in locked memory
        buffers = [_secure(vectors.astype("<f4").tobytes()), _secure(ids_section),
                   _secure(payloads_section)]
        try:
            written = write_shard(
                storage, rows=shard["rows"], dimension=shard["dimension"],
                vectors=buffers[0], ids=buffers[1], payloads=buffers[2], **common,
            )
        finally:
            for buffer in buffers:
                buffer.release()
    monkeypatch.undo()
    assert fixed.values == []
    produced = (tmp_path / shard["file"]).read_bytes()
    assert produced == _file(shard["file"])
    assert written.size == shard["size"]
    assert written.header_sha256 == shard["header_sha256"]


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_sealed_writer_reproduces_stored_bytes(shard):
    vectors, ids_section, payloads_section = _sealvec_shard_inputs(shard)
    writer = SealedWriter(
        kind=KIND_SHARD,
        root_key=bytes.fromhex(shard["data_key"]),
        collection_id=COLLECTION_ID,
        object_id=bytes.fromhex(shard["shard_id"]),
        dimension=shard["dimension"],
        dtype=DTYPE_FLOAT32,
        row_count=shard["rows"],
        sections=[
            (SECTION_VECTORS, vectors.nbytes, shard["vector_segment_size"]),
            (SECTION_IDS, len(ids_section), shard["segment_size"]),
            (SECTION_PAYLOADS, len(payloads_section), shard["segment_size"]),
        ],
        salt=bytes.fromhex(shard["salt"]),
        nonce_prefix=bytes.fromhex(shard["nonce_prefix"]),
    )
    produced = writer.header_bytes() + b"".join(
        b"".join(writer.seal_section(sid, data))
        for sid, data in (
            (SECTION_VECTORS, vectors.astype("<f4").tobytes()),
            (SECTION_IDS, ids_section),
            (SECTION_PAYLOADS, payloads_section),
        )
    )
    assert produced == _file(shard["file"])


def test_seal_manifest_reproduces_stored_bytes(monkeypatch):
    body = MANIFEST["body"]
    manifest = Manifest.from_json(json.dumps(body).encode())
    assert manifest.to_json() == json.dumps(body, separators=(",", ":")).encode()
    fixed = _FixedRandom(
        [
            bytes.fromhex(MANIFEST["object_id"]),
            bytes.fromhex(MANIFEST["salt"]),
            bytes.fromhex(MANIFEST["nonce_prefix"]),
        ]
    )
    monkeypatch.setattr(os, "urandom", fixed)
    produced = seal_manifest(
        manifest,
        SecretKey(bytes.fromhex(DOC["collection_key"]), LOCK),
        DOC["kek"]["key_id"],
        bytes.fromhex(DOC["wrapped_collection_key"]),
    )
    monkeypatch.undo()
    assert fixed.values == []
    assert produced == _file(MANIFEST["file"])


def test_wrapped_keys_are_rfc5649_of_the_fixed_keys():
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

    from sealvec.keys import wrap_data_key

    ck = bytes.fromhex(DOC["collection_key"])
    assert aes_key_wrap_with_padding(KEK, ck).hex() == DOC["wrapped_collection_key"]
    for shard, entry in zip(SHARDS, MANIFEST["body"]["shards"]):
        wrapped = wrap_data_key(
            SecretKey(ck, LOCK), SecretKey(bytes.fromhex(shard["data_key"]), LOCK)
        )
        assert wrapped.hex() == shard["wrapped_data_key"]
        assert base64.b64decode(entry["wrapped_data_key"]) == wrapped


# ------------------------------------------------------------------ (c) sealvec's reader


def _sealvec_read(data: bytes, root_key: bytes, kind: int = KIND_SHARD) -> dict[int, bytes]:
    """sealvec's low-level reader, with the checks its callers add."""
    header = parse_header(data, expected_kind=kind)
    if header.total_size != len(data):
        raise IntegrityError("size")
    key = verify_commitment(header, root_key)
    stream = io.BytesIO(data)
    stream.seek(len(header.raw))
    out = {}
    for entry in header.sections:
        assert stream.tell() == entry.offset
        buf = bytearray(entry.plain_len)
        decrypt_section_into(stream, header, key, entry.section_id, memoryview(buf))
        out[entry.section_id] = bytes(buf)
    return out


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_sealvec_low_level_reader_decodes_shard(shard):
    data = _file(shard["file"])
    header = parse_header(data, expected_kind=KIND_SHARD)
    assert header.collection_id == COLLECTION_ID
    assert header.object_id.hex() == shard["shard_id"]
    assert (header.row_count, header.dimension, header.dtype) == (
        shard["rows"], shard["dimension"], DTYPE_FLOAT32
    )
    assert header.digest.hex() == shard["header_sha256"]
    sections = _sealvec_read(data, bytes.fromhex(shard["data_key"]))
    vectors, ids_section, payloads_section = _sealvec_shard_inputs(shard)
    assert sections == {
        SECTION_VECTORS: vectors.astype("<f4").tobytes(),
        SECTION_IDS: ids_section,
        SECTION_PAYLOADS: payloads_section,
    }


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_sealvec_load_shard_decodes_shard(shard):
    loaded = load_shard(
        LocalDirectory(VECTORS / "store"),
        collection_id=COLLECTION_ID,
        shard_id=bytes.fromhex(shard["shard_id"]),
        dimension=shard["dimension"],
        rows=shard["rows"],
        header_sha256=shard["header_sha256"],
        size=shard["size"],
        data_key=SecretKey(bytes.fromhex(shard["data_key"]), LOCK),
        memory_lock=LOCK,
    )
    try:
        assert loaded.vector_array().tolist() == shard["vectors"]
        assert [loaded.payload(r) for r in range(shard["rows"])] == shard["payloads"]
        offsets = np.frombuffer(loaded.ids_offsets, dtype="<u8")
        ids = [bytes(loaded.ids_data[int(a) : int(b)]).decode() for a, b in zip(offsets, offsets[1:])]
        del offsets
        assert ids == shard["ids"]
    finally:
        loaded.release()


class _Kek:
    """A key provider holding the fixed KEK (RFC 5649, like the local keyring)."""

    def unwrap_key(self, key_id, wrapped):
        from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

        assert key_id == DOC["kek"]["key_id"]
        return aes_key_unwrap_with_padding(KEK, wrapped)


def test_sealvec_open_manifest_decodes_manifest():
    opened = open_manifest(
        _file(MANIFEST["file"]), name=MANIFEST["name"], provider=_Kek(), memory_lock=LOCK
    )
    try:
        assert opened.key_id == DOC["kek"]["key_id"]
        assert opened.wrapped_collection_key.hex() == DOC["wrapped_collection_key"]
        assert bytes(opened.collection_key.material()).hex() == DOC["collection_key"]
        assert opened.manifest == Manifest.from_json(json.dumps(MANIFEST["body"]).encode())
        assert [s.shard_id.hex() for s in opened.manifest.shards] == [s["shard_id"] for s in SHARDS]
    finally:
        opened.collection_key.close()


def test_sealvec_refuses_manifest_under_another_name():
    with pytest.raises(IntegrityError):
        open_manifest(
            _file(MANIFEST["file"]), name="manifest/00000000000000000008", provider=_Kek(),
            memory_lock=LOCK,
        )
    with pytest.raises(ir.FormatError):
        ir.read_manifest(_file(MANIFEST["file"]), "manifest/00000000000000000008", KEK)


def test_collection_opens_the_vector_store(tmp_path):
    from sealvec.collection import Collection
    from sealvec.keys import LocalKeyring

    store = tmp_path / "store"
    shutil.copytree(VECTORS / "store", store)
    keyring_path = tmp_path / "keys" / "keyring.json"
    keyring_path.parent.mkdir()
    keyring_path.write_text(
        json.dumps(
            {
                "sealvec_keyring": 1,
                "keys": {
                    "test-kek": {"current": 1, "versions": {"1": base64.b64encode(KEK).decode()}}
                },
            }
        )
    )
    keyring_path.chmod(0o600)
    with Collection.open(
        store, key_provider=LocalKeyring(keyring_path), memory_lock=LOCK
    ) as collection:
        assert collection.generation == MANIFEST["generation"]
        live = []
        for shard in SHARDS:
            for row, record_id in enumerate(shard["ids"]):
                if row not in shard["deleted"]:
                    live.append((record_id, shard["vectors"][row], shard["payloads"][row]))
        records = collection.get([r[0] for r in live])
        for (record_id, vector, payload), record in zip(live, records):
            assert record is not None and record.id == record_id
            assert record.vector.tolist() == vector
            assert record.document == payload["document"]
            assert record.metadata == payload["metadata"]
        deleted = [s["ids"][r] for s in SHARDS for r in s["deleted"]]
        assert collection.get(deleted) == [None] * len(deleted)


# ------------------------------------------------------------------ (d) tampering


def _regions(data: bytes) -> dict[str, list[int]]:
    """Byte positions to flip in every region of an object."""
    h = ir.parse(data, data[8])
    hl = h["header_len"]
    regions = {
        "magic": [0, 7],
        "kind/version/suite": [8, 9, 10, 11],
        "header_len": [12, 15],
        "collection_id": [16, 31],
        "object_id": [32, 47],
        "generation": [48, 55],
        "dimension/dtype": [56, 60],
        "reserved": [61, 110, 116],
        "row_count": [64, 71],
        "salt": [72, 103],
        "nonce_prefix": [104, 109],
        "counts": [111, 112, 114],
        "section_table": [118 + 32 * i + j for i in range(len(h["sections"])) for j in (0, 1, 4, 8, 16, 20, 24)],
        "key_id/wrapped_key": list(range(118 + 32 * len(h["sections"]), hl - 48))[:3] + [hl - 49],
        "commitment": [hl - 48, hl - 17],
        "check": [hl - 16, hl - 1],
    }
    if not regions["key_id/wrapped_key"] or hl - 49 < 118 + 32 * len(h["sections"]):
        del regions["key_id/wrapped_key"]
    for s in h["sections"]:
        end = s["offset"] + s["plain_len"] + 16 * s["segment_count"]
        positions = {s["offset"], end - 1, end - 16, s["offset"] + (end - s["offset"]) // 2}
        regions[f"section {s['id']}"] = sorted(positions)
    return regions


def _flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0x01
    return bytes(out)


def _shard_cases():
    for shard in SHARDS:
        data = _file(shard["file"])
        for region, positions in _regions(data).items():
            yield pytest.param(shard, positions, id=f"{shard['name']}-{region}")


@pytest.mark.parametrize(("shard", "positions"), list(_shard_cases()))
def test_readers_reject_flipped_byte_in_shard(shard, positions):
    data = _file(shard["file"])
    key = bytes.fromhex(shard["data_key"])
    for pos in positions:
        bad = _flip(data, pos)
        with pytest.raises(ir.FormatError):
            ir.read_shard(bad, key)
        with pytest.raises(IntegrityError):
            _sealvec_read(bad, key)


def _manifest_cases():
    data = _file(MANIFEST["file"])
    for region, positions in _regions(data).items():
        yield pytest.param(positions, id=f"manifest-{region}")


@pytest.mark.parametrize("positions", list(_manifest_cases()))
def test_readers_reject_flipped_byte_in_manifest(positions):
    data = _file(MANIFEST["file"])
    for pos in positions:
        bad = _flip(data, pos)
        with pytest.raises(ir.FormatError):
            ir.read_manifest(bad, MANIFEST["name"], KEK)
        with pytest.raises(IntegrityError):
            open_manifest(bad, name=MANIFEST["name"], provider=_Kek(), memory_lock=LOCK)


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_readers_reject_wrong_key(shard):
    data = _file(shard["file"])
    other = bytes.fromhex(SHARDS[1 - SHARDS.index(shard)]["data_key"])
    for key in (other, bytes(32), bytes.fromhex(DOC["collection_key"])):
        with pytest.raises(ir.FormatError, match="commitment"):
            ir.read_shard(data, key)
        with pytest.raises(IntegrityError, match="commitment"):
            _sealvec_read(data, key)


def test_readers_reject_wrong_kek():
    with pytest.raises(ir.FormatError):
        ir.read_manifest(_file(MANIFEST["file"]), MANIFEST["name"], bytes(32))


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_readers_reject_truncation_and_extension(shard):
    data = _file(shard["file"])
    key = bytes.fromhex(shard["data_key"])
    for bad in (data[:-1], data[:-16], data + b"\x00", data[:200], b""):
        with pytest.raises(ir.FormatError):
            ir.read_shard(bad, key)


def test_readers_reject_reordered_segments():
    shard = next(s for s in SHARDS if s["segment_size"] == 32)
    data = _file(shard["file"])
    key = bytes.fromhex(shard["data_key"])
    h = ir.parse(data, ir.KIND_SHARD)
    ids = h["sections"][1]  # two full 32-byte segments of 48 sealed bytes each
    a, b = ids["offset"], ids["offset"] + 48
    swapped = data[:a] + data[b : b + 48] + data[a:b] + data[b + 48 :]
    assert len(swapped) == len(data)
    with pytest.raises(ir.FormatError, match="authentication"):
        ir.read_shard(swapped, key)
    with pytest.raises(IntegrityError, match="authentication"):
        _sealvec_read(swapped, key)


def test_readers_reject_segment_moved_between_shards():
    """Same DEK, same layout, different header: segments do not transplant."""
    shard = SHARDS[0]
    data = _file(shard["file"])
    key = bytes.fromhex(shard["data_key"])
    vectors, ids_section, payloads_section = _sealvec_shard_inputs(shard)
    writer = SealedWriter(
        kind=KIND_SHARD, root_key=key, collection_id=COLLECTION_ID,
        object_id=bytes(16), dimension=shard["dimension"], dtype=DTYPE_FLOAT32,
        row_count=shard["rows"],
        sections=[
            (SECTION_VECTORS, vectors.nbytes, shard["vector_segment_size"]),
            (SECTION_IDS, len(ids_section), shard["segment_size"]),
            (SECTION_PAYLOADS, len(payloads_section), shard["segment_size"]),
        ],
        salt=bytes.fromhex(shard["salt"]), nonce_prefix=bytes.fromhex(shard["nonce_prefix"]),
    )
    other = writer.header_bytes()
    assert len(other) == shard["header_len"]
    transplanted = other + data[shard["header_len"] :]
    ir.parse(transplanted, ir.KIND_SHARD)  # well formed ...
    with pytest.raises(ir.FormatError, match="authentication"):  # ... but not authentic
        ir.read_shard(transplanted, key)
    with pytest.raises(ir.FormatError):
        ir.read_shard(data, key, shard_id=bytes(16))
    with pytest.raises(ir.FormatError):
        ir.read_shard(data, key, collection_id=bytes(16))


def test_readers_reject_header_edit_with_recomputed_checksum():
    """The checksum is unkeyed; the commitment is what authenticates the header."""
    shard = SHARDS[0]
    data = bytearray(_file(shard["file"]))
    hl = shard["header_len"]
    data[32] ^= 0xFF  # object id
    data[hl - 16 : hl] = hashlib.sha256(bytes(data[: hl - 16])).digest()[:16]
    key = bytes.fromhex(shard["data_key"])
    with pytest.raises(ir.FormatError, match="commitment"):
        ir.read_shard(bytes(data), key)
    with pytest.raises(IntegrityError, match="commitment"):
        _sealvec_read(bytes(data), key)


# ------------------------------------------------------------------ (e) property


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_metadata = st.dictionaries(
    _text, st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), _text), max_size=3
)


@st.composite
def _shards(draw):
    rows = draw(st.integers(0, 20))
    dimension = draw(st.integers(1, 9))
    floats = st.floats(width=32, allow_nan=False)
    vectors = [[draw(floats) for _ in range(dimension)] for _ in range(rows)]
    ids = [draw(_text) for _ in range(rows)]
    payloads = [
        {"document": draw(st.one_of(st.none(), _text)), "metadata": draw(_metadata)}
        for _ in range(rows)
    ]
    segment_size = draw(st.sampled_from([1, 7, 16, 32, 100, 1 << 20]))
    return rows, dimension, vectors, ids, payloads, segment_size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shard=_shards(), key=st.binary(min_size=32, max_size=32))
def test_random_shards_round_trip_through_independent_reader(shard, key):
    rows, dimension, vectors, ids, payloads, segment_size = shard
    array = np.asarray(vectors, dtype=np.float32).reshape(rows, dimension)
    ids_section = encode_strings([i.encode("utf-8") for i in ids])
    payloads_section = encode_strings(
        [encode_payload(p["document"], p["metadata"]) for p in payloads]
    )
    writer = SealedWriter(
        kind=KIND_SHARD, root_key=key, collection_id=COLLECTION_ID, object_id=bytes(16),
        dimension=dimension, dtype=DTYPE_FLOAT32, row_count=rows,
        sections=[
            (SECTION_VECTORS, array.nbytes, vector_segment_size(dimension, segment_size)),
            (SECTION_IDS, len(ids_section), segment_size),
            (SECTION_PAYLOADS, len(payloads_section), segment_size),
        ],
    )
    data = writer.header_bytes() + b"".join(
        b"".join(writer.seal_section(sid, section))
        for sid, section in (
            (SECTION_VECTORS, array.astype("<f4").tobytes()),
            (SECTION_IDS, ids_section),
            (SECTION_PAYLOADS, payloads_section),
        )
    )
    assert len(data) == writer.total_size
    got_ids, got_vectors, got_payloads = ir.read_shard(data, key)
    assert got_ids == ids
    assert got_vectors == array.tolist()
    assert got_payloads == payloads
    with pytest.raises(ir.FormatError):
        ir.read_shard(data, bytes(b ^ 1 for b in key))


def test_manifest_kind_is_not_a_shard():
    with pytest.raises(ir.FormatError, match="kind"):
        ir.read_shard(_file(MANIFEST["file"]), bytes(32))
    with pytest.raises(IntegrityError):
        parse_header(_file(SHARDS[0]["file"]), expected_kind=KIND_MANIFEST)
