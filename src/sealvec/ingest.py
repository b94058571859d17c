"""Batch ingestion of records into a collection: resumable, one commit per batch.

Used by ``sealvec ingest`` and available to applications. Each batch is embedded
(unless vectors are given) and committed on its own, so a failure after some
batches keeps every committed batch, and running the same ingest again skips what
is already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sealvec.collection import Collection
from sealvec.embedders import Embedder
from sealvec.errors import EmbedderError, ValidationError

logger = logging.getLogger(__name__)

ON_EXISTING = ("skip", "replace", "error")


@dataclass
class IngestReport:
    added: int = 0
    skipped: int = 0
    batches: int = 0


def record_metadata(record: dict[str, Any], exclude: Sequence[str]) -> dict[str, Any]:
    """The record's scalar fields other than ``exclude``, as metadata."""
    return {
        key: value
        for key, value in record.items()
        if key not in exclude and isinstance(value, (str, int, float, bool, type(None)))
    }


def ingest_records(
    collection: Collection,
    records: Sequence[dict[str, Any]],
    *,
    embedder: Embedder | None = None,
    vectors: np.ndarray | None = None,
    id_field: str = "id",
    text_field: str = "text",
    batch_size: int = 512,
    on_existing: str = "skip",
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Add ``records`` (dicts with an id and a text) to ``collection``.

    Vectors come from ``vectors`` (row i for record i) or from ``embedder``; other
    scalar fields become metadata. ``on_existing``: "skip" ids already stored (makes
    re-runs resume), "replace" them (upsert), or "error".
    """
    if (embedder is None) == (vectors is None):
        raise ValidationError("give exactly one of embedder= or vectors=")
    if on_existing not in ON_EXISTING:
        raise ValidationError(f"on_existing must be one of {', '.join(ON_EXISTING)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationError(f"batch_size must be a positive int, got {batch_size!r}")
    if vectors is not None and (vectors.ndim != 2 or len(vectors) != len(records)):
        raise ValidationError(
            f"vectors has shape {vectors.shape}; expected ({len(records)}, dimension)"
        )
    dimension = embedder.dimension if embedder is not None else vectors.shape[1]
    if dimension != collection.dimension:
        raise ValidationError(
            f"the collection has dimension {collection.dimension}, the input {dimension}"
        )

    report = IngestReport()
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        ids = [record[id_field] for record in batch]
        if on_existing == "skip":
            present = {r.id for r in collection.get(ids, include=()) if r is not None}
            keep = [i for i, record_id in enumerate(ids) if record_id not in present]
            report.skipped += len(ids) - len(keep)
        else:
            keep = list(range(len(ids)))
        if keep:
            chosen = [batch[i] for i in keep]
            texts = [record[text_field] for record in chosen]
            if embedder is not None:
                batch_vectors = embedder.embed(texts)
                if batch_vectors.shape != (len(texts), collection.dimension):
                    raise EmbedderError(
                        f"the embedder returned shape {batch_vectors.shape} for "
                        f"{len(texts)} texts of dimension {collection.dimension}"
                    )
            else:
                batch_vectors = np.ascontiguousarray(vectors[start + np.asarray(keep)])
            metadata = [record_metadata(r, (id_field, text_field)) for r in chosen]
            write = collection.upsert if on_existing == "replace" else collection.add
            report.added += write([ids[i] for i in keep], batch_vectors, texts, metadata)
            report.batches += 1
        if on_progress is not None:
            on_progress(min(start + batch_size, len(records)), len(records))
    logger.info("ingested %d records, skipped %d", report.added, report.skipped)
    return report
