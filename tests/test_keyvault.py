"""KeyVaultKeyProvider against a loopback Key Vault stand-in, through the real SDK
pipeline (challenge auth, TLS verification), and the real collection on top."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

pytest.importorskip("azure.keyvault.keys")
pytest.importorskip("azure.identity")

from azure.core.credentials import AccessToken, AccessTokenInfo  # noqa: E402
from azure.core.exceptions import ClientAuthenticationError  # noqa: E402
from keyvault_standin import DEFAULT_TOKEN, KeyVaultStandIn  # noqa: E402
from tls import make_tls  # noqa: E402

from sealvec import Collection  # noqa: E402
from sealvec.errors import (  # noqa: E402
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    ValidationError,
)
from sealvec.keyvault import KeyVaultKeyProvider, parse_key_id  # noqa: E402

CK = bytes(range(32))


class StaticCredential:
    """A fixed token for the stand-in (never DefaultAzureCredential in tests)."""

    def __init__(self, token: str = DEFAULT_TOKEN, fail: bool = False) -> None:
        self.token = token
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []

    def _check(self, scopes: tuple[str, ...]) -> None:
        self.scopes.append(scopes)
        if self.fail:
            raise ClientAuthenticationError("the test credential is switched off")

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self._check(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options=None) -> AccessTokenInfo:
        self._check(scopes)
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("kv-tls"))


@pytest.fixture
def standin(tls_files):
    server = KeyVaultStandIn(tls_files).start()
    server.kek_v1 = server.add_rsa_key("kek")
    server.add_oct_hsm_key("hsmkek")
    yield server
    server.stop()


def make_provider(server, tls_files, **options) -> KeyVaultKeyProvider:
    settings = dict(
        connection_verify=str(tls_files.ca),
        verify_challenge_resource=False,
        allow_loopback=True,
        retry_total=3,
        retry_backoff=0.01,
        connection_timeout=2.0,
        read_timeout=5.0,
        algorithms={server.key_url("hsmkek"): "A256KW"} if server else None,
    )
    settings.update(options)
    credential = settings.pop("credential", None) or StaticCredential()
    return KeyVaultKeyProvider(credential, **settings)


@pytest.fixture
def provider(standin, tls_files):
    p = make_provider(standin, tls_files)
    yield p
    p.close()


def authorized(server, op=None):
    return [r for r in server.requests if r.authorized and (op is None or r.op == op)]


# ------------------------------------------------------------------ key ids


def test_key_ids_are_recognised_and_unversioned():
    p = KeyVaultKeyProvider()  # no credential is created until a call needs one
    version = "0123456789abcdef0123456789abcdef"
    assert p.handles("https://myvault.vault.azure.net/keys/kek")
    assert p.handles(f"https://myvault.vault.azure.net/keys/kek/{version}")
    assert p.handles(f"https://myhsm.managedhsm.azure.net/keys/kek/{version}")
    assert p.unversioned(f"https://myvault.vault.azure.net/keys/kek/{version}") == (
        "https://myvault.vault.azure.net/keys/kek"
    )
    assert p.unversioned("https://myvault.vault.azure.net/keys/kek") == (
        "https://myvault.vault.azure.net/keys/kek"
    )
    assert parse_key_id(f"https://myhsm.managedhsm.azure.net/keys/kek/{version}").managed_hsm
    for bad in (
        "http://myvault.vault.azure.net/keys/kek",
        "https://myvault.example.com/keys/kek",
        "https://myvault.vault.azure.net/secrets/kek",
        "https://myvault.vault.azure.net/keys/kek?x=1",
        "https://myvault.vault.azure.net/keys/../kek",
        "https://myvault.vault.azure.net:8443/keys/kek",
        "https://127.0.0.1:8443/keys/kek",  # loopback needs allow_loopback
        "local:kek",
    ):
        assert not p.handles(bad), bad
    assert p._credential is None  # DefaultAzureCredential is lazy
    loop = KeyVaultKeyProvider(StaticCredential(), allow_loopback=True)
    assert loop.handles("https://127.0.0.1:8443/keys/kek")
    assert not loop.handles("http://127.0.0.1:8443/keys/kek")
    with pytest.raises(ValidationError):
        KeyVaultKeyProvider(StaticCredential(), connection_verify=False)


# ------------------------------------------------------------------ round trips


def test_wrap_with_unversioned_id_returns_versioned_id(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    assert versioned == standin.key_url("kek", standin.kek_v1)
    assert len(wrapped) == 256  # RSA-2048 OAEP output: done by the service
    assert provider.unwrap_key(versioned, wrapped) == CK
    paths = [(r.method, r.path, r.op) for r in authorized(standin)]
    assert paths == [
        ("POST", "/keys/kek//wrapkey", "wrapkey"),
        ("POST", f"/keys/kek/{standin.kek_v1}/unwrapkey", "unwrapkey"),
    ]


def test_first_request_meets_the_challenge(standin, provider):
    provider.wrap_key(standin.key_url("kek"), CK)
    first, second = standin.requests[:2]
    assert not first.authorized and first.status == 401
    assert second.authorized and second.status == 200


def test_versioned_wrap_uses_that_version(standin, provider):
    v2 = standin.add_rsa_key("kek")
    versioned, wrapped = provider.wrap_key(standin.key_url("kek", standin.kek_v1), CK)
    assert versioned == standin.key_url("kek", standin.kek_v1)
    versioned2, wrapped2 = provider.wrap_key(standin.key_url("kek"), CK)
    assert versioned2 == standin.key_url("kek", v2)
    assert provider.unwrap_key(versioned, wrapped) == CK
    assert provider.unwrap_key(versioned2, wrapped2) == CK
    with pytest.raises(IntegrityError):  # v2's wrap does not open under v1
        provider.unwrap_key(versioned, wrapped2)


def test_wrap_and_unwrap_permissions_suffice(standin, provider):
    standin.forbid_get = True  # a role with wrapKey/unwrapKey only
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    assert provider.unwrap_key(versioned, wrapped) == CK
    assert [r.op for r in authorized(standin)] == ["wrapkey", "unwrapkey"]
    unauthenticated = [r for r in standin.requests if not r.authorized]
    assert len(unauthenticated) <= 1 and all(r.status == 401 for r in unauthenticated)
    assert all(r.method == "POST" for r in standin.requests)


def test_only_rsa_oaep_256_is_asked_for(standin, provider):
    v2 = standin.add_rsa_key("kek")
    for key_id in (standin.key_url("kek"), standin.key_url("kek", standin.kek_v1)):
        versioned, wrapped = provider.wrap_key(key_id, CK)
        provider.unwrap_key(versioned, wrapped)
    algs = {r.alg for r in authorized(standin)}
    assert algs == {"RSA-OAEP-256"}
    assert v2 in authorized(standin, "unwrapkey")[0].path


def test_managed_hsm_symmetric_key_wraps_at_the_service(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("hsmkek"), CK)
    assert versioned.startswith(standin.key_url("hsmkek") + "/")
    assert len(wrapped) == 40
    assert provider.unwrap_key(versioned, wrapped) == CK
    assert [(r.op, r.alg) for r in authorized(standin)] == [
        ("wrapkey", "A256KW"),
        ("unwrapkey", "A256KW"),
    ]


def test_a256kw_is_refused_for_a_vault_key():
    with pytest.raises(ValidationError):
        KeyVaultKeyProvider(
            StaticCredential(), algorithms={"https://v1.vault.azure.net/keys/k": "A256KW"}
        )
    with pytest.raises(ValidationError):
        KeyVaultKeyProvider(
            StaticCredential(), algorithms={"https://h1.managedhsm.azure.net/keys/k": "RSA1_5"}
        )


def test_sdk_cryptography_client_hazards_that_this_provider_avoids(standin, tls_files):
    """Documents why the provider does not use CryptographyClient (SDK 4.11)."""
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

    options = dict(verify_challenge_resource=False, connection_verify=str(tls_files.ca))
    # oct-HSM: the GET answer has no key material, yet the SDK wraps locally (with
    # random bytes): the service is never asked to wrap.
    client = CryptographyClient(standin.key_url("hsmkek"), StaticCredential(), **options)
    client.wrap_key(KeyWrapAlgorithm.aes_256, CK)
    assert "wrapkey" not in [r.op for r in standin.requests]
    # GET forbidden: the wrap goes to the service but the answer's kid is dropped.
    standin.forbid_get = True
    client = CryptographyClient(standin.key_url("kek"), StaticCredential(), **options)
    result = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, CK)
    assert result.key_id == standin.key_url("kek")  # unversioned: unusable after rotation


def test_sdk_client_unwraps_what_the_provider_wrapped(standin, provider, tls_files):
    """Wire compatibility: the SDK's own unwrap request opens our wrapped key."""
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    standin.forbid_get = True
    client = CryptographyClient(
        versioned,
        StaticCredential(),
        verify_challenge_resource=False,
        connection_verify=str(tls_files.ca),
    )
    assert client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == CK
    assert authorized(standin, "unwrapkey")[-1].alg == "RSA-OAEP-256"


# ------------------------------------------------------------------ failures


def assert_names(error: Exception, server, operation: str, version: str | None) -> None:
    text = str(error)
    assert server.url in text, text
    assert "'kek'" in text, text
    assert operation in text, text
    assert (version or "(current)") in text, text
    token_parts = DEFAULT_TOKEN.split(".")
    for part in token_parts[:2]:
        assert part not in text, text
    assert DEFAULT_TOKEN not in repr(error.__cause__)


def _forbid(server, op):
    server.fail_next(op, 403)


def _missing(server, op):
    server.fail_next(op, 404)


def _disabled(server, op):
    server.disable("kek")


def _expired_token(server, op):
    server.reject_tokens = True


@pytest.mark.parametrize(
    "inject, error_type, words",
    [
        (_forbid, KeyAccessError, "access denied: the identity needs wrapKey/unwrapKey on"),
        (_missing, KeyNotFoundError, "no such key"),
        (_disabled, KeyNotFoundError, "disabled"),
        (_expired_token, KeyAccessError, "token is expired or invalid"),
    ],
    ids=["403", "404", "disabled", "expired-token"],
)
@pytest.mark.parametrize("operation", ["wrapkey", "unwrapkey"])
def test_service_refusals_become_typed_errors(standin, provider, operation, inject, error_type, words):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    standin.echo_token = True  # the service quoting the token must not leak it
    inject(standin, operation)
    with pytest.raises(error_type) as caught:
        if operation == "wrapkey":
            provider.wrap_key(standin.key_url("kek"), CK)
        else:
            provider.unwrap_key(versioned, wrapped)
    assert words in str(caught.value)
    assert_names(caught.value, standin, operation, None if operation == "wrapkey" else standin.kek_v1)


def test_unknown_version_is_not_found(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    with pytest.raises(KeyNotFoundError) as caught:
        provider.unwrap_key(standin.key_url("kek", "f" * 32), wrapped)
    assert "f" * 32 in str(caught.value)


def test_credential_failure_is_key_access_error(standin, tls_files):
    p = make_provider(standin, tls_files, credential=StaticCredential(fail=True))
    with pytest.raises(KeyAccessError, match="authentication failed before the request") as caught:
        p.wrap_key(standin.key_url("kek"), CK)
    assert "switched off" in str(caught.value)
    assert [r.authorized for r in standin.requests] == [False]  # only the challenge


def test_challenge_resource_is_verified_by_default(standin, tls_files):
    """An IP host cannot match the vault domain, so with the production default the
    challenge is refused and no token is ever sent."""
    credential = StaticCredential()
    p = make_provider(standin, tls_files, credential=credential, verify_challenge_resource=True)
    with pytest.raises(KeyAccessError, match="authentication failed before the request") as caught:
        p.wrap_key(standin.key_url("kek"), CK)
    assert "wrapkey" in str(caught.value)
    assert authorized(standin) == [] and credential.scopes == []


def test_tampered_wrapped_key_is_integrity_error(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(IntegrityError, match="wrong key or tampered"):
        provider.unwrap_key(versioned, tampered)
    with pytest.raises(IntegrityError):
        provider.unwrap_key(versioned, wrapped[:37])
    with pytest.raises(ValidationError):
        provider.unwrap_key(standin.key_url("kek"), wrapped)  # unversioned


def test_throttling_honours_retry_after_then_succeeds(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    standin.throttle("unwrapkey", times=2, retry_after="1")
    started = time.monotonic()
    assert provider.unwrap_key(versioned, wrapped) == CK
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 10.0
    assert [r.status for r in authorized(standin, "unwrapkey")] == [429, 429, 200]


def test_throttling_is_bounded(standin, tls_files):
    p = make_provider(standin, tls_files, retry_total=2)
    versioned, wrapped = p.wrap_key(standin.key_url("kek"), CK)
    standin.throttle("unwrapkey", times=10, retry_after="0")
    with pytest.raises(KeyAccessError, match="throttled after 3 attempt") as caught:
        p.unwrap_key(versioned, wrapped)
    assert_names(caught.value, standin, "unwrapkey", standin.kek_v1)
    assert len(authorized(standin, "unwrapkey")) == 3


def test_retry_after_beyond_the_cap_fails_at_once(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    standin.throttle("unwrapkey", times=1, retry_after="3600")
    started = time.monotonic()
    with pytest.raises(KeyAccessError, match="throttled.*wait 3600 s"):
        provider.unwrap_key(versioned, wrapped)
    assert time.monotonic() - started < 5


def test_dropped_connection_is_retried_then_unreachable(standin, provider):
    versioned, wrapped = provider.wrap_key(standin.key_url("kek"), CK)
    standin.drop("unwrapkey", times=1)
    assert provider.unwrap_key(versioned, wrapped) == CK  # no side effect: safe to retry
    standin.drop("unwrapkey", times=10)
    with pytest.raises(KeyAccessError, match="unreachable") as caught:
        provider.unwrap_key(versioned, wrapped)
    assert_names(caught.value, standin, "unwrapkey", standin.kek_v1)


def test_refused_connection_is_unreachable(tls_files):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = make_provider(None, tls_files, retry_total=1)
    started = time.monotonic()
    with pytest.raises(KeyAccessError, match="unreachable") as caught:
        p.wrap_key(f"https://127.0.0.1:{port}/keys/kek", CK)
    assert f"https://127.0.0.1:{port}" in str(caught.value)
    assert time.monotonic() - started < 5


def test_read_timeout_is_unreachable(standin, tls_files):
    p = make_provider(standin, tls_files, retry_total=0, read_timeout=0.5)
    p.wrap_key(standin.key_url("kek"), CK)  # challenge done
    standin.stall("wrapkey", 3)
    started = time.monotonic()
    with pytest.raises(KeyAccessError, match="unreachable"):
        p.wrap_key(standin.key_url("kek"), CK)
    assert time.monotonic() - started < 2.5


def test_wrong_ca_fails_fast_naming_the_problem(standin, tmp_path):
    other = make_tls(tmp_path / "other", label="other")
    p = make_provider(standin, other)
    started = time.monotonic()
    with pytest.raises(KeyAccessError) as caught:
        p.wrap_key(standin.key_url("kek"), CK)
    text = str(caught.value)
    assert "TLS certificate verification failed" in text
    assert "unable to get local issuer certificate" in text and "connection_verify" in text
    assert time.monotonic() - started < 3
    assert standin.requests == []  # nothing reached the stand-in's HTTP layer


def test_expired_server_certificate_fails_fast(tmp_path):
    expired = make_tls(tmp_path / "expired", expired=True)
    with KeyVaultStandIn(expired) as server:
        server.add_rsa_key("kek")
        p = make_provider(server, expired)
        started = time.monotonic()
        with pytest.raises(KeyAccessError, match="certificate has expired"):
            p.wrap_key(server.key_url("kek"), CK)
        assert time.monotonic() - started < 3


def test_answer_for_another_key_is_refused(standin, provider, monkeypatch):
    real_kid = standin.kid
    monkeypatch.setattr(standin, "kid", lambda name, version: real_kid("other", version))
    with pytest.raises(KeyAccessError, match="answered for another key"):
        provider.wrap_key(standin.key_url("kek"), CK)


# ------------------------------------------------------------------ the collection


def test_collection_on_key_vault(standin, provider, tmp_path):
    path = tmp_path / "store"
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    with Collection.create(
        path, dimension=4, key_id=standin.key_url("kek"), key_provider=provider
    ) as collection:
        collection.add(["a", "b", "c"], vectors)
    standin.clear()
    with Collection.open(path, key_provider=provider) as collection:
        assert collection.count() == 3
        np.testing.assert_array_equal(collection.get(["b"])[0].vector, vectors[1])
    unwraps = authorized(standin, "unwrapkey")
    assert len(unwraps) == 1 and standin.kek_v1 in unwraps[0].path
    assert [r.op for r in authorized(standin)] == ["unwrapkey"]

    # rotate the KEK: the vault gets a new version, the collection key is re-wrapped
    v2 = standin.add_rsa_key("kek")
    with Collection.open(path, key_provider=provider) as collection:
        new_id = collection.rotate_key_encryption_key()
    assert new_id == standin.key_url("kek", v2)
    standin.disable("kek", standin.kek_v1)  # the old version is no longer needed
    standin.clear()
    with Collection.open(path, key_provider=provider) as collection:
        assert collection.count() == 3
    unwraps = authorized(standin, "unwrapkey")
    assert len(unwraps) == 1 and v2 in unwraps[0].path


def test_collection_never_opens_with_a_wrong_key(standin, provider, tmp_path):
    path = tmp_path / "store"
    with Collection.create(
        path, dimension=4, key_id=standin.key_url("kek"), key_provider=provider
    ) as collection:
        collection.add(["a"], np.ones((1, 4), dtype=np.float32))
    standin.wrong_unwrap = True
    with pytest.raises(IntegrityError):
        Collection.open(path, key_provider=provider)
    standin.wrong_unwrap = False
    with Collection.open(path, key_provider=provider) as collection:
        assert collection.count() == 1
