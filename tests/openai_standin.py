"""A loopback HTTPS stand-in for the OpenAI and Azure OpenAI embeddings API.

It speaks the real protocol to the real ``openai`` SDK:

- ``POST /v1/embeddings`` with ``Authorization: Bearer <api_key>``;
- ``POST /openai/deployments/<deployment>/embeddings?api-version=...`` with an
  ``api-key: <api_key>`` header or ``Authorization: Bearer <token>`` (Entra ID).

Each text's embedding is `expected_vector(text, dimension)`, a unit vector seeded
by the text's SHA-256, so tests can compute what they should get back. Replies are
base64 little-endian float32 when the request asks ``encoding_format: "base64"``,
float lists otherwise, in the documented shape
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": ...}],
"model": ..., "usage": {...}}`` (data deliberately in reverse order, so a client
must order by ``index``).

Failure injection (attributes, change them between calls): ``rate_limit_times``
429s with ``Retry-After: retry_after``; ``server_error_times`` 500s;
``fail_after`` N: every request after the N-th successful one gets 500;
``wrong_dimension``: reply with vectors of that length;
``ignore_encoding_format``: always reply float lists. ``echo_credentials``
makes error bodies quote the credential the client sent (a careless server), to
prove the client never passes it on. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from tls import TLSFiles

_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/embeddings$")


def expected_vector(text: str, dimension: int) -> np.ndarray:
    """The stand-in's embedding of ``text``: a deterministic float32 unit vector."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass
class RecordedRequest:
    path: str  # without the query string
    inputs: int  # number of inputs in the body (0 if unreadable)
    status: int  # the status the stand-in replied with
    auth: str  # "bearer", "api-key" or "none"
    encoding_format: str | None
    api_version: str | None


class OpenAIStandIn:
    """The server; use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        tls: TLSFiles,
        *,
        dimension: int = 16,
        api_key: str = "sk-standin-secret-key-0123456789",
        tokens: tuple[str, ...] = (),
        deployments: tuple[str, ...] = ("embed-deploy",),
        max_inputs: int = 2048,
        host: str = "127.0.0.1",
    ) -> None:
        self.dimension = dimension
        self.api_key = api_key
        self.tokens = set(tokens)
        self.deployments = set(deployments)
        self.max_inputs = max_inputs
        self.rate_limit_times = 0
        self.retry_after = "0.1"
        self.server_error_times = 0
        self.fail_after: int | None = None
        self.wrong_dimension: int | None = None
        self.echo_credentials = False
        self.ignore_encoding_format = False  # always reply float lists, like some servers
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._successes = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        self._server = _Server((host, 0), _Handler, context, self)
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The origin, e.g. https://127.0.0.1:PORT (the Azure endpoint)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> OpenAIStandIn:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever to return
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OpenAIStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- bookkeeping ----------------------------------------------------------------

    def reset(self) -> None:
        """Heal every injected failure and forget recorded requests."""
        with self._lock:
            self.rate_limit_times = 0
            self.server_error_times = 0
            self.fail_after = None
            self.wrong_dimension = None
            self.ignore_encoding_format = False
            self.requests.clear()
            self._successes = 0

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def input_sizes(self, status: int | None = 200) -> list[int]:
        with self._lock:
            return [r.inputs for r in self.requests if status is None or r.status == status]

    # --- the protocol ---------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes):
        """Returns (status, extra headers, JSON body)."""
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query)
        api_version = query.get("api-version", [None])[0]
        authorization = headers.get("authorization", "")
        api_key_header = headers.get("api-key")
        auth = "bearer" if authorization else ("api-key" if api_key_header else "none")

        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        inputs = request.get("input") if isinstance(request, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        count = len(inputs) if isinstance(inputs, list) else 0
        encoding_format = request.get("encoding_format") if isinstance(request, dict) else None

        def reply(status: int, payload: dict, extra: dict[str, str] | None = None):
            with self._lock:
                self.requests.append(
                    RecordedRequest(path, count, status, auth, encoding_format, api_version)
                )
                if status == 200:
                    self._successes += 1
            return status, extra or {}, payload

        def error(status: int, code: str, message: str, extra: dict[str, str] | None = None):
            return reply(status, {"error": {"code": code, "message": message, "type": code}}, extra)

        # Route and authenticate.
        if method != "POST":
            return error(405, "method_not_allowed", "only POST is served")
        azure = _AZURE_PATH.match(path)
        if path == "/v1/embeddings":
            expected = f"Bearer {self.api_key}"
            if authorization != expected:
                sent = authorization.removeprefix("Bearer ")
                shown = sent if self.echo_credentials else "***"
                return error(401, "invalid_api_key", f"Incorrect API key provided: {shown}.")
        elif azure:
            if api_version is None:
                return error(404, "404", "Resource not found (no api-version)")
            if azure.group(1) not in self.deployments:
                return error(404, "DeploymentNotFound", "The API deployment does not exist.")
            token = authorization.removeprefix("Bearer ") if authorization else None
            if not (api_key_header == self.api_key or (token and token in self.tokens)):
                sent = api_key_header or token or ""
                shown = sent if self.echo_credentials else "***"
                return error(401, "401", f"Access denied due to invalid subscription key {shown}.")
        else:
            return error(404, "404", "Resource not found")

        if not isinstance(inputs, list) or not inputs or not all(
            isinstance(text, str) for text in inputs
        ):
            return error(400, "invalid_request_error", "'input' must be a non-empty list of strings")
        if any(text == "" for text in inputs):
            return error(400, "invalid_request_error", "'$.input' is invalid: empty string")
        if count > self.max_inputs:
            return error(
                400, "invalid_request_error",
                f"Too many inputs. The max number of inputs is {self.max_inputs}.",
            )

        # Injected failures.
        with self._lock:
            rate_limited = self.rate_limit_times > 0
            if rate_limited:
                self.rate_limit_times -= 1
            server_error = not rate_limited and self.server_error_times > 0
            if server_error:
                self.server_error_times -= 1
            broken = self.fail_after is not None and self._successes >= self.fail_after
        if rate_limited:
            message = "Rate limit reached."
            if self.echo_credentials:
                message += f" Key {api_key_header or authorization}."
            return error(429, "rate_limit_exceeded", message, {"Retry-After": self.retry_after})
        if server_error or broken:
            message = "The server had an error while processing your request."
            if self.echo_credentials:
                message += f" Credential {api_key_header or authorization}."
            return error(500, "server_error", message)

        dimension = self.wrong_dimension or self.dimension
        data = []
        for index, text in enumerate(inputs):
            vector = expected_vector(text, dimension)
            if encoding_format == "base64" and not self.ignore_encoding_format:
                embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = [float(value) for value in vector]
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        data.reverse()  # clients must order by index
        tokens = sum(len(text.split()) for text in inputs)
        model = request.get("model", "") if isinstance(request, dict) else ""
        return reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            {"x-request-id": f"req-{len(self.requests) + 1}"},
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext, standin: OpenAIStandIn):
        super().__init__(address, handler)
        self.context = context
        self.standin = standin

    def get_request(self):
        sock, address = self.socket.accept()
        # The TLS handshake happens in the handler thread (see _Handler.setup), so a
        # client that rejects the certificate cannot stall the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address) -> None:
        pass  # failed handshakes (wrong CA tests) are expected; keep test output clean


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, extra, payload = self.server.standin.handle(self.command, self.path, headers, body)
        encoded = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(encoded)

    do_POST = _serve
    do_GET = _serve
