"""Regenerate the sealed-format test vectors in this directory, deterministically.

    python tests/vectors/generate.py           # rewrite the files and shard-v1.json
    python tests/vectors/generate.py --check   # exit 1 if any stored file would change

Every random input of the format (keys, salts, nonce prefixes, object ids) is fixed
here, so the same bytes come out on every run. The files are laid out as a store
(``store/shards/<id>.svs``, ``store/manifest/<20-digit generation>``):

- shard A: 3 rows x dimension 4, default segment size (one segment per section);
- shard B: 5 rows x dimension 4, segment size 32, so every section spans several
  segments (vectors: 32+32+16 bytes, ids: exactly 2 full segments, payloads and
  attributes: many);
- manifest generation 7 naming both shards, its collection key wrapped (RFC 5649)
  under a fixed key-encryption key with id ``local:test-kek/1``.

Each shard has the four sections vectors (1), ids (2), payloads (3) and attributes
(5). The records' metadata exercises every attribute tag: strings (empty and
non-ASCII too), integers (up to +-2**53), floats, true, false, null, keys that only
some rows have, rows without metadata, and keys whose UTF-8 byte order is not a
case-insensitive order (shard B: "Tenant" < "flag" < ... < "tenant"; shard A: the
non-ASCII "ünit" after every ASCII key).

``shard-v1.json`` lists every input, each section's plaintext length and SHA-256,
and the SHA-256 of every file; the tests in ``tests/test_format_vectors.py`` check
the files against it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__" and importlib.util.find_spec("sealvec") is None:
    # Run as a script from a source checkout without sealvec installed.
    sys.path.insert(0, str(HERE.parent.parent / "src"))

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding  # noqa: E402

from sealvec.manifest import Manifest, ShardEntry  # noqa: E402
from sealvec.sealed import (  # noqa: E402
    DEFAULT_SEGMENT_SIZE,
    DTYPE_FLOAT32,
    KIND_MANIFEST,
    KIND_SHARD,
    SECTION_ATTRIBUTES,
    SECTION_IDS,
    SECTION_MANIFEST_BODY,
    SECTION_PAYLOADS,
    SECTION_VECTORS,
    SealedWriter,
)
from sealvec.attributes import encode_attributes  # noqa: E402
from sealvec.shard import encode_payload, encode_strings, vector_segment_size  # noqa: E402


def _h(label: str, n: int) -> bytes:
    """A fixed, opaque-looking byte string (first n bytes of SHA-256 of a label)."""
    return hashlib.sha256(f"sealvec test vector: {label}".encode()).digest()[:n]


COLLECTION_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
KEK_ID = "local:test-kek/1"
KEK = _h("key-encryption key", 32)
COLLECTION_KEY = _h("collection key", 32)

SHARDS = [
    {
        "name": "A",
        "shard_id": bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
        "data_key": _h("data key A", 32),
        "salt": _h("salt A", 32),
        "nonce_prefix": _h("nonce prefix A", 6),
        "segment_size": DEFAULT_SEGMENT_SIZE,
        "ids": ["alpha", "βeta", "gamma"],
        "vectors": [
            [0.5, -1.25, 3.0, 0.0],
            [1.0, 2.0, -0.75, 0.125],
            [-2.5, 0.25, 1.5, -0.0625],
        ],
        "payloads": [
            {
                "document": "The first document.",
                "metadata": {"lang": "en", "n": 1, "score": 0.5, "draft": False},
            },
            {
                "document": "Zweites Dokument — mit Umlauten: äöü ✓",
                "metadata": {"lang": "de", "n": -7, "score": 2.25, "draft": True, "ünit": "cm"},
            },
            {"document": None, "metadata": {}},
        ],
        "deleted": [],
    },
    {
        "name": "B",
        "shard_id": bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
        "data_key": _h("data key B", 32),
        "salt": _h("salt B", 32),
        "nonce_prefix": _h("nonce prefix B", 6),
        "segment_size": 32,
        # 5 + 2 + 4 + 3 + 2 = 16 id bytes: the ids section is 48 + 16 = 64 bytes,
        # exactly two 32-byte segments.
        "ids": ["delta", "ε", "zeta", "eta", "ω"],
        "vectors": [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [0.5, 0.5, -0.5, -0.5],
        ],
        "payloads": [
            {"document": "delta doc", "metadata": {"i": 0, "tenant": "t1"}},
            {"document": "", "metadata": {"i": 1, "flag": True, "note": ""}},
            {
                "document": "日本語のドキュメント",
                "metadata": {"i": 2**53, "tenant": "日本", "ratio": -0.125},
            },
            {
                "document": None,
                "metadata": {"i": -(2**53), "null": None, "flag": False, "Tenant": "upper"},
            },
            {"document": "last", "metadata": {}},
        ],
        "deleted": [1],
    },
]

MANIFEST = {
    "generation": 7,
    "object_id": bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"),
    "salt": _h("salt manifest", 32),
    "nonce_prefix": _h("nonce prefix manifest", 6),
    "dimension": 4,
    "metric": "cosine",
    "model": "test-model",
    "settings": {"retain_generations": 10},
}


SECTION_NAMES = {
    SECTION_VECTORS: "vectors",
    SECTION_IDS: "ids",
    SECTION_PAYLOADS: "payloads",
    SECTION_ATTRIBUTES: "attributes",
}


def shard_sections(shard: dict) -> tuple[bytes, bytes, bytes, bytes]:
    """Plaintext of the vectors, ids, payloads and attributes sections."""
    vectors = np.asarray(shard["vectors"], dtype="<f4").reshape(len(shard["ids"]), -1)
    ids = encode_strings([i.encode("utf-8") for i in shard["ids"]])
    payloads = encode_strings(
        [encode_payload(p["document"], p["metadata"]) for p in shard["payloads"]]
    )
    attributes = encode_attributes([p["metadata"] for p in shard["payloads"]])
    return vectors.tobytes(), ids, payloads, attributes


def section_table(shard: dict) -> list[tuple[int, bytes, int]]:
    """(section id, plaintext, segment size) of every section, in order."""
    vectors, ids, payloads, attributes = shard_sections(shard)
    seg = shard["segment_size"]
    return [
        (SECTION_VECTORS, vectors, vector_segment_size(len(shard["vectors"][0]), seg)),
        (SECTION_IDS, ids, seg),
        (SECTION_PAYLOADS, payloads, seg),
        (SECTION_ATTRIBUTES, attributes, seg),
    ]


def seal_shard(shard: dict) -> bytes:
    table = section_table(shard)
    rows = len(shard["ids"])
    dimension = len(shard["vectors"][0])
    writer = SealedWriter(
        kind=KIND_SHARD,
        root_key=shard["data_key"],
        collection_id=COLLECTION_ID,
        object_id=shard["shard_id"],
        dimension=dimension,
        dtype=DTYPE_FLOAT32,
        row_count=rows,
        sections=[(sid, len(plain), seg) for sid, plain, seg in table],
        salt=shard["salt"],
        nonce_prefix=shard["nonce_prefix"],
    )
    out = writer.header_bytes()
    for sid, plain, _ in table:
        out += b"".join(writer.seal_section(sid, plain))
    assert len(out) == writer.total_size
    return out


def header_len(sealed: bytes) -> int:
    return int.from_bytes(sealed[12:16], "little")


def manifest_body(sealed_shards: dict[str, bytes]) -> bytes:
    """The manifest JSON, as ``sealvec.manifest.Manifest.to_json`` writes it."""
    entries = []
    for shard in SHARDS:
        sealed = sealed_shards[shard["name"]]
        entries.append(
            ShardEntry(
                shard_id=shard["shard_id"],
                rows=len(shard["ids"]),
                wrapped_data_key=aes_key_wrap_with_padding(COLLECTION_KEY, shard["data_key"]),
                header_sha256=hashlib.sha256(sealed[: header_len(sealed)]).hexdigest(),
                size=len(sealed),
                deleted=tuple(shard["deleted"]),
            )
        )
    manifest = Manifest(
        collection_id=COLLECTION_ID,
        generation=MANIFEST["generation"],
        dimension=MANIFEST["dimension"],
        metric=MANIFEST["metric"],
        model=MANIFEST["model"],
        shards=tuple(entries),
        settings=MANIFEST["settings"],
    )
    return manifest.to_json()


def seal_manifest(body: bytes) -> bytes:
    writer = SealedWriter(
        kind=KIND_MANIFEST,
        root_key=COLLECTION_KEY,
        collection_id=COLLECTION_ID,
        object_id=MANIFEST["object_id"],
        generation=MANIFEST["generation"],
        dimension=MANIFEST["dimension"],
        key_id=KEK_ID,
        wrapped_key=aes_key_wrap_with_padding(KEK, COLLECTION_KEY),
        sections=[(SECTION_MANIFEST_BODY, len(body), DEFAULT_SEGMENT_SIZE)],
        salt=MANIFEST["salt"],
        nonce_prefix=MANIFEST["nonce_prefix"],
    )
    return writer.header_bytes() + b"".join(writer.seal_section(SECTION_MANIFEST_BODY, body))


def shard_path(shard: dict) -> str:
    return f"store/shards/{shard['shard_id'].hex()}.svs"


def manifest_path() -> str:
    return f"store/manifest/{MANIFEST['generation']:020d}"


def build() -> tuple[dict[str, bytes], dict]:
    """Return ({relative path: bytes}, the shard-v1.json document)."""
    files: dict[str, bytes] = {}
    sealed_shards = {}
    for shard in SHARDS:
        sealed_shards[shard["name"]] = sealed = seal_shard(shard)
        files[shard_path(shard)] = sealed
    body = manifest_body(sealed_shards)
    files[manifest_path()] = seal_manifest(body)

    doc = {
        "description": (
            "sealvec sealed object format v1 test vectors; see docs/format.md. "
            "Regenerate with: python tests/vectors/generate.py"
        ),
        "format_version": 1,
        "collection_id": COLLECTION_ID.hex(),
        "kek": {
            "key_id": KEK_ID,
            "key": KEK.hex(),
            "wrap": "RFC 5649 AES key wrap with padding",
        },
        "collection_key": COLLECTION_KEY.hex(),
        "wrapped_collection_key": aes_key_wrap_with_padding(KEK, COLLECTION_KEY).hex(),
        "shards": [
            {
                "name": s["name"],
                "file": shard_path(s),
                "shard_id": s["shard_id"].hex(),
                "data_key": s["data_key"].hex(),
                "wrapped_data_key": aes_key_wrap_with_padding(
                    COLLECTION_KEY, s["data_key"]
                ).hex(),
                "salt": s["salt"].hex(),
                "nonce_prefix": s["nonce_prefix"].hex(),
                "segment_size": s["segment_size"],
                "vector_segment_size": vector_segment_size(
                    len(s["vectors"][0]), s["segment_size"]
                ),
                "rows": len(s["ids"]),
                "dimension": len(s["vectors"][0]),
                "ids": s["ids"],
                "vectors": s["vectors"],
                "payloads": s["payloads"],
                "deleted": s["deleted"],
                "header_len": header_len(sealed_shards[s["name"]]),
                "size": len(sealed_shards[s["name"]]),
                "header_sha256": hashlib.sha256(
                    sealed_shards[s["name"]][: header_len(sealed_shards[s["name"]])]
                ).hexdigest(),
                "sections": [
                    {
                        "id": sid,
                        "name": SECTION_NAMES[sid],
                        "segment_size": seg,
                        "plain_len": len(plain),
                        "segment_count": max(1, -(-len(plain) // seg)),
                        "plaintext_sha256": hashlib.sha256(plain).hexdigest(),
                    }
                    for sid, plain, seg in section_table(s)
                ],
            }
            for s in SHARDS
        ],
        "manifest": {
            "file": manifest_path(),
            "name": manifest_path().removeprefix("store/"),
            "generation": MANIFEST["generation"],
            "object_id": MANIFEST["object_id"].hex(),
            "salt": MANIFEST["salt"].hex(),
            "nonce_prefix": MANIFEST["nonce_prefix"].hex(),
            "segment_size": DEFAULT_SEGMENT_SIZE,
            "dimension": MANIFEST["dimension"],
            "metric": MANIFEST["metric"],
            "model": MANIFEST["model"],
            "settings": MANIFEST["settings"],
            "body": json.loads(body),
            "size": len(files[manifest_path()]),
        },
        "sha256": {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())},
    }
    return files, doc


def main(argv: list[str]) -> int:
    files, doc = build()
    rendered = {path: data for path, data in files.items()}
    rendered["shard-v1.json"] = (
        json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    ).encode("utf-8")
    if "--check" in argv:
        stale = [p for p, d in rendered.items() if not (HERE / p).is_file() or (HERE / p).read_bytes() != d]
        for path in stale:
            print(f"stale: {path}")
        return 1 if stale else 0
    for path, data in rendered.items():
        target = HERE / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        print(f"wrote {target.relative_to(HERE)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
