"""A registry version → a ready-to-call predictor; and one family's serving state. No Ray here.

`load_predictor(registry, family, version)` checks every file of the version against the sha256
recorded at registration, loads the checkpoint (safetensors + JSON only), builds the predictor for
its arch and runs one smoke prediction, so a version that is corrupted or cannot serve fails here
with `LoadError` — before anything swaps to it.

Router (arch "sequence_classifier", 2 classes; class 1 = the lightweight model suffices):
  - the normalization saved with the checkpoint (pipeline.data.sequences.Normalization: the z-score,
    after log1p of heavy-tailed features when it lists any) is applied to every feature vector;
  - probability = softmax(logits)[1] of the model in eval mode;
    a FastGRNN runs on the lean NumPy engine (pipeline.lean: torch's answers to float32 rounding;
    an INT8 export's weights dequantized once at load), a GRU/LSTM baseline on torch;
  - a model answers only the sequence lengths it trained on (checkpoint meta `sequence_lengths`):
    a single-step router refuses a `sequence` with a 422 (its recurrent U never got a gradient);
  - the threshold: the deployment's `confidence_threshold` when it sets one ("deployment"), else
    the one calibrated when the version was trained ("calibrated": the lowest threshold whose error
    among the validation requests routed lightweight stays within route.max_lightweight_error; see
    pipeline.train.router_eval), else DEFAULT_THRESHOLD ("default": an uncalibrated version);
  - uncertainty: a second opinion only when it carries information the probability does not.
    A model trained with dropout > 0 gets MC dropout: the classifier applies dropout only to the
    last hidden state h before its linear head, so h is computed once and the head is applied under
    K = 32 dropout masks drawn once per loaded version from a fixed seed; uncertainty =
    2 · std_k(p_k), in [0, 1] (the std of numbers in [0, 1] is at most 0.5). Fixed masks make it
    deterministic: the same input always gets the same answer, on any replica. A model without
    dropout has no such estimate: uncertainty is null (a function of p alone, such as its entropy,
    would only restate the probability as a stricter threshold);
  - route = "lightweight" iff probability >= threshold and, when the deployment sets
    `max_uncertainty` and the model has an MC-dropout uncertainty, uncertainty <= max_uncertainty.
    Each answer says which threshold decided (threshold, threshold_source) and whether the
    probability or the uncertainty did (decided_by).

Autoencoder (arch "autoencoder"): x = [embedding of (concept, unit) ‖ value scaled by the pair's
scaler], both from the model's own feature transform (saved in its checkpoint: no store is read),
exactly as in training. A pair the model never saw is embedded from its text with the recorded
embedder through the model's projection, and its value scaled with its unit's fallback scaler (the
answer says `pair_known: false` and names the fallback); when that embedder is not installed here,
a 503 names it. Output: the latent vector, the reconstruction error (the model's
`per_sample_error`, the quantity it was trained to minimise) and anomaly_score = (error − mean) /
std of the same error over the pair's TRAINING rows, fitted once when training ended. A pair with
fewer than MIN_PAIR_ROWS training rows (or none) is scored against all training rows instead
(baseline scope "global"). An anomaly score of 3 means: the error is 3 standard deviations above
what the model typically makes on that pair.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict

import numpy as np
import torch

from pipeline.data.error_baseline import MIN_PAIR_ROWS, anomaly_scores
from pipeline.data.sequences import ROUTING_FEATURES, Normalization
from pipeline.lean import lean_supported, sequence_lengths_of
from pipeline.lean.engine import LeanFastGRNNClassifier
from pipeline.lean.engine import softmax as lean_softmax
from pipeline.models import family as family_of
from pipeline.models.family import FamilyView
from pipeline.registry.registry import Registry, RegistryError

MC_SAMPLES = 32
MC_SEED = 0
MAX_EMBEDDED = 10_000  # unseen pairs whose embedding a replica keeps
LIGHTWEIGHT, POWERFUL = "lightweight", "powerful"
DEFAULT_THRESHOLD = 0.85  # an uncalibrated version (trained before calibration existed)
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # a version that failed to load is tried again after these


class InputError(ValueError):
    """A request the schema accepted but this model cannot answer (HTTP 422, with the reason)."""


class LoadError(Exception):
    """A version that cannot be served: not registered, corrupted, unloadable, wrong arch."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


class NotLoaded(Exception):
    """The family has no servable version right now (HTTP 503, with the reason)."""


class Unavailable(NotLoaded):
    """The loaded version cannot answer this request here, through no fault of the request (HTTP
    503, with the reason): e.g. an unseen pair, whose embedder is not installed on this machine."""


# ---------------------------------------------------------------------------------------------
# Pieces with a definition worth testing on their own


def decide_route(
    probability: float, uncertainty: float | None, threshold: float, max_uncertainty: float | None = None
) -> str:
    """ "lightweight" only when the probability clears the threshold and, where an independent
    uncertainty and a limit for it exist, the uncertainty is within it."""
    return (
        LIGHTWEIGHT if _decided_by(probability, uncertainty, threshold, max_uncertainty) is None else POWERFUL
    )


def _decided_by(probability, uncertainty, threshold, max_uncertainty) -> str | None:
    """Which condition sends the request to the powerful model (None: neither)."""
    if probability < threshold:
        return "threshold"
    if max_uncertainty is not None and uncertainty is not None and uncertainty > max_uncertainty:
        return "uncertainty"
    return None


def route_threshold(predictor, settings) -> tuple[float, str]:
    """(threshold, where it comes from): the deployment's, the version's calibrated one, or the default."""
    if settings.confidence_threshold is not None:
        return settings.confidence_threshold, "deployment"
    calibration = getattr(predictor, "calibration", None)
    if calibration and calibration.get("threshold") is not None:
        return float(calibration["threshold"]), "calibrated"
    return DEFAULT_THRESHOLD, "default"


def _finite32(x: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{what} is out of the model's numeric range (not finite as float32)")
    return x


# ---------------------------------------------------------------------------------------------
# Router


class RoutePredictor:
    task = "route"

    def __init__(self, family: str, record: dict, ckpt):
        self.family, self.version, self.record = family, record["version"], record
        self.model = ckpt.build_model()
        c = self.model.config
        if c.num_classes != 2:
            raise LoadError(
                f"{family} {self.version}: a router needs 2 classes, the model has {c.num_classes}"
            )
        self.input_size = c.input_size
        self.normalization = Normalization.from_dict(ckpt.meta.get("normalization"))
        names = self.normalization.features if self.normalization and self.normalization.features else None
        if names is None and self.input_size == len(ROUTING_FEATURES):
            names = list(ROUTING_FEATURES)
        if names is not None and len(names) != self.input_size:
            raise LoadError(
                f"{family} {self.version}: {len(names)} feature names for {self.input_size} inputs"
            )
        self.features = names
        self.calibration = ckpt.meta.get("route_calibration")  # stored by training/tuning
        self.masks = None
        if c.dropout > 0:
            g = torch.Generator().manual_seed(MC_SEED)
            keep = (torch.rand(MC_SAMPLES, c.hidden_size, generator=g) >= c.dropout).float()
            self.masks = keep / (1.0 - c.dropout)
        self._seen = threading.local()  # the head's input, per thread: predict may run concurrently
        self.model.head.register_forward_pre_hook(self._capture_head_input)
        # FastGRNN runs on the lean NumPy engine (same answers to float32 rounding, a fraction of
        # torch's per-call overhead); GRU/LSTM baselines on torch
        self.precision = ckpt.meta.get("precision", "float32")
        self.sequence_lengths = sequence_lengths_of(ckpt.meta)
        self.engine = None
        if lean_supported(ckpt.config):
            weights = {k: v.detach().float().numpy() for k, v in ckpt.weights.items()}
            for name in family_of(ckpt.config["model"]["arch"]).unused(
                ckpt.config["model"], self.sequence_lengths
            ):
                weights.pop(name, None)  # untrained: a single-step model has no U
            self.engine = LeanFastGRNNClassifier(weights, c.hidden_size, c.input_size, c.num_classes)
            self.np_masks = None if self.masks is None else self.masks.numpy()

    def _capture_head_input(self, _module, args):
        self._seen.head_input = args[0]

    @property
    def uncertainty_kind(self) -> str:
        return f"mc_dropout(k={MC_SAMPLES})" if self.masks is not None else "none"

    def prepare(self, instance: dict) -> np.ndarray:
        """One instance → its normalized input [T, D] float32 (InputError when it does not fit)."""
        d = self.input_size
        if "sequence" in instance:
            steps = instance["sequence"]
            bad = [i for i, s in enumerate(steps) if len(s) != d]
            if bad:
                raise InputError(
                    f"sequence step {bad[0]} has {len(steps[bad[0]])} features; the model "
                    f"takes {d}" + (f" ({', '.join(self.features)})" if self.features else "")
                )
            x = np.asarray(steps, dtype=np.float64)
        elif isinstance(instance.get("features"), dict):
            f = instance["features"]
            if self.features is None:
                raise InputError(f"this model has no feature names; send a list of {d} numbers")
            missing = [n for n in self.features if n not in f]
            unknown = sorted(set(f) - set(self.features))
            if missing or unknown:
                parts = ([f"missing {missing}"] if missing else []) + (
                    [f"unknown {unknown}"] if unknown else []
                )
                raise InputError(f"features: {'; '.join(parts)}; the model takes {self.features}")
            x = np.asarray([[f[n] for n in self.features]], dtype=np.float64)
        else:
            f = instance.get("features")
            if not isinstance(f, list) or len(f) != d:
                n = len(f) if isinstance(f, list) else 0
                raise InputError(
                    f"features has {n} values; the model takes {d}"
                    + (f" ({', '.join(self.features)})" if self.features else "")
                )
            x = np.asarray([f], dtype=np.float64)
        lengths = self.sequence_lengths
        if lengths and not min(lengths) <= len(x) <= max(lengths):
            trained = f"{lengths[0]}-step" if len(lengths) == 1 else f"{min(lengths)}..{max(lengths)}-step"
            raise InputError(
                f"{'a sequence of ' + str(len(x)) + ' steps' if len(x) > 1 else 'a single step'}: this "
                f"model was trained on {trained} inputs only"
                + (
                    " (its recurrent weights never learned); send one step as features"
                    if lengths == [1]
                    else ""
                )
            )
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
            x = self.normalization.apply(x) if self.normalization else x
        return _finite32(x, "a feature value")

    @torch.no_grad()
    def predict(self, xs: list[np.ndarray]) -> list[dict]:
        """Prepared inputs → [{"probability", "uncertainty"}], one forward per sequence length."""
        out: list[dict | None] = [None] * len(xs)
        by_len = defaultdict(list)
        for i, x in enumerate(xs):
            by_len[x.shape[0]].append(i)
        for idx in by_len.values():
            if self.engine is not None:
                self._predict_lean(np.stack([xs[i] for i in idx]), idx, out)
                continue
            logits = self.model(torch.from_numpy(np.stack([xs[i] for i in idx])))
            p = torch.softmax(logits, dim=-1)[:, 1]
            unc = [None] * len(idx)
            if self.masks is not None:
                h = self._seen.head_input  # [B, H]: dropout is the identity in eval mode
                pk = torch.softmax(self.model.head(h.unsqueeze(0) * self.masks.unsqueeze(1)), dim=-1)[..., 1]
                unc = (2.0 * pk.double().std(dim=0, unbiased=False)).clamp(0, 1).tolist()
            for j, i in enumerate(idx):
                out[i] = {"probability": float(p[j]), "uncertainty": unc[j]}
        return out

    def _predict_lean(self, x: np.ndarray, idx: list[int], out: list) -> None:
        """The lean engine's answers for same-length inputs x [B, T, D] into out[idx]."""
        h = self.engine.hidden(x)
        p = lean_softmax(self.engine.head(h))[:, 1]
        unc = [None] * len(idx)
        if self.np_masks is not None:
            pk = lean_softmax(self.engine.head(h[None, :, :] * self.np_masks[:, None, :]))[..., 1]
            unc = np.clip(2.0 * pk.astype(np.float64).std(axis=0), 0, 1).tolist()
        for j, i in enumerate(idx):
            out[i] = {"probability": float(p[j]), "uncertainty": unc[j]}

    def smoke_test(self) -> None:
        r = self.predict([np.zeros((min(self.sequence_lengths or [1]), self.input_size), np.float32)])[0]
        if not (math.isfinite(r["probability"]) and math.isfinite(r["uncertainty"] or 0.0)):
            raise LoadError(f"{self.family} {self.version}: the model answers NaN")

    def info(self) -> dict:
        return {
            "features": self.features,
            "input_size": self.input_size,
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "uncertainty": self.uncertainty_kind,
            "calibration": self.calibration,
            "precision": self.precision,
            "engine": "lean-numpy" if self.engine is not None else "torch",
            "sequence_lengths": self.sequence_lengths,
        }


# ---------------------------------------------------------------------------------------------
# Autoencoder


class EncodePredictor:
    """The autoencoder behind /v1/encode, answering from its own feature transform only (the
    checkpoint's pipeline.data.features.FeatureTransform: no store is read)."""

    task = "encode"

    def __init__(self, family: str, record: dict, ckpt):
        self.family, self.version, self.record = family, record["version"], record
        # a replica given a GPU (ray_actor_options: {num_gpus: …}) runs the model there
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ckpt.build_model().to(self.device)
        self.features = ckpt.features()
        if self.features is None or self.features.baseline is None:
            what = "no feature transform" if self.features is None else "no error baseline"
            raise LoadError(
                f"{family} {self.version}: the checkpoint carries {what} (saved before models kept "
                "their own features): train and register it again"
            )
        if self.features.embed_dim + 1 != self.model.config.input_dim:
            raise LoadError(
                f"{family} {self.version}: the model takes {self.model.config.input_dim} inputs, its "
                f"feature transform gives {self.features.embed_dim} (+1 value)"
            )
        self._embedded: dict[tuple[str, str], np.ndarray] = {}  # unseen pairs, embedded once each

    def _embedding(self, concept: str, unit: str) -> np.ndarray:
        """An unseen pair's embedding (FeatureTransform.embed_unseen; Unavailable — a 503 naming
        the embedder — when the recorded embedder is not installed here)."""
        from pipeline.store.features import EmbedderUnavailable

        key = (concept, unit)
        if key not in self._embedded:
            try:
                emb = self.features.embed_unseen([key])[0]
            except EmbedderUnavailable as e:
                raise Unavailable(
                    f"{self.family} {self.version}: ({concept!r}, {unit!r}) is a pair the model never saw, "
                    f"and embedding it needs the model's embedder: {e}"
                ) from None
            if len(self._embedded) >= MAX_EMBEDDED:
                self._embedded.pop(next(iter(self._embedded)))
            self._embedded[key] = emb
        return self._embedded[key]

    # -- serving ------------------------------------------------------------------------------
    def prepare(self, instance: dict) -> tuple[int, str | None, np.ndarray]:
        """(model pair row or -1, fallback name or None, input row float32 [embed_dim + 1])."""
        f = self.features
        concept, unit = instance["concept"], instance["unit"]
        k = f.row_of(concept, unit)
        if k >= 0:
            emb, scaler_row, fallback = f.embeddings[k], k, None
        else:
            emb = self._embedding(concept, unit)
            scaler_row, fallback = f.fallback_of(unit)
        scaled = f.scale(np.asarray([scaler_row]), np.asarray([instance["value"]], np.float64))
        row = np.empty(f.embed_dim + 1, dtype=np.float32)
        row[:-1] = emb
        row[-1:] = _finite32(scaled, f"value {instance['value']!r} once scaled")
        return k, fallback, row

    @torch.no_grad()
    def predict(self, items: list[tuple[int, str | None, np.ndarray]]) -> list[dict]:
        x = torch.from_numpy(np.stack([row for _, _, row in items])).to(self.device)
        recon, latent = self.model(x)
        err = self.model.per_sample_error(x, recon).cpu().numpy()
        baseline = self.features.baseline
        out = []
        for (k, fallback, _), e, z in zip(items, err, latent.cpu().numpy()):
            base = baseline.row(k)
            score = anomaly_scores(np.asarray([e]), np.asarray([base["mean"]]), np.asarray([base["std"]]))[0]
            out.append(
                {
                    "latent": z.astype(np.float64).tolist(),
                    "reconstruction_error": float(e),
                    "anomaly_score": float(score),
                    "baseline": base,
                    "pair_known": k >= 0,
                    "fallback": fallback,
                }
            )
        return out

    def smoke_test(self) -> None:
        r = self.predict(
            [(0, None, np.concatenate([self.features.embeddings[0], [0.0]]).astype(np.float32))]
        )[0]
        if not (math.isfinite(r["reconstruction_error"]) and all(map(math.isfinite, r["latent"]))):
            raise LoadError(f"{self.family} {self.version}: the model answers NaN")

    def info(self) -> dict:
        f = self.features
        b = f.baseline.overall
        return {
            "features": {
                "pairs": len(f),
                "embedder": f.space.embedder.get("name"),
                "feature_version": f.source.get("feature_version"),
                "trained_on": {"store": f.source.get("uri"), "version": f.source.get("version")},
                "fallback_units": len(f.fallback_units) - 1,
            },
            "latent_dim": self.model.config.latent_dim,
            "device": self.device.type,
            "baseline": {
                "rows": int(b[0]),
                "min_pair_rows": MIN_PAIR_ROWS,
                "global_mean": float(b[1]),
                "global_std": float(b[2]),
            },
        }


# {arch: predictor class}, derived from the family descriptors
PREDICTORS = FamilyView(lambda f: f.predictor_class(), where=lambda f: f.predictor is not None)


def load_predictor(
    registry: Registry,
    family: str,
    version: str | None = None,
    *,
    task: str | None = None,
    store_uri: str | None = None,
):
    """The family's version (production when None), verified, loaded and smoke-tested. The files
    are read once through the registry's storage (any backend) and checked against their sha256."""
    from pipeline.train.checkpoint import CheckpointError, checkpoint_from_files

    try:
        record, files = registry.read_files(family, version)
    except RegistryError as e:
        raise LoadError(str(e), not_found="not registered" in str(e) or "no production" in str(e)) from e
    except OSError as e:
        raise LoadError(f"{family} {version or 'production'}: cannot read the registry: {e}") from e
    except (ValueError, TypeError) as e:  # a malformed version.json
        raise LoadError(f"{family} {version or 'production'}: unreadable registry record: {e}") from e
    try:
        ckpt = checkpoint_from_files(record["checkpoint"], files)
        arch = ckpt.config["model"]["arch"]
        try:
            cls = PREDICTORS[arch]
        except (KeyError, ValueError):
            raise LoadError(f"{family} {record['version']}: no predictor for arch {arch!r}") from None
        if task is not None and cls.task != task:
            raise LoadError(f"{family} {record['version']}: arch {arch!r} cannot serve {task!r}")
        predictor = cls(family, record, ckpt)
        predictor.smoke_test()
    except LoadError:
        raise
    except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        raise LoadError(f"{family} {record['version']}: cannot load: {type(e).__name__}: {e}") from e
    return predictor


# ---------------------------------------------------------------------------------------------
# One family's serving state: what a Serve replica holds, minus Ray


class ModelHost:
    """The live predictor of one family, a staged candidate, and the registry pointer it follows.

    `sync()` makes the live predictor the registry's production version; a version that fails to
    load is remembered and retried with exponential backoff (RETRY_FIRST_S doubling up to
    RETRY_MAX_S: a file that was still being written, a store that was briefly unreachable), while
    the old predictor keeps serving. Swapping is one attribute assignment, so a request that already holds the old
    predictor finishes on it: every answer comes wholly from one version."""

    def __init__(
        self,
        family: str,
        task: str,
        registry_root: str | None = None,
        store_uri: str | None = None,
        settings: dict | None = None,
    ):
        from serve.schemas import ModelSettings

        self.family, self.task, self.store_uri = family, task, store_uri
        self.registry = Registry(registry_root)
        self.settings = ModelSettings(**(settings or {}))
        self.predictor = None
        self.staged = None
        self.error: str | None = None
        self.failed_version: str | None = None
        self.failed_loads = 0  # consecutive failed loads of failed_version
        self.retry_at = 0.0  # when failed_version may be tried again (clock())
        self.clock = time.monotonic
        self._load_lock = threading.Lock()

    def load(self, version: str | None = None):
        return load_predictor(self.registry, self.family, version, task=self.task, store_uri=self.store_uri)

    def sync(self) -> bool:
        """Follow the production pointer; True when the live predictor changed."""
        with self._load_lock:
            try:
                target = self.registry.pointer(self.family)["version"]
            except (OSError, ValueError, KeyError, RegistryError) as e:
                self.error = f"cannot read the production pointer: {e}"
                return False
            current = self.predictor.version if self.predictor else None
            if target is None:
                if current is None:
                    self.error = f"{self.family} has no production version"
                return False
            if target == current:
                return False
            if target == self.failed_version and self.clock() < self.retry_at:
                return False  # backing off
            staged = self.staged
            try:
                predictor = staged if staged is not None and staged.version == target else self.load(target)
            except LoadError as e:
                self.failed_loads = self.failed_loads + 1 if target == self.failed_version else 1
                self.failed_version, self.error = target, str(e)
                backoff = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self.failed_loads - 1))
                self.retry_at = self.clock() + backoff
                return False
            self.predictor, self.staged, self.error, self.failed_version = predictor, None, None, None
            self.failed_loads = 0
            return True

    def stage(self, version: str) -> dict:
        """Load `version` without serving it (the check a promotion makes first)."""
        with self._load_lock:
            try:
                predictor = self.load(version)
            except LoadError as e:
                return {"ok": False, "not_found": e.not_found, "error": str(e)}
            self.staged = predictor
            return {"ok": True, "version": version}

    def canary(self) -> None:
        """One prediction through the live model (Serve's health check): raises when it cannot answer.
        No live model is not this replica's fault (a fresh one would have none either): /readyz says it."""
        predictor = self.predictor
        if predictor is not None:
            predictor.smoke_test()

    def prepare(self, instances: list[dict]):
        """(the live predictor, prepared instances); NotLoaded or InputError when it cannot answer."""
        predictor = self.predictor
        if predictor is None:
            raise NotLoaded(f"{self.family}: no model loaded ({self.error or 'loading'})")
        prepared = []
        for i, inst in enumerate(instances):
            try:
                prepared.append(predictor.prepare(inst))
            except InputError as e:
                raise InputError(f"instance {i}: {e}" if len(instances) > 1 else str(e)) from None
        return predictor, prepared

    @staticmethod
    def run(items: list[tuple[object, list]]) -> list[list[dict]]:
        """Predict for several requests at once: one model call per predictor (old/new version)."""
        groups = defaultdict(list)
        for n, (predictor, _prepared) in enumerate(items):
            groups[id(predictor)].append(n)
        results: list[list[dict] | None] = [None] * len(items)
        for ns in groups.values():
            predictor = items[ns[0]][0]
            flat = [x for n in ns for x in items[n][1]]
            outs = predictor.predict(flat)
            k = 0
            for n in ns:
                m = len(items[n][1])
                results[n] = outs[k : k + m]
                k += m
        return results

    def finish(self, predictor, outputs: list[dict]) -> list[dict]:
        """Add the route decision (router) and the version to raw predictions."""
        s = self.settings
        if predictor.task == "route":
            threshold, source = route_threshold(predictor, s)
        done = []
        for o in outputs:
            values = (
                [o["probability"], o["uncertainty"] or 0.0]
                if predictor.task == "route"
                else [o["reconstruction_error"], o["anomaly_score"], *o["latent"]]
            )
            if not all(math.isfinite(v) for v in values):
                raise InputError("the input is out of the model's numeric range (its answer is not finite)")
            if predictor.task == "route":
                vetoed = _decided_by(o["probability"], o["uncertainty"], threshold, s.max_uncertainty)
                o = {
                    "route": POWERFUL if vetoed else LIGHTWEIGHT,
                    **o,
                    "threshold": threshold,
                    "threshold_source": source,
                    "decided_by": vetoed or "threshold",
                }
            done.append({**o, "model_version": predictor.version})
        return done

    def predict(self, instances: list[dict]) -> list[dict]:
        """prepare → run → finish in one call (the in-process path; Serve batches `run`)."""
        predictor, prepared = self.prepare(instances)
        return self.finish(predictor, self.run([(predictor, prepared)])[0])

    def info(self) -> dict:
        p = self.predictor
        out = {
            "family": self.family,
            "task": self.task,
            "loaded": p is not None,
            "version": p.version if p else None,
            "error": self.error,
            "staged": self.staged.version if self.staged else None,
            "settings": self.settings.model_dump(),
        }
        if p is not None:
            out.update(p.info())
        return out
