"""A loopback HTTPS stand-in for Azure Key Vault's key operations.

It speaks enough of the Key Vault REST protocol for the real ``azure-keyvault-keys``
clients (``CryptographyClient`` and ``KeyClient.send_request``):

* challenge-based auth: a request without ``Authorization`` gets 401 with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; afterwards the bearer token must equal the one
  the stand-in was built with (``reject_tokens`` makes it refuse every token, as the
  service does with an expired one);
* ``GET /keys/NAME[/VERSION]`` answers the public JWK (``forbid_get`` answers 403);
* ``POST /keys/NAME/VERSION/wrapkey`` and ``/unwrapkey`` (VERSION may be empty, as the
  SDK sends it for "the current version") do real RSA-OAEP-256 (and RSA-OAEP/RSA1_5,
  so a test can see a client asking for them) under RSA keys, and A256KW under an
  ``oct-HSM`` key whose material is never returned.

Failure injection: ``fail_next(op, status, times)`` (403, 404, 500...), ``disable``,
``throttle(op, times, retry_after)`` (429 with Retry-After), ``drop(op, times)``
(the connection is closed after the request is read, without an answer),
``stall(op, seconds)`` (answer late), ``wrong_unwrap`` (unwrap answers another key's
bytes), ``echo_token`` (error messages quote the caller's token). Every request is recorded in
``requests`` as ``Recorded(method, path, op, alg, authorized, status)``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

TENANT = "72f988bf-0000-4000-8000-00000000test"

def _jwt_shaped(claims: dict) -> str:
    """An unsigned token shaped like a real Entra access token (the stand-in only
    compares it; its shape lets tests check redaction)."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.c3RhbmRpbi1zaWduYXR1cmU"


DEFAULT_TOKEN = _jwt_shaped({"aud": "https://vault.azure.net", "tid": "standin", "oid": "sealvec-test"})
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
    'resource="https://vault.azure.net"'
)
_PATH = re.compile(r"^/keys/([A-Za-z0-9-]+)(?:/([A-Za-z0-9]*))?(?:/(wrapkey|unwrapkey))?/?$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class Recorded:
    method: str
    path: str
    op: str  # "get", "wrapkey", "unwrapkey" or "?"
    alg: str | None
    authorized: bool  # whether it carried a bearer token
    status: int = 0


@dataclass
class _Version:
    version: str
    kty: str  # "RSA" or "oct-HSM"
    material: object  # rsa.RSAPrivateKey or 32 bytes
    enabled: bool = True


@dataclass
class _Key:
    name: str
    versions: list[_Version] = field(default_factory=list)

    @property
    def current(self) -> _Version:
        return self.versions[-1]

    def find(self, version: str) -> _Version | None:
        if not version:
            return self.current
        for candidate in self.versions:
            if candidate.version == version:
                return candidate
        return None


class KeyVaultStandIn:
    """Start with ``start()`` (or use as a context manager); ``url`` is the vault URL."""

    def __init__(self, tls, *, token: str = DEFAULT_TOKEN, rsa_bits: int = 2048) -> None:
        self.tls = tls
        self.token = token
        self.rsa_bits = rsa_bits
        self.keys: dict[str, _Key] = {}
        self.requests: list[Recorded] = []
        self.forbid_get = False
        self.reject_tokens = False
        self.wrong_unwrap = False
        self.echo_token = False  # error messages quote the caller's token (redaction tests)
        self._failures: list[dict] = []  # {"op", "status", "times", "retry_after", "drop"}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> KeyVaultStandIn:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        standin = self

        class Handler(_Handler):
            owner = standin

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KeyVaultStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def key_url(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/keys/{name}" + (f"/{version}" if version else "")

    # -- keys

    def add_rsa_key(self, name: str) -> str:
        """Add key ``name`` or a new current version of it; return the version."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=self.rsa_bits)
        return self._add(name, "RSA", private)

    def add_oct_hsm_key(self, name: str) -> str:
        return self._add(name, "oct-HSM", os.urandom(32))

    def _add(self, name: str, kty: str, material: object) -> str:
        version = uuid.uuid4().hex
        with self._lock:
            self.keys.setdefault(name, _Key(name)).versions.append(_Version(version, kty, material))
        return version

    def disable(self, name: str, version: str | None = None) -> None:
        key = self.keys[name]
        target = key.find(version or "")
        assert target is not None
        target.enabled = False

    # -- failure injection

    def fail_next(self, op: str, status: int, times: int = 1, retry_after: str | None = None) -> None:
        with self._lock:
            self._failures.append(
                {"op": op, "status": status, "times": times, "retry_after": retry_after, "drop": False}
            )

    def throttle(self, op: str, times: int, retry_after: str = "0") -> None:
        self.fail_next(op, 429, times, retry_after)

    def drop(self, op: str, times: int = 1) -> None:
        with self._lock:
            self._failures.append(
                {"op": op, "status": 0, "times": times, "retry_after": None, "drop": True}
            )

    def stall(self, op: str, seconds: float, times: int = 1) -> None:
        """Wait ``seconds`` before answering (a slow or hung vault)."""
        with self._lock:
            self._failures.append(
                {"op": op, "status": 0, "times": times, "retry_after": None, "drop": False,
                 "stall": seconds}
            )

    def _take_failure(self, op: str) -> dict | None:
        with self._lock:
            for failure in self._failures:
                if failure["op"] in (op, "*") and failure["times"] > 0:
                    failure["times"] -= 1
                    return failure
        return None

    # -- inspection

    def ops(self, *, authorized_only: bool = True) -> list[str]:
        return [r.op for r in self.requests if r.authorized or not authorized_only]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- protocol

    def kid(self, name: str, version: str) -> str:
        return f"{self.url}/keys/{name}/{version}"

    def jwk(self, name: str, entry: _Version) -> dict:
        if entry.kty == "RSA":
            numbers = entry.material.public_key().public_numbers()  # type: ignore[attr-defined]
            return {
                "kid": self.kid(name, entry.version),
                "kty": "RSA",
                "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
                "n": _int_b64(numbers.n),
                "e": _int_b64(numbers.e),
            }
        return {"kid": self.kid(name, entry.version), "kty": "oct-HSM", "key_ops": ["wrapKey", "unwrapKey"]}


def _oaep(alg: str):
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    return None


class _Handler(BaseHTTPRequestHandler):
    owner: KeyVaultStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence
        return

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def _reply(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, record: Recorded, status: int, code: str, message: str, inner: str | None = None,
               headers: dict | None = None) -> None:
        record.status = status
        if self.owner.echo_token:
            sent = self.headers.get("Authorization") or ""
            message = f"{message} (token {sent.removeprefix('Bearer ')}; header {sent})"
        error: dict = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        self._reply(status, {"error": error}, headers)

    def _handle(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        match = _PATH.match(split.path)
        op = "?"
        if match:
            op = match.group(3) or ("get" if self.command == "GET" else "?")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        alg = body.get("alg") if isinstance(body, dict) else None
        auth = self.headers.get("Authorization")
        record = Recorded(self.command, split.path, op, alg, auth is not None)
        with owner._lock:
            owner.requests.append(record)

        if "api-version" not in parse_qs(split.query):
            return self._error(record, 400, "BadParameter", "api-version is missing")
        if auth is None:
            return self._error(record, 401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                               headers={"WWW-Authenticate": CHALLENGE})
        if owner.reject_tokens or auth != f"Bearer {owner.token}":
            return self._error(
                record, 401, "Unauthorized", "AKV10032: Invalid issuer or the token is expired.",
                headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
            )
        if match is None or op == "?":
            return self._error(record, 400, "BadParameter", f"unsupported request {self.command} {split.path}")

        failure = owner._take_failure(op)
        if failure is not None and failure.get("stall"):
            time.sleep(failure["stall"])
            failure = None
        if failure is not None:
            if failure["drop"]:
                record.status = -1
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            status = failure["status"]
            if status == 429:
                return self._error(record, 429, "Throttled", "Rate limit exceeded. Try again later.",
                                   headers={"Retry-After": failure["retry_after"] or "0"})
            if status == 403:
                return self._error(record, 403, "Forbidden",
                                   f"The user, group or application does not have keys {op} permission.",
                                   inner="ForbiddenByPolicy")
            if status == 404:
                return self._error(record, 404, "KeyNotFound", "A key with (name/id) was not found.")
            return self._error(record, status, "InternalError", "injected failure",
                               headers={"Retry-After": failure["retry_after"]} if failure["retry_after"] else None)

        name, version = match.group(1), match.group(2) or ""
        key = owner.keys.get(name)
        entry = key.find(version) if key else None
        if entry is None:
            return self._error(record, 404, "KeyNotFound",
                               f"A key with (name/id) {name}/{version} was not found in this key vault.")

        if op == "get":
            if owner.forbid_get:
                return self._error(record, 403, "Forbidden",
                                   "The user, group or application does not have keys get permission.",
                                   inner="ForbiddenByPolicy")
            record.status = 200
            return self._reply(200, {"key": owner.jwk(name, entry),
                                     "attributes": {"enabled": entry.enabled, "created": 1700000000,
                                                    "updated": 1700000000,
                                                    "recoveryLevel": "Recoverable+Purgeable"}})

        if not entry.enabled:
            operation = "wrapKey" if op == "wrapkey" else "unwrapKey"
            return self._error(record, 403, "Forbidden",
                               f'Operation "{operation}" is not allowed on a disabled key.', inner="KeyDisabled")
        try:
            value = unb64url(body["value"])
        except (KeyError, TypeError, ValueError):
            return self._error(record, 400, "BadParameter", "value is missing or not base64url")

        if entry.kty == "RSA":
            scheme = _oaep(alg or "")
            if scheme is None:
                return self._error(record, 400, "BadParameter", f"Algorithm {alg} is not supported for RSA keys")
            private = entry.material
            try:
                if op == "wrapkey":
                    result = private.public_key().encrypt(value, scheme)  # type: ignore[attr-defined]
                else:
                    result = private.decrypt(value, scheme)  # type: ignore[attr-defined]
            except ValueError:
                return self._error(record, 400, "BadParameter", "Unable to decrypt the specified value.")
        else:
            if alg != "A256KW":
                return self._error(record, 400, "BadParameter", f"Algorithm {alg} is not supported for oct-HSM keys")
            try:
                if op == "wrapkey":
                    result = aes_key_wrap(entry.material, value)  # type: ignore[arg-type]
                else:
                    result = aes_key_unwrap(entry.material, value)  # type: ignore[arg-type]
            except (InvalidUnwrap, ValueError):
                return self._error(record, 400, "BadParameter", "Unable to unwrap the specified value.")
        if op == "unwrapkey" and owner.wrong_unwrap:
            result = bytes(b ^ 0x5A for b in result)  # another key's answer
        record.status = 200
        self._reply(200, {"kid": owner.kid(name, entry.version), "value": b64url(result)})
