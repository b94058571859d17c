"""Azurite (the Azure Storage emulator) for tests: the blob service on a free
loopback port, over TLS with a CA made in the test, verification on.

Import the fixtures where needed (``from azurite import azurite``) or register this
module with ``pytest_plugins``. Azurite comes from ``node_modules/azurite`` in the
repository root; if it is absent it is installed there with
``npm install --no-audit --no-fund azurite@3.35.0``. Without node the fixture
fails (it never skips silently): CI installs the node dependencies.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tls import make_tls

REPO = Path(__file__).resolve().parent.parent
AZURITE_VERSION = "3.35.0"
AZURITE_MAIN = REPO / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
#: Azurite 3.35 rejects the SDK's newest default service version.
API_VERSION = "2025-11-05"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0


@dataclass
class Azurite:
    host: str
    port: int
    ca: Path
    account: str = ACCOUNT
    account_key: str = ACCOUNT_KEY
    api_version: str = API_VERSION
    process: subprocess.Popen | None = field(default=None, repr=False)
    log: deque = field(default_factory=lambda: deque(maxlen=200), repr=False)

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (path-style)."""
        return f"https://{self.host}:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=https;AccountName={self.account};"
            f"AccountKey={self.account_key};BlobEndpoint={self.endpoint}"
        )

    def credential(self):
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(self.account, self.account_key)

    def url(self, container: str, prefix: str = "") -> str:
        return f"{self.endpoint}/{container}" + (f"/{prefix}" if prefix else "")

    def options(self, **overrides: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "api_version": self.api_version,
            "connection_verify": str(self.ca),
            "retry_total": 2,
            "retry_backoff_factor": 0.1,
            "connection_timeout": 5,
            "read_timeout": 30,
        }
        options.update(overrides)
        return options

    def storage(self, container: str | None = None, prefix: str = "coll", credential=None, **options):
        """An AzureBlobStorage in a fresh random container (or the one named)."""
        from sealvec.azure_blob import AzureBlobStorage

        container = container or f"t{secrets.token_hex(8)}"
        return AzureBlobStorage(
            self.url(container, prefix),
            credential if credential is not None else self.credential(),
            **self.options(**options),
        )

    def container_client(self, container: str):
        from azure.storage.blob import ContainerClient

        return ContainerClient(
            self.endpoint,
            container,
            credential=self.credential(),
            api_version=self.api_version,
            connection_verify=str(self.ca),
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_installed() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: the Azure Blob tests need Node.js 20+ to run Azurite "
            f"(then: npm install --no-audit --no-fund azurite@{AZURITE_VERSION})",
            pytrace=False,
        )
    if not AZURITE_MAIN.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"Azurite is missing ({AZURITE_MAIN}) and npm is not installed", pytrace=False)
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", f"azurite@{AZURITE_VERSION}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0 or not AZURITE_MAIN.is_file():
            pytest.fail(
                f"could not install azurite@{AZURITE_VERSION} into {REPO}: "
                f"{result.stderr.strip()[-2000:]}",
                pytrace=False,
            )
    return node


def start_azurite(directory: Path, *, oauth: bool = True) -> Azurite:
    node = _ensure_installed()
    tls = make_tls(directory / "tls", label="azurite")
    port = _free_port()
    command = [
        node,
        str(AZURITE_MAIN),
        "--blobHost", "127.0.0.1",
        "--blobPort", str(port),
        "--inMemoryPersistence",
        "--extentMemoryLimit", "256",
        "--disableTelemetry",
        "--cert", str(tls.cert),
        "--key", str(tls.key),
    ]
    if oauth:
        command += ["--oauth", "basic"]
    process = subprocess.Popen(
        command,
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = Azurite("127.0.0.1", port, tls.ca, process=process)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.log.append(line.rstrip())
            if "successfully listens" in line:
                ready.set()

    threading.Thread(target=pump, name="azurite-log", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_azurite(server)
            output = "\n".join(server.log)
            pytest.fail(f"Azurite did not start on 127.0.0.1:{port}:\n{output}", pytrace=False)
    return server


def stop_azurite(server: Azurite) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Azurite:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        stop_azurite(server)


@pytest.fixture
def azure_storage(azurite) -> Callable[..., Any]:
    """A factory of AzureBlobStorage objects, each in a fresh random container."""
    made = []

    def factory(**options):
        storage = azurite.storage(**options)
        made.append(storage)
        return storage

    yield factory
    for storage in made:
        storage.close()
