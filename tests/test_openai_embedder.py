"""OpenAIEmbedder and AzureOpenAIEmbedder against a loopback HTTPS stand-in that the
real openai SDK talks to (tests/openai_standin.py), with TLS verification on."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

pytest.importorskip("openai")

from openai_standin import OpenAIStandIn, expected_vector  # noqa: E402
from tls import make_tls  # noqa: E402

import sealvec  # noqa: E402
from sealvec.errors import EmbedderError, ValidationError  # noqa: E402
from sealvec.ingest import ingest_records  # noqa: E402
from sealvec.openai_embedders import AzureOpenAIEmbedder, OpenAIEmbedder  # noqa: E402

DIMENSION = 16
LIMIT = 512
MODEL = "text-embedding-3-small"
DEPLOYMENT = "embed-deploy"
API_VERSION = "2024-10-21"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.entra-token-secret.sig"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("openai-tls"))


@pytest.fixture
def standin(tls):
    with OpenAIStandIn(tls, dimension=DIMENSION, max_inputs=LIMIT, tokens=(TOKEN,)) as server:
        yield server


def openai_embedder(standin, tls, **options) -> OpenAIEmbedder:
    settings = dict(
        dimension=DIMENSION,
        api_key=standin.api_key,
        base_url=standin.openai_base_url,
        ca_file=tls.ca,
        max_inputs_per_request=LIMIT,
    )
    settings.update(options)
    return OpenAIEmbedder(MODEL, **settings)


def azure_embedder(standin, tls, **options) -> AzureOpenAIEmbedder:
    settings = dict(
        dimension=DIMENSION,
        api_version=API_VERSION,
        api_key=standin.api_key,
        ca_file=tls.ca,
        max_inputs_per_request=LIMIT,
    )
    settings.update(options)
    return AzureOpenAIEmbedder(standin.url, DEPLOYMENT, **settings)


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([expected_vector(text, DIMENSION) for text in texts])


TEXTS = ["alpha", "beta gamma", "δέλτα ünïcode", "a much longer sentence " * 20]


# --- round trips -------------------------------------------------------------------


def test_openai_round_trip(standin, tls):
    embedder = openai_embedder(standin, tls)
    vectors = embedder.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    # The stand-in sends data in reverse order: rows must follow `index`.
    np.testing.assert_array_equal(vectors, expected(TEXTS))
    np.testing.assert_array_equal(embedder.embed_query("alpha"), expected_vector("alpha", DIMENSION))
    assert embedder.model_label == f"openai:{MODEL}"
    assert embedder.dimension == DIMENSION
    [first, second] = standin.requests
    assert (first.path, first.inputs, first.status, first.auth) == ("/v1/embeddings", 4, 200, "bearer")
    assert first.encoding_format == "base64"
    assert second.inputs == 1
    assert standin.api_key not in repr(embedder)


def test_azure_round_trip_with_api_key(standin, tls):
    embedder = azure_embedder(standin, tls)
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected(TEXTS))
    assert embedder.model_label == f"azure-openai:{DEPLOYMENT}"
    [request] = standin.requests
    assert request.path == f"/openai/deployments/{DEPLOYMENT}/embeddings"
    assert (request.auth, request.api_version, request.status) == ("api-key", API_VERSION, 200)
    assert standin.api_key not in repr(embedder)


def test_azure_round_trip_with_entra_token_provider(standin, tls):
    calls = []

    def provider() -> str:
        calls.append(1)
        return TOKEN

    embedder = azure_embedder(standin, tls, api_key=None, azure_ad_token_provider=provider)
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected(TEXTS))
    assert calls
    assert [request.auth for request in standin.requests] == ["bearer"]


def test_float_list_replies_are_accepted(standin, tls):
    standin.ignore_encoding_format = True
    np.testing.assert_array_equal(openai_embedder(standin, tls).embed(TEXTS), expected(TEXTS))


def test_empty_input_sends_nothing(standin, tls):
    vectors = openai_embedder(standin, tls).embed([])
    assert vectors.shape == (0, DIMENSION)
    assert standin.request_count == 0


def test_empty_strings_refused_before_any_request(standin, tls):
    with pytest.raises(ValidationError, match=r"texts\[1, 3\].*empty"):
        openai_embedder(standin, tls).embed(["a", "", "b", ""])
    with pytest.raises(ValidationError, match="single str"):
        openai_embedder(standin, tls).embed("just one string")
    assert standin.request_count == 0


# --- chunking ----------------------------------------------------------------------


def test_5000_texts_take_ceil_n_over_limit_requests(standin, tls):
    texts = [f"text number {i}" for i in range(5000)]
    progress = []
    embedder = openai_embedder(standin, tls, on_progress=lambda done, total: progress.append(done))
    vectors = embedder.embed(texts)
    np.testing.assert_array_equal(vectors, expected(texts))
    sizes = standin.input_sizes()
    assert len(sizes) == standin.request_count == math.ceil(5000 / LIMIT) == 10
    assert max(sizes) <= LIMIT and sum(sizes) == 5000
    assert progress[-1] == 5000 and len(progress) == 10


def test_standin_enforces_its_input_limit(standin, tls):
    embedder = openai_embedder(standin, tls, max_inputs_per_request=LIMIT + 1)
    with pytest.raises(EmbedderError, match=r"HTTP 400 .*Too many inputs"):
        embedder.embed([f"t{i}" for i in range(LIMIT + 1)])


# --- retries -----------------------------------------------------------------------


def test_429_retried_honouring_retry_after(standin, tls):
    standin.rate_limit_times = 2
    standin.retry_after = "0.1"
    # Backoff alone would wait 5 s and more: finishing fast shows Retry-After was used.
    embedder = openai_embedder(standin, tls, max_retries=3, backoff_base=5.0)
    started = time.monotonic()
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected(TEXTS))
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 2.0
    assert [request.status for request in standin.requests] == [429, 429, 200]


def test_5xx_retried_with_backoff(standin, tls):
    standin.server_error_times = 2
    embedder = azure_embedder(standin, tls, max_retries=2, backoff_base=0.01)
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected(TEXTS))
    assert [request.status for request in standin.requests] == [500, 500, 200]


def test_retry_after_beyond_the_limit_fails_at_once(standin, tls):
    standin.rate_limit_times = 5
    standin.retry_after = "3600"
    embedder = openai_embedder(standin, tls, max_retries=3)
    started = time.monotonic()
    with pytest.raises(EmbedderError, match="HTTP 429.*max_retry_after"):
        embedder.embed(TEXTS)
    assert time.monotonic() - started < 2.0
    assert standin.request_count == 1


@pytest.mark.parametrize("service", ["openai", "azure-key", "azure-token"])
def test_persistent_failure_names_endpoint_not_credential(standin, tls, caplog, service):
    caplog.set_level(logging.DEBUG)
    standin.server_error_times = 100
    standin.echo_credentials = True  # the server quotes the credential back
    options = dict(max_retries=2, backoff_base=0.01)
    if service == "openai":
        embedder, secret, target = openai_embedder(standin, tls, **options), standin.api_key, MODEL
    elif service == "azure-key":
        embedder, secret, target = azure_embedder(standin, tls, **options), standin.api_key, DEPLOYMENT
    else:
        embedder = azure_embedder(
            standin, tls, api_key=None, azure_ad_token_provider=lambda: TOKEN, **options
        )
        secret, target = TOKEN, DEPLOYMENT
    with pytest.raises(EmbedderError) as caught:
        embedder.embed(TEXTS)
    message = str(caught.value)
    assert "HTTP 500" in message and standin.url in message and target in message
    assert "gave up after 3 attempts" in message
    assert "<redacted>" in message  # the echoed credential was scrubbed
    assert secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert standin.request_count == 3
    # Logs: retries were logged, but never the credential nor any text.
    assert "retry 2 of 2" in caplog.text
    assert secret not in caplog.text
    for text in TEXTS:
        assert text not in caplog.text


def test_wrong_key_is_401_without_the_key(standin, tls, caplog):
    caplog.set_level(logging.DEBUG)
    standin.echo_credentials = True
    wrong_key = "sk-this-is-the-wrong-key-987654321"
    embedder = openai_embedder(standin, tls, api_key=wrong_key)
    with pytest.raises(EmbedderError, match="HTTP 401.*check the API key") as caught:
        embedder.embed(TEXTS)
    assert wrong_key not in str(caught.value) and wrong_key not in caplog.text
    assert standin.request_count == 1  # 401 is not retried


def test_success_logs_counts_not_texts_or_keys(standin, tls, caplog):
    caplog.set_level(logging.DEBUG)
    openai_embedder(standin, tls).embed(TEXTS)
    assert "embedded 4 texts" in caplog.text and "1 requests" in caplog.text
    assert standin.api_key not in caplog.text
    for text in TEXTS:
        assert text not in caplog.text


# --- transport security ------------------------------------------------------------


def test_http_endpoints_refused():
    with pytest.raises(ValidationError, match="non-loopback"):
        OpenAIEmbedder(MODEL, dimension=8, api_key="k", base_url="http://example.com/v1")
    with pytest.raises(ValidationError, match="non-loopback"):
        AzureOpenAIEmbedder(
            "http://10.1.2.3", DEPLOYMENT, dimension=8, api_version=API_VERSION,
            api_key="k", allow_insecure_loopback=True,
        )
    with pytest.raises(ValidationError, match="allow_insecure_loopback"):
        OpenAIEmbedder(MODEL, dimension=8, api_key="k", base_url="http://127.0.0.1:9/v1")
    # Explicitly allowed for loopback only (nothing is sent here).
    OpenAIEmbedder(
        MODEL, dimension=8, api_key="k", base_url="http://localhost:9/v1",
        allow_insecure_loopback=True,
    )
    for bad in ("ftp://example.com", "https://user:pw@example.com", "https://h/?k=1", "/v1"):
        with pytest.raises(ValidationError):
            OpenAIEmbedder(MODEL, dimension=8, api_key="k", base_url=bad)


def test_wrong_ca_fails_fast_and_clearly(standin, tls, tmp_path):
    other = make_tls(tmp_path / "other", label="someone-else")
    embedder = openai_embedder(standin, tls, ca_file=other.ca, max_retries=4, backoff_base=1.0)
    started = time.monotonic()
    with pytest.raises(EmbedderError) as caught:
        embedder.embed(TEXTS)
    assert time.monotonic() - started < 1.0  # not retried
    message = str(caught.value)
    assert "certificate verify failed" in message and "ca_file" in message
    assert standin.openai_base_url in message
    assert standin.request_count == 0


def test_system_trust_store_does_not_trust_the_test_ca(standin, tls, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    embedder = azure_embedder(standin, tls, ca_file=None)
    with pytest.raises(EmbedderError, match="certificate verify failed"):
        embedder.embed(TEXTS)


def test_expired_server_certificate_refused(tmp_path):
    expired = make_tls(tmp_path / "expired", expired=True)
    with OpenAIStandIn(expired, dimension=DIMENSION) as server:
        embedder = OpenAIEmbedder(
            MODEL, dimension=DIMENSION, api_key=server.api_key,
            base_url=server.openai_base_url, ca_file=expired.ca,
        )
        with pytest.raises(EmbedderError, match="certificate verify failed"):
            embedder.embed(TEXTS)


def test_bad_ca_file_refused(tmp_path):
    with pytest.raises(ValidationError, match="not a file"):
        OpenAIEmbedder(MODEL, dimension=8, api_key="k", ca_file=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValidationError, match="not a usable PEM"):
        OpenAIEmbedder(MODEL, dimension=8, api_key="k", ca_file=junk)


# --- configuration -----------------------------------------------------------------


def test_dimension_mismatch_refused(standin, tls):
    standin.wrong_dimension = DIMENSION + 4
    with pytest.raises(EmbedderError, match=f"dimension {DIMENSION + 4}.*dimension={DIMENSION}"):
        azure_embedder(standin, tls).embed(TEXTS)


def test_credentials_required_and_exclusive(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        OpenAIEmbedder(MODEL, dimension=8)
    with pytest.raises(ValidationError, match="AZURE_OPENAI_API_KEY"):
        AzureOpenAIEmbedder("https://r.example", DEPLOYMENT, dimension=8, api_version=API_VERSION)
    with pytest.raises(ValidationError, match="not both"):
        AzureOpenAIEmbedder(
            "https://r.example", DEPLOYMENT, dimension=8, api_version=API_VERSION,
            api_key="k", azure_ad_token_provider=lambda: "t",
        )
    with pytest.raises(ValidationError, match="deployment"):
        AzureOpenAIEmbedder("https://r.example", "a/../b", dimension=8, api_version=API_VERSION, api_key="k")
    with pytest.raises(ValidationError, match="max_inputs_per_request"):
        OpenAIEmbedder(MODEL, dimension=8, api_key="k", max_inputs_per_request=0)


# --- resumable ingestion into a real collection ------------------------------------


def test_ingest_resumes_after_mid_ingest_failure(standin, tls, tmp_path):
    per_request = 200
    batch_size = 500  # 3 requests a batch: 200 + 200 + 100
    records = [
        {"id": f"doc-{i:04d}", "text": f"record {i} about topic {i % 7}", "group": i % 3}
        for i in range(2000)
    ]
    embedder = openai_embedder(standin, tls, max_inputs_per_request=per_request, max_retries=0)
    with sealvec.Collection.create(tmp_path / "store", dimension=DIMENSION) as collection:
        # Batch 1 (3 requests) commits; batch 2 fails on its third request.
        standin.fail_after = 5
        with pytest.raises(EmbedderError, match="HTTP 500"):
            ingest_records(collection, records, embedder=embedder, batch_size=batch_size)
        assert collection.count() == batch_size
        assert standin.request_count == 6

    with sealvec.Collection.open(tmp_path / "store") as collection:
        assert collection.count() == batch_size  # committed, on disk
        probe = records[7]
        hits = collection.search(expected_vector(probe["text"], DIMENSION), k=1)
        assert hits.ids[0] == [probe["id"]]
        assert collection.get([records[600]["id"]], include=()) == [None]

        standin.reset()  # healthy again
        report = ingest_records(collection, records, embedder=embedder, batch_size=batch_size)
        assert report.skipped == batch_size
        assert report.added == len(records) - batch_size
        assert report.batches == 3
        assert standin.request_count == 3 * 3
        assert sorted(standin.input_sizes()) == sorted([200, 200, 100] * 3)
        assert collection.count() == len(records)
        for probe in (records[600], records[1999]):
            hits = collection.search(expected_vector(probe["text"], DIMENSION), k=1)
            assert hits.ids[0] == [probe["id"]]


def test_refused_connection_retried_then_reported(tls):
    server = OpenAIStandIn(tls, dimension=DIMENSION)
    base_url = server.openai_base_url
    server.stop()  # nothing listens on that port any more
    embedder = OpenAIEmbedder(
        MODEL, dimension=DIMENSION, api_key="sk-unused-key", base_url=base_url,
        ca_file=tls.ca, max_retries=1, backoff_base=0.01,
    )
    with pytest.raises(EmbedderError, match=r"connection to .* failed after 2 attempt") as caught:
        embedder.embed(TEXTS)
    assert base_url in str(caught.value) and "sk-unused-key" not in str(caught.value)


def test_client_passed_in_is_checked_and_used_without_sdk_retries(standin, tls):
    import ssl

    import openai

    context = ssl.create_default_context(cafile=str(tls.ca))
    client = openai.OpenAI(
        api_key=standin.api_key, base_url=standin.openai_base_url, max_retries=5,
        http_client=openai.DefaultHttpxClient(verify=context),
    )
    embedder = OpenAIEmbedder(MODEL, dimension=DIMENSION, client=client)
    np.testing.assert_array_equal(embedder.embed(TEXTS), expected(TEXTS))
    standin.server_error_times = 100
    with pytest.raises(EmbedderError, match="HTTP 500"):
        OpenAIEmbedder(MODEL, dimension=DIMENSION, client=client, max_retries=0).embed(TEXTS)
    assert standin.request_count == 2  # the client's own max_retries=5 was not used
    insecure = openai.OpenAI(api_key="k", base_url="http://example.com/v1")
    with pytest.raises(ValidationError, match="non-loopback"):
        OpenAIEmbedder(MODEL, dimension=DIMENSION, client=insecure)
    with pytest.raises(ValidationError, match="not both"):
        OpenAIEmbedder(MODEL, dimension=DIMENSION, client=client, api_key="k")
    client.close()  # a client passed in stays the caller's to close


def test_failing_token_provider_reported(standin, tls):
    def provider() -> str:
        raise RuntimeError("credential chain exhausted")

    embedder = azure_embedder(standin, tls, api_key=None, azure_ad_token_provider=provider)
    with pytest.raises(EmbedderError, match="azure_ad_token_provider failed.*RuntimeError"):
        embedder.embed(TEXTS)
    assert standin.request_count == 0
