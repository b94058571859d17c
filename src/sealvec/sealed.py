"""The sealed object format (v1), shared by shards and manifests.

A sealed object is an authenticated plaintext header followed by sections, each cut
into AES-256-GCM segments. The byte layout is documented in ``docs/format.md``;
this module is the reference implementation.

Keys: the object's root key (a shard's DEK, or the collection key for a manifest)
never encrypts anything itself. HKDF-SHA256 with the header's random salt derives a
segment-encryption key and a commitment key from it. The commitment (HMAC-SHA256
of the header) is checked before any segment is decrypted, so a wrong key is told
apart from tampered data without trying to decrypt, and a ciphertext cannot be
opened under two different keys.

Nonces follow the STREAM construction: nonce prefix (6) || section id (1) ||
segment index (4, big-endian) || last-segment flag (1). The associated data of
every segment is SHA-256(header) || section id, so segments cannot be reordered,
dropped, truncated, or moved between sections or objects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealvec.errors import IntegrityError

MAGIC = b"SEALVEC\x00"
FORMAT_VERSION = 1
SUITE_AES256GCM_HKDF_SHA256 = 1

KIND_SHARD = 1
KIND_MANIFEST = 2
KIND_INDEX = 3

SECTION_VECTORS = 1
SECTION_IDS = 2
SECTION_PAYLOADS = 3
SECTION_MANIFEST_BODY = 4
SECTION_ATTRIBUTES = 5
SECTION_INDEX = 6

KNOWN_SECTIONS = (
    SECTION_VECTORS,
    SECTION_IDS,
    SECTION_PAYLOADS,
    SECTION_MANIFEST_BODY,
    SECTION_ATTRIBUTES,
    SECTION_INDEX,
)

DTYPE_NONE = 0
DTYPE_FLOAT32 = 1

TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 6
COMMITMENT_SIZE = 32
CHECK_SIZE = 16
DEFAULT_SEGMENT_SIZE = 1 << 20

# Bounds for every length read from storage; checked before any allocation.
MAX_HEADER_SIZE = 1 << 16
MAX_SECTIONS = 8
MAX_SEGMENT_SIZE = 1 << 26
MAX_DIMENSION = 1 << 16
MAX_ROWS = 1 << 40
MAX_SEGMENTS = 1 << 31

# magic, kind, version, suite, header_len, collection_id, object_id, generation,
# dimension, dtype, reserved(3), row_count, salt, nonce_prefix, reserved(1),
# section_count, key_id_len, wrapped_key_len, reserved(2)
_FIXED = struct.Struct("<8sBBHI16s16sQIB3xQ32s6sxBHH2x")
# section id, reserved(3), segment_size, plain_len, segment_count, reserved(4), offset
_SECTION = struct.Struct("<B3xIQI4xQ")
# (offset, size) of the reserved bytes in the fixed part, which must be zero.
_RESERVED_FIXED = ((61, 3), (110, 1), (116, 2))
_RESERVED_SECTION = ((1, 3), (20, 4))

_SEGMENT_KEY_INFO = b"sealvec v1 segment key"
_COMMIT_KEY_INFO = b"sealvec v1 key commitment"


@dataclass(frozen=True)
class SectionEntry:
    section_id: int
    segment_size: int
    plain_len: int
    segment_count: int
    offset: int

    @property
    def sealed_len(self) -> int:
        return self.plain_len + TAG_SIZE * self.segment_count

    def segment_bounds(self, index: int) -> tuple[int, int]:
        """Plaintext (start, length) of segment ``index`` within the section."""
        start = index * self.segment_size
        return start, min(self.segment_size, self.plain_len - start)


@dataclass(frozen=True)
class Header:
    kind: int
    collection_id: bytes
    object_id: bytes
    generation: int
    dimension: int
    dtype: int
    row_count: int
    salt: bytes
    nonce_prefix: bytes
    sections: tuple[SectionEntry, ...]
    key_id: str
    wrapped_key: bytes
    raw: bytes  # the header's bytes as stored, commitment and check included

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole stored header; bound into every segment's AAD."""
        return hashlib.sha256(self.raw).digest()

    @property
    def total_size(self) -> int:
        return len(self.raw) + sum(s.sealed_len for s in self.sections)

    def section(self, section_id: int) -> SectionEntry:
        for entry in self.sections:
            if entry.section_id == section_id:
                return entry
        raise IntegrityError(f"sealed object has no section {section_id}")


def derive_keys(root_key: bytes | memoryview, salt: bytes) -> tuple[bytes, bytes]:
    """Derive (segment key, commitment key) from an object's root key and salt."""
    keys = []
    for info in (_SEGMENT_KEY_INFO, _COMMIT_KEY_INFO):
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info)
        keys.append(hkdf.derive(bytes(root_key)))
    return keys[0], keys[1]


def segment_count(plain_len: int, segment_size: int) -> int:
    """Segments for a section; an empty section still has one (empty) segment."""
    return max(1, -(-plain_len // segment_size))


def nonce_for(prefix: bytes, section_id: int, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">BIB", section_id, index, 1 if last else 0)


def associated_data(header_digest: bytes, section_id: int) -> bytes:
    return header_digest + bytes([section_id])


# --------------------------------------------------------------------------- writing


class SealedWriter:
    """Builds one sealed object; the caller streams the returned chunks to storage.

    Usage: construct with the sections' plaintext lengths, then call
    ``header_bytes()`` once and ``seal_section(id, data)`` for each section in the
    order given. The output is the concatenation of everything returned.
    """

    def __init__(
        self,
        *,
        kind: int,
        root_key: bytes | memoryview,
        collection_id: bytes,
        object_id: bytes,
        sections: Sequence[tuple[int, int, int]],
        generation: int = 0,
        dimension: int = 0,
        dtype: int = DTYPE_NONE,
        row_count: int = 0,
        key_id: str = "",
        wrapped_key: bytes = b"",
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        """``sections`` lists (section id, plaintext length, segment size)."""
        self._salt = salt if salt is not None else os.urandom(SALT_SIZE)
        self._prefix = (
            nonce_prefix if nonce_prefix is not None else os.urandom(NONCE_PREFIX_SIZE)
        )
        self._segment_key, commit_key = derive_keys(root_key, self._salt)
        key_id_bytes = key_id.encode("utf-8")

        # Lay the sections out back to back after the header.
        header_len = (
            _FIXED.size
            + _SECTION.size * len(sections)
            + len(key_id_bytes)
            + len(wrapped_key)
            + COMMITMENT_SIZE
            + CHECK_SIZE
        )
        entries = []
        offset = header_len
        for section_id, plain_len, seg_size in sections:
            entry = SectionEntry(
                section_id, seg_size, plain_len, segment_count(plain_len, seg_size), offset
            )
            entries.append(entry)
            offset += entry.sealed_len
        self._sections = {e.section_id: e for e in entries}

        body = _FIXED.pack(
            MAGIC,
            kind,
            FORMAT_VERSION,
            SUITE_AES256GCM_HKDF_SHA256,
            header_len,
            collection_id,
            object_id,
            generation,
            dimension,
            dtype,
            row_count,
            self._salt,
            self._prefix,
            len(entries),
            len(key_id_bytes),
            len(wrapped_key),
        )
        body += b"".join(
            _SECTION.pack(e.section_id, e.segment_size, e.plain_len, e.segment_count, e.offset)
            for e in entries
        )
        body += key_id_bytes + wrapped_key
        body += hmac.new(commit_key, body, hashlib.sha256).digest()
        body += hashlib.sha256(body).digest()[:CHECK_SIZE]
        self._header = body
        self._digest = hashlib.sha256(body).digest()
        self.total_size = offset

    def header_bytes(self) -> bytes:
        return self._header

    def seal_section(self, section_id: int, data: bytes | memoryview) -> Iterator[bytes]:
        """Yield the sealed segments (ciphertext || tag) of one section's plaintext."""
        entry = self._sections[section_id]
        view = memoryview(data).cast("B")
        if view.nbytes != entry.plain_len:
            raise ValueError(
                f"section {section_id} was declared {entry.plain_len} bytes, "
                f"got {view.nbytes}"
            )
        for index in range(entry.segment_count):
            start, length = entry.segment_bounds(index)
            sealed = bytearray(length + TAG_SIZE)
            self.seal_segment_into(section_id, index, view[start : start + length], sealed)
            yield bytes(sealed)

    def section_entry(self, section_id: int) -> SectionEntry:
        """The layout of a declared section: segment size and count, offset."""
        return self._sections[section_id]

    def seal_segment_into(
        self, section_id: int, index: int, plain: bytes | memoryview, out: bytearray | memoryview
    ) -> int:
        """Seal segment ``index`` of a section: write its ciphertext, then its tag, into
        ``out`` (at least TAG_SIZE bytes longer than ``plain``, which must be exactly
        the segment's plaintext). Returns the bytes written. Segments may be sealed in
        any order and from several threads at once."""
        entry = self._sections[section_id]
        if not 0 <= index < entry.segment_count:
            raise ValueError(f"section {section_id} has no segment {index}")
        _, length = entry.segment_bounds(index)
        if memoryview(plain).nbytes != length or memoryview(out).nbytes < length + TAG_SIZE:
            raise ValueError(f"segment {index} of section {section_id} is {length} bytes")
        last = index == entry.segment_count - 1
        nonce = nonce_for(self._prefix, section_id, index, last)
        encryptor = Cipher(algorithms.AES(self._segment_key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(associated_data(self._digest, section_id))
        with memoryview(out)[: length + TAG_SIZE] as target:
            if length:
                encryptor.update_into(plain, target)  # needs 15 bytes of room past length
            encryptor.finalize()
            target[length:] = encryptor.tag
        return length + TAG_SIZE


# --------------------------------------------------------------------------- reading


def parse_header(prefix: bytes, *, expected_kind: int) -> Header:
    """Parse and bounds-check a header from the first bytes of an object.

    ``prefix`` must hold at least the whole header (read ``MAX_HEADER_SIZE`` bytes or
    the whole object if smaller). Checks the header checksum but not the key
    commitment (that needs the root key: see ``verify_commitment``).
    """
    if len(prefix) < _FIXED.size:
        raise IntegrityError("sealed object is truncated (shorter than its header)")
    (
        magic,
        kind,
        version,
        suite,
        header_len,
        collection_id,
        object_id,
        generation,
        dimension,
        dtype,
        row_count,
        salt,
        nonce_prefix,
        section_count,
        key_id_len,
        wrapped_key_len,
    ) = _FIXED.unpack_from(prefix, 0)
    if magic != MAGIC:
        raise IntegrityError("not a sealvec object (bad magic)")
    if version != FORMAT_VERSION or suite != SUITE_AES256GCM_HKDF_SHA256:
        raise IntegrityError(f"unsupported sealed format version {version} suite {suite}")
    expected_len = (
        _FIXED.size
        + _SECTION.size * section_count
        + key_id_len
        + wrapped_key_len
        + COMMITMENT_SIZE
        + CHECK_SIZE
    )
    if not (0 < section_count <= MAX_SECTIONS) or header_len != expected_len:
        raise IntegrityError("sealed object header has inconsistent lengths")
    if header_len > MAX_HEADER_SIZE or len(prefix) < header_len:
        raise IntegrityError("sealed object is truncated inside its header")
    raw = bytes(prefix[:header_len])
    if hashlib.sha256(raw[:-CHECK_SIZE]).digest()[:CHECK_SIZE] != raw[-CHECK_SIZE:]:
        raise IntegrityError("sealed object header checksum does not match")
    if kind != expected_kind:
        raise IntegrityError(f"sealed object is of kind {kind}, expected {expected_kind}")
    if dimension > MAX_DIMENSION or row_count > MAX_ROWS or dtype not in (DTYPE_NONE, DTYPE_FLOAT32):
        raise IntegrityError("sealed object header has out-of-range dimension, rows or dtype")
    if any(raw[offset : offset + size] != bytes(size) for offset, size in _RESERVED_FIXED):
        raise IntegrityError("sealed object header has non-zero reserved bytes")

    # Sections must be unique, well formed and laid out back to back.
    sections = []
    offset = header_len
    pos = _FIXED.size
    for _ in range(section_count):
        section_id, seg_size, plain_len, seg_count, sec_offset = _SECTION.unpack_from(raw, pos)
        pos += _SECTION.size
        if not (0 < seg_size <= MAX_SEGMENT_SIZE) or seg_count > MAX_SEGMENTS:
            raise IntegrityError("sealed object section has an out-of-range segment size")
        if seg_count != segment_count(plain_len, seg_size) or sec_offset != offset:
            raise IntegrityError("sealed object section table is inconsistent")
        if any(s.section_id == section_id for s in sections):
            raise IntegrityError("sealed object repeats a section")
        entry_start = pos - _SECTION.size
        if section_id not in KNOWN_SECTIONS or any(
            raw[entry_start + offset : entry_start + offset + size] != bytes(size)
            for offset, size in _RESERVED_SECTION
        ):
            raise IntegrityError("sealed object has an unknown section or non-zero reserved bytes")
        entry = SectionEntry(section_id, seg_size, plain_len, seg_count, sec_offset)
        sections.append(entry)
        offset += entry.sealed_len
    key_id_raw = raw[pos : pos + key_id_len]
    pos += key_id_len
    wrapped_key = raw[pos : pos + wrapped_key_len]
    try:
        key_id = key_id_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError("sealed object key id is not UTF-8") from None
    return Header(
        kind=kind,
        collection_id=collection_id,
        object_id=object_id,
        generation=generation,
        dimension=dimension,
        dtype=dtype,
        row_count=row_count,
        salt=salt,
        nonce_prefix=nonce_prefix,
        sections=tuple(sections),
        key_id=key_id,
        wrapped_key=wrapped_key,
        raw=raw,
    )


def verify_commitment(header: Header, root_key: bytes | memoryview) -> bytes:
    """Check the key commitment; return the segment key on success."""
    segment_key, commit_key = derive_keys(root_key, header.salt)
    body = header.raw[: -(COMMITMENT_SIZE + CHECK_SIZE)]
    stored = header.raw[-(COMMITMENT_SIZE + CHECK_SIZE) : -CHECK_SIZE]
    if not hmac.compare_digest(hmac.new(commit_key, body, hashlib.sha256).digest(), stored):
        raise IntegrityError("sealed object key commitment does not match its key")
    return segment_key


class SectionDecryptor:
    """Decrypts one section's segments straight into a caller's writable buffer."""

    def __init__(self, header: Header, segment_key: bytes, section_id: int) -> None:
        self._header = header
        self._key = segment_key
        self._entry = header.section(section_id)
        self._aad = associated_data(header.digest, section_id)

    @property
    def entry(self) -> SectionEntry:
        return self._entry

    def decrypt_segment_into(self, index: int, sealed: memoryview, out: memoryview) -> None:
        """Decrypt segment ``index`` (ciphertext || tag) into ``out``.

        ``out`` must be exactly the segment's plaintext length. On a failed tag the
        plaintext already written is zeroed before IntegrityError is raised.
        """
        entry = self._entry
        _, length = entry.segment_bounds(index)
        if len(sealed) != length + TAG_SIZE or len(out) != length:
            raise IntegrityError("sealed segment has the wrong length")
        last = index == entry.segment_count - 1
        nonce = nonce_for(self._header.nonce_prefix, entry.section_id, index, last)
        decryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).decryptor()
        decryptor.authenticate_additional_data(self._aad)
        try:
            written = decryptor.update_into(sealed[:length], out) if length else 0
            decryptor.finalize_with_tag(bytes(sealed[length:]))
        except InvalidTag:
            zero_fill(out)
            raise IntegrityError(
                f"segment {index} of section {entry.section_id} failed authentication"
            ) from None
        if written != length:
            zero_fill(out)
            raise IntegrityError("sealed segment decrypted to the wrong length")


def zero_fill(view: memoryview) -> None:
    """Overwrite a writable buffer with zeros in place."""
    if len(view):
        view[:] = bytes(len(view))


def read_exact(stream: BinaryIO, out: memoryview) -> None:
    """Fill ``out`` from ``stream`` or raise IntegrityError on a short read."""
    filled = 0
    while filled < len(out):
        got = stream.readinto(out[filled:])
        if not got:
            raise IntegrityError("sealed object is truncated")
        filled += got


def decrypt_section_into(
    stream: BinaryIO,
    header: Header,
    segment_key: bytes,
    section_id: int,
    out: memoryview,
    scratch: bytearray | None = None,
) -> None:
    """Stream one section from ``stream`` (positioned at its offset) into ``out``.

    Only one segment of ciphertext is held at a time, in ``scratch``.
    """
    decryptor = SectionDecryptor(header, segment_key, section_id)
    entry = decryptor.entry
    if len(out) != entry.plain_len:
        raise ValueError("output buffer does not match the section's length")
    needed = min(entry.segment_size, entry.plain_len) + TAG_SIZE
    if scratch is None:
        scratch = bytearray(needed)
    elif len(scratch) < needed:
        scratch.extend(bytes(needed - len(scratch)))
    scratch_view = memoryview(scratch)
    try:
        for index in range(entry.segment_count):
            start, length = entry.segment_bounds(index)
            with scratch_view[: length + TAG_SIZE] as sealed:
                read_exact(stream, sealed)
                decryptor.decrypt_segment_into(index, sealed, out[start : start + length])
    except BaseException:
        zero_fill(out)
        raise
    finally:
        scratch_view.release()
