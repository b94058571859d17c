"""SecureBuffer: locking, guard pages, sealing, deferred wipe, lock-limit handling."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sealvec import _core
from sealvec.errors import MemoryLockError

PAGE = mmap.PAGESIZE


def vm_locked_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    raise AssertionError("no VmLck line")


def address_of(buffer) -> int:
    view = np.frombuffer(buffer, dtype=np.uint8)
    address = view.ctypes.data
    del view
    return address


def vm_flags_at(address: int) -> set[str]:
    """VmFlags of the /proc/self/smaps entry whose range contains address."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(part, 16) for part in first.split("-"))
                inside = start <= address < end
            elif inside and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    raise AssertionError(f"no mapping contains {address:#x}")


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, **kwargs
    )


def test_lock_accounting_and_vmlck():
    before_kib, before_bytes = vm_locked_kib(), _core.locked_bytes()
    nbytes = 3 * 1024 * 1024 + 5
    buffer = _core.SecureBuffer(nbytes)
    assert buffer.locked and buffer.nbytes == nbytes
    assert vm_locked_kib() - before_kib >= nbytes // 1024
    assert _core.locked_bytes() - before_bytes >= nbytes
    buffer.release()
    assert buffer.released
    assert vm_locked_kib() == before_kib
    assert _core.locked_bytes() == before_bytes


def test_large_buffer_is_locked_on_fault_with_the_same_protections():
    """Large buffers (huge pages) lock their pages as they are first written: the whole
    range counts as locked from the start and carries the same flags."""
    before_kib, before_bytes = vm_locked_kib(), _core.locked_bytes()
    nbytes = 64 * 1024 * 1024 + 3
    buffer = _core.SecureBuffer(nbytes)
    assert buffer.locked
    assert vm_locked_kib() - before_kib >= nbytes // 1024
    assert _core.locked_bytes() - before_bytes >= nbytes
    flags = vm_flags_at(address_of(buffer))
    assert "lo" in flags and "dd" in flags
    if buffer.wipe_on_fork:
        assert "wf" in flags
    values = np.frombuffer(buffer, dtype=np.uint8)
    values[::4096] = 7  # fault every page in
    assert int(values[::4096].min()) == 7 and int(values[1::4096].max()) == 0
    del values
    buffer.seal()
    buffer.release()
    assert vm_locked_kib() == before_kib
    assert _core.locked_bytes() == before_bytes


def test_buffers_are_made_in_parallel_threads():
    """Construction releases the GIL; buffers made at once in threads are independent."""
    from concurrent.futures import ThreadPoolExecutor

    before = _core.locked_bytes()
    sizes = [(i % 3) * (5 << 20) + PAGE * (i + 1) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        buffers = list(pool.map(_core.SecureBuffer, sizes))
    for index, buffer in enumerate(buffers):
        assert buffer.locked and buffer.nbytes == sizes[index]
        np.frombuffer(buffer, dtype=np.uint8)[:] = index
    for index, buffer in enumerate(buffers):
        view = np.frombuffer(buffer, dtype=np.uint8)
        assert int(view.min()) == int(view.max()) == index
        del view
        buffer.release()
    assert _core.locked_bytes() == before


def test_smaps_flags_locked_dontdump_wipeonfork():
    buffer = _core.SecureBuffer(2 * PAGE)
    flags = vm_flags_at(address_of(buffer))
    assert "lo" in flags and "dd" in flags
    if buffer.wipe_on_fork:
        assert "wf" in flags
    buffer.release()


def test_buffer_protocol_shape_and_writes():
    buffer = _core.SecureBuffer(16)
    view = memoryview(buffer)
    assert (view.format, view.itemsize, view.ndim, view.nbytes) == ("B", 1, 1, 16)
    assert not view.readonly and buffer.exports == 1
    view[4:8] = b"abcd"
    del view
    assert buffer.exports == 0
    floats = np.frombuffer(buffer, dtype=np.float32)
    assert floats.shape == (4,) and floats.flags.writeable
    floats[0] = 1.5
    del floats
    assert bytes(memoryview(buffer)[:8]) == np.float32(1.5).tobytes() + b"abcd"


def test_decrypt_straight_into_buffer():
    ciphers = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
    key, nonce = os.urandom(32), os.urandom(16)
    plaintext = np.arange(64, dtype=np.float32).tobytes()
    cipher = ciphers.Cipher(ciphers.algorithms.AES(key), ciphers.modes.CTR(nonce))
    ciphertext = cipher.encryptor().update(plaintext)
    buffer = _core.SecureBuffer(len(plaintext) + 16)
    decryptor = cipher.decryptor()
    written = decryptor.update_into(ciphertext, memoryview(buffer)[16 : 16 + len(ciphertext)])
    assert written == len(plaintext)
    buffer.seal()
    assert np.frombuffer(buffer, dtype=np.float32, offset=16).tolist() == list(range(64))


def test_seal_makes_views_read_only():
    buffer = _core.SecureBuffer(8)
    writable = memoryview(buffer)
    with pytest.raises(BufferError, match="writable"):
        buffer.seal()
    writable.release()
    buffer.seal()
    buffer.seal()  # idempotent
    assert buffer.sealed
    assert memoryview(buffer).readonly
    assert not np.frombuffer(buffer, dtype=np.uint8).flags.writeable
    # Ask for PyBUF_WRITABLE through the C API, as a writable consumer would.
    get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    get_buffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
    raw_view = ctypes.create_string_buffer(256)  # larger than a Py_buffer
    with pytest.raises(BufferError, match="sealed"):
        get_buffer(buffer, ctypes.addressof(raw_view), 1)  # 1 == PyBUF_WRITABLE


def test_release_defers_while_views_are_exported():
    before = _core.locked_bytes()
    buffer = _core.SecureBuffer(PAGE)
    floats = np.frombuffer(buffer, dtype=np.float32)
    floats[:] = np.arange(len(floats))
    del floats
    buffer.seal()
    view = np.frombuffer(buffer, dtype=np.float32)
    assert buffer.exports == 1
    buffer.release()
    buffer.release()  # idempotent
    assert buffer.released and buffer.exports == 1
    assert _core.locked_bytes() == before + PAGE  # still mapped for the live view
    assert view[-1] == len(view) - 1 and view.sum() == sum(range(len(view)))
    with pytest.raises(ValueError, match="SecureBuffer was released"):
        memoryview(buffer)
    del view
    assert buffer.exports == 0
    assert _core.locked_bytes() == before


def test_context_manager_releases():
    with _core.SecureBuffer(32) as buffer:
        assert not buffer.released
    assert buffer.released
    with pytest.raises(ValueError, match="released"):
        np.frombuffer(buffer, dtype=np.uint8)


def test_empty_buffer():
    buffer = _core.SecureBuffer(0)
    assert buffer.nbytes == 0 and len(memoryview(buffer)) == 0
    assert np.frombuffer(buffer, dtype=np.float32).shape == (0,)
    buffer.seal()
    buffer.release()


def test_argument_errors():
    with pytest.raises(ValueError, match="nbytes"):
        _core.SecureBuffer(-1)
    with pytest.raises(ValueError, match="nbytes"):
        _core.SecureBuffer(1 << 60)
    with pytest.raises(ValueError, match="memory_lock"):
        _core.SecureBuffer(8, memory_lock="maybe")


def _crash_code(action: str) -> str:
    return f"""
        import ctypes
        import numpy as np
        from sealvec import _core
        buffer = _core.SecureBuffer({2 * PAGE})
        address = np.frombuffer(buffer, dtype=np.uint8).ctypes.data
        buffer.seal()
        print("ready", flush=True)
        {action}
        print("survived", flush=True)
    """


@pytest.mark.parametrize(
    "action",
    [
        f"ctypes.string_at(address + {2 * PAGE}, 1)",  # first byte past the end
        "ctypes.string_at(address - 1, 1)",  # last byte before the start
        "ctypes.memmove(address, b'x', 1)",  # write to a sealed buffer
    ],
)
def test_guard_pages_and_seal_fault(action):
    result = run_python(_crash_code(action))
    assert "ready" in result.stdout and "survived" not in result.stdout
    assert result.returncode == -signal.SIGSEGV


def test_fork_child_sees_zeros():
    result = run_python(
        """
        import os
        import numpy as np
        from sealvec import _core
        buffer = _core.SecureBuffer(4096)
        if not buffer.wipe_on_fork:
            print("unsupported"); raise SystemExit(0)
        np.frombuffer(buffer, dtype=np.uint8)[:] = 7
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.frombuffer(buffer, dtype=np.uint8).max() == 0 else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    assert "child 0" in result.stdout or "unsupported" in result.stdout, result.stderr


_LIMITED_CODE = """
    import logging, os, resource
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    from sealvec import _core
    import sealvec.errors
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
    try:
        buffer = _core.SecureBuffer(4 << 20, memory_lock={policy!r})
        print("locked", buffer.locked)
        buffer.release()
    except sealvec.errors.MemoryLockError as error:
        print("MemoryLockError", error)
"""


def test_required_lock_raises_with_numbers():
    result = run_python(_LIMITED_CODE.format(policy="required"))
    out = result.stdout
    assert "MemoryLockError" in out, result.stderr
    assert str(4 << 20) in out  # bytes it tried to lock
    assert "soft 1048576 bytes, hard 1048576 bytes" in out
    assert "already locks 0 bytes" in out
    assert "ulimit -l" in out and "CAP_IPC_LOCK" in out and "best_effort" in out
    assert issubclass(MemoryLockError, Exception)


def test_best_effort_continues_unlocked_with_warning():
    result = run_python(_LIMITED_CODE.format(policy="best_effort"))
    assert "locked False" in result.stdout, result.stderr
    assert "sealvec.memory" in result.stderr and str(4 << 20) in result.stderr
