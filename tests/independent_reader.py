"""A minimal reader of sealvec sealed objects, written from docs/format.md only.

It deliberately does not import sealvec: only the standard library and
``cryptography``. It exists to show that the document is enough to read the format
and to catch any change of the format that the document does not describe.

    ids, vectors, payloads, attributes = read_shard(data, data_key)
    records = attribute_records(attributes, len(ids))  # metadata dicts, one per row
    manifest = read_manifest(data, name, kek)  # KEK of a local keyring (RFC 5649)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
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
KIND_SHARD, KIND_MANIFEST, KIND_INDEX = 1, 2, 3
KNOWN_SECTIONS = (1, 2, 3, 4, 5, 6)  # vectors, ids, payloads, manifest body, attributes, index
SHARD_SECTIONS = [1, 2, 3, 5]
RESERVED_FIXED = ((61, 3), (110, 1), (116, 2))  # (offset, size), must be zero
RESERVED_ENTRY = ((1, 3), (20, 4))
MAX_ATTRIBUTE_KEYS = 4096
TAG_ABSENT, TAG_NULL, TAG_FALSE, TAG_TRUE, TAG_NUMBER, TAG_STRING = range(6)


class _Absent:
    """The value of an attribute column where the record does not have the key."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


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
    if not 1 <= section_count <= MAX_SECTIONS or header_len != (
        FIXED.size + ENTRY.size * section_count + key_id_len + wrapped_key_len + COMMITMENT + CHECK
    ):
        raise FormatError("inconsistent header lengths")
    if hashlib.sha256(header[:-CHECK]).digest()[:CHECK] != header[-CHECK:]:
        raise FormatError("header checksum")
    if obj_kind != kind:
        raise FormatError("wrong kind")
    if dimension > MAX_DIMENSION or row_count > MAX_ROWS or dtype not in (0, 1):
        raise FormatError("dimension, rows or dtype out of range")
    if any(header[o : o + n] != bytes(n) for o, n in RESERVED_FIXED):
        raise FormatError("non-zero reserved bytes in the fixed part")
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
        start = pos - ENTRY.size
        if section_id not in KNOWN_SECTIONS or any(
            header[start + o : start + o + n] != bytes(n) for o, n in RESERVED_ENTRY
        ):
            raise FormatError("unknown section id or non-zero reserved bytes in an entry")
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


def parse_attributes(section: bytes, rows: int) -> dict[str, list]:
    """Check 11 for the attributes section (§6): its columns, in stored order.

    Returns {key: [value of row 0, ..., value of row rows-1]}, each value ABSENT,
    None, False, True, a float (every number, integers included) or a str. Besides
    the checks every reader makes, it refuses anything a writer must not produce:
    keys out of order, non-zero padding, a number or string where the tag has none.
    """
    section = bytes(section)
    pos = 0

    def take(length: int) -> bytes:
        nonlocal pos
        if length > len(section) - pos:  # before using any length read from the data
            raise FormatError("attributes section is truncated or malformed")
        pos += length
        return section[pos - length : pos]

    def padding(length: int) -> None:
        if take(-length % 8) != bytes(-length % 8):
            raise FormatError("attributes section has non-zero padding")

    (key_count,) = struct.unpack("<Q", take(8))
    if key_count > MAX_ATTRIBUTE_KEYS:
        raise FormatError("attributes section has too many keys")
    columns: dict[str, list] = {}
    previous = None
    for _ in range(key_count):
        (key_len,) = struct.unpack("<Q", take(8))
        key_bytes = take(key_len)
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("attribute key is not UTF-8") from None
        if previous is not None and key_bytes <= previous:
            raise FormatError("attribute keys are repeated or not in ascending byte order")
        previous = key_bytes
        padding(key_len)
        tags = take(rows)
        padding(rows)
        numbers_raw = take(8 * rows)
        offsets = struct.unpack(f"<{rows + 1}Q", take(8 * (rows + 1)))
        if offsets[0] != 0 or any(a > b for a, b in zip(offsets, offsets[1:])):
            raise FormatError("attribute string offsets are inconsistent")
        data = take(offsets[-1])
        padding(offsets[-1])
        values: list = []
        for r in range(rows):
            tag = tags[r]
            raw_number = numbers_raw[8 * r : 8 * r + 8]
            (number,) = struct.unpack("<d", raw_number)
            text = data[offsets[r] : offsets[r + 1]]
            if tag > TAG_STRING:
                raise FormatError("unknown attribute tag")
            if tag != TAG_NUMBER and raw_number != bytes(8):
                raise FormatError("attribute number set where the tag is not a number")
            if tag != TAG_STRING and text:
                raise FormatError("attribute string set where the tag is not a string")
            if tag == TAG_NUMBER:
                if not math.isfinite(number):
                    raise FormatError("attribute number is NaN or infinite")
                values.append(number)
            elif tag == TAG_STRING:
                try:
                    values.append(text.decode("utf-8"))
                except UnicodeDecodeError:
                    raise FormatError("attribute string is not UTF-8") from None
            else:
                values.append((ABSENT, None, False, True)[tag])
        columns[key] = values
    if pos != len(section):
        raise FormatError("attributes section has trailing bytes")
    return columns


def attribute_records(columns: dict[str, list], rows: int) -> list[dict]:
    """Columns back to one metadata dict per row (keys in stored order)."""
    return [
        {key: values[r] for key, values in columns.items() if values[r] is not ABSENT}
        for r in range(rows)
    ]


def read_shard(data: bytes, data_key: bytes, *, collection_id: bytes | None = None,
               shard_id: bytes | None = None, header_sha256: str | None = None):
    """Return (ids, vectors as lists of floats, payload dicts, attribute columns) of
    one shard; the columns are as ``parse_attributes`` returns them."""
    h = parse(data, KIND_SHARD)
    if header_sha256 is not None and hashlib.sha256(h["header"]).hexdigest() != header_sha256:
        raise FormatError("not the shard the manifest names")
    if collection_id is not None and h["collection_id"] != collection_id:
        raise FormatError("shard of another collection")
    if shard_id is not None and h["object_id"] != shard_id:
        raise FormatError("shard in the wrong slot")
    rows, dim = h["row_count"], h["dimension"]
    if h["dtype"] != 1 or [s["id"] for s in h["sections"]] != SHARD_SECTIONS:
        raise FormatError("unexpected shard layout")
    if h["sections"][0]["plain_len"] != 4 * rows * dim:
        raise FormatError("vectors section length disagrees with rows x dimension")
    key = segment_key(h, data_key)
    vec_raw, ids_raw, pay_raw, attr_raw = (decrypt_section(h, key, s) for s in h["sections"])
    flat = struct.unpack(f"<{rows * dim}f", vec_raw)
    vectors = [list(flat[r * dim : (r + 1) * dim]) for r in range(rows)]
    try:
        ids = [v.decode("utf-8") for v in split_strings(ids_raw, rows)]
        payloads = [json.loads(v.decode("utf-8")) for v in split_strings(pay_raw, rows)]
    except ValueError:
        raise FormatError("ids or payloads are not valid UTF-8 / JSON") from None
    attributes = parse_attributes(attr_raw, rows)
    return ids, vectors, payloads, attributes


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
