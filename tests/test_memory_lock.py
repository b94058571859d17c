"""A collection that cannot get locked memory: refused with the numbers and the fix,
or opened unlocked with one warning when the caller opts in. Run as an ordinary user
(root may lock any amount) with a 1 MiB RLIMIT_MEMLOCK, in a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sealvec import Collection, LocalKeyring

OPEN_LIMITED = textwrap.dedent(
    """
    import logging, os, resource, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    import numpy as np
    import sealvec
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
    try:
        with sealvec.Collection.open(sys.argv[1], memory_lock=sys.argv[2]) as collection:
            hits = collection.search(np.ones(64, dtype=np.float32), k=3)[0]
            print("opened", collection.count(), len(hits))
    except sealvec.MemoryLockError as error:
        print("MemoryLockError", error)
    """
)


@pytest.fixture
def big_store():
    """A store, keyring and state directory an ordinary user (nobody) can use."""
    root = Path(tempfile.mkdtemp(prefix="sealvec-memlock-"))
    root.chmod(0o755)
    keyring = LocalKeyring(root / "keyring" / "keyring.json")
    store = root / "store"
    vectors = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    with Collection.create(store, dimension=64, metric="ip", key_provider=keyring) as collection:
        collection.add([f"r{i}" for i in range(20_000)], vectors)
    (root / "state").mkdir()
    if os.geteuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, 65534, 65534)
    yield store
    shutil.rmtree(root, ignore_errors=True)


def run_limited(store: Path, policy: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OPEN_LIMITED, str(store), policy],
        capture_output=True, text=True, timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "SEALVEC_KEYRING": str(store.parent / "keyring" / "keyring.json"),
            "SEALVEC_STATE_DIR": str(store.parent / "state"),
        },
    )


def test_refused_with_the_bytes_needed_the_limit_and_the_fix(big_store):
    result = run_limited(big_store, "required")
    out = result.stdout
    assert "MemoryLockError" in out, result.stderr
    assert "needs about" in out and "bytes of locked memory" in out
    assert "RLIMIT_MEMLOCK is soft 1048576" in out
    assert "ulimit -l" in out and "best_effort" in out


def test_best_effort_opens_unlocked_with_one_warning(big_store):
    result = run_limited(big_store, "best_effort")
    assert "opened 20000 3" in result.stdout, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("sealvec.memory")]
    assert len(warnings) == 1 and "without locked memory" in warnings[0]
