"""Shared fixtures: an isolated keyring and store per test, and the real corpus."""

from __future__ import annotations

pytest_plugins = ["azurite"]

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS_DIR = Path(os.environ.get("SEALVEC_CORPUS_DIR", REPO / "data" / "corpus"))


@pytest.fixture(autouse=True)
def _isolated_keyring(tmp_path_factory, monkeypatch):
    """Every test gets its own keyring file, outside every store."""
    keyring_dir = tmp_path_factory.mktemp("keyring")
    monkeypatch.setenv("SEALVEC_KEYRING", str(keyring_dir / "keyring.json"))
    monkeypatch.setenv("SEALVEC_STATE_DIR", str(keyring_dir / "state"))
    monkeypatch.delenv("SEALVEC_KEYRING_PASSPHRASE", raising=False)
    yield


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    """Refuse any connection to a non-loopback address for the whole session, here
    and (through tests/sitecustomize.py) in every Python process the tests spawn."""
    os.environ["SEALVEC_TEST_LOOPBACK_ONLY"] = "1"
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("localhost",) and not (
                host.startswith("127.") or host == "::1"
            ):
                raise ConnectionRefusedError(f"test guard: refusing to connect to {host}")
        return real_connect(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="session")
def corpus() -> tuple[list[dict], np.ndarray]:
    records = [
        json.loads(line)
        for line in (CORPUS_DIR / "stdlib-docs.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    vectors = np.load(CORPUS_DIR / "stdlib-docs.minilm.npy")
    return records, vectors


def random_vectors(rows: int, dimension: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dimension)).astype(np.float32)
