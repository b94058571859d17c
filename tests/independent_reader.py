"""A minimal reader of sealvec sealed objects, written from docs/format.md only.

It deliberately does not import sealvec: only the standard library and
``cryptography``. It exists to show that the document is enough to read the format
and to catch any change of the format that the document does not describe.

    ids, vectors, payloads = read_shard(data, data_key)
    manifest = read_manifest(data, name, kek)  # KEK of a local keyring (RFC 5649)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

MAGIC = b"SEALVEC\x00"
FIXED = struct.Struct("<8sBBHI16s16sQIB3xQ32s6sxBHH2x")  # 118 bytes
ENTRY = struct.Struct("<B3xIQI4xQ")  # 32 bytes
COMMITMENT, CHECK, TAG = 32, 16, 16
MAX_HEADER, MAX_SECTIONS = 1 << 16, 8
MAX_SEGMENT, MAX_SEGMENTS = 1 << 26, 1 << 31
MAX_DIMENSION, MAX_ROWS = 1 << 16, 1 << 40
KIND_SHARD, KIND_MANIFEST = 1, 2


class FormatError(Exception):
    """The object is malformed, tampered with, or the key is wrong."""


def _hkdf(root_key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(root_key)


def parse(data: bytes, kind: int) -> dict:
    """Checks 1-7 of docs/format.md §5; returns the header fields."""
    data = bytes(data)
    if len(data) < 16:
        raise FormatError("truncated")
    (header_len,) = struct.unpack_from("<I", data, 12)
    if not FIXED.size <= header_len <= min(MAX_HEADER, len(data)):
        raise FormatError("header length out of range")
    header = data[:header_len]
    (magic, obj_kind, version, suite, _, collection_id, object_id, generation, dimension,
     dtype, row_count, salt, nonce_prefix, section_count, key_id_len,
     wrapped_key_len) = FIXED.unpack_from(header, 0)
    if magic != MAGIC:
        raise FormatError("bad magic")
    if version != 1 or suite != 1:
        raise FormatError("unsupported version or suite")
    if obj_kind != kind:
        raise FormatError("wrong kind")
    if not 1 <= section_count <= MAX_SECTIONS or header_len != (
        FIXED.size + ENTRY.size * section_count + key_id_len + wrapped_key_len + COMMITMENT + CHECK
    ):
        raise FormatError("inconsistent header lengths")
    if hashlib.sha256(header[:-CHECK]).digest()[:CHECK] != header[-CHECK:]:
        raise FormatError("header checksum")
    if dimension > MAX_DIMENSION or row_count > MAX_ROWS:
        raise FormatError("dimension or rows out of range")
    sections = []
    offset = header_len
    pos = FIXED.size
    for _ in range(section_count):
        section_id, seg_size, plain_len, seg_count, sec_offset = ENTRY.unpack_from(header, pos)
        pos += ENTRY.size
        if not 1 <= seg_size <= MAX_SEGMENT or seg_count > MAX_SEGMENTS:
            raise FormatError("segment size out of range")
        if seg_count != max(1, -(-plain_len // seg_size)) or sec_offset != offset:
            raise FormatError("inconsistent section table")
        if any(s["id"] == section_id for s in sections):
            raise FormatError("repeated section")
        sections.append(
            {"id": section_id, "segment_size": seg_size, "plain_len": plain_len,
             "segment_count": seg_count, "offset": sec_offset}
        )
        offset += plain_len + TAG * seg_count
    key_id = header[pos : pos + key_id_len]
    wrapped_key = header[pos + key_id_len : pos + key_id_len + wrapped_key_len]
    try:
        key_id = key_id.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("key id is not UTF-8") from None
    if offset != len(data):
        raise FormatError("object size does not match its header (truncated or extended)")
    return {
        "data": data, "header": header, "header_len": header_len, "kind": obj_kind,
        "collection_id": collection_id, "object_id": object_id, "generation": generation,
        "dimension": dimension, "dtype": dtype, "row_count": row_count, "salt": salt,
        "nonce_prefix": nonce_prefix, "sections": sections, "key_id": key_id,
        "wrapped_key": wrapped_key,
    }


def segment_key(h: dict, root_key: bytes) -> bytes:
    """Check 9: the key commitment; returns the segment key."""
    root_key = bytes(root_key)
    commit_key = _hkdf(root_key, h["salt"], b"sealvec v1 key commitment")
    header = h["header"]
    expected = hmac.new(commit_key, header[: -(COMMITMENT + CHECK)], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, header[-(COMMITMENT + CHECK) : -CHECK]):
        raise FormatError("key commitment does not match (wrong key or tampered header)")
    return _hkdf(root_key, h["salt"], b"sealvec v1 segment key")


def decrypt_section(h: dict, key: bytes, section: dict) -> bytes:
    """Check 10: decrypt and authenticate every segment of one section."""
    aad = hashlib.sha256(h["header"]).digest() + bytes([section["id"]])
    aes = AESGCM(key)
    out = bytearray()
    pos = section["offset"]
    n = section["segment_count"]
    for i in range(n):
        length = min(section["segment_size"], section["plain_len"] - i * section["segment_size"])
        nonce = h["nonce_prefix"] + struct.pack(">BIB", section["id"], i, 1 if i == n - 1 else 0)
        try:
            out += aes.decrypt(nonce, h["data"][pos : pos + length + TAG], aad)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise FormatError(f"segment {i} of section {section['id']} failed authentication") from None
        pos += length + TAG
    return bytes(out)


def split_strings(section: bytes, rows: int) -> list[bytes]:
    """Check 11: a strings table -> its values."""
    table = 8 * (rows + 1)
    if len(section) < table:
        raise FormatError("strings section shorter than its offsets table")
    offsets = struct.unpack_from(f"<{rows + 1}Q", section, 0)
    data = section[table:]
    if offsets[0] != 0 or offsets[-1] != len(data) or any(
        a > b for a, b in zip(offsets, offsets[1:])
    ):
        raise FormatError("inconsistent offsets")
    return [data[offsets[r] : offsets[r + 1]] for r in range(rows)]


def read_shard(data: bytes, data_key: bytes, *, collection_id: bytes | None = None,
               shard_id: bytes | None = None, header_sha256: str | None = None):
    """Return (ids, vectors as lists of floats, payload dicts) of one shard."""
    h = parse(data, KIND_SHARD)
    if header_sha256 is not None and hashlib.sha256(h["header"]).hexdigest() != header_sha256:
        raise FormatError("not the shard the manifest names")
    if collection_id is not None and h["collection_id"] != collection_id:
        raise FormatError("shard of another collection")
    if shard_id is not None and h["object_id"] != shard_id:
        raise FormatError("shard in the wrong slot")
    rows, dim = h["row_count"], h["dimension"]
    if h["dtype"] != 1 or [s["id"] for s in h["sections"]] != [1, 2, 3]:
        raise FormatError("unexpected shard layout")
    if h["sections"][0]["plain_len"] != 4 * rows * dim:
        raise FormatError("vectors section length disagrees with rows x dimension")
    key = segment_key(h, data_key)
    vec_raw, ids_raw, pay_raw = (decrypt_section(h, key, s) for s in h["sections"])
    flat = struct.unpack(f"<{rows * dim}f", vec_raw)
    vectors = [list(flat[r * dim : (r + 1) * dim]) for r in range(rows)]
    try:
        ids = [v.decode("utf-8") for v in split_strings(ids_raw, rows)]
        payloads = [json.loads(v.decode("utf-8")) for v in split_strings(pay_raw, rows)]
    except ValueError:
        raise FormatError("ids or payloads are not valid UTF-8 / JSON") from None
    return ids, vectors, payloads


def read_manifest(data: bytes, name: str, kek: bytes) -> dict:
    """Open a manifest whose collection key is RFC 5649-wrapped under ``kek``.

    Returns the body as a dict, plus ``_key_id`` and ``_collection_key``.
    """
    h = parse(data, KIND_MANIFEST)
    tail = name.removeprefix("manifest/")
    if not (name.startswith("manifest/") and len(tail) == 20 and tail.isdigit()):
        raise FormatError("not a manifest name")
    if int(tail) != h["generation"]:
        raise FormatError("manifest name and generation disagree (rollback or replacement)")
    if [s["id"] for s in h["sections"]] != [4] or h["sections"][0]["plain_len"] > 1 << 30:
        raise FormatError("unexpected manifest layout")
    try:
        collection_key = aes_key_unwrap_with_padding(bytes(kek), h["wrapped_key"])
    except InvalidUnwrap:
        raise FormatError("collection key does not unwrap") from None
    if len(collection_key) != 32:
        raise FormatError("collection key is not 32 bytes")
    key = segment_key(h, collection_key)
    try:
        body = json.loads(decrypt_section(h, key, h["sections"][0]).decode("utf-8"))
    except ValueError:
        raise FormatError("manifest body is not JSON") from None
    if body.get("format") != 1 or body.get("generation") != h["generation"] or \
            body.get("collection_id") != h["collection_id"].hex():
        raise FormatError("manifest body disagrees with its header")
    body["_key_id"] = h["key_id"]
    body["_collection_key"] = collection_key
    return body


def unwrap_data_key(collection_key: bytes, wrapped_b64: str) -> bytes:
    try:
        key = aes_key_unwrap_with_padding(collection_key, base64.b64decode(wrapped_b64))
    except InvalidUnwrap:
        raise FormatError("data key does not unwrap") from None
    if len(key) != 32:
        raise FormatError("data key is not 32 bytes")
    return key
