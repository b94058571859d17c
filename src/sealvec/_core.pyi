"""Type stub for sealvec._core, the native core (locked memory, search kernel, id table,
metadata filters)."""

from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer, Self

class SecureBuffer:
    """Bytes in mlocked, MADV_DONTDUMP (+WIPEONFORK) memory between PROT_NONE guard pages.

    Exposes a 1-D unsigned-byte buffer of exactly ``nbytes``; writable until ``seal()``.
    ``release()`` wipes and unmaps now, or when the last exported view is dropped.
    """

    def __init__(
        self, nbytes: int, memory_lock: Literal["required", "best_effort"] = "required"
    ) -> None: ...
    def seal(self) -> None: ...
    def release(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def locked(self) -> bool: ...
    @property
    def sealed(self) -> bool: ...
    @property
    def released(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    @property
    def wipe_on_fork(self) -> bool:
        """Whether MADV_WIPEONFORK took effect (False on kernels older than 4.14)."""

def locked_bytes() -> int:
    """Bytes (whole pages) currently mlocked by live SecureBuffers in this process."""

def search(
    segments: Sequence[Buffer],
    dim: int,
    queries: npt.NDArray[np.float32],
    k: int,
    metric: Literal["ip", "l2", "cosine"],
    mask: Buffer | None = None,
    tiebreak: Buffer | None = None,
    threads: int = 0,
    bf16_segments: Sequence[Buffer] | None = None,
    sq_norms: Sequence[Buffer] | None = None,
    candidates: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top-k; returns (scores, rows) of shape (nq, min(k, allowed rows)), best first.

    Exact, or with ``bf16_segments`` and ``sq_norms`` (see ``to_bfloat16``):
    ``candidates`` rows per query found by a bfloat16 scan, then scored exactly in
    float32. Ties rank by smaller tiebreak value (int64 per row), then smaller global
    row index.
    """

def to_bfloat16(rows: Buffer, dim: int, bf16_out: Buffer, sq_norms_out: Buffer) -> None:
    """Write bfloat16 copies (round to nearest even) and squared norms of float32 rows."""

def bf16_dot() -> str:
    """What the bfloat16 scan runs on: 'avx512_bf16', or the active SIMD level."""

def set_bf16_native_dot(allowed: bool) -> None: ...

def simd_level() -> Literal["scalar", "avx2", "avx512"]: ...
def supported_simd_levels() -> list[str]: ...
def set_simd_level(level: Literal["scalar", "avx2", "avx512"]) -> None: ...

class IdTable:
    """String ids read in place from (offsets, data) buffer pairs, one pair per shard."""

    def __init__(self, offsets: Sequence[Buffer], data: Sequence[Buffer]) -> None: ...
    @property
    def size(self) -> int: ...
    def lookup(self, ids: list[str], mask: Buffer | None = None) -> npt.NDArray[np.int64]: ...
    def id_at(self, row: int) -> str: ...
    def ids_at(self, rows: npt.ArrayLike) -> list[str]: ...
    def ranks(self) -> npt.NDArray[np.int64]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

FilterValue = None | bool | int | float | str
FilterStep = (
    tuple[Literal["cmp"], str, Literal["eq", "ne", "gt", "gte", "lt", "lte"], FilterValue]
    | tuple[Literal["in"], str, list[FilterValue], bool]
    | tuple[Literal["and", "or"], int]
)

def filter_mask(
    sections: Sequence[Buffer],
    rows: Sequence[int],
    program: list[FilterStep],
    base_mask: Buffer | None = None,
) -> npt.NDArray[np.uint8]:
    """0/1 per row of the concatenated attributes sections (``sections[i]`` holds ``rows[i]``
    rows) where the postfix ``program`` from ``sealvec.attributes.compile_where`` holds,
    ANDed with ``base_mask`` (uint8 per row) when given.

    Sections are validated in full and read in place. ValueError names a malformed section,
    a malformed program, or mismatched lengths.
    """

def scan_rows(vectors: npt.NDArray[np.float32]) -> tuple[int, int, int]:
    """First rows of a C-contiguous float32 matrix, each -1 if none: (holding NaN or
    infinity, holding a finite value of magnitude >= 2**54, with every value below
    2**-60 in magnitude, zeros included)."""

def pack_strings(
    values: Sequence[str | bytes], memory_lock: Literal["required", "best_effort"] = "required"
) -> SecureBuffer:
    """A sealed SecureBuffer of len(values) + 1 little-endian uint64 offsets, then the
    values back to back (str as strict UTF-8, bytes as they are)."""

def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing a written range of a file to storage (a hint;
    durability still needs fsync). False where unsupported or refused."""
