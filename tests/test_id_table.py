"""IdTable: ids stay in the caller's buffers; lookup, ranks, validation, close."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealvec import _core


def encode_shard(ids: list[str]) -> tuple[bytes, bytes]:
    encoded = [i.encode("utf-8") for i in ids]
    offsets = np.zeros(len(encoded) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    return offsets.tobytes(), b"".join(encoded)


def make_table(shards: list[list[str]]) -> _core.IdTable:
    pairs = [encode_shard(ids) for ids in shards]
    return _core.IdTable([p[0] for p in pairs], [p[1] for p in pairs])


SHARDS = [["alpha", "βeta", "gamma", ""], ["βeta", "δ🙂", "alpha"], [], ["zeta", "alpha"]]
ALL_IDS = [i for shard in SHARDS for i in shard]


def test_size_and_id_at_unicode():
    table = make_table(SHARDS)
    assert table.size == len(ALL_IDS) == 9
    assert [table.id_at(r) for r in range(table.size)] == ALL_IDS
    assert table.ids_at(np.array([5, 0, 3], np.int64)) == ["δ🙂", "alpha", ""]
    for bad in (-1, 9):
        with pytest.raises(IndexError):
            table.id_at(bad)
    with pytest.raises(IndexError):
        table.ids_at(np.array([0, 9], np.int64))


def test_lookup_newest_live_row_across_shards():
    table = make_table(SHARDS)
    found = table.lookup(["alpha", "βeta", "δ🙂", "", "missing", "zeta"])
    assert found.dtype == np.int64
    assert found.tolist() == [8, 4, 5, 3, -1, 7]
    mask = np.ones(9, np.uint8)
    mask[[8, 4]] = 0  # newest copies deleted → older copies become visible
    assert table.lookup(["alpha", "βeta"], mask).tolist() == [6, 1]
    mask[[6, 1]] = 0
    assert table.lookup(["alpha", "βeta"], mask).tolist() == [0, -1]
    mask[0] = 0
    assert table.lookup(["alpha", "βeta"], mask).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="mask"):
        table.lookup(["alpha"], np.ones(3, np.uint8))
    with pytest.raises(ValueError, match="str"):
        table.lookup([b"alpha"])


def test_ranks_match_python_sort_by_utf8_bytes():
    table = make_table(SHARDS)
    order = sorted(range(len(ALL_IDS)), key=lambda r: (ALL_IDS[r].encode(), r))
    expected = np.empty(len(ALL_IDS), np.int64)
    expected[order] = np.arange(len(ALL_IDS))
    np.testing.assert_array_equal(table.ranks(), expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(max_size=6), max_size=8), max_size=4))
def test_ranks_and_lookup_property(shards):
    table = make_table(shards)
    ids = [i for shard in shards for i in shard]
    order = sorted(range(len(ids)), key=lambda r: (ids[r].encode("utf-8", "surrogatepass"), r))
    expected = np.empty(len(ids), np.int64)
    expected[order] = np.arange(len(ids))
    np.testing.assert_array_equal(table.ranks(), expected)
    newest = {i: r for r, i in enumerate(ids)}
    queries = sorted(set(ids))
    assert table.lookup(queries).tolist() == [newest[i] for i in queries]


def test_invalid_offsets_rejected():
    good_offsets, data = encode_shard(["ab", "c"])
    cases = [
        (np.array([1, 2, 3], "<u8").tobytes(), b"abc", "must be 0"),
        (np.array([0, 2, 1, 3], "<u8").tobytes(), b"abc", "non-decreasing"),
        (np.array([0, 2, 4], "<u8").tobytes(), b"abc", "must end at"),
        (np.array([0, 2], "<u8").tobytes(), b"abc", "must end at"),
        (good_offsets[:-1], data, "uint64"),
        (b"", b"", "uint64"),
        (np.array([0, 1 << 63, 3], "<u8").tobytes(), b"abc", "non-decreasing|must end"),
    ]
    for offsets, blob, message in cases:
        with pytest.raises(ValueError, match=message):
            _core.IdTable([offsets], [blob])
    with pytest.raises(ValueError, match="one entry per shard"):
        _core.IdTable([good_offsets], [])
    with pytest.raises(ValueError, match=r"data\[0\]"):
        _core.IdTable([good_offsets], [object()])


def test_invalid_utf8_raises_on_decode():
    offsets = np.array([0, 2], "<u8").tobytes()
    table = _core.IdTable([offsets], [b"\xff\xfe"])
    with pytest.raises(UnicodeDecodeError):
        table.id_at(0)


def test_empty_table():
    table = _core.IdTable([], [])
    assert table.size == 0
    assert table.lookup(["x"]).tolist() == [-1]
    assert table.ranks().shape == (0,)
    one_empty = _core.IdTable([np.zeros(1, "<u8").tobytes()], [b""])
    assert one_empty.size == 0


def test_holds_secure_buffer_views_until_close():
    offsets, data = encode_shard(["a", "bb", "a"])
    buffers = []
    for blob in (offsets, data):
        buffer = _core.SecureBuffer(len(blob))
        memoryview(buffer)[:] = blob
        buffer.seal()
        buffers.append(buffer)
    table = _core.IdTable([buffers[0]], [buffers[1]])
    assert [b.exports for b in buffers] == [1, 1]
    for buffer in buffers:
        buffer.release()  # deferred: the table still reads the ids
    assert table.lookup(["a", "bb"]).tolist() == [2, 1]
    assert table.id_at(1) == "bb"
    table.close()
    table.close()  # idempotent
    assert [b.exports for b in buffers] == [0, 0]
    for method, args in [
        (table.lookup, (["a"],)),
        (table.id_at, (0,)),
        (table.ranks, ()),
        (table.ids_at, (np.zeros(1, np.int64),)),
    ]:
        with pytest.raises(ValueError, match="closed"):
            method(*args)
    with pytest.raises(ValueError, match="closed"):
        table.size


def test_context_manager_closes():
    offsets, data = encode_shard(["x"])
    with make_table([["x"]]) as table:
        assert table.lookup(["x"]).tolist() == [0]
    with pytest.raises(ValueError, match="closed"):
        table.lookup(["x"])


def _python_ranks(ids: list[str]) -> np.ndarray:
    order = sorted(range(len(ids)), key=lambda r: (ids[r].encode("utf-8"), r))
    expected = np.empty(len(ids), np.int64)
    expected[order] = np.arange(len(ids))
    return expected


def test_large_table_ranks_and_lookup_match_python():
    """Past the size where ranks are sorted on a second thread: long shared prefixes,
    ids equal in the 8 bytes after them, prefixes of each other, bytes >= 0x80 and
    duplicates across shards."""
    rng = np.random.default_rng(7)
    base = [f"tenant-0042/document-{i:07d}" for i in rng.permutation(30_000)]
    tails = [f"tenant-0042/document-{i:07d}{suffix}" for i in range(50) for suffix in ("", "a", "é", "\x00")]
    odd = ["tenant-0042/", "tenant-0042/document-", "tenant-0042/document-ÿ", "tenant-0042/document-😀"]
    ids = base + tails + odd + base[:2000] + base[100:300]  # later copies repeat ids
    rng.shuffle(shards := [ids[i : i + 9000] for i in range(0, len(ids), 9000)])
    table = make_table(shards)
    flat = [i for shard in shards for i in shard]
    np.testing.assert_array_equal(table.ranks(), _python_ranks(flat))
    newest = {value: row for row, value in enumerate(flat)}
    queries = sorted(set(flat))[::7] + ["missing", "tenant-0042/document-x"]
    assert table.lookup(queries).tolist() == [newest.get(q, -1) for q in queries]
    # Deleting the newest copies exposes the older ones, newest first.
    mask = np.ones(len(flat), np.uint8)
    mask[[newest[q] for q in queries if q in newest]] = 0
    older = {}
    for row, value in enumerate(flat):
        if mask[row]:
            older[value] = row
    assert table.lookup(queries, mask).tolist() == [older.get(q, -1) for q in queries]


def test_large_table_of_one_repeated_id():
    table = make_table([["same"] * 20_000, ["same"] * 5])
    np.testing.assert_array_equal(table.ranks(), np.arange(20_005))
    assert table.lookup(["same"]).tolist() == [20_004]
    mask = np.zeros(20_005, np.uint8)
    mask[3] = 1
    assert table.lookup(["same"], mask).tolist() == [3]
