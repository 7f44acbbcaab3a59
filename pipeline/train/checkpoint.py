"""The one checkpoint format, and the one loader. No pickle anywhere.

    CHECKPOINT/
      model.safetensors        # the model's state_dict (what the registry and Serve load)
      train_state.safetensors  # optimizer/scheduler/AMP tensors, flattened to "optim.state.3.exp_avg" …
      checkpoint.json          # resolved config, metrics, epoch, normalization, store/scaler
                               # references, data fingerprint, early-stopping state, the
                               # non-tensor parts of the optimizer/scheduler state and, under
                               # "features", the feature transform's keys (autoencoder)
      features.safetensors     # the autoencoder's own feature transform: projection, per-pair
                               # embeddings and scalers, unit fallbacks, error baseline
                               # (pipeline.data.features; absent for other families)

`load_checkpoint` refuses a folder holding any other file (a pickle named `model.pt`, say), and
reads the safetensors files with safetensors — which cannot execute code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from pipeline.errors import UserError

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"
FEATURES_FILE = "features.safetensors"  # = pipeline.data.features.FEATURES_FILE
FORMAT = "tunestack-checkpoint-v1"
ALLOWED = {MODEL_FILE, STATE_FILE, META_FILE, FEATURES_FILE}
RUN_FILE = "run.json"  # written by pipeline.train.run in the run folder: best checkpoint + metrics


class CheckpointError(UserError):
    """A folder that is not a readable tunestack checkpoint."""


# ---------------------------------------------------------------------------------------------
# JSON for the non-tensor state: inf/nan are not JSON, so they are spelled out


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _encode(value.item())
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _split_tensors(prefix: str, state, tensors: dict):
    """Move every tensor of a nested dict/list into `tensors` (by dotted key); return the rest."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): _split_tensors(f"{prefix}.{k}", v, tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split_tensors(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    return _encode(state)


def _join_tensors(skeleton, tensors: dict):
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join_tensors(v, tensors) for v in skeleton]
    return _decode(skeleton)


def _int_keys(d: dict) -> dict:
    """Optimizer state is keyed by parameter index (int); JSON made the keys strings."""
    return {int(k): v for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Save / load


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def save_checkpoint(
    directory: str, model, meta: dict, optimizer=None, scheduler=None, grad_scaler=None, features=None
) -> str:
    """Write the checkpoint files as `directory`. Returns `directory`. `features`: the model's
    FeatureTransform (pipeline.data.features), saved beside the weights.

    The files are written into a hidden sibling folder that is renamed to `directory` only once
    complete (an existing empty folder is replaced; a non-empty one is swapped out, then removed), so
    a write that fails midway leaves `directory` and its parent folder exactly as they were."""
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    train_state = {}
    if optimizer is not None:
        train_state["optimizer"] = _split_tensors("optim", optimizer.state_dict(), tensors)
    if scheduler is not None:
        train_state["scheduler"] = _split_tensors("sched", scheduler.state_dict(), tensors)
    if grad_scaler is not None and grad_scaler.is_enabled():
        train_state["grad_scaler"] = _split_tensors("amp", grad_scaler.state_dict(), tensors)
    files = {MODEL_FILE: save(weights, metadata={"format": FORMAT})}
    if tensors or train_state:
        files[STATE_FILE] = save(tensors, metadata={"format": FORMAT})
    meta = dict(meta)
    if features is not None:
        files[FEATURES_FILE] = _features_bytes(features)
        meta["features"] = features.meta()
    files[META_FILE] = json.dumps(
        {"format": FORMAT, **_encode(meta), "train_state": train_state}, indent=2
    ).encode()

    directory = os.path.abspath(directory)
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(staging)
        for fname, data in files.items():
            with open(os.path.join(staging, fname), "wb") as f:
                f.write(data)
        if os.path.isdir(directory) and os.listdir(directory):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
            try:
                os.rename(staging, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old)
        else:
            os.replace(staging, directory)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _features_bytes(features) -> bytes:
    from safetensors.numpy import save as save_numpy

    return save_numpy(features.tensors(), metadata={"format": FORMAT})


def replace_features(directory: str, features) -> None:
    """Replace the feature transform of a saved checkpoint (e.g. to add the error baseline at the
    end of training), local or at a storage URI, in one atomic write. Only the arrays may change:
    the JSON part must stay as saved."""
    from pipeline.storage import resolve

    ckpt = load_checkpoint(directory)
    if ckpt.meta.get("features") != _decode(json.loads(json.dumps(_encode(features.meta())))):
        raise CheckpointError(f"{ckpt.path}: the new feature transform's keys differ from the saved ones")
    resolve(ckpt.path).write_bytes_atomic(FEATURES_FILE, _features_bytes(features))


@dataclass
class LoadedCheckpoint:
    path: str
    meta: dict  # checkpoint.json (config, metrics, epoch, normalization, …)
    weights: dict[str, torch.Tensor]
    _state_tensors: dict[str, torch.Tensor]
    _feature_tensors: dict | None = None

    def features(self):
        """The model's FeatureTransform (pipeline.data.features), or None (a family without one)."""
        if self._feature_tensors is None or "features" not in self.meta:
            return None
        from pipeline.data.features import FeatureTransform

        return FeatureTransform.from_parts(self._feature_tensors, self.meta["features"])

    @property
    def config(self) -> dict:
        return self.meta["config"]

    def optimizer_state(self) -> dict | None:
        skeleton = self.meta.get("train_state", {}).get("optimizer")
        if skeleton is None:
            return None
        state = _join_tensors(skeleton, self._state_tensors)
        state["state"] = _int_keys(state["state"])
        return state

    def scheduler_state(self) -> dict | None:
        skeleton = self.meta.get("train_state", {}).get("scheduler")
        return None if skeleton is None else _join_tensors(skeleton, self._state_tensors)

    def grad_scaler_state(self) -> dict | None:
        skeleton = self.meta.get("train_state", {}).get("grad_scaler")
        return None if skeleton is None else _join_tensors(skeleton, self._state_tensors)

    def build_model(self):
        """The model of this checkpoint (pipeline.models), weights loaded, in eval mode."""
        from pipeline.models import build_model

        model_cfg = dict(self.config["model"])
        model = build_model(model_cfg.pop("arch"), **model_cfg)
        model.load_state_dict(self.weights)
        return model.eval()


def _check_safetensors(where: str, data: bytes) -> None:
    # safetensors = 8-byte little-endian header length, then a JSON header. A pickle starts
    # with 0x80; anything that does not parse this way is refused before any loader sees it.
    if len(data) < 9 or data[8:9] != b"{":
        raise CheckpointError(f"{where}: not a safetensors file")


def load_checkpoint(path: str) -> LoadedCheckpoint:
    """Load a checkpoint folder (or a run folder: its best checkpoint), local or at a storage URI.
    Only safetensors + JSON."""
    from pipeline.storage import resolve

    directory = resolve_checkpoint(path)
    loc = resolve(directory)
    names = sorted(loc.list_dir())
    extra = [n for n in names if n not in ALLOWED]
    if extra:
        raise CheckpointError(
            f"{directory}: refusing to load a checkpoint with unexpected file(s) {extra}; "
            f"a tunestack checkpoint holds only {sorted(ALLOWED)}"
        )
    return checkpoint_from_files(directory, {n: loc.read_bytes(n) for n in names})


def checkpoint_from_files(directory: str, files: dict[str, bytes]) -> LoadedCheckpoint:
    """A checkpoint from its files' bytes (what the registry hands over once their sha256 checked)."""
    extra = sorted(n for n in files if n not in ALLOWED)
    if extra:
        raise CheckpointError(f"{directory}: unexpected file(s) {extra}; only {sorted(ALLOWED)}")
    if MODEL_FILE not in files or META_FILE not in files:
        raise CheckpointError(f"{directory}: missing {MODEL_FILE} or {META_FILE}")
    try:
        meta = _decode(json.loads(files[META_FILE]))
    except ValueError as e:
        raise CheckpointError(f"{directory}/{META_FILE}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: format {meta.get('format')!r}, expected {FORMAT!r}")
    _check_safetensors(f"{directory}/{MODEL_FILE}", files[MODEL_FILE])
    weights = load(files[MODEL_FILE])
    state = {}
    if STATE_FILE in files:
        _check_safetensors(f"{directory}/{STATE_FILE}", files[STATE_FILE])
        state = load(files[STATE_FILE])
    features = None
    if FEATURES_FILE in files:
        from safetensors.numpy import load as load_numpy

        _check_safetensors(f"{directory}/{FEATURES_FILE}", files[FEATURES_FILE])
        features = load_numpy(files[FEATURES_FILE])
    return LoadedCheckpoint(directory, meta, weights, state, features)


def update_meta(path: str, **fields) -> None:
    """Add (or replace) top-level fields of a checkpoint's checkpoint.json (a local folder or a
    storage URI), written whole or not at all: what is learned about a checkpoint after training
    (the router's calibration) travels with it."""
    from pipeline.storage import resolve

    loc = resolve(path)
    meta = json.loads(loc.read_bytes(META_FILE))
    meta.update(_encode(fields))
    loc.write_bytes_atomic(META_FILE, json.dumps(meta, indent=2).encode())


def resolve_checkpoint(ref: str) -> str:
    """A checkpoint folder (a local path or a storage URI) from: a checkpoint folder, a run folder
    (its best checkpoint), a run name under the runs location ($TUNESTACK_STORAGE/runs), or a
    registry version "FAMILY:vNNNN" ("FAMILY:production")."""
    from pipeline.home import runs_dir
    from pipeline.storage import absolute, is_uri, join_uri, resolve

    candidates = [ref] if is_uri(ref) or os.path.isabs(ref) else [ref, join_uri(runs_dir(), ref)]
    for cand in candidates:
        loc = resolve(cand)
        if loc.is_file(META_FILE):
            return absolute(cand)
        if loc.is_file(RUN_FILE):
            best = json.loads(loc.read_bytes(RUN_FILE)).get("best_checkpoint")
            if best and resolve(best).is_file(META_FILE):
                return best
            raise CheckpointError(f"{cand}: run has no best checkpoint recorded")
    if ":" in ref and "/" not in ref:
        from pipeline.registry.registry import Registry, RegistryError

        family, version = ref.split(":", 1)
        try:
            path = Registry().get(family, None if version == "production" else version)["checkpoint"]
        except RegistryError as e:
            raise CheckpointError(f"{ref}: {e}") from e
        if resolve(path).is_file(META_FILE):
            return path
    raise CheckpointError(f"{ref}: not a checkpoint folder, run folder or run name")
