"""A registry version → a ready-to-call predictor; and one family's serving state. No Ray here.

`load_predictor(registry, family, version)` checks every file of the version against the sha256
recorded at registration, loads the checkpoint (safetensors + JSON only), builds the predictor for
its arch and runs one smoke prediction, so a version that is corrupted or cannot serve fails here
with `LoadError` — before anything swaps to it.

Router (arch "sequence_classifier", 2 classes; class 1 = the lightweight model suffices):
  - the normalization saved with the checkpoint (pipeline.data.sequences.Normalization: the z-score,
    after log1p of heavy-tailed features when it lists any) is applied to every feature vector;
  - probability = softmax(logits)[1] of the model in eval mode;
  - uncertainty, always in [0, 1]:
      * model trained with dropout > 0: MC dropout. The classifier applies dropout only to the last
        hidden state h before its linear head, so h is computed once and the head is applied under
        K = 32 dropout masks drawn once per loaded version from a fixed seed; uncertainty =
        2 · std_k(p_k) (the std of numbers in [0, 1] is at most 0.5). Fixed masks make it
        deterministic: the same input always gets the same answer, on any replica.
      * otherwise: the binary entropy of p in bits, H(p) = −p·log2 p − (1−p)·log2(1−p), which is 0
        at p ∈ {0, 1} and 1 at p = 0.5. It is a function of p alone, so with the defaults
        (threshold 0.85, max uncertainty 0.15) "lightweight" needs p ≥ 0.979 (H(0.979) ≈ 0.147).
  - route = "lightweight" iff probability >= confidence_threshold and uncertainty <= max_uncertainty.

Autoencoder (arch "autoencoder"): x = [embedding of (concept, unit) ‖ value scaled by the pair's
scaler], both from the triplet store, exactly as in training. Output: the latent vector, the
reconstruction error (the model's `per_sample_error`, the quantity it was trained to minimise) and
anomaly_score = (error − mean) / std of the same error over the pair's TRAINING rows of the store
(the folds the model trained on), computed once when the version loads. A pair with fewer than
MIN_PAIR_ROWS training rows is scored against all training rows instead (baseline scope
"global"). An anomaly score of 3 means: the error is 3 standard deviations above what the model
typically makes on that pair.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

import numpy as np
import torch

from pipeline.data.sequences import ROUTING_FEATURES, Normalization
from pipeline.lean import lean_supported, sequence_lengths_of
from pipeline.lean.engine import LeanFastGRNNClassifier
from pipeline.lean.engine import softmax as lean_softmax
from pipeline.models import family as family_of
from pipeline.models.family import FamilyView
from pipeline.registry.registry import Registry, RegistryError, sha256_file

MC_SAMPLES = 32
MC_SEED = 0
MIN_PAIR_ROWS = 5
STD_FLOOR = 1e-6
MAX_STAT_ROWS = 2_000_000  # training rows read for the error baseline (enough for any pair's moments)
LIGHTWEIGHT, POWERFUL = "lightweight", "powerful"


class InputError(ValueError):
    """A request the schema accepted but this model cannot answer (HTTP 422, with the reason)."""


class LoadError(Exception):
    """A version that cannot be served: not registered, corrupted, unloadable, wrong arch."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


class NotLoaded(Exception):
    """The family has no servable version right now (HTTP 503, with the reason)."""


# ---------------------------------------------------------------------------------------------
# Pieces with a definition worth testing on their own


def binary_entropy(p) -> np.ndarray:
    """H(p) in bits, in [0, 1]: 0 at p ∈ {0, 1}, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def decide_route(
    probability: float, uncertainty: float, confidence_threshold: float, max_uncertainty: float
) -> str:
    """ "lightweight" only when the router is confident enough and certain enough."""
    ok = probability >= confidence_threshold and uncertainty <= max_uncertainty
    return LIGHTWEIGHT if ok else POWERFUL


def verify_files(record: dict) -> None:
    """Every file of a registry record matches the sha256 recorded when it was registered."""
    from pathlib import Path

    problems = []
    for name, digest in record.get("files", {}).items():
        p = Path(record["path"]) / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(p) != digest:
            problems.append(f"{name} fails its sha256")
    if not record.get("files"):
        problems.append("version.json lists no files")
    if problems:
        raise LoadError(f"{record.get('family')} {record.get('version')}: " + "; ".join(problems))


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

    def __init__(self, family: str, record: dict, ckpt, store_uri: str | None = None):
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
        self.masks = None
        if c.dropout > 0:
            g = torch.Generator().manual_seed(MC_SEED)
            keep = (torch.rand(MC_SAMPLES, c.hidden_size, generator=g) >= c.dropout).float()
            self.masks = keep / (1.0 - c.dropout)
        self._head_input = None
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
        self._head_input = args[0]

    @property
    def uncertainty_kind(self) -> str:
        return f"mc_dropout(k={MC_SAMPLES})" if self.masks is not None else "binary_entropy"

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
            if self.masks is not None:
                h = self._head_input  # [B, H]: dropout is the identity in eval mode
                pk = torch.softmax(self.model.head(h.unsqueeze(0) * self.masks.unsqueeze(1)), dim=-1)[..., 1]
                unc = (2.0 * pk.double().std(dim=0, unbiased=False)).clamp(0, 1).numpy()
            else:
                unc = binary_entropy(p.numpy())
            for j, i in enumerate(idx):
                out[i] = {"probability": float(p[j]), "uncertainty": float(unc[j])}
        return out

    def _predict_lean(self, x: np.ndarray, idx: list[int], out: list) -> None:
        """The lean engine's answers for same-length inputs x [B, T, D] into out[idx]."""
        h = self.engine.hidden(x)
        p = lean_softmax(self.engine.head(h))[:, 1]
        if self.np_masks is not None:
            pk = lean_softmax(self.engine.head(h[None, :, :] * self.np_masks[:, None, :]))[..., 1]
            unc = np.clip(2.0 * pk.std(axis=0), 0, 1)
        else:
            unc = binary_entropy(p)
        for j, i in enumerate(idx):
            out[i] = {"probability": float(p[j]), "uncertainty": float(unc[j])}

    def smoke_test(self) -> None:
        r = self.predict([np.zeros((min(self.sequence_lengths or [1]), self.input_size), np.float32)])[0]
        if not (math.isfinite(r["probability"]) and math.isfinite(r["uncertainty"])):
            raise LoadError(f"{self.family} {self.version}: the model answers NaN")

    def info(self) -> dict:
        return {
            "features": self.features,
            "input_size": self.input_size,
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "uncertainty": self.uncertainty_kind,
            "precision": self.precision,
            "engine": "lean-numpy" if self.engine is not None else "torch",
            "sequence_lengths": self.sequence_lengths,
        }


# ---------------------------------------------------------------------------------------------
# Autoencoder


class EncodePredictor:
    task = "encode"

    def __init__(
        self,
        family: str,
        record: dict,
        ckpt,
        store_uri: str | None = None,
        max_stat_rows: int = MAX_STAT_ROWS,
    ):
        from pipeline.home import default_store_uri
        from pipeline.store.layout import StoreError, TripletStore

        self.family, self.version, self.record = family, record["version"], record
        # a replica given a GPU (ray_actor_options: {num_gpus: …}) runs the model there
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ckpt.build_model().to(self.device)
        trained_on = ckpt.meta.get("store") or {}
        uri = store_uri or trained_on.get("uri") or default_store_uri()
        try:
            self.store = TripletStore(uri)
            manifest = self.store.require()
            pairs = self.store.read_pairs()
        except (StoreError, OSError) as e:
            raise LoadError(f"{family} {self.version}: cannot read the triplet store: {e}") from e
        self.lookup = self.store.pair_lookup(pairs)
        self.embeddings = self.store.embeddings(pairs)
        self.scalers = self.store.scalers(pairs)
        if self.embeddings.shape[1] + 1 != self.model.config.input_dim:
            raise LoadError(
                f"{family} {self.version}: the model takes {self.model.config.input_dim} inputs, the "
                f"store's embeddings are {self.embeddings.shape[1]}-d (+1 value)"
            )
        self.store_info = {
            "uri": uri,
            "version": manifest["version"],
            "trained_on_version": trained_on.get("version"),
            "pairs": len(self.lookup),
        }
        val_fraction = (ckpt.config.get("data") or {}).get("val_fraction") or 0.1
        self._fit_baseline(val_fraction, max_stat_rows)

    # -- the per-pair error baseline over the training rows ------------------------------------
    def _fit_baseline(self, val_fraction: float, max_rows: int) -> None:
        import pyarrow.parquet as pq

        from pipeline.data.triplets import split_folds

        lo, hi = split_folds("train", val_fraction)
        n_pairs = len(self.embeddings)
        count, total, total_sq = np.zeros(n_pairs), np.zeros(n_pairs), np.zeros(n_pairs)
        seen = 0
        for path in self.store.triplet_files():
            with self.store.loc.fs.open_input_file(path) as f:
                for rb in pq.ParquetFile(f).iter_batches(
                    batch_size=65_536, columns=["pair_id", "scaled_value", "fold"]
                ):
                    fold = rb.column("fold").to_numpy()
                    keep = (fold >= lo) & (fold < hi)
                    pid = rb.column("pair_id").to_numpy()[keep].astype(np.int64)
                    value = rb.column("scaled_value").to_numpy()[keep]
                    pid, value = pid[: max_rows - seen], value[: max_rows - seen]
                    if len(pid):
                        err = self._errors(self._rows(pid, value)).astype(np.float64)
                        count += np.bincount(pid, minlength=n_pairs)
                        total += np.bincount(pid, weights=err, minlength=n_pairs)
                        total_sq += np.bincount(pid, weights=err * err, minlength=n_pairs)
                        seen += len(pid)
                    if seen >= max_rows:
                        break
            if seen >= max_rows:
                break
        if seen == 0:
            raise LoadError(f"{self.family} {self.version}: the store has no training rows to score against")
        self.pair_count = count.astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.pair_mean = total / count
            self.pair_std = np.sqrt(np.maximum(total_sq / count - self.pair_mean**2, 0.0))
        self.global_mean = total.sum() / seen
        self.global_std = math.sqrt(max(total_sq.sum() / seen - self.global_mean**2, 0.0))
        self.global_count = seen

    def _rows(self, pid: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        x = np.empty((len(pid), self.embeddings.shape[1] + 1), dtype=np.float32)
        x[:, :-1] = self.embeddings[pid]
        x[:, -1] = scaled
        return x

    @torch.no_grad()
    def _errors(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), 8192):
            xb = torch.from_numpy(x[i : i + 8192]).to(self.device)
            recon, _ = self.model(xb)
            out.append(self.model.per_sample_error(xb, recon).cpu().numpy())
        return np.concatenate(out)

    def baseline(self, pid: int) -> dict:
        if self.pair_count[pid] >= MIN_PAIR_ROWS:
            return {
                "scope": "pair",
                "count": int(self.pair_count[pid]),
                "mean": float(self.pair_mean[pid]),
                "std": float(self.pair_std[pid]),
            }
        return {
            "scope": "global",
            "count": int(self.global_count),
            "mean": float(self.global_mean),
            "std": float(self.global_std),
        }

    # -- serving ------------------------------------------------------------------------------
    def prepare(self, instance: dict) -> tuple[int, np.ndarray]:
        key = (instance["concept"], instance["unit"])
        pid = self.lookup.get(key)
        if pid is None:
            raise InputError(
                f"unknown (concept, unit) pair ({key[0]!r}, {key[1]!r}): the store "
                f"{self.store_info['uri']} does not know it"
            )
        scaled = self.scalers[pid].transform(np.asarray([instance["value"]], dtype=np.float64))
        row = self._rows(np.asarray([pid]), _finite32(scaled, f"value {instance['value']!r} once scaled"))[0]
        return pid, row

    @torch.no_grad()
    def predict(self, items: list[tuple[int, np.ndarray]]) -> list[dict]:
        x = torch.from_numpy(np.stack([row for _, row in items])).to(self.device)
        recon, latent = self.model(x)
        err = self.model.per_sample_error(x, recon).cpu().numpy()
        out = []
        for (pid, _), e, z in zip(items, err, latent.cpu().numpy()):
            base = self.baseline(pid)
            score = (float(e) - base["mean"]) / max(base["std"], STD_FLOOR)
            out.append(
                {
                    "latent": z.astype(np.float64).tolist(),
                    "reconstruction_error": float(e),
                    "anomaly_score": score,
                    "baseline": base,
                }
            )
        return out

    def smoke_test(self) -> None:
        pid = next(iter(self.lookup.values()))
        r = self.predict([(pid, self._rows(np.asarray([pid]), np.zeros(1))[0])])[0]
        if not (math.isfinite(r["reconstruction_error"]) and all(map(math.isfinite, r["latent"]))):
            raise LoadError(f"{self.family} {self.version}: the model answers NaN")

    def info(self) -> dict:
        return {
            "store": self.store_info,
            "latent_dim": self.model.config.latent_dim,
            "device": self.device.type,
            "baseline": {
                "rows": int(self.global_count),
                "min_pair_rows": MIN_PAIR_ROWS,
                "global_mean": float(self.global_mean),
                "global_std": float(self.global_std),
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
    """The family's version (production when None), verified, loaded and smoke-tested."""
    from pipeline.train.checkpoint import CheckpointError, load_checkpoint

    try:
        record = registry.get(family, version)
    except RegistryError as e:
        raise LoadError(str(e), not_found="not registered" in str(e) or "no production" in str(e)) from e
    verify_files(record)
    try:
        ckpt = load_checkpoint(record["checkpoint"])
        arch = ckpt.config["model"]["arch"]
        try:
            cls = PREDICTORS[arch]
        except (KeyError, ValueError):
            raise LoadError(f"{family} {record['version']}: no predictor for arch {arch!r}") from None
        if task is not None and cls.task != task:
            raise LoadError(f"{family} {record['version']}: arch {arch!r} cannot serve {task!r}")
        predictor = cls(family, record, ckpt, store_uri=store_uri)
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
    load is remembered and not retried (until the pointer moves), and the old predictor keeps
    serving. Swapping is one attribute assignment, so a request that already holds the old
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
            if target == current or target == self.failed_version:
                return False
            staged = self.staged
            try:
                predictor = staged if staged is not None and staged.version == target else self.load(target)
            except LoadError as e:
                self.failed_version, self.error = target, str(e)
                return False
            self.predictor, self.staged, self.error, self.failed_version = predictor, None, None, None
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
        done = []
        for o in outputs:
            values = (
                [o["probability"], o["uncertainty"]]
                if predictor.task == "route"
                else [o["reconstruction_error"], o["anomaly_score"], *o["latent"]]
            )
            if not all(math.isfinite(v) for v in values):
                raise InputError("the input is out of the model's numeric range (its answer is not finite)")
            if predictor.task == "route":
                o = {
                    "route": decide_route(
                        o["probability"], o["uncertainty"], s.confidence_threshold, s.max_uncertainty
                    ),
                    **o,
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
