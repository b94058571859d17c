"""The sealed format v1 against fixed test vectors and an independent reader.

(a) the stored vectors decode with tests/independent_reader.py (no sealvec import)
    to exactly the inputs in tests/vectors/shard-v1.json, the attributes section
    included (its columns equal the records' metadata, value types included), and
    the attributes layout matches docs/format.md byte for byte;
(b) sealvec's writers, given the same fixed inputs, reproduce the files byte for
    byte, so any change of the format breaks this test;
(c) sealvec's own reader decodes them (low level, load_shard/open_manifest, and a
    whole Collection.open on a copy of the vector store);
(d) the independent reader (and sealvec's) rejects a flipped byte in every region
    (every section, attributes included), a wrong key, truncation, extension,
    reordered segments, a swapped shard, a wrong section table and a malformed
    attributes section;
(e) random small shards, with random metadata, round-trip through sealvec's writer
    and the independent reader.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
import struct
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

from sealvec.attributes import encode_attributes, parse_attributes  # noqa: E402
from sealvec.errors import IntegrityError  # noqa: E402
from sealvec.keys import SecretKey  # noqa: E402
from sealvec.manifest import Manifest, ShardEntry, open_manifest, seal_manifest  # noqa: E402
from sealvec.sealed import (  # noqa: E402
    DTYPE_FLOAT32,
    KIND_MANIFEST,
    KIND_SHARD,
    SECTION_ATTRIBUTES,
    SECTION_IDS,
    SECTION_MANIFEST_BODY,
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
    secure_copy,
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


def _typed(metadata: dict) -> dict:
    """A metadata dict with each value tagged by its kind, so that True is not 1 and
    "1" is not 1; numbers as float64, as the attributes section stores them."""
    out = {}
    for key, value in metadata.items():
        if value is None:
            out[key] = ("null", None)
        elif isinstance(value, bool):
            out[key] = ("bool", value)
        elif isinstance(value, (int, float)):
            assert float(value) == value  # exactly representable
            out[key] = ("number", float(value))
        else:
            assert isinstance(value, str)
            out[key] = ("string", value)
    return out


def _typed_records(records: list[dict]) -> list[dict]:
    return [_typed(r) for r in records]


def _ir_metadata(columns: dict, rows: int) -> list[dict]:
    """The independent reader's attribute columns as one typed dict per row."""
    return _typed_records(ir.attribute_records(columns, rows))


def _sealvec_metadata(view, rows: int) -> list[dict]:
    """sealvec's parse_attributes views decoded to one typed dict per row."""
    columns = parse_attributes(memoryview(view), rows)
    records: list[dict] = [{} for _ in range(rows)]
    for key, column in columns.items():
        for r in range(rows):
            tag = int(column.tags[r])
            if tag == 0:
                continue
            if tag == 4:
                value = float(column.numbers[r])
            elif tag == 5:
                start, end = int(column.offsets[r]), int(column.offsets[r + 1])
                value = bytes(column.data[start:end]).decode("utf-8")
            else:
                value = (None, None, False, True)[tag]
            records[r][key] = value
    return _typed_records(records)


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
    ids, vectors, payloads, attributes = ir.read_shard(
        _file(shard["file"]),
        bytes.fromhex(shard["data_key"]),
        collection_id=COLLECTION_ID,
        shard_id=bytes.fromhex(shard["shard_id"]),
        header_sha256=shard["header_sha256"],
    )
    assert ids == shard["ids"]
    assert vectors == shard["vectors"]  # exactly representable float32 values
    assert payloads == shard["payloads"]
    metadata = [p["metadata"] for p in shard["payloads"]]
    assert _ir_metadata(attributes, shard["rows"]) == _typed_records(metadata)
    # One column per key some row has, in ascending UTF-8 byte order.
    keys = {k for m in metadata for k in m}
    assert list(attributes) == sorted(keys, key=lambda k: k.encode("utf-8"))
    for key, values in attributes.items():
        assert [m.get(key, ir.ABSENT) for m in metadata] == values


def test_vectors_cover_every_attribute_kind():
    values = [v for s in SHARDS for p in s["payloads"] for v in p["metadata"].values()]
    kinds = {_typed({"k": v})["k"][0] for v in values}
    assert kinds == {"null", "bool", "number", "string"}
    assert True in values and False in values and "" in values
    assert any(isinstance(v, int) and not isinstance(v, bool) for v in values)
    assert any(isinstance(v, float) for v in values)
    assert 2**53 in values and -(2**53) in values
    for shard in SHARDS:  # keys only some rows have, and rows without metadata
        metadata = [p["metadata"] for p in shard["payloads"]]
        assert any(m == {} for m in metadata)
        keys = {k for m in metadata for k in m}
        assert any(any(k not in m for m in metadata) for k in keys)


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_section_plaintexts_match_recorded_digests(shard):
    data = _file(shard["file"])
    h = ir.parse(data, ir.KIND_SHARD)
    key = ir.segment_key(h, bytes.fromhex(shard["data_key"]))
    assert [s["id"] for s in h["sections"]] == [1, 2, 3, 5]
    assert [s["id"] for s in shard["sections"]] == [1, 2, 3, 5]
    for entry, recorded in zip(h["sections"], shard["sections"]):
        plain = ir.decrypt_section(h, key, entry)
        assert len(plain) == recorded["plain_len"] == entry["plain_len"]
        assert entry["segment_size"] == recorded["segment_size"]
        assert entry["segment_count"] == recorded["segment_count"]
        assert hashlib.sha256(plain).hexdigest() == recorded["plaintext_sha256"]


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _f64(x: float) -> bytes:
    return struct.pack("<d", x)


def test_attributes_layout_byte_for_byte():
    """The attributes section of docs/format.md, written out by hand."""
    metadata = [{"n": 2, "s": "hé"}, {"s": None, "b": True}, {"n": 0.5, "b": False}]
    expected = b"".join([
        _u64(3),                                   # key_count
        # key "b": rows 1 and 2
        _u64(1), b"b" + bytes(7),                  # key_len, key, padding
        bytes([0, 3, 2]) + bytes(5),               # tags: absent, true, false; padding
        _f64(0) * 3,                               # numbers
        _u64(0) * 4,                               # string offsets
        # key "n": rows 0 and 2
        _u64(1), b"n" + bytes(7),
        bytes([4, 0, 4]) + bytes(5),
        _f64(2.0) + _f64(0) + _f64(0.5),
        _u64(0) * 4,
        # key "s": rows 0 and 1
        _u64(1), b"s" + bytes(7),
        bytes([5, 1, 0]) + bytes(5),
        _f64(0) * 3,
        _u64(0) + _u64(3) + _u64(3) + _u64(3),     # "hé" is 3 UTF-8 bytes
        "hé".encode() + bytes(5),                  # string bytes, padding
    ])
    assert encode_attributes(metadata) == expected
    columns = ir.parse_attributes(expected, 3)
    assert list(columns) == ["b", "n", "s"]
    assert _ir_metadata(columns, 3) == _typed_records(metadata)
    assert _sealvec_metadata(expected, 3) == _typed_records(metadata)
    assert encode_attributes([{}, {}]) == _u64(0)
    assert ir.parse_attributes(_u64(0), 2) == {}


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
        ids, vectors, payloads, attributes = ir.read_shard(
            _file(f"store/shards/{entry['id']}.svs"),
            dek,
            collection_id=bytes.fromhex(body["collection_id"]),
            shard_id=bytes.fromhex(entry["id"]),
            header_sha256=entry["header_sha256"],
        )
        assert (ids, vectors, payloads) == (
            expected["ids"], expected["vectors"], expected["payloads"]
        )
        assert _ir_metadata(attributes, entry["rows"]) == _typed_records(
            [p["metadata"] for p in expected["payloads"]]
        )


def test_segment_boundary_vector_really_spans_segments():
    shard = next(s for s in SHARDS if s["segment_size"] == 32)
    h = ir.parse(_file(shard["file"]), ir.KIND_SHARD)
    counts = {s["id"]: (s["segment_size"], s["plain_len"], s["segment_count"]) for s in h["sections"]}
    assert counts[1] == (32, 80, 3)  # 32 + 32 + 16: whole rows of 16 bytes
    assert counts[2] == (32, 64, 2)  # exactly two full segments
    assert counts[3][2] > 3
    assert counts[5][0] == 32 and counts[5][2] > 3


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
    attributes_section = encode_attributes([p["metadata"] for p in shard["payloads"]])
    return vectors, ids_section, payloads_section, attributes_section


def _shard_sections(shard: dict, *, segment_size=None) -> list[tuple[int, bytes, int]]:
    """(section id, plaintext, segment size) of a shard, as write_shard lays it out."""
    vectors, ids_section, payloads_section, attributes_section = _sealvec_shard_inputs(shard)
    seg = shard["segment_size"] if segment_size is None else segment_size
    return [
        (SECTION_VECTORS, vectors.astype("<f4").tobytes(), shard["vector_segment_size"]),
        (SECTION_IDS, ids_section, seg),
        (SECTION_PAYLOADS, payloads_section, seg),
        (SECTION_ATTRIBUTES, attributes_section, seg),
    ]


def _seal(shard: dict, sections, *, object_id=None, key=None) -> bytes:
    """Seal (id, plaintext, segment size) sections as a shard with the shard's fixed
    salt and nonce prefix."""
    writer = SealedWriter(
        kind=KIND_SHARD,
        root_key=key or bytes.fromhex(shard["data_key"]),
        collection_id=COLLECTION_ID,
        object_id=object_id or bytes.fromhex(shard["shard_id"]),
        dimension=shard["dimension"],
        dtype=DTYPE_FLOAT32,
        row_count=shard["rows"],
        sections=[(sid, len(plain), seg) for sid, plain, seg in sections],
        salt=bytes.fromhex(shard["salt"]),
        nonce_prefix=bytes.fromhex(shard["nonce_prefix"]),
    )
    data = writer.header_bytes() + b"".join(
        b"".join(writer.seal_section(sid, plain)) for sid, plain, _ in sections
    )
    assert len(data) == writer.total_size
    return data


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_write_shard_reproduces_stored_bytes(shard, tmp_path, monkeypatch):
    vectors, ids_section, payloads_section, attributes_section = _sealvec_shard_inputs(shard)
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
    buffers = [
        secure_copy(section, LOCK)
        for section in (
            vectors.astype("<f4").tobytes(), ids_section, payloads_section, attributes_section
        )
    ]
    try:
        written = write_shard(
            storage, rows=shard["rows"], dimension=shard["dimension"],
            vectors=buffers[0], ids=buffers[1], payloads=buffers[2], attributes=buffers[3],
            **common,
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
    assert _seal(shard, _shard_sections(shard)) == _file(shard["file"])


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
    assert list(sections) == [SECTION_VECTORS, SECTION_IDS, SECTION_PAYLOADS, SECTION_ATTRIBUTES]
    assert sections == {sid: plain for sid, plain, _ in _shard_sections(shard)}


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
        assert _sealvec_metadata(loaded.attributes, shard["rows"]) == _typed_records(
            [p["metadata"] for p in shard["payloads"]]
        )
    finally:
        loaded.release()


def _store_with(tmp_path, shard: dict, data: bytes) -> LocalDirectory:
    storage = LocalDirectory(tmp_path / "store")
    storage.initialise()
    path = tmp_path / "store" / shard["file"].removeprefix("store/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return storage


def _load(storage, shard: dict, data: bytes):
    return load_shard(
        storage,
        collection_id=COLLECTION_ID,
        shard_id=bytes.fromhex(shard["shard_id"]),
        dimension=shard["dimension"],
        rows=shard["rows"],
        header_sha256=hashlib.sha256(
            data[: ir.parse(data, ir.KIND_SHARD)["header_len"]]
        ).hexdigest(),
        size=len(data),
        data_key=SecretKey(bytes.fromhex(shard["data_key"]), LOCK),
        memory_lock=LOCK,
    )


def _without(sections, section_id):
    return [s for s in sections if s[0] != section_id]


def _layouts():
    """Well-formed, authentic shards whose section table is not [1, 2, 3, 5]."""
    yield "old-three-sections", lambda s: _without(s, SECTION_ATTRIBUTES)
    yield "no-payloads", lambda s: _without(s, SECTION_PAYLOADS)
    yield "attributes-before-payloads", lambda s: [s[0], s[1], s[3], s[2]]
    yield "attributes-first", lambda s: [s[3], s[0], s[1], s[2]]
    yield "extra-manifest-body", lambda s: s + [(SECTION_MANIFEST_BODY, b"{}", 32)]
    yield "attributes-as-manifest-body", lambda s: s[:3] + [(SECTION_MANIFEST_BODY,) + s[3][1:]]


@pytest.mark.parametrize(("shard", "layout"), [
    pytest.param(shard, change, id=f"{shard['name']}-{name}")
    for shard in SHARDS for name, change in _layouts()
])
def test_readers_reject_unexpected_section_table(shard, layout, tmp_path):
    data = _seal(shard, layout(_shard_sections(shard)))
    ir.parse(data, ir.KIND_SHARD)  # well formed and authentic ...
    parse_header(data, expected_kind=KIND_SHARD)
    with pytest.raises(ir.FormatError, match="layout"):  # ... but not a shard
        ir.read_shard(data, bytes.fromhex(shard["data_key"]))
    with pytest.raises(IntegrityError, match="section table"):
        _load(_store_with(tmp_path, shard, data), shard, data)


def test_load_shard_accepts_a_resealed_shard(tmp_path):
    """The helpers above load a correct layout (so the rejections are meaningful)."""
    shard = SHARDS[1]
    data = _seal(shard, _shard_sections(shard))
    loaded = _load(_store_with(tmp_path, shard, data), shard, data)
    try:
        assert loaded.rows == shard["rows"]
    finally:
        loaded.release()


def test_readers_reject_unknown_section_id():
    shard = SHARDS[0]
    sections = _shard_sections(shard)
    data = bytearray(_seal(shard, sections))
    hl = shard["header_len"]
    data[118 + 32 * 3] = 9  # the attributes entry's section id: 5 -> 9 (unassigned)
    data[hl - 16 : hl] = hashlib.sha256(bytes(data[: hl - 16])).digest()[:16]
    with pytest.raises(ir.FormatError, match="unknown section"):
        ir.parse(bytes(data), ir.KIND_SHARD)
    with pytest.raises(IntegrityError, match="unknown section"):
        parse_header(bytes(data), expected_kind=KIND_SHARD)


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
        regions = _regions(data)
        assert {"section 1", "section 2", "section 3", "section 5"} <= set(regions)
        for region, positions in regions.items():
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


@pytest.mark.parametrize("shard", SHARDS, ids=_shard_ids)
def test_flip_in_every_attributes_segment_is_rejected(shard):
    """Every segment of the attributes section is authenticated on its own."""
    data = _file(shard["file"])
    key = bytes.fromhex(shard["data_key"])
    entry = ir.parse(data, ir.KIND_SHARD)["sections"][3]
    assert entry["id"] == 5
    pos = entry["offset"]
    for i in range(entry["segment_count"]):
        length = min(entry["segment_size"], entry["plain_len"] - i * entry["segment_size"])
        for at in {pos, pos + length + 15}:  # first ciphertext byte (or tag), last tag byte
            bad = _flip(data, at)
            with pytest.raises(ir.FormatError, match=f"segment {i} of section 5"):
                ir.read_shard(bad, key)
            with pytest.raises(IntegrityError, match=f"segment {i} of section 5"):
                _sealvec_read(bad, key)
        pos += length + 16
    assert pos == len(data)


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
    resealed = _seal(shard, _shard_sections(shard), object_id=bytes(16))
    other = resealed[: shard["header_len"]]
    assert ir.parse(resealed, ir.KIND_SHARD)["header_len"] == shard["header_len"]
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


def _attribute_sample() -> bytes:
    """A valid attributes section for 3 rows (keys "a", "b", then "c")."""
    section = encode_attributes(
        [{"a": 1, "b": "xy", "c": None}, {"a": True, "b": "z"}, {"c": 2.5}]
    )
    assert section[8:16] == _u64(1) and section[16:17] == b"a"
    return section


# Column "a" starts at 8: key_len (8), "a" + padding (8), tags (3 + 5), numbers (24),
# offsets (32), no string bytes: 80 bytes. Column "b" starts at 88: key_len at 88,
# key at 96, tags at 104, numbers at 112, offsets [0, 2, 3, 3] at 136, "xyz" at 168,
# padding to 176. Column "c" (80 bytes) ends the section at 256.
def _set(section: bytes, pos: int, value: bytes) -> bytes:
    return section[:pos] + value + section[pos + len(value) :]


def _malformed_attributes():
    """(name, section bytes, whether sealvec's reference reader refuses it too)."""
    ok = _attribute_sample()
    both = [
        ("empty", b""),
        ("short-key-count", ok[:7]),
        ("truncated", ok[:-1]),
        ("truncated-column", ok[:100]),
        ("trailing-bytes", ok + bytes(8)),
        ("too-many-keys", _set(ok, 0, _u64(4097))),
        ("key-count-too-high", _set(ok, 0, _u64(4))),
        ("key-count-too-low", _set(ok, 0, _u64(2))),
        ("key-len-huge", _set(ok, 8, _u64(2**63))),
        ("key-not-utf8", _set(ok, 96, b"\xff")),
        ("unknown-tag", _set(ok, 24, bytes([6]))),
        ("offsets-do-not-start-at-0", _set(ok, 136, _u64(1))),
        ("offsets-decrease", _set(ok, 152, _u64(1))),
        ("string-length-past-end", _set(ok, 160, _u64(2**40))),
        ("repeated-key", _set(ok, 96, b"a")),
    ]
    writer_rules = [
        ("keys-out-of-order", _set(ok, 96, b"0")),
        ("non-zero-key-padding", _set(ok, 17, b"\x01")),
        ("non-zero-tag-padding", _set(ok, 27, b"\x01")),
        ("number-where-tag-is-not-number", _set(ok, 40, _f64(1.0))),
        ("string-where-tag-is-not-string", _set(ok, 104, bytes([1]))),
        ("string-not-utf8", _set(ok, 168, b"\xff")),
        ("non-zero-string-padding", _set(ok, 173, b"\x01")),
    ]
    for name, data in both:
        yield pytest.param(data, True, id=name)
    for name, data in writer_rules:
        yield pytest.param(data, False, id=name)


def test_attribute_sample_is_valid():
    ok = _attribute_sample()
    assert len(ok) == 8 + 80 + 88 + 80
    assert ok[88:104] == _u64(1) + b"b" + bytes(7) and ok[104:107] == bytes([5, 5, 0])
    assert ok[136:168] == _u64(0) + _u64(2) + _u64(3) + _u64(3)
    assert ok[168:176] == b"xyz" + bytes(5) and ok[176:185] == _u64(1) + b"c"
    assert ir.parse_attributes(ok, 3)
    assert _sealvec_metadata(ok, 3) == _ir_metadata(ir.parse_attributes(ok, 3), 3)


@pytest.mark.parametrize(("section", "reference_refuses"), list(_malformed_attributes()))
def test_readers_reject_malformed_attributes(section, reference_refuses):
    """docs/format.md §6: the checks every reader makes, and the writer rules that the
    independent reader also enforces (sealvec's reader need not)."""
    assert section != _attribute_sample()
    with pytest.raises(ir.FormatError):
        ir.parse_attributes(section, 3)
    if reference_refuses:
        with pytest.raises(IntegrityError):
            parse_attributes(memoryview(section), 3)
    else:
        parse_attributes(memoryview(section), 3)


def test_independent_reader_checks_attributes_inside_a_shard():
    """A malformed attributes section, sealed authentically, is refused."""
    shard = SHARDS[0]
    sections = _shard_sections(shard)
    bad = sections[:3] + [(SECTION_ATTRIBUTES, sections[3][1] + bytes(8), sections[3][2])]
    with pytest.raises(ir.FormatError, match="trailing"):
        ir.read_shard(_seal(shard, bad), bytes.fromhex(shard["data_key"]))


# ------------------------------------------------------------------ (e) property


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
# A small pool of keys as well, so that keys recur in some rows and not in others.
_keys = st.one_of(st.sampled_from(["a", "b", "B", "é", "日", ""]), _text)
_metadata = st.dictionaries(
    _keys,
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        _text,
    ),
    max_size=4,
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
    metadata = [p["metadata"] for p in payloads]
    sections = [
        (SECTION_VECTORS, array.astype("<f4").tobytes()),
        (SECTION_IDS, encode_strings([i.encode("utf-8") for i in ids])),
        (
            SECTION_PAYLOADS,
            encode_strings([encode_payload(p["document"], p["metadata"]) for p in payloads]),
        ),
        (SECTION_ATTRIBUTES, encode_attributes(metadata)),
    ]
    writer = SealedWriter(
        kind=KIND_SHARD, root_key=key, collection_id=COLLECTION_ID, object_id=bytes(16),
        dimension=dimension, dtype=DTYPE_FLOAT32, row_count=rows,
        sections=[
            (
                sid,
                len(plain),
                vector_segment_size(dimension, segment_size)
                if sid == SECTION_VECTORS
                else segment_size,
            )
            for sid, plain in sections
        ],
    )
    data = writer.header_bytes() + b"".join(
        b"".join(writer.seal_section(sid, plain)) for sid, plain in sections
    )
    assert len(data) == writer.total_size
    got_ids, got_vectors, got_payloads, got_attributes = ir.read_shard(data, key)
    assert got_ids == ids
    assert got_vectors == array.tolist()
    assert got_payloads == payloads
    assert _ir_metadata(got_attributes, rows) == _typed_records(metadata)
    assert list(got_attributes) == sorted(
        {k for m in metadata for k in m}, key=lambda k: k.encode("utf-8")
    )
    assert _sealvec_metadata(sections[3][1], rows) == _typed_records(metadata)
    with pytest.raises(ir.FormatError):
        ir.read_shard(data, bytes(b ^ 1 for b in key))
    # A flipped byte anywhere in the sealed attributes section is refused.
    entry = ir.parse(data, ir.KIND_SHARD)["sections"][3]
    assert entry["id"] == SECTION_ATTRIBUTES
    end = entry["offset"] + entry["plain_len"] + 16 * entry["segment_count"]
    for pos in {entry["offset"], (entry["offset"] + end) // 2, end - 1}:
        with pytest.raises(ir.FormatError, match="section 5"):
            ir.read_shard(_flip(data, pos), key)


def test_manifest_kind_is_not_a_shard():
    with pytest.raises(ir.FormatError, match="kind"):
        ir.read_shard(_file(MANIFEST["file"]), bytes(32))
    with pytest.raises(IntegrityError):
        parse_header(_file(SHARDS[0]["file"]), expected_kind=KIND_MANIFEST)
