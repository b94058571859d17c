"""Native helpers for sealing new records: scan_rows, pack_strings, start_writeback."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sealvec import _core


def python_scan(vectors: np.ndarray) -> tuple[int, int, int]:
    """The oracle: first row with NaN/inf, first with a finite |value| >= 2**54, first
    with every |value| < 2**-60 (each -1 if none)."""
    magnitude = np.abs(vectors.astype(np.float64))
    nonfinite = ~np.isfinite(vectors).all(axis=1)
    huge = ((magnitude >= 2.0**54) & np.isfinite(magnitude)).any(axis=1) & ~nonfinite
    weak = ~((magnitude >= 2.0**-60) | np.isnan(magnitude)).any(axis=1)

    def first(flags: np.ndarray) -> int:
        return int(np.argmax(flags)) if flags.any() else -1

    return first(nonfinite), first(huge), first(weak)


@pytest.mark.parametrize("dim", [1, 3, 97, 1537])
def test_scan_rows_matches_numpy(dim):
    rng = np.random.default_rng(dim)
    for trial in range(30):
        rows = int(rng.integers(1, 60))
        vectors = rng.standard_normal((rows, dim)).astype(np.float32)
        for _ in range(int(rng.integers(0, 3))):
            vectors[rng.integers(rows)] = 0.0
        if trial % 5 == 0:
            vectors[rng.integers(rows)] = -0.0  # negative zero is zero
        for _ in range(int(rng.integers(0, 3))):
            special = rng.choice([np.nan, np.inf, -np.inf])
            vectors[rng.integers(rows), rng.integers(dim)] = special
        for _ in range(int(rng.integers(0, 3))):  # around the magnitude bounds
            bound = rng.choice([2.0**54, 2.0**-60])
            scale = rng.choice([np.nextafter(np.float32(1), np.float32(0)), 1.0, 2.0])
            row = rng.integers(rows)
            if bound < 1:
                vectors[row] = 0.0
            vectors[row, rng.integers(dim)] = np.float32(bound * scale) * rng.choice([-1, 1])
        assert _core.scan_rows(vectors) == python_scan(vectors)


def test_scan_rows_extremes_are_finite():
    vectors = np.array(
        [[3.4028235e38, -3.4028235e38, 1e-45, -1e-45], [np.float32(1e-18), 0, 0, 0]],
        dtype=np.float32,
    )
    assert _core.scan_rows(vectors) == (-1, 0, -1)  # 3.4e38 is finite but too large
    bounds = np.array(
        [[2.0**54, 0], [np.nextafter(np.float32(2.0**54), np.float32(0)), 0],
         [2.0**-60, 0], [np.nextafter(np.float32(2.0**-60), np.float32(0)), -0.0],
         [1e-45, -1e-45]],
        dtype=np.float32,
    )
    assert _core.scan_rows(bounds) == (-1, 0, 3)
    nan_payload = np.array([[0, 0, 0, 0]], dtype=np.float32)
    nan_payload.view(np.uint32)[0, 2] = 0x7FC00001
    assert _core.scan_rows(nan_payload) == (0, -1, -1)  # NaN is not below 2**-60


def test_scan_rows_large_batch_split_across_threads():
    """Batches of 16 MiB and more are scanned in two halves on two threads."""
    vectors = np.ones((12_000, 512), dtype=np.float32)
    assert _core.scan_rows(vectors) == (-1, -1, -1)
    vectors[9_000] = 0
    assert _core.scan_rows(vectors) == (-1, -1, 9_000)
    vectors[100] = 0
    assert _core.scan_rows(vectors) == (-1, -1, 100)
    vectors[10_500, 7] = np.inf
    assert _core.scan_rows(vectors) == (10_500, -1, 100)
    vectors[11_000, 3] = 1e20
    assert _core.scan_rows(vectors) == (10_500, 11_000, 100)
    vectors[50, 0] = np.nan
    assert _core.scan_rows(vectors)[0] == 50
    assert _core.scan_rows(np.zeros((0, 5), dtype=np.float32)) == (-1, -1, -1)


def unpack(buffer) -> list[bytes]:
    raw = bytes(memoryview(buffer))
    count = 0
    while True:  # offsets end where the values begin
        table = np.frombuffer(raw[: 8 * (count + 1)], dtype="<u8")
        if 8 * (count + 1) + int(table[-1]) == len(raw):
            break
        count += 1
    offsets = np.frombuffer(raw[: 8 * (count + 1)], dtype="<u8")
    data = raw[8 * (count + 1) :]
    return [data[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:])]


def test_pack_strings_layout_and_locking():
    values = ["alpha", "βeta", "", "δ🙂", b"\x00\xffraw", "x" * 1024]
    buffer = _core.pack_strings(values, "required")
    assert buffer.sealed and buffer.locked
    expected_data = [v if isinstance(v, bytes) else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(values) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(v) for v in expected_data])
    assert bytes(memoryview(buffer)) == offsets.tobytes() + b"".join(expected_data)
    assert unpack(buffer) == expected_data
    buffer.release()
    empty = _core.pack_strings([])
    assert bytes(memoryview(empty)) == bytes(8)
    from_tuple = _core.pack_strings(("a", "b"))
    assert unpack(from_tuple) == [b"a", b"b"]


def test_pack_strings_refuses_what_it_cannot_encode():
    with pytest.raises(UnicodeEncodeError):
        _core.pack_strings(["ok", "\ud800"])
    with pytest.raises(ValueError, match=r"values\[1\] must be str or bytes"):
        _core.pack_strings(["ok", 7])
    with pytest.raises(ValueError, match="memory_lock"):
        _core.pack_strings(["ok"], "maybe")


def test_start_writeback_is_only_a_hint(tmp_path):
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * (1 << 20))
        assert _core.start_writeback(fd, 0, 1 << 20) in (True, False)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * (1 << 20)
    assert _core.start_writeback(-1, 0, 1) is False  # a bad descriptor is not an error
