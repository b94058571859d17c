"""AzureBlobStorage against Azurite over TLS (verification on, CA passed explicitly):
the Storage contract, create-only races, transport security, the writer lease, and
the real collection giving the same results on Azure as on a local directory."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from azurite import ACCOUNT_KEY, azure_storage, azurite  # noqa: F401 - fixtures
from conftest import random_vectors
from tls import make_tls

from sealvec import Collection, verify_store
from sealvec.azure_blob import LEASE_SECONDS, AzureBlobStorage
from sealvec.errors import (
    ConflictError,
    StorageError,
    StoreLockedError,
    ValidationError,
)
from sealvec.keys import LocalKeyring
from sealvec.storage import LocalDirectory

KiB = 1024
MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def pieces(data: bytes, size: int):
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def all_blobs(azurite, container: str) -> dict[str, bytes]:
    client = azurite.container_client(container)
    try:
        return {
            name: client.download_blob(name).readall() for name in client.list_blob_names()
        }
    finally:
        client.close()


# ------------------------------------------------------------------ storage contract


def test_put_get_size_list_delete(azure_storage):
    storage = azure_storage()
    assert not storage.exists()
    assert storage.list("") == []
    storage.initialise()
    storage.initialise()  # already there: fine
    assert storage.exists()

    storage.put("manifest/00000000000000000002", [b"two"], create_only=True)
    storage.put("manifest/00000000000000000001", [b"o", b"ne"], create_only=True)
    storage.put("shards/ab.svs", iter([b"x" * 10, b"", b"y" * 5]))
    assert storage.get("manifest/00000000000000000001") == b"one"
    assert storage.size("shards/ab.svs") == 15
    assert storage.list("") == [
        "manifest/00000000000000000001",
        "manifest/00000000000000000002",
        "shards/ab.svs",
    ]
    assert storage.list("manifest/") == [
        "manifest/00000000000000000001",
        "manifest/00000000000000000002",
    ]
    assert storage.list("shards/") == ["shards/ab.svs"]

    # Plain puts overwrite; create-only ones never do.
    storage.put("shards/ab.svs", [b"new"])
    assert storage.get("shards/ab.svs") == b"new"
    with pytest.raises(ConflictError, match="already exists"):
        storage.put("shards/ab.svs", [b"other"], create_only=True)
    assert storage.get("shards/ab.svs") == b"new"

    storage.delete("shards/ab.svs")
    storage.delete("shards/ab.svs")  # missing is fine
    assert storage.list("shards/") == []

    # Objects live under the prefix; the lock blob and other prefixes are not listed.
    with storage.writer_lock():
        pass
    names = sorted(all_blobs_names(storage))
    assert names == [
        "coll/.writer-lock",
        "coll/manifest/00000000000000000001",
        "coll/manifest/00000000000000000002",
    ]
    assert storage.list("") == ["manifest/00000000000000000001", "manifest/00000000000000000002"]

    for bad in ("", "../x", "a//b", ".hidden", "shards/.x"):
        with pytest.raises(ValidationError):
            storage.get(bad)


def all_blobs_names(storage: AzureBlobStorage) -> list[str]:
    return list(storage._client.list_blob_names())  # noqa: SLF001


def test_missing_objects_raise_storage_error(azure_storage):
    storage = azure_storage()
    storage.initialise()
    for call in (storage.get, storage.size, storage.open):
        with pytest.raises(StorageError, match=r"object shards/none\.svs is missing from https://") as info:
            call("shards/none.svs")
        assert isinstance(info.value.__cause__, FileNotFoundError)
        assert storage.location in str(info.value)


def test_missing_container_is_a_clear_error(azure_storage):
    storage = azure_storage()
    with pytest.raises(StorageError, match="container does not exist"):
        storage.put("shards/a.svs", [b"x"])


def test_multi_block_put_and_streaming_reads(azure_storage):
    storage = azure_storage(block_size=256 * KiB, read_chunk_size=300 * KiB)
    storage.initialise()
    data = pattern(5 * MiB + 12345)
    storage.put("shards/big.svs", pieces(data, 100 * KiB), create_only=True)
    blob = storage._client.get_blob_client("coll/shards/big.svs")  # noqa: SLF001
    committed, _ = blob.get_block_list("committed")
    assert len(committed) == -(-len(data) // (256 * KiB))  # really staged block by block
    assert storage.size("shards/big.svs") == len(data)

    # readinto into a buffer larger than a chunk: several ranged reads, never more
    # than one chunk per call.
    received = bytearray()
    calls = 0
    with storage.open("shards/big.svs") as stream:
        buffer = bytearray(MiB)
        while True:
            got = stream.readinto(buffer)
            if not got:
                break
            assert got <= 300 * KiB
            calls += 1
            received += buffer[:got]
    assert calls >= len(data) // (300 * KiB)
    assert bytes(received) == data

    with storage.open("shards/big.svs") as stream:
        assert stream.read(10) == data[:10]
        assert stream.read(400 * KiB) == data[10 : 10 + 400 * KiB]
        stream.seek(len(data) - 5)
        assert stream.read() == data[-5:]
        assert stream.read(1) == b""
    assert stream.closed

    # A whole-object get of a multi-chunk blob.
    assert storage.get("shards/big.svs") == data


def test_a_blob_replaced_mid_read_fails(azure_storage):
    storage = azure_storage(read_chunk_size=64 * KiB)
    storage.initialise()
    storage.put("shards/v.svs", [pattern(300 * KiB, 1)])
    with storage.open("shards/v.svs") as stream:
        first = stream.read(64 * KiB)
        assert first == pattern(300 * KiB, 1)[: 64 * KiB]
        storage.put("shards/v.svs", [pattern(300 * KiB, 2)])
        with pytest.raises(StorageError, match="changed while it was being read"):
            stream.read(64 * KiB)


def test_create_only_race_on_a_multi_block_upload(azurite):
    """Writer A stages its blocks; writer B uploads and commits the same name first;
    A's commit (If-None-Match: *) must fail and leave B's object whole."""
    first = azurite.storage(block_size=64 * KiB)
    first.initialise()
    second = azurite.storage(container=first.container, block_size=64 * KiB)
    data_a = pattern(600 * KiB, 10)
    data_b = pattern(700 * KiB, 20)
    a_staged = threading.Event()
    b_done = threading.Event()
    outcome: list[BaseException | None] = []

    def chunks_a():
        yield from pieces(data_a, 100 * KiB)
        a_staged.set()  # every block but the last is staged by now
        assert b_done.wait(30)

    def writer_a():
        try:
            first.put("manifest/00000000000000000005", chunks_a(), create_only=True)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001
            outcome.append(error)

    thread = threading.Thread(target=writer_a)
    thread.start()
    assert a_staged.wait(30)
    second.put("manifest/00000000000000000005", pieces(data_b, 100 * KiB), create_only=True)
    b_done.set()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
    assert first.get("manifest/00000000000000000005") == data_b

    # Both staged, A commits first this time: B loses.
    a_ready, b_ready = threading.Event(), threading.Event()
    results: dict[str, BaseException | None] = {}

    def staged(data, mine, other):
        yield from pieces(data, 100 * KiB)
        mine.set()
        assert other.wait(30)

    def run(label, storage, data, mine, other):
        try:
            storage.put("manifest/00000000000000000006", staged(data, mine, other), create_only=True)
            results[label] = None
        except BaseException as error:  # noqa: BLE001
            results[label] = error

    threads = [
        threading.Thread(target=run, args=("a", first, data_a, a_ready, b_ready)),
        threading.Thread(target=run, args=("b", second, data_b, b_ready, a_ready)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [label for label, error in results.items() if error is None]
    losers = [error for error in results.values() if error is not None]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], ConflictError)
    expected = data_a if winners == ["a"] else data_b
    assert first.get("manifest/00000000000000000006") == expected


def test_overwrite_of_a_multi_block_blob_is_atomic(azure_storage):
    storage = azure_storage(block_size=64 * KiB)
    storage.initialise()
    old, new = pattern(200 * KiB, 3), pattern(500 * KiB, 4)
    storage.put("shards/o.svs", [old])
    seen = []

    def chunks():
        for piece in pieces(new, 64 * KiB):
            seen.append(storage.get("shards/o.svs"))  # readers see the old object whole
            yield piece

    storage.put("shards/o.svs", chunks())
    assert all(s == old for s in seen)
    assert storage.get("shards/o.svs") == new


# ------------------------------------------------------------------ transport security


def test_plain_http_is_refused(azurite):
    key = azurite.credential()
    for url in (
        "http://myaccount.blob.core.windows.net/col1/p",
        "http://10.0.0.5:10000/devstoreaccount1/col1/p",
        "http://[2001:db8::1]:10000/devstoreaccount1/col1/p",
    ):
        with pytest.raises(ValidationError, match="only https"):
            AzureBlobStorage(url, key, allow_insecure_loopback=True)
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "[::1]"):
        url = f"http://{host}:10000/devstoreaccount1/col1/p"
        with pytest.raises(ValidationError, match="allow_insecure_loopback=True"):
            AzureBlobStorage(url, key)
        # The explicit opt-in allows it (no request is made here).
        storage = AzureBlobStorage(url, key, allow_insecure_loopback=True)
        assert storage.location.startswith("http://")
    with pytest.raises(ValidationError, match="https"):
        AzureBlobStorage("ftp://myaccount.blob.core.windows.net/col1/p", key)


def test_location_parsing():
    storage = AzureBlobStorage("https://myacct.blob.core.windows.net/my-container/a/b", "a2V5")
    assert (storage.account, storage.container, storage.prefix) == ("myacct", "my-container", "a/b")
    assert storage.location == "https://myacct.blob.core.windows.net/my-container/a/b"
    assert storage._blob_name("manifest/1") == "a/b/manifest/1"  # noqa: SLF001
    with pytest.raises(ValidationError, match="container name"):
        AzureBlobStorage("https://myacct.blob.core.windows.net/Bad_Container/p", "a2V5")
    with pytest.raises(ValidationError, match="credentials"):
        AzureBlobStorage("https://user:pw@myacct.blob.core.windows.net/col1/p")
    with pytest.raises(ValidationError, match="does not exist"):
        AzureBlobStorage(
            "https://myacct.blob.core.windows.net/col1/p", "a2V5", connection_verify="/nonexistent.pem"
        )
    # A SAS in the URL becomes the credential and never shows in the location.
    sas = AzureBlobStorage("https://myacct.blob.core.windows.net/col1/p?sv=2024&sig=SECRETSIG")
    assert "SECRETSIG" not in sas.location and "SECRETSIG" not in repr(sas)


def test_wrong_ca_fails_fast_with_a_clear_error(azurite, tmp_path):
    other = make_tls(tmp_path / "other", label="not-azurite")
    storage = azurite.storage(connection_verify=str(other.ca), retry_total=5, retry_backoff_factor=2)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.exists()
    assert time.monotonic() - started < 3  # no retries of a certificate failure
    message = str(info.value)
    assert "TLS certificate verification failed" in message
    assert "devstoreaccount1" in message and storage.container in message
    assert "\n" not in message
    assert ACCOUNT_KEY not in message
    assert info.value.__cause__ is None


def test_wrong_key_is_a_clear_authentication_error(azurite):
    from azure.core.credentials import AzureNamedKeyCredential

    bad_key = base64.b64encode(b"not the right key, not at all!!!").decode()
    storage = azurite.storage(credential=AzureNamedKeyCredential("devstoreaccount1", bad_key))
    with pytest.raises(StorageError, match="authentication or authorisation failed") as info:
        storage.initialise()
    assert bad_key not in str(info.value)
    assert "container" in str(info.value)


def test_unreachable_endpoint_is_a_clear_error(azurite):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = AzureBlobStorage(
        f"https://127.0.0.1:{port}/devstoreaccount1/col1/p",
        azurite.credential(),
        **azurite.options(retry_total=1, retry_backoff_factor=0.05),
    )
    with pytest.raises(StorageError, match="unreachable") as info:
        storage.get("manifest/00000000000000000001")
    assert "\n" not in str(info.value)


def test_a_silent_endpoint_times_out_with_a_clear_error(azurite):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        storage = AzureBlobStorage(
            f"https://127.0.0.1:{port}/devstoreaccount1/col1/p",
            azurite.credential(),
            **azurite.options(retry_total=0, connection_timeout=0.5, read_timeout=0.5),
        )
        started = time.monotonic()
        with pytest.raises(StorageError, match="timed out") as info:
            storage.get("manifest/00000000000000000001")
        assert time.monotonic() - started < 5
    assert "account devstoreaccount1, container col1" in str(info.value)


def test_sas_and_token_credentials(azurite, caplog):
    caplog.set_level("DEBUG")
    from datetime import datetime, timedelta, timezone

    from azure.core.credentials import AccessToken, AccessTokenInfo
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    owner = azurite.storage()
    owner.initialise()
    owner.put("manifest/00000000000000000001", [b"m1"])
    sas = generate_container_sas(
        azurite.account,
        owner.container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True, create=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    via_sas = azurite.storage(container=owner.container, credential=sas)
    assert via_sas.get("manifest/00000000000000000001") == b"m1"
    via_sas.put("shards/s.svs", [b"s"])
    assert via_sas.list("") == ["manifest/00000000000000000001", "shards/s.svs"]

    class StaticToken:
        """An unsigned JWT that Azurite's --oauth basic accepts."""

        def _token(self) -> str:
            now = int(time.time())
            header = {"alg": "none", "typ": "JWT"}
            claims = {
                "aud": "https://storage.azure.com",
                "iss": "https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/",
                "nbf": now - 60,
                "iat": now - 60,
                "exp": now + 3600,
            }

            def encode(part):
                return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

            return f"{encode(header)}.{encode(claims)}.sig"

        def get_token(self, *scopes, **kwargs):
            return AccessToken(self._token(), int(time.time()) + 3600)

        def get_token_info(self, *scopes, options=None):
            return AccessTokenInfo(self._token(), int(time.time()) + 3600)

    via_token = azurite.storage(container=owner.container, credential=StaticToken())
    assert via_token.get("manifest/00000000000000000001") == b"m1"
    with via_token.writer_lock():
        via_token.put("shards/t.svs", [b"t"], create_only=True)
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    assert signature not in caplog.text and azurite.account_key not in caplog.text
    assert StaticToken()._token().split(".")[1] not in caplog.text
    with pytest.raises(ValidationError, match="https"):
        AzureBlobStorage(
            "http://127.0.0.1:1/devstoreaccount1/col1/p", StaticToken(), allow_insecure_loopback=True
        )


def test_from_connection_string(azurite):
    storage = AzureBlobStorage.from_connection_string(
        azurite.connection_string, "cs-" + os.urandom(4).hex(), "deep/prefix", **azurite.options()
    )
    assert storage.location == f"{azurite.endpoint}/{storage.container}/deep/prefix"
    storage.initialise()
    storage.put("manifest/00000000000000000001", [b"m"])
    assert storage.list("manifest/") == ["manifest/00000000000000000001"]
    assert ACCOUNT_KEY not in repr(storage)
    with pytest.raises(ValidationError, match="allow_insecure_loopback"):
        AzureBlobStorage.from_connection_string("UseDevelopmentStorage=true", "col1", "p")


# ------------------------------------------------------------------ writer lease


def test_writer_lease_excludes_a_second_writer_and_is_released(azurite):
    first = azurite.storage()
    first.initialise()
    second = azurite.storage(container=first.container)
    with first.writer_lock():
        with pytest.raises(StoreLockedError, match=first.location.replace(".", r"\.")):
            with second.writer_lock():
                pass
        # The same object from another thread is refused too.
        errors = []
        thread = threading.Thread(target=lambda: _try_lock(first, errors))
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], StoreLockedError)
    with second.writer_lock():  # released on exit
        pass
    # Released on exit with an error too.
    with pytest.raises(RuntimeError):
        with first.writer_lock():
            raise RuntimeError("boom")
    with second.writer_lock():
        pass


def _try_lock(storage, errors):
    try:
        with storage.writer_lock():
            pass
    except BaseException as error:  # noqa: BLE001
        errors.append(error)


def test_writer_lease_waits_with_lock_timeout_and_renews(azurite, monkeypatch):
    import sealvec.azure_blob as module

    monkeypatch.setattr(module, "RENEW_SECONDS", 0.3)
    first = azurite.storage()
    first.initialise()
    waiter = azurite.storage(container=first.container, lock_timeout=20)
    renewals = []
    real_renew = module.BlobLeaseClient.renew

    def counting_renew(self, **kwargs):
        renewals.append(time.monotonic())
        return real_renew(self, **kwargs)

    monkeypatch.setattr(module.BlobLeaseClient, "renew", counting_renew)
    got_it = []

    def wait_for_lock():
        with waiter.writer_lock():
            got_it.append(time.monotonic())

    with first.writer_lock():
        thread = threading.Thread(target=wait_for_lock)
        thread.start()
        time.sleep(1.5)
        assert not got_it
        released = time.monotonic()
    thread.join(20)
    assert got_it and got_it[0] >= released
    assert len(renewals) >= 2


def test_a_lapsed_lease_stops_writes(azurite):
    storage = azurite.storage()
    storage.initialise()
    with storage.writer_lock():
        storage.put("shards/a.svs", [b"a"])
        storage._lease.trusted_until = time.monotonic() - 1  # noqa: SLF001 - renewals failed
        with pytest.raises(StorageError, match="could not be renewed in time"):
            storage.put("shards/b.svs", [b"b"])
        with pytest.raises(StorageError, match="could not be renewed in time"):
            storage.delete("shards/a.svs")
    assert storage.list("shards/") == ["shards/a.svs"]


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = sys.argv[1].split(":")
    from sealvec.azure_blob import AzureBlobStorage
    storage = AzureBlobStorage(sys.argv[2], sys.argv[3], api_version=sys.argv[4],
                               connection_verify=sys.argv[5])
    with storage.writer_lock():
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_a_writer_killed_with_sigkill_frees_the_lock_within_the_lease(azurite):
    storage = azurite.storage()
    storage.initialise()
    env = {**os.environ}
    process = subprocess.Popen(
        [
            sys.executable, "-c", HOLD_LOCK, os.pathsep.join(sys.path), storage.location,
            azurite.account_key, azurite.api_version, str(azurite.ca),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = time.monotonic()
    with pytest.raises(StoreLockedError):
        with storage.writer_lock():
            pass
    waiter = azurite.storage(container=storage.container, lock_timeout=LEASE_SECONDS + 15)
    with waiter.writer_lock():
        took = time.monotonic() - killed
    assert took <= LEASE_SECONDS + 5


# ------------------------------------------------------------------ the collection


def scenario(storage) -> dict:
    """Run one fixed sequence of collection operations; return what is observable."""
    observed: dict = {}
    vectors = random_vectors(60, 8, seed=7)
    queries = random_vectors(4, 8, seed=8)
    keyring = LocalKeyring()

    def results(collection, label):
        found = collection.search(queries, k=5, include=["documents", "metadata"])
        observed[label] = {
            "ids": found.ids,
            "scores": np.round(np.asarray(found.scores), 5).tolist(),
            "generation": found.generation,
            "count": collection.count(),
            "docs": [[h.document for h in hits] for hits in found],
        }

    with Collection.create(storage, dimension=8, metric="cosine") as collection:
        ids = [f"r{i}" for i in range(60)]
        collection.add(
            ids[:30], vectors[:30], documents=[f"doc {i}" for i in range(30)],
            metadata=[{"n": i} for i in range(30)],
        )
        collection.add(ids[30:], vectors[30:], documents=[f"doc {i}" for i in range(30, 60)])
        results(collection, "added")
        collection.upsert(ids[:5], vectors[55:60], documents=["up"] * 5)
        results(collection, "upserted")
        observed["deleted"] = collection.delete(ids[10:20] + ["nope"])
        observed["forgot"] = collection.forget(ids[20:25])
        results(collection, "deleted")
        observed["compact"] = collection.compact(target_rows=16)
        results(collection, "compacted")
        keyring.rotate_key("default")
        observed["rotated_prefix"] = collection.rotate_key_encryption_key().split(":")[0]
        results(collection, "rotated")
        got = collection.get(["r0", "r12", "r40"])
        observed["get"] = [
            None if r is None else (r.id, r.document, r.metadata, r.vector.tolist()) for r in got
        ]

        with Collection.open(storage) as other:
            generation_before = other.generation
            collection.add(["late"], vectors[:1], documents=["late doc"])
            assert other.refresh() is True
            observed["refresh"] = other.generation - generation_before
            results(other, "second_handle")
        observed["generation"] = collection.generation
    report = verify_store(storage)
    observed["verify"] = {k: report[k] for k in ("generation", "rows", "live_rows", "unreferenced")}
    with Collection.open(storage) as reopened:
        results(reopened, "reopened")
    return observed


def test_collection_on_azure_matches_local_directory(azurite, tmp_path):
    local = scenario(LocalDirectory(tmp_path / "local"))
    remote_storage = azurite.storage(prefix="tenants/acme", block_size=4 * KiB, read_chunk_size=3 * KiB)
    remote = scenario(remote_storage)
    assert remote == local
    assert remote["verify"]["unreferenced"] == []
    names = remote_storage.list("")
    assert any(n.startswith("manifest/") for n in names)
    assert any(n.startswith("shards/") and n.endswith(".svs") for n in names)


SECRETS = ["PATIENT-7781-SECRET", "diagnosis: hypertensive crisis", "tenant-zeta"]


def test_no_plaintext_or_vector_bytes_in_any_blob(azurite):
    storage = azurite.storage(block_size=8 * KiB)
    vectors = random_vectors(80, 8, seed=42)
    with Collection.create(storage, dimension=8) as collection:
        ids = [f"{SECRETS[0]}-{i}" for i in range(80)]
        collection.add(
            ids[:40], vectors[:40], documents=[f"{SECRETS[1]} #{i}" for i in range(40)],
            metadata=[{"tenant": SECRETS[2]} for _ in range(40)],
        )
        collection.add(
            ids[40:], vectors[40:], documents=[f"{SECRETS[1]} #{i}" for i in range(40, 80)],
            metadata=[{"tenant": SECRETS[2]} for _ in range(40)],
        )
        collection.compact(target_rows=1000)
    stored = vectors.tobytes()
    runs = {stored[i : i + 16] for i in range(0, len(stored) - 15, 4)}
    blobs = all_blobs(azurite, storage.container)
    assert sum(1 for n in blobs if "/shards/" in n) >= 1
    assert sum(1 for n in blobs if "/manifest/" in n) >= 1
    for name, data in blobs.items():
        for needle in SECRETS:
            assert needle.encode() not in data, f"plaintext in {name}"
        for offset in range(0, max(len(data) - 15, 0)):
            assert data[offset : offset + 16] not in runs, f"vector bytes in {name}"


def test_two_writers_racing_on_one_azure_collection(azurite):
    first = azurite.storage(lock_timeout=60)
    Collection.create(first, dimension=8).close()
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            storage = azurite.storage(container=first.container, lock_timeout=60)
            with Collection.open(storage) as collection:
                for number in range(8):
                    collection.add(
                        [f"{name}-{number}-{i}" for i in range(5)],
                        random_vectors(5, 8, seed=number),
                    )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    with Collection.open(first) as collection:
        assert collection.count() == 80
        assert collection.generation == 17
        ids = [f"{w}-{n}-{i}" for w in "ab" for n in range(8) for i in range(5)]
        records = collection.get(ids)
        assert all(r is not None for r in records)
    # Generations are contiguous: the retained manifests form an unbroken run.
    generations = [int(n.split("/")[1]) for n in first.list("manifest/")]
    assert generations == list(range(generations[0], 18))
    report = verify_store(first)
    assert report["unreferenced"] == [] and report["live_rows"] == 80
