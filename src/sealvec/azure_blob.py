"""Azure Blob Storage backend: sealed objects as block blobs under a prefix.

Location URLs:

* ``https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX`` (host-style account);
* ``https://127.0.0.1:PORT/devstoreaccount1/CONTAINER/PREFIX`` (path-style: used
  for IP-address and ``localhost`` hosts, e.g. the Azurite emulator).

Only HTTPS is accepted. ``http://`` is refused unless the host is loopback
(127.0.0.0/8, ::1, localhost) *and* ``allow_insecure_loopback=True``.

Objects are blobs named ``PREFIX/<name>``. Every put is atomic: a blob that fits in
one block goes up in one Put Blob; a larger one is staged block by block and
becomes visible only when the block list is committed. A create-only put carries
``If-None-Match: *`` on that single request (Put Blob, or Put Block List), so of
two writers racing for the same name exactly one wins, however large the object.
Uncommitted blocks of an abandoned upload are discarded by the service (after a
week at the latest), so ``remove_temporary`` has nothing to do.

Reads made through :meth:`AzureBlobStorage.open` are ranged GETs pinned to the
ETag seen when the stream was opened: a blob replaced while it is being read fails
with StorageError instead of mixing two versions.

Writer lock: a 60 s blob lease on ``PREFIX/.writer-lock``, renewed every 20 s by
a daemon thread while held and released on exit. A writer that dies without
releasing it (SIGKILL, power loss, lost network) leaves a lease that the service
expires at most 60 s after its last renewal; the next writer then takes over.
While it holds the lease, this object refuses to put or delete anything once the
lease could have lapsed (no successful renewal for 50 s), so a writer that was cut
off cannot touch a store another writer may own by then. (A request already in
flight, or stuck in retries, when the lease lapses is not covered: keep
``retry_total``/timeouts well under the lease duration.)

Secrets: account keys, SAS tokens and bearer tokens never appear in messages or
logs; messages name the account, container, object and operation only, and
transport errors are not chained (their text may contain request URLs).
"""

from __future__ import annotations

import base64
import errno
import io
import ipaddress
import logging
import os
import random
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, NoReturn
from urllib.parse import unquote, urlsplit

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobLeaseClient, BlobType, ContainerClient, ExponentialRetry

from sealvec.errors import ConflictError, StorageError, StoreLockedError, ValidationError
from sealvec.transport import is_loopback
from sealvec.storage import Storage, _check_name

logger = logging.getLogger(__name__)

LOCK_BLOB = ".writer-lock"
LEASE_SECONDS = 60
RENEW_SECONDS = 20
#: Stop writing once this long has passed since the start of the last successful
#: acquire/renew request (10 s short of the lease, for clock-rate differences).
LEASE_TRUST_SECONDS = LEASE_SECONDS - 10

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_READ_CHUNK = 4 * 1024 * 1024
MAX_BLOCK_SIZE = 4000 * 1024 * 1024

#: The well-known key of the storage emulator's devstoreaccount1 (public, not a secret).
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


# --------------------------------------------------------------------------- helpers




def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _is_tls_failure(error: BaseException) -> bool:
    """Whether a transport error was a TLS handshake/verification failure."""
    seen: set[int] = set()
    pending: list[Any] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen or len(seen) > 32:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return True
        if type(item).__name__ == "SSLError":  # requests / urllib3 wrappers
            return True
        pending.extend([item.__cause__, item.__context__, getattr(item, "inner_exception", None)])
        pending.extend(getattr(item, "args", ()))
        pending.append(getattr(item, "reason", None))
    return False


class _RetryPolicy(ExponentialRetry):
    """Storage retry policy with azure-core style settings.

    Backoff ``retry_backoff_factor * 2 ** (n - 1)`` seconds (±20 % jitter), capped
    at ``retry_backoff_max``. TLS verification failures are never retried: they
    cannot get better, so they fail fast.
    """

    def __init__(self, *, retry_total: int, retry_backoff_factor: float, retry_backoff_max: float):
        super().__init__(
            initial_backoff=0,
            increment_base=0,
            retry_total=retry_total,
            retry_connect=retry_total,
            retry_read=retry_total,
            retry_status=retry_total,
            random_jitter_range=0,
        )
        self.backoff_factor = retry_backoff_factor
        self.backoff_max = retry_backoff_max

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        count = max(1, int(settings.get("count", 1)))
        backoff = min(self.backoff_max, self.backoff_factor * (2 ** (count - 1)))
        return backoff * random.uniform(0.8, 1.2)

    def increment(self, settings, request, response=None, error=None) -> bool:  # type: ignore[override]
        if error is not None and _is_tls_failure(error):
            return False
        return super().increment(settings, request, response=response, error=error)


_SAS_SIGNATURE = re.compile(r"(?i)(\bsig=)[^&\s\"']+")


class _RedactSasSignatures(logging.Filter):
    """Blank SAS signatures in urllib3's debug lines (they log whole request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - never break logging
            return True
        if "sig=" in message.lower():
            record.msg = _SAS_SIGNATURE.sub(r"\1REDACTED", message)
            record.args = ()
        return True


_redactor_lock = threading.Lock()


def _install_sas_redaction() -> None:
    with _redactor_lock:
        target = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, _RedactSasSignatures) for f in target.filters):
            target.addFilter(_RedactSasSignatures())


def _block_id(token: str, index: int) -> str:
    # Every block id of one blob must have the same length: all uploads use this form.
    return base64.b64encode(f"{token}-{index:08d}".encode("ascii")).decode("ascii")


# --------------------------------------------------------------------------- storage


class AzureBlobStorage(Storage):
    """A sealvec store in an Azure Blob Storage container, under a name prefix.

    ``credential``: an azure-core ``TokenCredential`` (e.g. from azure-identity), an
    ``AzureNamedKeyCredential``, an ``AzureSasCredential``, a SAS token string, an
    account key string, or None (anonymous). A SAS may also come as the URL's query.
    """

    exclusive_writer_lock = True

    def __init__(
        self,
        url: str,
        credential: Any = None,
        *,
        api_version: str | None = None,
        connection_verify: str | bool = True,
        allow_insecure_loopback: bool = False,
        path_style: bool | None = None,
        retry_total: int = 3,
        retry_backoff_factor: float = 0.8,
        retry_backoff_max: float = 20.0,
        connection_timeout: float = 20.0,
        read_timeout: float = 60.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        read_chunk_size: int = DEFAULT_READ_CHUNK,
        lock_timeout: float = 0.0,
    ) -> None:
        if not isinstance(url, str):
            raise ValidationError("the Azure location must be a URL string")
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise ValidationError(
                "an Azure Blob location must be an https:// URL "
                f"(got scheme {scheme or 'none'!r})"
            )
        if parts.username or parts.password:
            raise ValidationError("put no credentials in the Azure location URL; pass credential=")
        host = parts.hostname or ""
        if not host:
            raise ValidationError("the Azure location URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValidationError("the Azure location URL has an invalid port") from None
        if scheme == "http":
            if not is_loopback(host):
                raise ValidationError(
                    f"refusing plain http:// to {host}: only https is allowed for Azure "
                    "Blob Storage (data and credentials would cross the network unprotected)"
                )
            if not allow_insecure_loopback:
                raise ValidationError(
                    f"refusing plain http:// to loopback host {host}: pass "
                    "allow_insecure_loopback=True to allow unencrypted HTTP to a local emulator, "
                    "or use https"
                )
        if path_style is None:
            path_style = _is_ip(host) or host.lower() == "localhost"
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise ValidationError("the Azure location path may not contain '.' or '..'")
        if path_style:
            if len(segments) < 2:
                raise ValidationError(
                    "a path-style Azure location needs /ACCOUNT/CONTAINER[/PREFIX] after the host"
                )
            account, container, prefix_parts = segments[0], segments[1], segments[2:]
        else:
            if len(segments) < 1:
                raise ValidationError("the Azure location needs /CONTAINER[/PREFIX] after the host")
            account = host.split(".")[0]
            container, prefix_parts = segments[0], segments[1:]
        if not _ACCOUNT_RE.match(account):
            raise ValidationError(f"invalid storage account name {account!r}")
        if not _CONTAINER_RE.match(container):
            raise ValidationError(
                f"invalid container name {container!r}: 3-63 lowercase letters, digits and "
                "single hyphens, starting and ending with a letter or digit"
            )
        if parts.query:
            if credential is not None:
                raise ValidationError(
                    "the Azure location URL has a query (a SAS?) and credential= is also given; "
                    "pass the SAS one way only"
                )
            credential = AzureSasCredential(parts.query)

        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc = f"{netloc}:{port}"
        endpoint = f"{scheme}://{netloc}" + (f"/{account}" if path_style else "")

        self._account = account
        self._container_name = container
        self._prefix = "/".join(prefix_parts)
        self._endpoint = endpoint
        self._host = host
        self._location = "/".join([endpoint, container, *prefix_parts])

        if isinstance(retry_total, bool) or not isinstance(retry_total, int) or retry_total < 0:
            raise ValidationError("retry_total must be an int >= 0")
        for label, value in (
            ("retry_backoff_factor", retry_backoff_factor),
            ("retry_backoff_max", retry_backoff_max),
            ("lock_timeout", lock_timeout),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValidationError(f"{label} must be a number >= 0")
        for label, value in (("connection_timeout", connection_timeout), ("read_timeout", read_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValidationError(f"{label} must be a number of seconds > 0")
        for label, value in (("block_size", block_size), ("read_chunk_size", read_chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BLOCK_SIZE:
                raise ValidationError(f"{label} must be an int from 1 to {MAX_BLOCK_SIZE}")
        if isinstance(connection_verify, str):
            if not os.path.isfile(connection_verify):
                raise ValidationError(f"CA bundle {connection_verify} does not exist")
        elif not isinstance(connection_verify, bool):
            raise ValidationError("connection_verify must be a CA bundle path or a bool")
        if connection_verify is False:
            logger.warning("TLS certificate verification is OFF for %s", self._location)

        credential = self._normalise_credential(credential)
        if isinstance(credential, AzureSasCredential):
            _install_sas_redaction()
        if scheme == "http" and hasattr(credential, "get_token"):
            raise ValidationError("token credentials need https: the emulator must run with TLS")

        self.block_size = block_size
        self.read_chunk_size = read_chunk_size
        self.lock_timeout = float(lock_timeout)
        options: dict[str, Any] = {
            "retry_policy": _RetryPolicy(
                retry_total=retry_total,
                retry_backoff_factor=float(retry_backoff_factor),
                retry_backoff_max=float(retry_backoff_max),
            ),
            "connection_verify": connection_verify,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "max_single_get_size": read_chunk_size,
            "max_chunk_get_size": read_chunk_size,
        }
        if api_version is not None:
            options["api_version"] = api_version
        try:
            self._client = ContainerClient(
                account_url=endpoint, container_name=container, credential=credential, **options
            )
        except (ValueError, TypeError) as error:
            raise ValidationError(
                f"cannot configure the Azure client for {self._location}: "
                f"{type(error).__name__}"
            ) from None

        self._lock_state_guard = threading.Lock()
        self._lease: _HeldLease | None = None
        self._lock_busy = False

    # ------------------------------------------------------------------ construction

    def _normalise_credential(self, credential: Any) -> Any:
        if credential is None or hasattr(credential, "get_token"):
            return credential
        if isinstance(credential, (AzureNamedKeyCredential, AzureSasCredential)):
            return credential
        if isinstance(credential, str):
            text = credential.strip()
            if not text:
                raise ValidationError("the Azure credential is an empty string")
            if "sig=" in text:
                return AzureSasCredential(text.lstrip("?"))
            return AzureNamedKeyCredential(self._account, text)
        raise ValidationError(
            "credential must be a TokenCredential, AzureNamedKeyCredential, "
            f"AzureSasCredential, a SAS or account key string, or None (got {type(credential).__name__})"
        )

    @classmethod
    def from_connection_string(
        cls, conn_str: str, container: str, prefix: str = "", **options: Any
    ) -> AzureBlobStorage:
        """A store from an Azure Storage connection string (AccountName/AccountKey,
        BlobEndpoint, SharedAccessSignature, EndpointSuffix, DefaultEndpointsProtocol,
        or UseDevelopmentStorage=true)."""
        if not isinstance(conn_str, str):
            raise ValidationError("the connection string must be a str")
        settings: dict[str, str] = {}
        for item in conn_str.split(";"):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ValidationError("malformed connection string: expected KEY=VALUE pairs")
            settings[key.strip().lower()] = value.strip()
        if settings.get("usedevelopmentstorage", "").lower() == "true":
            settings.setdefault("accountname", EMULATOR_ACCOUNT)
            settings.setdefault("accountkey", EMULATOR_KEY)
            settings.setdefault("blobendpoint", f"http://127.0.0.1:10000/{EMULATOR_ACCOUNT}")
        account = settings.get("accountname")
        endpoint = settings.get("blobendpoint")
        if not endpoint:
            if not account:
                raise ValidationError("the connection string names neither BlobEndpoint nor AccountName")
            protocol = settings.get("defaultendpointsprotocol", "https").lower()
            suffix = settings.get("endpointsuffix", "core.windows.net")
            endpoint = f"{protocol}://{account}.blob.{suffix}"
        credential: Any = None
        if settings.get("accountkey"):
            if not account:
                raise ValidationError("the connection string has AccountKey but no AccountName")
            credential = AzureNamedKeyCredential(account, settings["accountkey"])
        elif settings.get("sharedaccesssignature"):
            credential = AzureSasCredential(settings["sharedaccesssignature"].lstrip("?"))
        if urlsplit(endpoint).query:
            raise ValidationError("BlobEndpoint must not carry a query; use SharedAccessSignature=")
        path = "/".join(p.strip("/") for p in (container, prefix) if p and p.strip("/"))
        return cls(f"{endpoint.rstrip('/')}/{path}", credential, **options)

    # ------------------------------------------------------------------ basics

    @property
    def location(self) -> str:
        return self._location

    @property
    def account(self) -> str:
        return self._account

    @property
    def container(self) -> str:
        return self._container_name

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return f"AzureBlobStorage({self._location!r})"

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self._client.close()

    def _blob_name(self, name: str) -> str:
        _check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def _blob(self, name: str):
        return self._client.get_blob_client(self._blob_name(name))

    def _where(self) -> str:
        return f"account {self._account}, container {self._container_name}"

    def _missing(self, name: str) -> StorageError:
        error = StorageError(f"object {name} is missing from {self._location}")
        error.__cause__ = FileNotFoundError(errno.ENOENT, "blob not found", name)
        return error

    def _raise(self, error: BaseException, operation: str, name: str | None = None) -> NoReturn:
        """Raise the StorageError for ``error``; transport errors are not chained."""
        mapped = self._error(error, operation, name)
        raise mapped from mapped.__cause__

    def _error(self, error: BaseException, operation: str, name: str | None = None) -> StorageError:
        """A one-line StorageError for an azure-core/transport error (no secrets)."""
        target = f"{operation} {name}" if name else operation
        head = f"cannot {target} ({self._where()}, endpoint {self._endpoint})"
        status = getattr(error, "status_code", None)
        code = getattr(error, "error_code", None)
        code = getattr(code, "value", code)
        detail = " ".join(str(x) for x in (f"HTTP {status}" if status else None, code) if x)
        logger.debug("azure %s failed: %s %s", target, type(error).__name__, detail)
        if isinstance(error, ResourceNotFoundError) and code in ("ContainerNotFound",):
            return StorageError(f"{head}: the container does not exist")
        if isinstance(error, ResourceNotFoundError) and name is not None:
            return self._missing(name)
        if isinstance(error, ClientAuthenticationError) or status in (401, 403) or (
            type(error).__name__ == "AzureSigningError"
        ):
            why = detail or type(error).__name__
            return StorageError(
                f"{head}: authentication or authorisation failed ({why}); "
                "check the credential, its permissions and its expiry"
            )
        if isinstance(error, ServiceRequestError):
            if _is_tls_failure(error):
                return StorageError(
                    f"{head}: TLS certificate verification failed; check connection_verify "
                    "(the CA bundle) and the endpoint's certificate"
                )
            if isinstance(error, ServiceRequestTimeoutError):
                return StorageError(f"{head}: timed out connecting")
            return StorageError(f"{head}: the endpoint is unreachable (connection failed)")
        if isinstance(error, ServiceResponseError):
            if isinstance(error, ServiceResponseTimeoutError):
                return StorageError(f"{head}: timed out waiting for the reply")
            return StorageError(f"{head}: the connection broke during the request")
        if isinstance(error, HttpResponseError):
            return StorageError(f"{head}: {detail or 'request failed'}")
        return StorageError(f"{head}: {type(error).__name__}")

    # ------------------------------------------------------------------ container

    def exists(self) -> bool:
        try:
            return bool(self._client.exists())
        except AzureError as error:
            self._raise(error, "check the container")

    def initialise(self) -> None:
        try:
            self._client.create_container()
            logger.info("created container %s in account %s", self._container_name, self._account)
        except ResourceExistsError:
            return
        except AzureError as error:
            status = getattr(error, "status_code", None)
            if status == 403 and self.exists():
                return  # a credential scoped to an existing container may not create one
            self._raise(error, "create the container")

    # ------------------------------------------------------------------ reads

    def get(self, name: str) -> bytes:
        blob = self._blob(name)
        try:
            return blob.download_blob(max_concurrency=1).readall()
        except AzureError as error:
            self._raise(error, "read", name)

    def size(self, name: str) -> int:
        blob = self._blob(name)
        try:
            return int(blob.get_blob_properties().size)
        except AzureError as error:
            self._raise(error, "read the size of", name)

    def open(self, name: str) -> BinaryIO:
        blob = self._blob(name)
        try:
            properties = blob.get_blob_properties()
        except AzureError as error:
            self._raise(error, "open", name)
        return _BlobReader(self, blob, name, int(properties.size), properties.etag)  # type: ignore[return-value]

    def list(self, prefix: str) -> list[str]:
        base = f"{self._prefix}/" if self._prefix else ""
        names = []
        try:
            for blob_name in self._client.list_blob_names(name_starts_with=base + prefix):
                rel = blob_name[len(base):]
                if any(part.startswith(".") or not part for part in rel.split("/")):
                    continue
                names.append(rel)
        except ResourceNotFoundError:
            return []  # no container: no objects
        except AzureError as error:
            self._raise(error, f"list {prefix or 'objects'}")
        return sorted(names)

    # ------------------------------------------------------------------ writes

    def delete(self, name: str) -> None:
        blob = self._blob(name)
        self._check_lease_for_write("delete", name)
        try:
            blob.delete_blob()
        except ResourceNotFoundError:
            return
        except AzureError as error:
            self._raise(error, "delete", name)

    def put(self, name: str, chunks: Iterable[bytes], *, create_only: bool = False) -> None:
        blob = self._blob(name)
        self._check_lease_for_write("write", name)
        buffer = bytearray()
        block_ids: list[str] = []
        token = secrets.token_hex(8)
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) > self.block_size:
                    self._stage(blob, name, block_ids, token, bytes(buffer[: self.block_size]))
                    del buffer[: self.block_size]
            if not block_ids:
                self._put_single(blob, name, bytes(buffer), create_only)
                return
            if buffer:
                self._stage(blob, name, block_ids, token, bytes(buffer))
            buffer = bytearray()
            self._check_lease_for_write("write", name)
            self._commit_blocks(blob, name, block_ids, create_only)
        finally:
            buffer.clear()

    def _stage(self, blob, name: str, block_ids: list[str], token: str, data: bytes) -> None:
        block_id = _block_id(token, len(block_ids))
        try:
            blob.stage_block(block_id, data, length=len(data))
        except AzureError as error:
            self._raise(error, "upload a block of", name)
        block_ids.append(block_id)

    def _conflict(self, name: str) -> ConflictError:
        return ConflictError(
            f"object {name} already exists in {self._location} (another writer committed first)"
        )

    def _put_single(self, blob, name: str, data: bytes, create_only: bool) -> None:
        conditions: dict[str, Any] = {"if_none_match": "*"} if create_only else {}
        try:
            blob.upload_blob(
                data,
                length=len(data),
                blob_type=BlobType.BLOCKBLOB,
                overwrite=not create_only,
                max_concurrency=1,
                **conditions,
            )
        except (ResourceExistsError, ResourceModifiedError) as error:
            if not create_only:
                self._raise(error, "write", name)
            # A retried request whose first attempt did land also reads as 409:
            # the blob is then ours, byte for byte.
            if self._holds_bytes(blob, data):
                logger.info("create-only put of %s landed on an earlier attempt", name)
                return
            raise self._conflict(name) from None
        except AzureError as error:
            self._raise(error, "write", name)

    def _holds_bytes(self, blob, data: bytes) -> bool:
        try:
            if int(blob.get_blob_properties().size) != len(data):
                return False
            return blob.download_blob(max_concurrency=1).readall() == data
        except AzureError:
            return False

    def _commit_blocks(self, blob, name: str, block_ids: list[str], create_only: bool) -> None:
        conditions: dict[str, Any] = {"if_none_match": "*"} if create_only else {}
        try:
            blob.commit_block_list(block_ids, **conditions)
        except (ResourceExistsError, ResourceModifiedError) as error:
            if not create_only:
                self._raise(error, "commit", name)
            if self._committed_blocks(blob) == block_ids:
                logger.info("create-only commit of %s landed on an earlier attempt", name)
                return
            raise self._conflict(name) from None
        except HttpResponseError as error:
            # Another writer's commit of the same name discards our uncommitted blocks.
            if getattr(error, "error_code", None) == "InvalidBlockList":
                committed = self._committed_blocks(blob)
                if committed == block_ids:
                    return
                if create_only and committed is not None:
                    raise self._conflict(name) from None
                raise StorageError(
                    f"cannot commit {name} ({self._where()}): another writer replaced it while "
                    "it was being uploaded; nothing was committed"
                ) from None
            self._raise(error, "commit", name)
        except AzureError as error:
            self._raise(error, "commit", name)

    def _committed_blocks(self, blob) -> list[str] | None:
        """Ids of the blob's committed blocks, None if it does not exist (or on error)."""
        try:
            committed, _ = blob.get_block_list("committed")
        except AzureError:
            return None
        return [b.id for b in committed]

    def remove_temporary(self) -> None:
        """Nothing to do: uploads are atomic, uncommitted blocks expire server-side."""

    # ------------------------------------------------------------------ writer lock

    def _check_lease_for_write(self, operation: str, name: str) -> None:
        held = self._lease
        if held is None or held.owner != threading.get_ident():
            return
        if held.lost or time.monotonic() > held.trusted_until:
            raise StorageError(
                f"refusing to {operation} {name}: the writer lease on {self._location} could "
                "not be renewed in time, so another writer may own the store now"
            )

    def _lock_blob(self):
        name = f"{self._prefix}/{LOCK_BLOB}" if self._prefix else LOCK_BLOB
        return self._client.get_blob_client(name)

    def _locked_error(self, detail: str = "") -> StoreLockedError:
        return StoreLockedError(
            f"store {self._location} is locked by another writer (blob lease on {LOCK_BLOB}"
            f"{detail}); wait for it to finish. A writer that died frees it within "
            f"{LEASE_SECONDS} s"
        )

    def _try_acquire(self, lease: BlobLeaseClient, blob) -> float | None:
        """Acquire the lease once: the monotonic time the request started, or None if
        another writer holds it."""
        for _ in range(3):
            started = time.monotonic()
            try:
                lease.acquire(lease_duration=LEASE_SECONDS)
                return started
            except ResourceNotFoundError as error:
                if getattr(error, "error_code", None) == "ContainerNotFound":
                    self._raise(error, "take the writer lock")
                try:
                    blob.upload_blob(b"", overwrite=False)
                except ResourceExistsError:
                    pass
                except HttpResponseError as create_error:
                    if getattr(create_error, "status_code", None) != 412:
                        self._raise(create_error, "create the writer lock blob")
                except AzureError as create_error:
                    self._raise(create_error, "create the writer lock blob")
            except HttpResponseError as error:
                if getattr(error, "status_code", None) == 409:
                    return None
                self._raise(error, "take the writer lock")
            except AzureError as error:
                self._raise(error, "take the writer lock")
        raise StorageError(f"cannot take the writer lock on {self._location}: lock blob keeps vanishing")

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        with self._lock_state_guard:
            if self._lock_busy:
                raise self._locked_error(", held by another thread through this same object")
            self._lock_busy = True
        try:
            lock_blob = self._lock_blob()
            lease = BlobLeaseClient(lock_blob, lease_id=str(uuid.uuid4()))
            deadline = time.monotonic() + self.lock_timeout
            while True:
                started = self._try_acquire(lease, lock_blob)
                if started is not None:
                    break
                if time.monotonic() >= deadline:
                    raise self._locked_error()
                time.sleep(min(max(0.0, deadline - time.monotonic()), random.uniform(0.2, 1.0)))
            held = _HeldLease(lease, started + LEASE_TRUST_SECONDS, threading.get_ident())
            self._lease = held
            logger.info("took the writer lease on %s", self._location)
            renewer = threading.Thread(
                target=self._renew_loop, args=(held,), name="sealvec-azure-lease", daemon=True
            )
            renewer.start()
            try:
                yield
            finally:
                held.stop.set()
                renewer.join()
                self._lease = None
                try:
                    lease.release()
                    logger.info("released the writer lease on %s", self._location)
                except AzureError as error:
                    logger.warning(
                        "could not release the writer lease on %s (%s); it expires within %d s",
                        self._location,
                        type(error).__name__,
                        LEASE_SECONDS,
                    )
        finally:
            with self._lock_state_guard:
                self._lock_busy = False

    def _renew_loop(self, held: _HeldLease) -> None:
        wait = RENEW_SECONDS
        while not held.stop.wait(wait):
            started = time.monotonic()
            try:
                held.lease.renew()
            except HttpResponseError as error:
                if getattr(error, "status_code", None) in (409, 412):
                    held.lost = True
                    logger.error(
                        "lost the writer lease on %s (%s): writes through this handle are refused",
                        self._location,
                        getattr(error, "error_code", None) or type(error).__name__,
                    )
                    return
                logger.warning("could not renew the writer lease on %s (%s); retrying",
                               self._location, type(error).__name__)
                wait = 2.0
                continue
            except AzureError as error:
                logger.warning("could not renew the writer lease on %s (%s); retrying",
                               self._location, type(error).__name__)
                wait = 2.0
                continue
            held.trusted_until = started + LEASE_TRUST_SECONDS
            wait = RENEW_SECONDS


class _HeldLease:
    def __init__(self, lease: BlobLeaseClient, trusted_until: float, owner: int) -> None:
        self.lease = lease
        self.trusted_until = trusted_until
        self.owner = owner
        self.lost = False
        self.stop = threading.Event()


class _BlobReader(io.RawIOBase):
    """A seekable binary stream over one blob version: ranged GETs of at most
    ``read_chunk_size`` bytes, each conditional on the ETag seen at open."""

    def __init__(self, storage: AzureBlobStorage, blob, name: str, size: int, etag: str) -> None:
        super().__init__()
        self._storage = storage
        self._blob = blob
        self.name = name
        self._size = size
        self._etag = etag
        self._pos = 0
        self._buffer = b""
        self._buffer_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._pos = position
        return position

    def _fetch(self, offset: int) -> None:
        length = min(self._storage.read_chunk_size, self._size - offset)
        try:
            data = self._blob.download_blob(
                offset=offset,
                length=length,
                etag=self._etag,
                match_condition=MatchConditions.IfNotModified,
                max_concurrency=1,
            ).readall()
        except ResourceModifiedError:
            raise StorageError(
                f"object {self.name} in {self._storage.location} changed while it was being read"
            ) from None
        except AzureError as error:
            self._storage._raise(error, "read", self.name)  # noqa: SLF001
        if len(data) != length:
            raise StorageError(
                f"short read of {self.name} from {self._storage.location}: "
                f"{len(data)} of {length} bytes"
            )
        self._buffer = data
        self._buffer_start = offset

    def readinto(self, b) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        with memoryview(b) as view, view.cast("B") as out:
            if not len(out) or self._pos >= self._size:
                return 0
            start = self._pos - self._buffer_start
            if not 0 <= start < len(self._buffer):
                self._fetch(self._pos)
                start = 0
            count = min(len(out), len(self._buffer) - start)
            out[:count] = self._buffer[start : start + count]
            self._pos += count
            return count

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(0, self._size - self._pos)))
        filled = 0
        while filled < len(out):
            got = self.readinto(memoryview(out)[filled:])
            if not got:
                break
            filled += got
        return bytes(out[:filled])

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos))

    def close(self) -> None:
        self._buffer = b""
        super().close()
