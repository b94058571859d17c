"""Checks on caller input. Each rule is applied one way everywhere:

- vectors must be a numpy array of dtype float32; other dtypes are rejected, never
  cast (convert with ``np.asarray(x, dtype=np.float32)`` yourself);
- shape ``(n, dimension)`` (``search`` also takes one query of shape
  ``(dimension,)``); any other shape or dimension is rejected;
- non-contiguous or non-native-byte-order arrays are copied, never rejected;
- NaN and infinity are rejected, naming the first bad row;
- under the cosine metric an all-zero vector has no direction and is rejected;
- ids are non-empty ``str`` of at most 1,024 UTF-8 bytes, compared exactly as given;
  a batch repeating an id is rejected whole;
- documents are ``str`` or None; metadata is a dict with string keys and JSON
  scalar values (str, int within +-2**53, finite float, bool, None), or None.

The caller's arrays are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealvec import _core
from sealvec.errors import ValidationError

MAX_ID_BYTES = 1024
MAX_EXACT_INT = 2**53  # metadata numbers are float64 in the attributes section


def check_vectors(
    vectors: Any, dimension: int, metric: str, *, name: str = "vectors", allow_1d: bool = False
) -> np.ndarray:
    """Return a C-contiguous float32 (n, dimension) array that may share memory."""
    if not isinstance(vectors, np.ndarray):
        raise ValidationError(
            f"{name} must be a numpy float32 array, got {type(vectors).__name__}"
        )
    if vectors.dtype.type is not np.float32:  # any byte order; copied below if foreign
        raise ValidationError(
            f"{name} must be float32, got {vectors.dtype}; "
            "convert with np.asarray(x, dtype=np.float32)"
        )
    if allow_1d and vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        expected = f"(n, {dimension})" + (f" or ({dimension},)" if allow_1d else "")
        raise ValidationError(f"{name} must have shape {expected}, got {vectors.shape}")
    if not vectors.flags.c_contiguous or not vectors.dtype.isnative:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    problem = vector_problem(vectors, metric, name=name)
    if problem is not None:
        raise ValidationError(problem)
    return vectors


def vector_problem(vectors: np.ndarray, metric: str, *, name: str = "vectors") -> str | None:
    """What is wrong with the values of C-contiguous float32 rows, or None.

    NaN and infinity are refused, and so are values of magnitude 2**54 (about 1.8e16)
    and more, with which scores could overflow float32. Under cosine a row needs a
    value of magnitude 2**-60 (about 8.7e-19) or more to have a direction. One native
    pass over the rows, without temporaries the size of the batch.
    """
    nonfinite_row, huge_row, weak_row = _core.scan_rows(vectors)
    if nonfinite_row >= 0:
        return f"{name} row {nonfinite_row} contains NaN or infinity"
    if huge_row >= 0:
        return (
            f"{name} row {huge_row} has a value of magnitude 2**54 (about 1.8e16) or more, "
            "with which scores would overflow float32"
        )
    if metric == "cosine" and weak_row >= 0:
        if not vectors[weak_row].any():
            return f"{name} row {weak_row} is all zeros, which has no direction under cosine"
        return (
            f"{name} row {weak_row} is too close to zero (every value below 2**-60 in "
            "magnitude) to have a direction under cosine"
        )
    return None


def check_ids(ids: Any, *, name: str = "ids") -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValidationError(f"{name} must be a list of str")
    checked = list(ids)
    # Fast paths for the common case, in C-level passes where the ids are ASCII (their
    # characters are their UTF-8 bytes); the slow loop below names the first bad id.
    if checked and set(map(type, checked)) == {str}:
        try:
            if "".join(checked).isascii():
                lengths = list(map(len, checked))
            else:
                lengths = [len(value.encode("utf-8")) for value in checked]
        except UnicodeEncodeError:
            lengths = None
        if lengths is not None and 0 < min(lengths) and max(lengths) <= MAX_ID_BYTES:
            return checked
    for position, value in enumerate(checked):
        if not isinstance(value, str):
            raise ValidationError(
                f"{name}[{position}] must be str, got {type(value).__name__}"
            )
        if not value:
            raise ValidationError(f"{name}[{position}] is empty")
        try:
            encoded_len = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError(f"{name}[{position}] is not valid Unicode") from None
        if encoded_len > MAX_ID_BYTES:
            raise ValidationError(
                f"{name}[{position}] is {encoded_len} bytes; ids are at most {MAX_ID_BYTES}"
            )
    return checked


def check_unique(ids: list[str], *, name: str = "ids") -> None:
    if len(set(ids)) == len(ids):
        return
    seen: set[str] = set()
    for position, value in enumerate(ids):
        if value in seen:
            raise ValidationError(
                f"{name} repeats an id at position {position}; the batch was rejected whole"
            )
        seen.add(value)


def check_documents(documents: Any, count: int) -> list[str | None]:
    if documents is None:
        return [None] * count
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise ValidationError("documents must be a list of str (or None)")
    documents = list(documents)
    if len(documents) != count:
        raise ValidationError(f"documents has {len(documents)} entries for {count} ids")
    for position, value in enumerate(documents):
        if value is not None and not isinstance(value, str):
            raise ValidationError(
                f"documents[{position}] must be str or None, got {type(value).__name__}"
            )
        if value is not None and not _is_unicode(value):
            raise ValidationError(f"documents[{position}] is not valid Unicode (lone surrogate)")
    return documents


_SCALARS = (str, int, float, bool, type(None))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_metadata(metadata: Any, count: int) -> list[dict[str, Any]]:
    """Validated copies of the caller's dicts, read-only from here on (without
    metadata, every row shares one empty dict)."""
    if metadata is None:
        return [{}] * count
    if isinstance(metadata, (str, bytes, dict)) or not isinstance(metadata, Sequence):
        raise ValidationError("metadata must be a list of dicts (or None)")
    metadata = list(metadata)
    if len(metadata) != count:
        raise ValidationError(f"metadata has {len(metadata)} entries for {count} ids")
    checked = []
    for position, value in enumerate(metadata):
        if value is None:
            checked.append({})
            continue
        if not isinstance(value, dict):
            raise ValidationError(f"metadata[{position}] must be a dict or None")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"metadata[{position}] has a non-str key")
            for text in (key, item):
                if isinstance(text, str) and not _is_unicode(text):
                    raise ValidationError(f"metadata[{position}] holds text that is not valid Unicode")
            if not isinstance(item, _SCALARS):
                raise ValidationError(
                    f"metadata[{position}][{key!r}] must be str, int, float, bool or None"
                )
            if isinstance(item, float) and not math.isfinite(item):
                raise ValidationError(f"metadata[{position}][{key!r}] is NaN or infinite")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_EXACT_INT:
                raise ValidationError(
                    f"metadata[{position}][{key!r}] is beyond +-2**53; store it as a str"
                )
        checked.append(dict(value))
    return checked


MAX_K = 2**40  # results per query; far beyond any collection's rows


def check_k(k: Any, *, name: str = "k") -> int:
    """A positive int (numpy ints too) up to MAX_K."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValidationError(f"{name} must be an int from 1 to 2**40, got {k!r}")
    return int(k)


INCLUDE_CHOICES = ("documents", "metadata", "vectors")


def check_include(include: Any) -> frozenset[str]:
    if include is None:
        return frozenset()
    if isinstance(include, str):
        include = [include]
    values = frozenset(include)
    unknown = values - set(INCLUDE_CHOICES)
    if unknown:
        raise ValidationError(
            f"include takes {', '.join(INCLUDE_CHOICES)}; got {', '.join(sorted(unknown))}"
        )
    return values
