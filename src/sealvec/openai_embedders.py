"""Embedders that call OpenAI or Azure OpenAI embedding endpoints over HTTPS.

`OpenAIEmbedder` speaks to any OpenAI-compatible ``POST {base_url}/embeddings``;
`AzureOpenAIEmbedder` to an Azure OpenAI deployment
(``POST {endpoint}/openai/deployments/<deployment>/embeddings?api-version=...``),
authenticated by an API key or a Microsoft Entra ID token provider. Both need the
``openai`` package (``pip install openai``), imported on construction.

Transport: HTTPS only, with certificate verification always on (the system trust
store, or ``ca_file``). Plain ``http://`` is refused unless the host is loopback and
``allow_insecure_loopback=True`` is passed. Redirects are not followed, so a
credential is only ever sent to the endpoint named.

Requests: inputs are sent at most ``max_inputs_per_request`` at a time (the SDK does
not split them). Retries are this module's own bounded loop, not the SDK's (the
client is built with ``max_retries=0``): HTTP 408, 429 and 5xx, timeouts and
dropped connections are retried up to ``max_retries`` times, waiting what the
server's ``Retry-After``/``retry-after-ms`` asks (up to ``max_retry_after``
seconds; a longer ask fails at once) or else exponential backoff with jitter. A TLS
failure is never retried: a wrong certificate does not fix itself, so it fails fast.

Errors are `EmbedderError` naming the endpoint, the model or deployment and the
HTTP status. They never contain the API key or an Entra ID token (any echo of one
in a server message is redacted), nor input texts. Logging is counts, request
counts and durations only.
"""

from __future__ import annotations

import base64
import binascii
import collections
import email.utils
import logging
import math
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sealvec.embedders import (
    Embedder,
    ProgressCallback,
    validate_embeddings,
    validate_texts,
)
from sealvec.errors import EmbedderError, ValidationError
from sealvec.transport import is_loopback

logger = logging.getLogger(__name__)

OPENAI_INSTALL_HINT = "install the OpenAI client: pip install openai"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
# The service documents at most 2,048 inputs per embeddings request.
MAX_INPUTS_PER_REQUEST = 2048
_RETRY_STATUSES = frozenset({408, 429})
_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REDACTED = "<redacted>"
_SERVER_DETAIL_LIMIT = 200


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise EmbedderError(f"the openai package is not installed; {OPENAI_INSTALL_HINT}") from None
    return openai


# --- argument checks -------------------------------------------------------------


def _positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ValidationError(f"{name} must be at least 1{bound}, got {value}")
    return value


def _non_negative_number(name: str, value: Any, *, integer: bool = False) -> float:
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        kind = "an int" if integer else "a number"
        raise ValidationError(f"{name} must be {kind}, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(f"{name} must be finite and not negative, got {value}")
    return value


def _non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty str")
    return value




def check_endpoint_url(name: str, url: Any, *, allow_insecure_loopback: bool) -> str:
    """Return ``url`` without a trailing slash, or raise ValidationError.

    https with a host is required; http only for a loopback host and only with
    ``allow_insecure_loopback``. User info, query strings and fragments are refused
    (a credential belongs in ``api_key``, never in a URL).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValidationError(f"{name} must be a non-empty URL string")
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValidationError(f"{name} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not host:
        raise ValidationError(f"{name} must be an absolute URL with a host, like https://host/")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(f"{name} must not contain user info; pass credentials as api_key")
    if parts.query or parts.fragment:
        raise ValidationError(f"{name} must not contain a query string or fragment")
    if scheme == "http":
        if not is_loopback(host):
            raise ValidationError(
                f"{name} uses http:// for the non-loopback host {host}; embedding "
                "requests carry credentials and texts, so only https:// is allowed"
            )
        if not allow_insecure_loopback:
            raise ValidationError(
                f"{name} uses http:// ({host}); use https://, or pass "
                "allow_insecure_loopback=True for a server on this machine"
            )
    elif scheme != "https":
        raise ValidationError(f"{name} must use https://, got {parts.scheme or 'no'} scheme")
    return url.rstrip("/")


def make_ssl_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A verifying client context: the system trust store, or only ``ca_file``."""
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    if not path.is_file():
        raise ValidationError(f"ca_file {str(path)!r} is not a file")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(
            f"ca_file {str(path)!r} is not a usable PEM CA certificate: {exc}"
        ) from None


# --- the shared client ------------------------------------------------------------


class _RemoteEmbedder(Embedder):
    """Chunking, retries, response decoding and error reporting for both services."""

    def __init__(
        self,
        *,
        dimension: int,
        max_inputs_per_request: int,
        max_retries: int,
        timeout: float,
        backoff_base: float,
        backoff_max: float,
        max_retry_after: float,
        send_dimensions: bool,
        on_progress: ProgressCallback | None,
    ) -> None:
        self._dimension = _positive_int("dimension", dimension, 65536)
        self._max_inputs = _positive_int("max_inputs_per_request", max_inputs_per_request)
        self._max_retries = int(_non_negative_number("max_retries", max_retries, integer=True))
        self._timeout = _non_negative_number("timeout", timeout)
        if self._timeout == 0:
            raise ValidationError("timeout must be more than 0 seconds")
        self._backoff_base = _non_negative_number("backoff_base", backoff_base)
        self._backoff_max = _non_negative_number("backoff_max", backoff_max)
        self._max_retry_after = _non_negative_number("max_retry_after", max_retry_after)
        if not isinstance(send_dimensions, bool):
            raise ValidationError("send_dimensions must be True or False")
        self._send_dimensions = send_dimensions
        if on_progress is not None and not callable(on_progress):
            raise ValidationError("on_progress must be callable(done, total) or None")
        self._on_progress = on_progress
        # The API key, and the last few Entra ID tokens: redacted from messages.
        self._secrets: collections.deque[str] = collections.deque(maxlen=8)
        self._secrets_lock = threading.Lock()
        self._pinned_secrets: set[str] = set()
        self._client: Any = None
        self._owns_http_client = False
        self._openai: Any = None

    # Set by subclasses.
    _endpoint: str
    _target: str  # "model X" or "deployment X", for messages

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_inputs_per_request(self) -> int:
        return self._max_inputs

    def _remember_secret(self, secret: str | None) -> None:
        if secret:
            with self._secrets_lock:
                if secret not in self._secrets:
                    self._secrets.append(secret)

    def _pin_secret(self, secret: str | None) -> None:
        """A secret that stays redacted for the embedder's life (the API key)."""
        if secret:
            self._pinned_secrets.add(secret)

    def _redact(self, text: str) -> str:
        with self._secrets_lock:
            secrets = sorted(set(self._secrets) | self._pinned_secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _build_http_client(self, openai: Any, ca_file: Any) -> Any:
        context = make_ssl_context(ca_file)
        self._owns_http_client = True
        # No redirects: a redirect could carry the api-key header to another host.
        return openai.DefaultHttpxClient(verify=context, follow_redirects=False)

    def close(self) -> None:
        """Close the HTTP connections this embedder opened (not a client passed in)."""
        client = getattr(self, "_client", None)
        if client is not None and getattr(self, "_owns_http_client", False):
            client.close()

    def __del__(self) -> None:
        # As the SDK does for the client it builds itself: don't leak sockets.
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown, half-built
            pass

    def __enter__(self) -> _RemoteEmbedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request_model(self) -> str:
        raise NotImplementedError

    # --- embedding ---------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        text_list = validate_texts(texts)
        empty = [position for position, text in enumerate(text_list) if not text]
        if empty:
            shown = ", ".join(str(position) for position in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise ValidationError(
                f"texts[{shown}]{more} are empty strings; the embeddings service "
                "rejects empty input: drop or replace them before embedding"
            )
        total = len(text_list)
        if total == 0:
            return np.empty((0, self._dimension), dtype=np.float32)
        started = time.perf_counter()
        vectors = np.empty((total, self._dimension), dtype=np.float32)
        requests = retries = 0
        for chunk_start in range(0, total, self._max_inputs):
            chunk = text_list[chunk_start : chunk_start + self._max_inputs]
            chunk_vectors, chunk_requests = self._embed_chunk(chunk)
            vectors[chunk_start : chunk_start + len(chunk)] = chunk_vectors
            requests += chunk_requests
            retries += chunk_requests - 1
            if self._on_progress is not None:
                self._on_progress(chunk_start + len(chunk), total)
        vectors = validate_embeddings(vectors, total, self._dimension, self.model_label)
        logger.debug(
            "embedded %d texts with %s in %d requests (%d retries) in %.3f s",
            total,
            self.model_label,
            requests,
            retries,
            time.perf_counter() - started,
        )
        return vectors

    def _embed_chunk(self, chunk: list[str]) -> tuple[np.ndarray, int]:
        """Embed one request's worth of texts; returns (vectors, requests made)."""
        openai = self._openai
        arguments: dict[str, Any] = {
            "model": self._request_model(),
            "input": chunk,
            # Asked for explicitly so the response is decoded here, once, as
            # little-endian float32; a server that ignores it and sends float
            # lists is handled too.
            "encoding_format": "base64",
        }
        if self._send_dimensions:
            arguments["dimensions"] = self._dimension
        attempt = 0
        while True:
            attempt += 1
            request_started = time.perf_counter()
            try:
                response = self._client.embeddings.create(**arguments)
            except openai.APIStatusError as exc:
                status = exc.status_code
                retryable = status in _RETRY_STATUSES or status >= 500
                delay = self._retry_delay(attempt, exc.response.headers)
                if retryable and attempt <= self._max_retries and delay is not None:
                    logger.info(
                        "%s: HTTP %d on a request of %d inputs; retry %d of %d in %.2f s",
                        self.model_label, status, len(chunk), attempt, self._max_retries, delay,
                    )
                    time.sleep(delay)
                    continue
                raise self._status_error(exc, attempt, retryable, delay) from None
            except openai.APIConnectionError as exc:
                tls_problem = _tls_problem(exc)
                if tls_problem is not None:
                    raise EmbedderError(
                        f"TLS failed for {self._endpoint} ({self._target}): "
                        f"{self._redact(tls_problem)}; the server's certificate must be "
                        "signed by a CA you trust: pass ca_file= that CA's PEM file"
                    ) from None
                delay = self._retry_delay(attempt, None)
                kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "failed"
                if attempt <= self._max_retries and delay is not None:
                    logger.info(
                        "%s: connection %s; retry %d of %d in %.2f s",
                        self.model_label, kind, attempt, self._max_retries, delay,
                    )
                    time.sleep(delay)
                    continue
                raise EmbedderError(
                    f"connection to {self._endpoint} ({self._target}) {kind} "
                    f"after {attempt} attempt(s): {_root_cause_name(exc)}"
                ) from None
            except openai.OpenAIError as exc:
                # E.g. an unparseable body, or a token provider that failed.
                raise EmbedderError(
                    f"request to {self._endpoint} ({self._target}) failed: "
                    f"{type(exc).__name__}: {self._redact(_one_line(str(exc)))}"
                ) from None
            logger.debug(
                "%s: request of %d inputs took %.3f s (attempt %d)",
                self.model_label, len(chunk), time.perf_counter() - request_started, attempt,
            )
            return self._decode(response, len(chunk)), attempt

    def _retry_delay(self, attempt: int, headers: Any) -> float | None:
        """Seconds to wait before the next attempt, or None if the server's
        Retry-After asks for more than max_retry_after."""
        asked = _parse_retry_after(headers) if headers is not None else None
        if asked is not None:
            return asked if asked <= self._max_retry_after else None
        backoff = min(self._backoff_base * (2 ** (attempt - 1)), self._backoff_max)
        return backoff * (1 - 0.25 * random.random())

    def _status_error(
        self, exc: Any, attempts: int, retryable: bool, delay: float | None
    ) -> EmbedderError:
        status = exc.status_code
        hint = {
            401: "check the API key or token",
            403: "check the API key or token and its access to this resource",
            404: "check the endpoint, the model or deployment name and api_version",
            429: "rate limited",
        }.get(status, "")
        if retryable and delay is None:
            hint = f"the server asked to wait longer than max_retry_after={self._max_retry_after} s"
        elif retryable and attempts > 1:
            hint = f"gave up after {attempts} attempts" + (f"; {hint}" if hint else "")
        detail = self._server_detail(exc)
        request_id = getattr(exc, "request_id", None)
        parts = [f"HTTP {status} from {self._endpoint} ({self._target})"]
        if detail:
            parts.append(detail)
        if hint:
            parts.append(hint)
        if request_id:
            parts.append(f"request id {_one_line(str(request_id))[:80]}")
        return EmbedderError("; ".join(parts))

    def _server_detail(self, exc: Any) -> str:
        """The server's error code and message, credentials redacted, shortened."""
        body = getattr(exc, "body", None)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        if not isinstance(body, dict):
            return ""
        code = body.get("code") or body.get("type")
        message = body.get("message")
        pieces = []
        if isinstance(code, (str, int)):
            pieces.append(f"code {code}")
        if isinstance(message, str) and message.strip():
            text = _one_line(message)
            if len(text) > _SERVER_DETAIL_LIMIT:
                text = text[:_SERVER_DETAIL_LIMIT] + "..."
            pieces.append(f"server says: {text}")
        return self._redact(": ".join(pieces)) if pieces else ""

    def _decode(self, response: Any, expected: int) -> np.ndarray:
        where = f"{self._endpoint} ({self._target})"
        data = getattr(response, "data", None)
        if not isinstance(data, list):
            raise EmbedderError(f"{where} returned a response without a data list")
        if len(data) != expected:
            raise EmbedderError(f"{where} returned {len(data)} embeddings for {expected} inputs")
        vectors = np.empty((expected, self._dimension), dtype=np.float32)
        seen = np.zeros(expected, dtype=bool)
        for item in data:
            index = getattr(item, "index", None)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < expected:
                raise EmbedderError(f"{where} returned an embedding with an invalid index")
            if seen[index]:
                raise EmbedderError(f"{where} returned index {index} twice")
            seen[index] = True
            row = _decode_embedding(getattr(item, "embedding", None), where)
            if row.shape[0] != self._dimension:
                raise EmbedderError(
                    f"{where} returned vectors of dimension {row.shape[0]}, but this "
                    f"embedder was configured with dimension={self._dimension}; set "
                    "dimension to the model's output (or send_dimensions=True for "
                    "models that can shorten their output)"
                )
            vectors[index] = row
        return vectors


def _decode_embedding(embedding: Any, where: str) -> np.ndarray:
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError):
            raise EmbedderError(f"{where} returned an embedding that is not valid base64") from None
        if len(raw) % 4:
            raise EmbedderError(f"{where} returned a base64 embedding of {len(raw)} bytes, not float32")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(embedding, list):
        try:
            return np.asarray(embedding, dtype=np.float32)
        except (TypeError, ValueError):
            raise EmbedderError(f"{where} returned an embedding that is not a list of numbers") from None
    raise EmbedderError(f"{where} returned an embedding of type {type(embedding).__name__}")


def _parse_retry_after(headers: Any) -> float | None:
    """Seconds asked by ``retry-after-ms`` or ``Retry-After`` (seconds or a date)."""
    try:
        milliseconds = headers.get("retry-after-ms")
        seconds = headers.get("retry-after")
    except Exception:  # noqa: BLE001 - not a header mapping
        return None
    for value, divisor in ((milliseconds, 1000.0), (seconds, 1.0)):
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            return max(number / divisor, 0.0)
        return math.inf
    if seconds is not None:
        try:
            when = email.utils.parsedate_to_datetime(seconds)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    chain = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _tls_problem(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "verification failed"
            return f"certificate verify failed ({reason})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({cause.reason or type(cause).__name__})"
    # httpx-style errors wrap the ssl error's text without chaining the object.
    text = " ".join(str(cause) for cause in _causes(exc))
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    return None


def _root_cause_name(exc: BaseException) -> str:
    return type(_causes(exc)[-1]).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- OpenAI -----------------------------------------------------------------------


class OpenAIEmbedder(_RemoteEmbedder):
    """An OpenAI-compatible ``/embeddings`` endpoint (OpenAI itself by default).

    Args:
        model: the model name sent with each request, e.g. "text-embedding-3-small".
        dimension: length of the vectors the model returns (checked on every
            response; a mismatch raises EmbedderError).
        api_key: the key, else the ``OPENAI_API_KEY`` environment variable.
        base_url: the API root, default https://api.openai.com/v1.
        ca_file: PEM CA certificate(s) to trust instead of the system store.
        allow_insecure_loopback: permit http:// for a loopback base_url.
        max_inputs_per_request: texts per request (the service allows 2,048).
        max_retries: retries of one request on 408/429/5xx, timeouts and dropped
            connections (never on TLS errors).
        timeout: seconds per HTTP request.
        backoff_base, backoff_max: exponential backoff (seconds) when the server
            gives no Retry-After.
        max_retry_after: the longest Retry-After honoured; longer asks fail at once.
        send_dimensions: send ``dimensions=dimension`` (text-embedding-3 models
            shorten their output to it; older models reject the parameter).
        client: an ``openai.OpenAI`` client to use instead of building one (its
            base_url is checked; it is used with retries off). Excludes api_key,
            base_url and ca_file.
        on_progress: called as ``on_progress(texts_done, texts_total)`` after each
            request of an `embed` call.
    """

    def __init__(
        self,
        model: str,
        *,
        dimension: int,
        api_key: str | None = None,
        base_url: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        allow_insecure_loopback: bool = False,
        max_inputs_per_request: int = MAX_INPUTS_PER_REQUEST,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        send_dimensions: bool = False,
        client: Any = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        super().__init__(
            dimension=dimension,
            max_inputs_per_request=max_inputs_per_request,
            max_retries=max_retries,
            timeout=timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            send_dimensions=send_dimensions,
            on_progress=on_progress,
        )
        self._model = _non_empty_str("model", model)
        self._target = f"model {self._model}"
        openai = self._openai = _import_openai()
        if client is not None:
            if api_key is not None or base_url is not None or ca_file is not None:
                raise ValidationError("pass either client= or api_key/base_url/ca_file, not both")
            if not isinstance(client, openai.OpenAI):
                raise ValidationError(f"client must be an openai.OpenAI, got {type(client).__name__}")
            self._endpoint = check_endpoint_url(
                "client.base_url", str(client.base_url),
                allow_insecure_loopback=allow_insecure_loopback,
            )
            self._pin_secret(client.api_key if isinstance(client.api_key, str) else None)
            self._client = client.with_options(max_retries=0, timeout=self._timeout)
            return
        self._endpoint = check_endpoint_url(
            "base_url", DEFAULT_OPENAI_BASE_URL if base_url is None else base_url,
            allow_insecure_loopback=allow_insecure_loopback,
        )
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY")
            if not api_key:
                raise ValidationError("no API key: pass api_key= or set OPENAI_API_KEY")
        _non_empty_str("api_key", api_key)
        self._pin_secret(api_key)
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=self._endpoint,
            max_retries=0,
            timeout=self._timeout,
            http_client=self._build_http_client(openai, ca_file),
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model={self._model!r}, dimension={self._dimension}, "
            f"base_url={self._endpoint!r})"
        )

    @property
    def model_label(self) -> str:
        return f"openai:{self._model}"

    def _request_model(self) -> str:
        return self._model


# --- Azure OpenAI -----------------------------------------------------------------


class AzureOpenAIEmbedder(_RemoteEmbedder):
    """An Azure OpenAI embeddings deployment.

    Args:
        endpoint: the resource URL, e.g. https://my-resource.openai.azure.com.
        deployment: the deployment name (sent in the URL path).
        dimension: length of the vectors the deployment returns (checked).
        api_version: the Azure OpenAI API version, e.g. "2024-10-21".
        api_key: an API key, else the ``AZURE_OPENAI_API_KEY`` environment variable
            when no token provider is given.
        azure_ad_token_provider: a callable returning a Microsoft Entra ID access
            token (scope https://cognitiveservices.azure.com/.default), e.g.
            ``azure.identity.get_bearer_token_provider(credential, scope)``; it is
            called per request, so it should cache. Excludes api_key.
        ca_file, allow_insecure_loopback, max_inputs_per_request, max_retries,
        timeout, backoff_base, backoff_max, max_retry_after, send_dimensions,
        on_progress: as for `OpenAIEmbedder`.
    """

    def __init__(
        self,
        endpoint: str,
        deployment: str,
        *,
        dimension: int,
        api_version: str,
        api_key: str | None = None,
        azure_ad_token_provider: Callable[[], str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        allow_insecure_loopback: bool = False,
        max_inputs_per_request: int = MAX_INPUTS_PER_REQUEST,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        send_dimensions: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        super().__init__(
            dimension=dimension,
            max_inputs_per_request=max_inputs_per_request,
            max_retries=max_retries,
            timeout=timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            send_dimensions=send_dimensions,
            on_progress=on_progress,
        )
        if not isinstance(deployment, str) or not _DEPLOYMENT_NAME.match(deployment):
            raise ValidationError(
                "deployment must be an Azure OpenAI deployment name (letters, digits, "
                "'.', '_' and '-', at most 64 characters)"
            )
        self._deployment = deployment
        self._api_version = _non_empty_str("api_version", api_version)
        self._target = f"deployment {deployment}"
        self._endpoint = check_endpoint_url(
            "endpoint", endpoint, allow_insecure_loopback=allow_insecure_loopback
        )
        if api_key is not None and azure_ad_token_provider is not None:
            raise ValidationError("pass api_key= or azure_ad_token_provider=, not both")
        token_provider = None
        if azure_ad_token_provider is not None:
            if not callable(azure_ad_token_provider):
                raise ValidationError("azure_ad_token_provider must be callable() -> token str")
            token_provider = self._wrap_token_provider(azure_ad_token_provider)
        else:
            if api_key is None:
                api_key = os.environ.get("AZURE_OPENAI_API_KEY")
                if not api_key:
                    raise ValidationError(
                        "no credential: pass api_key=, azure_ad_token_provider= or set "
                        "AZURE_OPENAI_API_KEY"
                    )
            _non_empty_str("api_key", api_key)
            self._pin_secret(api_key)
        openai = self._openai = _import_openai()
        self._client = openai.AzureOpenAI(
            azure_endpoint=self._endpoint,
            api_version=self._api_version,
            api_key=api_key,
            azure_ad_token_provider=token_provider,
            max_retries=0,
            timeout=self._timeout,
            http_client=self._build_http_client(openai, ca_file),
        )

    def _wrap_token_provider(self, provider: Callable[[], str]) -> Callable[[], str]:
        def provide() -> str:
            try:
                token = provider()
            except Exception as exc:  # noqa: BLE001 - reported without its text
                raise EmbedderError(
                    f"the azure_ad_token_provider failed for {self._endpoint} "
                    f"({self._target}): {type(exc).__name__}"
                ) from exc
            if not isinstance(token, str) or not token:
                raise EmbedderError("the azure_ad_token_provider returned no token string")
            self._remember_secret(token)
            return token

        return provide

    def __repr__(self) -> str:
        return (
            f"AzureOpenAIEmbedder(endpoint={self._endpoint!r}, "
            f"deployment={self._deployment!r}, dimension={self._dimension}, "
            f"api_version={self._api_version!r})"
        )

    @property
    def model_label(self) -> str:
        return f"azure-openai:{self._deployment}"

    def _request_model(self) -> str:
        # AzureOpenAI puts the model argument into the path as the deployment.
        return self._deployment
