"""Tiny models without PyTorch: load an exported FastGRNN classifier (or a float checkpoint of
one) and run it with NumPy alone — the embedded Python API, and what Serve's router replicas run.

    from pipeline.lean import load

    router = load("exports/router-int8")                 # `tunestack export … --out exports/router-int8`
    router.predict_proba([[0.92, 0.8, 12, 0.97, 1.0]])   # raw features → class probabilities [1, 2]
    router.threshold                                     # the calibrated threshold on P(lightweight)

`load` applies the model's own normalization (saved with it) and refuses inputs its training never
saw: a sequence longer than one step for a model trained on single steps. Nothing here imports
torch or Ray (a test runs it in a process where torch cannot be imported).
"""

from __future__ import annotations

import json
import os

import numpy as np

from pipeline.lean.artifact import ArtifactError, is_export, read_export
from pipeline.lean.engine import LeanFastGRNNClassifier, softmax

__all__ = ["load", "LeanModel", "ArtifactError", "lean_supported", "sequence_lengths_of"]


def lean_supported(config: dict) -> bool:
    """Whether the lean engine runs a model of this resolved config (a FastGRNN classifier)."""
    model = config.get("model") or {}
    return model.get("arch") == "sequence_classifier" and model.get("cell", "fastgrnn") == "fastgrnn"


def sequence_lengths_of(meta: dict) -> list[int] | None:
    """The sequence lengths a model was trained on (checkpoint or export metadata); None = unknown.
    Checkpoints from before they were recorded: routing logs are single steps."""
    lengths = meta.get("sequence_lengths")
    if lengths:
        return [int(t) for t in lengths]
    if (meta.get("fingerprint") or {}).get("kind") == "routing":
        return [1]
    return None


class LeanModel:
    """A FastGRNN classifier ready to answer: normalization + the lean engine."""

    def __init__(self, weights: dict, meta: dict, path: str = ""):
        from pipeline.data.sequences import Normalization

        config = meta["config"]
        if not lean_supported(config):
            m = config.get("model") or {}
            raise ArtifactError(
                f"{path}: the lean engine runs FastGRNN classifiers; this is arch "
                f"{m.get('arch')!r} cell {m.get('cell')!r} (load it with pipeline.train.checkpoint)"
            )
        m = config["model"]
        self.path, self.meta, self.config = path, meta, config
        self.precision = meta.get("precision", "float32")
        self.engine = LeanFastGRNNClassifier(weights, m["hidden_size"], m["input_size"], m["num_classes"])
        self.normalization = Normalization.from_dict(meta.get("normalization"))
        self.features = self.normalization.features if self.normalization else None
        self.sequence_lengths = sequence_lengths_of(meta)
        # a router's threshold calibrated in training (P(lightweight) >= it: lightweight); None otherwise
        self.threshold = (meta.get("route_calibration") or {}).get("threshold")

    def prepare(self, x) -> np.ndarray:
        """Raw inputs [B, D] or [B, T, D] → normalized float32 [B, T, D] (ValueError when they do not fit)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[-1] != self.engine.input_size:
            raise ValueError(f"expected [B, {self.engine.input_size}] or [B, T, {self.engine.input_size}]")
        lengths = self.sequence_lengths
        if lengths and not min(lengths) <= x.shape[1] <= max(lengths):
            raise ValueError(f"{x.shape[1]} steps: the model was trained on sequences of {lengths} step(s)")
        return self.normalization.apply(x) if self.normalization else x.astype(np.float32)

    def logits(self, x) -> np.ndarray:
        return self.engine.logits(self.prepare(x))

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities [B, C] (float64) of raw inputs."""
        return softmax(self.logits(x))


def load(path: str) -> LeanModel:
    """A LeanModel from an export folder (`tunestack export`) or a float checkpoint folder."""
    if is_export(path):
        meta, weights = read_export(path)
        return LeanModel(weights, {**meta.get("meta", {}), **meta}, path)
    from safetensors.numpy import load_file

    meta_file, weights_file = os.path.join(path, "checkpoint.json"), os.path.join(path, "model.safetensors")
    if not (os.path.isfile(meta_file) and os.path.isfile(weights_file)):
        raise ArtifactError(f"{path}: not an export (export.json) or a checkpoint (checkpoint.json)")
    with open(meta_file) as f:
        meta = json.load(f)
    return LeanModel(load_file(weights_file), meta, path)
