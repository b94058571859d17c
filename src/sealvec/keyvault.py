"""Azure Key Vault (and Managed HSM) as the holder of key-encryption keys.

Key ids are Key Vault key URLs::

    https://VAULT.vault.azure.net/keys/NAME            (the key's current version)
    https://VAULT.vault.azure.net/keys/NAME/VERSION
    https://HSM.managedhsm.azure.net/keys/NAME[/VERSION]

(also the sovereign-cloud domains). ``https://127.0.0.1:PORT/keys/...`` and
``https://localhost:PORT/...`` are accepted only with ``allow_loopback=True``, for
tests against a stand-in; plain http is never accepted.

Why not ``CryptographyClient``
------------------------------
``azure.keyvault.keys.crypto.CryptographyClient`` (4.11, read in
``crypto/_client.py``) first tries ``GET /keys/NAME/VERSION`` and, when that
succeeds, wraps *locally* with what it got back. Three consequences were checked
against the loopback stand-in:

* a symmetric ``oct-HSM`` key's GET answer carries no key material, yet the SDK
  builds a local ``SymmetricKey`` from it, which then generates **random** key bytes
  (``os.urandom``) and "wraps" with them: the service is never asked, nobody can
  ever unwrap the result (silent data loss);
* with GET forbidden (a role holding only wrapKey/unwrapKey) it falls back to
  ``POST .../wrapkey`` but returns ``WrapResult.key_id`` as the id it was given: an
  *unversioned* id stays unversioned (the service's ``kid`` is dropped), so after
  the next rotation the stored id would name the wrong version;
* a failing local wrap is logged as a warning and silently retried remotely, and
  every fresh client repeats the forbidden GET.

This provider therefore does not use ``CryptographyClient``. It sends exactly two
kinds of request, through the SDK's own authenticated pipeline
(``KeyClient.send_request``: challenge-based bearer auth, TLS verification,
``verify_challenge_resource``), and nothing else:

* ``POST {vault}/keys/NAME/VERSION/wrapkey``   ``{"alg": ALG, "value": b64url(CK)}``
* ``POST {vault}/keys/NAME/VERSION/unwrapkey`` ``{"alg": ALG, "value": b64url(wrapped)}``

(VERSION empty — ``/keys/NAME//wrapkey``, as the SDK itself sends it — means the
current version). So the wrap is always done by the service, a role with only
``wrapKey``/``unwrapKey`` (no ``get``) suffices, and the versioned id returned by
``wrap_key`` is built from the ``kid`` in the service's answer (same vault and key
name required, else the answer is refused). Opening a collection is one
``unwrapkey`` request (plus, once per vault origin and process, the SDK's
unauthenticated challenge request).

Algorithms: RSA keys use ``RSA-OAEP-256`` only (never ``RSA1_5`` or ``RSA-OAEP``).
Managed HSM symmetric keys use ``A256KW``; name those keys in ``algorithms``
(``{unversioned key id: "A256KW"}``) since, without the ``get`` permission, the key
type cannot be asked. Unwrap picks the algorithm from the wrapped length (A256KW of
a collection key is 40 bytes; RSA-OAEP output is at least 256 bytes).

Errors are ``sealvec.errors`` exceptions naming the vault, key, version and
operation, never a token: 401 (expired or invalid token), 403, 429 after bounded
retries honouring Retry-After, connection failures and TLS failures →
``KeyAccessError``; 404 or a disabled key → ``KeyNotFoundError``; an unwrap the
service refuses (wrong key, tampered bytes) → ``IntegrityError``. Retries are done
here (the SDK pipeline runs with ``retry_total=0``): wrap and unwrap have no side
effects at the service, so connection failures, 429 and 5xx are retried up to
``retry_total`` times; TLS and authentication failures are not.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sealvec.errors import (
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    ValidationError,
)
from sealvec.transport import is_loopback
from sealvec.keys import KeyProvider

logger = logging.getLogger(__name__)

RSA_OAEP_256 = "RSA-OAEP-256"
A256KW = "A256KW"
_ALGORITHMS = (RSA_OAEP_256, A256KW)

_VAULT_DOMAINS = (
    "vault.azure.net",
    "vault.azure.cn",
    "vault.usgovcloudapi.net",
    "vault.microsoftazure.de",
)
_HSM_DOMAINS = (
    "managedhsm.azure.net",
    "managedhsm.azure.cn",
    "managedhsm.usgovcloudapi.net",
)
_VAULT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,22}[a-z0-9])$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}$")
_TOKENISH = re.compile(
    r"(?i)(bearer\s+)\S+|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
)
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_MIN_RSA_CIPHERTEXT = 256  # Key Vault RSA keys are 2048 bits or more


@dataclass(frozen=True)
class KeyVaultKeyId:
    """A parsed Key Vault key URL."""

    origin: str  # https://host[:port], as the caller spelled it (lower-cased host)
    name: str
    version: str | None
    managed_hsm: bool
    loopback: bool

    @property
    def vault(self) -> str:
        return self.origin

    @property
    def unversioned(self) -> str:
        return f"{self.origin}/keys/{self.name}"

    @property
    def url(self) -> str:
        return self.unversioned + (f"/{self.version}" if self.version else "")

    def describe(self) -> str:
        return f"key {self.name!r} version {self.version or '(current)'} in vault {self.origin}"




def parse_key_id(key_id: str, *, allow_loopback: bool = False) -> KeyVaultKeyId:
    """Parse a Key Vault key URL; raise ``ValidationError`` naming what is wrong."""
    if not isinstance(key_id, str):
        raise ValidationError(f"a Key Vault key id must be a str, got {type(key_id).__name__}")
    try:
        parts = urlsplit(key_id)
        port = parts.port
    except ValueError as error:
        raise ValidationError(f"Key Vault key id {key_id!r} is not a valid URL: {error}") from None
    if parts.scheme != "https":
        raise ValidationError(f"Key Vault key id {key_id!r} must be an https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError(
            f"Key Vault key id {key_id!r} must not carry a query, fragment or user info"
        )
    host = (parts.hostname or "").lower()
    loopback = is_loopback(host)
    managed_hsm = False
    if loopback:
        if not allow_loopback:
            raise ValidationError(
                f"Key Vault key id {key_id!r} names a loopback host; that is allowed only "
                "for tests (allow_loopback=True)"
            )
    else:
        label, _, domain = host.partition(".")
        if domain in _HSM_DOMAINS:
            managed_hsm = True
        elif domain not in _VAULT_DOMAINS:
            raise ValidationError(
                f"Key Vault key id {key_id!r} must name https://VAULT.vault.azure.net or "
                "https://HSM.managedhsm.azure.net"
            )
        if not _VAULT_NAME.match(label):
            raise ValidationError(f"Key Vault key id {key_id!r} has an invalid vault name")
        if port not in (None, 443):
            raise ValidationError(f"Key Vault key id {key_id!r} must not name a port")
        port = None
    segments = parts.path.split("/")
    if segments and segments[-1] == "" and len(segments) > 3:
        segments = segments[:-1]  # one trailing slash
    if len(segments) not in (3, 4) or segments[0] != "" or segments[1] != "keys":
        raise ValidationError(
            f"Key Vault key id {key_id!r} must look like "
            "https://VAULT.vault.azure.net/keys/NAME[/VERSION]"
        )
    name = segments[2]
    version = segments[3] if len(segments) == 4 else None
    if not _KEY_NAME.match(name):
        raise ValidationError(
            f"Key Vault key id {key_id!r}: key names are 1-127 letters, digits and '-'"
        )
    if version is not None and not _VERSION.match(version):
        raise ValidationError(f"Key Vault key id {key_id!r} has an invalid key version")
    display_host = f"[{host}]" if ":" in host else host
    origin = f"https://{display_host}" + (f":{port}" if port is not None else "")
    return KeyVaultKeyId(origin, name, version, managed_hsm, loopback)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    text = text.rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _redact(text: str) -> str:
    """Drop anything that looks like a bearer token from a message."""
    return _TOKENISH.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _chain(error: BaseException) -> list[BaseException]:
    """The error and what it wraps (``__cause__``, ``__context__``, azure's
    ``inner_exception``, urllib3's ``reason``)."""
    seen: list[BaseException] = []
    pending: list[Any] = [error]
    while pending and len(seen) < 20:
        current = pending.pop()
        if not isinstance(current, BaseException) or any(current is s for s in seen):
            continue
        seen.append(current)
        pending.extend(
            [
                current.__cause__,
                current.__context__,
                getattr(current, "inner_exception", None),
                getattr(current, "reason", None),
                *[a for a in getattr(current, "args", ()) if isinstance(a, BaseException)],
            ]
        )
    return seen


def _tls_problem(error: BaseException) -> str | None:
    """A description of a TLS failure in ``error``'s chain, or None."""
    import ssl

    for item in _chain(error):
        if isinstance(item, ssl.SSLCertVerificationError):
            return item.verify_message or str(item)
    for item in _chain(error):
        if isinstance(item, ssl.SSLError):
            return item.reason or str(item)
    text = " ".join(str(item) for item in _chain(error))
    match = re.search(r"certificate verify failed: ([^(\]'\"]+)", text)
    if match:
        return match.group(1).strip()
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return "certificate verification failed"
    return None


class KeyVaultKeyProvider(KeyProvider):
    """Key-encryption keys held in Azure Key Vault or Managed HSM.

    ``credential``: any azure-core ``TokenCredential``; when None, an
    ``azure.identity.DefaultAzureCredential()`` is created on first use.
    ``connection_verify``: True (system trust) or the path of a CA bundle.
    ``retry_total``: retries after a connection failure, 429 or 5xx (each honouring
    Retry-After up to ``max_retry_after`` seconds, else exponential backoff from
    ``retry_backoff``). ``connection_timeout``/``read_timeout`` in seconds.
    ``verify_challenge_resource``: check that the auth challenge's resource matches the
    vault's domain (keep True in production). ``algorithms``: per unversioned key id,
    ``"A256KW"`` for Managed HSM symmetric keys (default ``"RSA-OAEP-256"``).
    """

    def __init__(
        self,
        credential: Any = None,
        *,
        connection_verify: bool | str = True,
        retry_total: int = 3,
        retry_backoff: float = 0.8,
        max_retry_after: float = 60.0,
        connection_timeout: float = 10.0,
        read_timeout: float = 30.0,
        verify_challenge_resource: bool = True,
        allow_loopback: bool = False,
        algorithms: Mapping[str, str] | None = None,
        api_version: str | None = None,
    ) -> None:
        if isinstance(retry_total, bool) or not isinstance(retry_total, int) or retry_total < 0:
            raise ValidationError("retry_total must be an int >= 0")
        if connection_verify is not True and not isinstance(connection_verify, str):
            if connection_verify is False:
                raise ValidationError(
                    "connection_verify=False is refused: pass True or the path of a CA bundle"
                )
            connection_verify = str(connection_verify)  # a PathLike
        self._credential = credential
        self._connection_verify = connection_verify
        self._retry_total = retry_total
        self._retry_backoff = float(retry_backoff)
        self._max_retry_after = float(max_retry_after)
        self._connection_timeout = connection_timeout
        self._read_timeout = read_timeout
        self._verify_challenge_resource = verify_challenge_resource
        self._allow_loopback = allow_loopback
        self._api_version = api_version
        self._algorithms: dict[str, str] = {}
        for key_id, algorithm in (algorithms or {}).items():
            parsed = self._parse(key_id)
            if algorithm not in _ALGORITHMS:
                raise ValidationError(
                    f"algorithm for {key_id} must be one of {', '.join(_ALGORITHMS)}, "
                    f"got {algorithm!r}"
                )
            if algorithm == A256KW and not (parsed.managed_hsm or parsed.loopback):
                raise ValidationError(
                    f"A256KW needs a Managed HSM symmetric key; {key_id} is in a vault"
                )
            self._algorithms[parsed.unversioned.lower()] = algorithm
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- KeyProvider

    def handles(self, key_id: str) -> bool:
        try:
            self._parse(key_id)
        except ValidationError:
            return False
        return True

    def unversioned(self, key_id: str) -> str:
        return self._parse(key_id).unversioned

    def wrap_key(self, key_id: str, key: bytes | memoryview) -> tuple[str, bytes]:
        parsed = self._parse(key_id)
        algorithm = self._algorithms.get(parsed.unversioned.lower(), RSA_OAEP_256)
        plain = bytes(key)
        if not plain:
            raise ValidationError("the key to wrap is empty")
        if algorithm == A256KW and (len(plain) < 16 or len(plain) % 8):
            raise ValidationError("A256KW wraps keys of 16 bytes or more, a multiple of 8")
        answer = self._call(parsed, "wrapkey", algorithm, plain)
        del plain
        kid, wrapped = answer
        version = self._version_from_kid(parsed, kid, "wrapkey")
        expected = len(key) + 8 if algorithm == A256KW else None
        if (expected is not None and len(wrapped) != expected) or (
            expected is None and len(wrapped) < _MIN_RSA_CIPHERTEXT
        ):
            raise KeyAccessError(
                f"wrapkey on {parsed.describe()} answered {len(wrapped)} bytes, not a "
                f"{algorithm} result; refusing it"
            )
        versioned = f"{parsed.unversioned}/{version}"
        logger.info("wrapped a collection key under %s (%s)", versioned, algorithm)
        return versioned, wrapped

    def unwrap_key(self, versioned_key_id: str, wrapped: bytes) -> bytes:
        parsed = self._parse(versioned_key_id)
        if parsed.version is None:
            raise ValidationError(
                f"unwrap needs a versioned Key Vault key id, got {versioned_key_id!r}"
            )
        wrapped = bytes(wrapped)
        algorithm = A256KW if len(wrapped) < _MIN_RSA_CIPHERTEXT else RSA_OAEP_256
        if algorithm == A256KW and (len(wrapped) < 24 or len(wrapped) % 8):
            raise IntegrityError(
                f"the wrapped collection key for {parsed.describe()} has an impossible "
                f"length ({len(wrapped)} bytes): tampered manifest"
            )
        kid, plain = self._call(parsed, "unwrapkey", algorithm, wrapped)
        self._version_from_kid(parsed, kid, "unwrapkey")  # same vault, key and version
        logger.info("unwrapped a collection key with %s (%s)", parsed.url, algorithm)
        return plain

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing sockets only
                pass

    # -- internals

    def _parse(self, key_id: str) -> KeyVaultKeyId:
        return parse_key_id(key_id, allow_loopback=self._allow_loopback)

    def _client(self, origin: str) -> Any:
        with self._lock:
            client = self._clients.get(origin)
            if client is not None:
                return client
            try:
                from azure.keyvault.keys import KeyClient
            except ImportError:
                raise KeyAccessError(
                    "Key Vault keys need the azure-keyvault-keys and azure-identity packages: "
                    "pip install azure-keyvault-keys azure-identity"
                ) from None
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            options: dict[str, Any] = {
                "connection_verify": self._connection_verify,
                "verify_challenge_resource": self._verify_challenge_resource,
                "retry_total": 0,  # retries are done in _call, bounded and typed
                "connection_timeout": self._connection_timeout,
                "read_timeout": self._read_timeout,
            }
            if self._api_version:
                options["api_version"] = self._api_version
            client = KeyClient(origin, self._credential, **options)
            self._clients[origin] = client
            return client

    def _call(
        self, parsed: KeyVaultKeyId, operation: str, algorithm: str, value: bytes
    ) -> tuple[str, bytes]:
        """POST one wrapkey/unwrapkey; return (kid, value). Retries and typed errors."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.rest import HttpRequest

        what = f"{operation} on {parsed.describe()}"
        client = self._client(parsed.origin)
        path = f"/keys/{parsed.name}/{parsed.version or ''}/{operation}"
        body = {"alg": algorithm, "value": _b64url(value)}
        attempt = 0
        while True:
            attempt += 1
            delay: float | None = None
            try:
                response = client.send_request(HttpRequest("POST", path, json=body))
            except ClientAuthenticationError as error:
                raise KeyAccessError(
                    f"{what} failed: authentication failed before the request was sent "
                    f"(no token from the credential, or the vault's auth challenge was "
                    f"refused): {type(error).__name__}: {_redact(str(error.message))[:300]}"
                ) from None
            except ValueError as error:  # the SDK refusing the vault's auth challenge
                raise KeyAccessError(
                    f"{what} failed: authentication failed before the request was sent: "
                    f"the vault's auth challenge was refused ({_redact(str(error))[:300]})"
                ) from None
            except (ServiceRequestError, ServiceResponseError) as error:
                problem = _tls_problem(error)
                if problem is not None:
                    raise KeyAccessError(
                        f"{what} failed: TLS certificate verification failed ({problem}); "
                        "check the vault's certificate or the CA bundle given as "
                        "connection_verify"
                    ) from None
                reason = f"{type(error).__name__}: {_redact(str(error.message))[:200]}"
                if attempt > self._retry_total:
                    raise KeyAccessError(
                        f"{what} failed: Key Vault unreachable after {attempt} attempt(s) "
                        f"({reason})"
                    ) from None
                logger.warning("%s: unreachable (%s), retrying", what, type(error).__name__)
            else:
                status = response.status_code
                if status == 200:
                    return self._parse_answer(parsed, what, response, operation)
                if status not in _RETRY_STATUSES:
                    self._raise_for(parsed, what, operation, response)
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
                if attempt > self._retry_total or (
                    retry_after is not None and retry_after > self._max_retry_after
                ):
                    label = "throttled" if status == 429 else f"service error {status}"
                    hint = f"; the service asks to wait {retry_after:.0f} s" if retry_after else ""
                    raise KeyAccessError(
                        f"{what} failed: {label} after {attempt} attempt(s){hint}"
                        f"{self._service_detail(response)}"
                    )
                delay = retry_after
                logger.warning("%s: HTTP %d, retrying", what, status)
            if delay is None:
                delay = min(self._retry_backoff * (2 ** (attempt - 1)), self._max_retry_after)
            time.sleep(delay)

    @staticmethod
    def _service_detail(response: Any) -> str:
        try:
            error = response.json().get("error", {})
            code = error.get("code")
            message = error.get("message")
            inner = (error.get("innererror") or {}).get("code")
        except Exception:  # noqa: BLE001 - a non-JSON body
            return ""
        parts = [p for p in (code, inner) if isinstance(p, str)]
        text = "/".join(parts)
        if isinstance(message, str):
            text = f"{text}: {message}" if text else message
        return f" [service: {_redact(text)[:300]}]" if text else ""

    def _raise_for(self, parsed: KeyVaultKeyId, what: str, operation: str, response: Any) -> None:
        status = response.status_code
        detail = self._service_detail(response)
        inner = ""
        try:
            error = response.json().get("error", {})
            inner = str((error.get("innererror") or {}).get("code") or "")
            message = str(error.get("message") or "")
        except Exception:  # noqa: BLE001
            message = ""
        if status == 401:
            raise KeyAccessError(
                f"{what} failed: authentication refused (HTTP 401): the token is expired or "
                f"invalid for this vault{detail}"
            )
        if status == 403:
            if inner.lower() == "keydisabled" or "disabled" in message.lower():
                raise KeyNotFoundError(f"{what} failed: the key version is disabled{detail}")
            raise KeyAccessError(
                f"{what} failed: access denied: the identity needs wrapKey/unwrapKey on "
                f"{parsed.unversioned} (HTTP 403){detail}"
            )
        if status == 404:
            raise KeyNotFoundError(f"{what} failed: no such key or version (HTTP 404){detail}")
        if status == 400 and operation == "unwrapkey":
            raise IntegrityError(
                f"{what} failed: the service could not unwrap the collection key: wrong key "
                f"or tampered manifest{detail}"
            )
        raise KeyAccessError(f"{what} failed: HTTP {status}{detail}")

    @staticmethod
    def _parse_answer(
        parsed: KeyVaultKeyId, what: str, response: Any, operation: str
    ) -> tuple[str, bytes]:
        try:
            answer = response.json()
            kid = answer["kid"]
            value = _unb64url(answer["value"])
            if not isinstance(kid, str) or not value:
                raise ValueError
        except Exception:  # noqa: BLE001 - any malformed answer
            error = IntegrityError if operation == "unwrapkey" else KeyAccessError
            raise error(f"{what} failed: the service's answer is malformed") from None
        return kid, value

    def _version_from_kid(self, parsed: KeyVaultKeyId, kid: str, operation: str) -> str:
        try:
            answered = parse_key_id(kid, allow_loopback=self._allow_loopback)
        except ValidationError:
            answered = None
        if (
            answered is None
            or answered.version is None
            or answered.origin.lower() != parsed.origin.lower()
            or answered.name.lower() != parsed.name.lower()
            or (parsed.version is not None and answered.version.lower() != parsed.version.lower())
        ):
            raise KeyAccessError(
                f"{operation} on {parsed.describe()} was answered for another key "
                f"({kid!r}); refusing it"
            )
        return answered.version
