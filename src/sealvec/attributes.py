"""Metadata attributes: a columnar shard section that filters read in place.

Each record's metadata (a dict of str keys to str, int, float, bool or None) is also
stored, column by column, in a shard's attributes section, so that ``where``
filters run in the native core over locked memory without making Python objects of
the values. Layout (little-endian, every part starting on an 8-byte boundary):

    u64 key_count
    key_count times, keys in ascending UTF-8 byte order:
        u64 key_len, key bytes (UTF-8), zero padding to 8
        u8  tag[rows], zero padding to 8      0 absent, 1 null, 2 false, 3 true,
                                               4 number, 5 string
        f64 number[rows]                       the value where tag is 4, else 0
        u64 string_offset[rows + 1]            into the string bytes that follow
        string bytes, zero padding to 8        the UTF-8 value where tag is 5

Numbers are float64: integers must lie within +-2**53 to be stored exactly, and
``validation.check_metadata`` refuses others. A bool is not a number (``True`` does
not match 1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealvec import _core
from sealvec.errors import IntegrityError, ValidationError

TAG_ABSENT, TAG_NULL, TAG_FALSE, TAG_TRUE, TAG_NUMBER, TAG_STRING = range(6)
MAX_KEYS = 4096

_U64 = struct.Struct("<Q")


def _pad(length: int) -> int:
    return -length % 8


def _tag_and_value(value: Any) -> tuple[int, float, bytes]:
    if value is None:
        return TAG_NULL, 0.0, b""
    if value is True:
        return TAG_TRUE, 0.0, b""
    if value is False:
        return TAG_FALSE, 0.0, b""
    if isinstance(value, (int, float)):
        return TAG_NUMBER, float(value), b""
    return TAG_STRING, 0.0, value.encode("utf-8")


def encode_attributes(metadata: Sequence[dict[str, Any]]) -> bytes:
    """The attributes section for validated metadata, one dict per row."""
    rows = len(metadata)
    if not any(metadata):
        return _U64.pack(0)  # no keys at all
    keys = sorted({key for record in metadata for key in record}, key=lambda k: k.encode())
    parts = [_U64.pack(len(keys))]
    for key in keys:
        key_bytes = key.encode("utf-8")
        tags = np.zeros(rows, dtype=np.uint8)
        numbers = np.zeros(rows, dtype="<f8")
        strings: list[bytes] = []
        for row, record in enumerate(metadata):
            if key in record:
                tags[row], numbers[row], text = _tag_and_value(record[key])
            else:
                text = b""
            strings.append(text)
        offsets = np.zeros(rows + 1, dtype="<u8")
        np.cumsum([len(s) for s in strings], out=offsets[1:])
        data = b"".join(strings)
        parts += [
            _U64.pack(len(key_bytes)),
            key_bytes,
            bytes(_pad(len(key_bytes))),
            tags.tobytes(),
            bytes(_pad(rows)),
            numbers.tobytes(),
            offsets.tobytes(),
            data,
            bytes(_pad(len(data))),
        ]
    return b"".join(parts)


class Column:
    """Views of one key's column inside a decrypted attributes section."""

    def __init__(self, tags: np.ndarray, numbers: np.ndarray, offsets: np.ndarray, data):
        self.tags = tags
        self.numbers = numbers
        self.offsets = offsets
        self.data = data


def parse_attributes(view: memoryview, rows: int) -> dict[str, Column]:
    """Read-only views of every column; bounds-checked, no copies of values."""
    columns: dict[str, Column] = {}
    size = len(view)
    position = 0

    def take(length: int) -> int:
        nonlocal position
        start = position
        if length < 0 or start + length > size:
            raise IntegrityError("shard attributes section is truncated or malformed")
        position += length
        return start

    (key_count,) = _U64.unpack_from(view, take(8))
    if key_count > MAX_KEYS:
        raise IntegrityError("shard attributes section has too many keys")
    for _ in range(key_count):
        (key_len,) = _U64.unpack_from(view, take(8))
        start = take(key_len)
        try:
            key = bytes(view[start : start + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError("shard attribute name is not UTF-8") from None
        take(_pad(key_len))
        tags = np.frombuffer(view, dtype=np.uint8, count=rows, offset=take(rows))
        take(_pad(rows))
        numbers = np.frombuffer(view, dtype="<f8", count=rows, offset=take(8 * rows))
        offsets = np.frombuffer(view, dtype="<u8", count=rows + 1, offset=take(8 * (rows + 1)))
        data_len = int(offsets[-1])
        if offsets[0] != 0 or np.any(np.diff(offsets.astype(np.int64)) < 0):
            raise IntegrityError("shard attribute string offsets are inconsistent")
        data_start = take(data_len)
        take(_pad(data_len))
        if np.any(tags > TAG_STRING) or key in columns:
            raise IntegrityError("shard attributes section is malformed")
        columns[key] = Column(tags, numbers, offsets, view[data_start : data_start + data_len])
    if position != size:
        raise IntegrityError("shard attributes section has trailing bytes")
    return columns


def gather_attributes(
    sources: Sequence[tuple[dict[str, Column], np.ndarray]], memory_lock: str
) -> _core.SecureBuffer:
    """A new attributes section from selected rows of parsed sections, written
    straight into locked memory."""
    rows = int(sum(len(selected) for _, selected in sources))
    keys = sorted({k for columns, _ in sources for k in columns}, key=lambda k: k.encode())

    # Sizes first, so the output can be one SecureBuffer.
    plan = []
    total = 8
    for key in keys:
        lengths = []
        for columns, selected in sources:
            column = columns.get(key)
            if column is None:
                lengths.append(np.zeros(len(selected), dtype=np.uint64))
            else:
                lengths.append(column.offsets[selected + 1] - column.offsets[selected])
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.uint64)
        data_len = int(lengths_all.sum())
        key_len = len(key.encode("utf-8"))
        plan.append((key, lengths_all, data_len))
        total += 8 + key_len + _pad(key_len) + rows + _pad(rows) + 8 * rows
        total += 8 * (rows + 1) + data_len + _pad(data_len)

    buffer = _core.SecureBuffer(total, memory_lock)
    try:
        with memoryview(buffer) as out:
            position = 0

            def put(data) -> None:
                nonlocal position
                length = len(memoryview(data).cast("B"))
                out[position : position + length] = memoryview(data).cast("B")
                position += length

            put(_U64.pack(len(keys)))
            for key, lengths_all, data_len in plan:
                key_bytes = key.encode("utf-8")
                put(_U64.pack(len(key_bytes)))
                put(key_bytes)
                position += _pad(len(key_bytes))
                for columns, selected in sources:
                    column = columns.get(key)
                    if column is not None:
                        put(np.ascontiguousarray(column.tags[selected]))
                    else:
                        position += len(selected)
                position += _pad(rows)
                for columns, selected in sources:
                    column = columns.get(key)
                    if column is not None:
                        put(np.ascontiguousarray(column.numbers[selected]))
                    else:
                        position += 8 * len(selected)
                offsets = np.zeros(rows + 1, dtype="<u8")
                np.cumsum(lengths_all, out=offsets[1:])
                put(offsets)
                for columns, selected in sources:
                    column = columns.get(key)
                    if column is None:
                        continue
                    starts = column.offsets[selected].tolist()
                    ends = column.offsets[selected + 1].tolist()
                    for start, end in zip(starts, ends):
                        put(column.data[start:end])
                position += _pad(data_len)
        buffer.seal()
    except BaseException:
        buffer.release()
        raise
    return buffer


# ------------------------------------------------------------------ filters

_COMPARISONS = {"$eq": "eq", "$ne": "ne", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def _check_value(key: str, value: Any, *, ordered: bool) -> Any:
    if ordered:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValidationError(f"where[{key!r}]: ranges compare numbers or strings only")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise ValidationError(f"where[{key!r}]: values must be str, int, float, bool or None")
    if isinstance(value, float) and not np.isfinite(value):
        raise ValidationError(f"where[{key!r}]: NaN and infinity cannot be compared")
    return value


def compile_where(where: dict[str, Any]) -> list[tuple]:
    """Turn a filter into a postfix program for the native evaluator.

    Grammar: ``{key: value}`` (equality), ``{key: {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|
    "$lte": value}}``, ``{key: {"$in"|"$nin": [values]}}``, ``{"$and": [filters]}``,
    ``{"$or": [filters]}``; several entries in one dict are joined by AND. A record
    without the key matches only ``$ne`` and ``$nin``.
    """
    program: list[tuple] = []
    _compile(where, program)
    return program


def _compile(where: Any, program: list[tuple]) -> None:
    if not isinstance(where, dict) or not where:
        raise ValidationError("where must be a non-empty dict")
    for key, condition in where.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise ValidationError(f"{key} takes a non-empty list of filters")
            for part in condition:
                _compile(part, program)
            program.append((key[1:], len(condition)))
        elif key.startswith("$"):
            raise ValidationError(f"unknown filter operator {key!r}")
        elif isinstance(condition, dict):
            if not condition:
                raise ValidationError(f"where[{key!r}] is an empty condition")
            for operator, value in condition.items():
                if operator in ("$in", "$nin"):
                    if not isinstance(value, (list, tuple)):
                        raise ValidationError(f"where[{key!r}][{operator!r}] takes a list")
                    values = [_check_value(key, v, ordered=False) for v in value]
                    program.append(("in", key, values, operator == "$nin"))
                elif operator in _COMPARISONS:
                    ordered = operator not in ("$eq", "$ne")
                    program.append(
                        ("cmp", key, _COMPARISONS[operator], _check_value(key, value, ordered=ordered))
                    )
                else:
                    raise ValidationError(f"unknown filter operator {operator!r} for {key!r}")
            if len(condition) > 1:
                program.append(("and", len(condition)))
        else:
            program.append(("cmp", key, "eq", _check_value(key, condition, ordered=False)))
    if len(where) > 1:
        program.append(("and", len(where)))
