"""Tests of sealvec.embedders against the real all-MiniLM-L6-v2 and the stdlib corpus.

Tests that run the model skip only when sentence-transformers is not installed;
the rest use a stand-in model and always run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealvec import embedders
from sealvec.embedders import (
    Embedder,
    LocalEmbedder,
    default_embedder,
    validate_embeddings,
)
from sealvec.errors import EmbedderError, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_RECORDS = "stdlib-docs.jsonl"
CORPUS_VECTORS = "stdlib-docs.minilm.npy"
MINILM_DIMENSION = 384
RECORDS_TO_REEMBED = 200


def resolve_corpus_dir() -> Path:
    """SEALVEC_CORPUS_DIR, else the repo's data/corpus or tests/data/corpus, else
    the shared corpus folder."""
    from_env = os.environ.get("SEALVEC_CORPUS_DIR")
    if from_env:
        return Path(from_env)
    for candidate in (
        REPO_ROOT / "data" / "corpus",
        REPO_ROOT / "tests" / "data" / "corpus",
    ):
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/corpus")


@pytest.fixture(scope="module")
def corpus_dir() -> Path:
    directory = resolve_corpus_dir()
    if not (directory / CORPUS_RECORDS).is_file():
        pytest.fail(
            f"corpus not found in {directory}: set SEALVEC_CORPUS_DIR to the folder "
            f"holding {CORPUS_RECORDS} and {CORPUS_VECTORS}"
        )
    return directory


@pytest.fixture(scope="module")
def corpus_records(corpus_dir: Path) -> list[dict[str, Any]]:
    with (corpus_dir / CORPUS_RECORDS).open(encoding="utf-8") as records_file:
        return [json.loads(line) for line in records_file]


@pytest.fixture(scope="module")
def corpus_vectors(corpus_dir: Path) -> np.ndarray:
    return np.load(corpus_dir / CORPUS_VECTORS)


@pytest.fixture(scope="module")
def local_embedder() -> LocalEmbedder:
    pytest.importorskip("sentence_transformers")
    embedder = LocalEmbedder()
    embedder.load()
    return embedder


# --- the real model -------------------------------------------------------------


def test_corpus_vectors_match_records(
    corpus_records: list[dict[str, Any]], corpus_vectors: np.ndarray
) -> None:
    assert corpus_vectors.shape == (len(corpus_records), MINILM_DIMENSION)
    assert corpus_vectors.dtype == np.float32


def test_dimension_and_label(local_embedder: LocalEmbedder) -> None:
    assert local_embedder.dimension == MINILM_DIMENSION
    assert local_embedder.model_label == "local:all-MiniLM-L6-v2"
    assert isinstance(local_embedder, Embedder)


def test_reembedding_reproduces_corpus_vectors(
    local_embedder: LocalEmbedder,
    corpus_records: list[dict[str, Any]],
    corpus_vectors: np.ndarray,
) -> None:
    texts = [record["text"] for record in corpus_records[:RECORDS_TO_REEMBED]]
    vectors = local_embedder.embed(texts)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    assert vectors.shape == (RECORDS_TO_REEMBED, MINILM_DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    reference = corpus_vectors[:RECORDS_TO_REEMBED]
    cosines = (vectors * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, f"worst row {int(cosines.argmin())}"


def exact_cosine_top(
    query_vector: np.ndarray, corpus_vectors: np.ndarray, k: int
) -> np.ndarray:
    norms = np.linalg.norm(corpus_vectors, axis=1)
    scores = corpus_vectors @ query_vector / norms
    return np.argsort(-scores, kind="stable")[:k]


@pytest.mark.parametrize(
    ("question", "expected_module"),
    [
        ("read rows from a comma separated values file", "csv"),
        ("parse command line arguments", "argparse"),
        ("compress data with gzip", "gzip"),
        ("send an email over SMTP", "smtplib"),
        ("create a temporary file", "tempfile"),
        ("run a shell command in a subprocess", "subprocess"),
        ("parse a URL into its components", "urllib.parse"),
    ],
)
def test_question_finds_module_in_top_five(
    local_embedder: LocalEmbedder,
    corpus_records: list[dict[str, Any]],
    corpus_vectors: np.ndarray,
    question: str,
    expected_module: str,
) -> None:
    query_vector = local_embedder.embed_query(question)
    top_rows = exact_cosine_top(query_vector, corpus_vectors, k=5)
    top_modules = [corpus_records[row]["module"] for row in top_rows]
    assert expected_module in top_modules, [corpus_records[r]["id"] for r in top_rows]


def test_embed_query_is_one_row(local_embedder: LocalEmbedder) -> None:
    query_vector = local_embedder.embed_query("open a zip archive")
    assert query_vector.shape == (MINILM_DIMENSION,)
    assert query_vector.dtype == np.float32
    batch_vector = local_embedder.embed(["open a zip archive"])[0]
    np.testing.assert_allclose(query_vector, batch_vector, atol=1e-6)


def test_rows_keep_input_order_across_batches() -> None:
    pytest.importorskip("sentence_transformers")
    # Lengths differ so the longest-first batching reorders them internally.
    texts = ["x", "a much longer sentence about files " * 6, "medium text here", ""]
    progress: list[tuple[int, int]] = []
    embedder = LocalEmbedder(
        batch_size=2, on_progress=lambda done, total: progress.append((done, total))
    )
    together = embedder.embed(texts)
    assert progress == [(2, 4), (4, 4)]
    one_by_one = np.stack([embedder.embed_query(text) for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_empty_input_gives_empty_matrix(local_embedder: LocalEmbedder) -> None:
    vectors = local_embedder.embed([])
    assert vectors.shape == (0, MINILM_DIMENSION)
    assert vectors.dtype == np.float32


def test_texts_and_vectors_are_not_logged(
    local_embedder: LocalEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "patient 4711 has condition zebra"
    with caplog.at_level(logging.DEBUG, logger="sealvec"):
        vector = local_embedder.embed([secret])[0]
    assert secret not in caplog.text
    assert "4711" not in caplog.text
    assert f"{vector[0]:.4f}" not in caplog.text
    assert "embedded 1 texts" in caplog.text


def test_loading_sets_hub_offline(local_embedder: LocalEmbedder) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"


# --- argument and output checks (stand-in model, always run) ---------------------


class StandInModel:
    """Returns whatever `make_output(texts)` gives, in place of SentenceTransformer."""

    def __init__(self, make_output: Any) -> None:
        self.make_output = make_output

    def encode(self, texts: list[str], **options: Any) -> Any:
        return self.make_output(texts)


@pytest.fixture
def stand_in_model(monkeypatch: pytest.MonkeyPatch) -> StandInModel:
    model_path = Path("/stand-in-model")
    monkeypatch.setattr(embedders, "bundled_model_path", lambda: model_path)
    stand_in = StandInModel(
        lambda texts: np.ones((len(texts), MINILM_DIMENSION), dtype=np.float32)
    )
    loaded = embedders._LoadedModel(stand_in, MINILM_DIMENSION)
    monkeypatch.setattr(embedders, "_loaded_models", {model_path: loaded})
    return stand_in


@pytest.mark.parametrize(
    ("bad_output", "message"),
    [
        (lambda texts: np.full((len(texts), 384), np.nan, np.float32), "non-finite"),
        (lambda texts: np.full((len(texts), 384), np.inf, np.float32), "non-finite"),
        (lambda texts: np.ones((len(texts), 383), np.float32), "shape"),
        (lambda texts: np.ones((len(texts) + 1, 384), np.float32), "shape"),
        (lambda texts: np.ones((len(texts), 384), np.int32), "dtype"),
        (lambda texts: [[0.0] * 384 for _ in texts], "numpy array"),
    ],
)
def test_bad_model_output_raises(
    stand_in_model: StandInModel, bad_output: Any, message: str
) -> None:
    stand_in_model.make_output = bad_output
    with pytest.raises(EmbedderError, match=message):
        LocalEmbedder().embed(["one", "two"])


def test_model_failure_names_no_text(stand_in_model: StandInModel) -> None:
    def fail(texts: list[str]) -> np.ndarray:
        raise RuntimeError(f"cannot handle {texts[0]}")

    stand_in_model.make_output = fail
    with pytest.raises(EmbedderError) as raised:
        LocalEmbedder().embed(["confidential words"])
    assert "confidential" not in str(raised.value)
    assert "RuntimeError" in str(raised.value)


def test_float64_output_becomes_float32(stand_in_model: StandInModel) -> None:
    stand_in_model.make_output = lambda texts: np.ones((len(texts), 384), np.float64)
    vectors = LocalEmbedder().embed(["a", "b", "c"])
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous


def test_validate_embeddings_accepts_good_output() -> None:
    good = np.zeros((3, 8), dtype=np.float32)
    assert validate_embeddings(good, 3, 8, "test") is not None


@pytest.mark.parametrize(
    "bad_texts", ["a single string", b"bytes", 42, [1, 2], ["a", None]]
)
def test_non_string_texts_are_refused(
    stand_in_model: StandInModel, bad_texts: Any
) -> None:
    with pytest.raises(ValidationError):
        LocalEmbedder().embed(bad_texts)


def test_embed_query_refuses_a_list(stand_in_model: StandInModel) -> None:
    with pytest.raises(ValidationError):
        LocalEmbedder().embed_query(["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_batch_size", [0, -1, 1.5, True])
def test_bad_batch_size_is_refused(bad_batch_size: Any) -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        LocalEmbedder(batch_size=bad_batch_size)


def test_progress_callback_error_stops_embedding(stand_in_model: StandInModel) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalEmbedder(batch_size=1, on_progress=stop).embed(["a", "b"])


def test_missing_sentence_transformers_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedders, "_loaded_models", {})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(EmbedderError) as raised:
        LocalEmbedder().embed(["text"])
    message = str(raised.value)
    assert "pip install 'sealvec[embed]'" in message
    assert "torch==2.13.0" in message
    assert "\n" not in message


def test_missing_model_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, embedders.MODEL_PACKAGE, None)
    with pytest.raises(EmbedderError, match=r"sealvec\[embed\]"):
        _ = LocalEmbedder().dimension


def test_default_embedder_is_local() -> None:
    embedder = default_embedder()
    assert isinstance(embedder, LocalEmbedder)
    assert embedder.model_label == "local:all-MiniLM-L6-v2"
