"""The one checkpoint format, and the one loader. No pickle anywhere.

    CHECKPOINT/
      model.safetensors        # the model's state_dict (what the registry and Serve load)
      train_state.safetensors  # optimizer/scheduler/AMP tensors, flattened to "optim.state.3.exp_avg" …
      checkpoint.json          # resolved config, metrics, epoch, normalization, store/scaler
                               # references, data fingerprint, early-stopping state and the
                               # non-tensor parts of the optimizer/scheduler state

`load_checkpoint` refuses a folder holding any other file (a pickle named `model.pt`, say), and
reads the two safetensors files with safetensors — which cannot execute code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save

from pipeline.lean.artifact import ArtifactError, is_export, read_export

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"
FORMAT = "tunestack-checkpoint-v1"
ALLOWED = {MODEL_FILE, STATE_FILE, META_FILE}
RUN_FILE = "run.json"  # written by pipeline.train.run in the run folder: best checkpoint + metrics


class CheckpointError(Exception):
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
    directory: str, model, meta: dict, optimizer=None, scheduler=None, grad_scaler=None
) -> str:
    """Write the checkpoint files as `directory`. Returns `directory`.

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


@dataclass
class LoadedCheckpoint:
    path: str
    meta: dict  # checkpoint.json (config, metrics, epoch, normalization, …)
    weights: dict[str, torch.Tensor]
    _state_tensors: dict[str, torch.Tensor]

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


def _check_safetensors(path: str) -> None:
    # safetensors = 8-byte little-endian header length, then a JSON header. A pickle starts
    # with 0x80; anything that does not parse this way is refused before any loader sees it.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file")


def load_checkpoint(path: str) -> LoadedCheckpoint:
    """Load a checkpoint folder (or a run folder: its best checkpoint). Only safetensors + JSON."""
    directory = resolve_checkpoint(path)
    if is_export(directory):
        return _load_export(directory)
    names = sorted(os.listdir(directory))
    extra = [n for n in names if n not in ALLOWED]
    if extra:
        raise CheckpointError(
            f"{directory}: refusing to load a checkpoint with unexpected file(s) {extra}; "
            f"a tunestack checkpoint holds only {sorted(ALLOWED)}"
        )
    if MODEL_FILE not in names or META_FILE not in names:
        raise CheckpointError(f"{directory}: missing {MODEL_FILE} or {META_FILE}")
    try:
        with open(os.path.join(directory, META_FILE)) as f:
            meta = _decode(json.load(f))
    except ValueError as e:
        raise CheckpointError(f"{directory}/{META_FILE}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: format {meta.get('format')!r}, expected {FORMAT!r}")
    _check_safetensors(os.path.join(directory, MODEL_FILE))
    weights = load_file(os.path.join(directory, MODEL_FILE))
    state = {}
    if STATE_FILE in names:
        _check_safetensors(os.path.join(directory, STATE_FILE))
        state = load_file(os.path.join(directory, STATE_FILE))
    return LoadedCheckpoint(path=directory, meta=meta, weights=weights, _state_tensors=state)


def _load_export(directory: str) -> LoadedCheckpoint:
    """An exported model (pipeline.lean.artifact) as a checkpoint without training state: its
    weights decoded to float32 (INT8: dequantized), its metadata with `precision` and `export`."""
    try:
        export, weights = read_export(directory)
    except ArtifactError as e:
        raise CheckpointError(str(e)) from e
    meta = {
        **export.get("meta", {}),
        "config": export["config"],
        "precision": export["precision"],
        "export": {
            k: export[k] for k in ("format", "precision", "size", "source", "weights_sha256") if k in export
        },
    }
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    return LoadedCheckpoint(path=directory, meta=meta, weights=tensors, _state_tensors={})


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE)) or is_export(path)


def resolve_checkpoint(ref: str) -> str:
    """A checkpoint folder from: a checkpoint folder, an export folder (`tunestack export`), a run
    folder (its best checkpoint), a run name under $TUNESTACK_HOME/runs, or a registry version
    "FAMILY:vNNNN" ("FAMILY:production") — whose files must match the sha256 in its record."""
    from pipeline.home import runs_dir

    candidates = [ref, os.path.join(runs_dir(), ref)]
    for cand in candidates:
        if _is_model_dir(cand):
            return os.path.abspath(cand)
        run_file = os.path.join(cand, RUN_FILE)
        if os.path.isfile(run_file):
            with open(run_file) as f:
                best = json.load(f).get("best_checkpoint")
            if best and os.path.isfile(os.path.join(best, META_FILE)):
                return best
            raise CheckpointError(f"{cand}: run has no best checkpoint recorded")
    if ":" in ref and "/" not in ref:
        from pipeline.registry.registry import Registry, RegistryError

        family, version = ref.split(":", 1)
        try:
            path = Registry().verified(family, None if version == "production" else version)["checkpoint"]
        except RegistryError as e:
            raise CheckpointError(f"{ref}: {e}") from e
        if _is_model_dir(path):
            return path
    raise CheckpointError(f"{ref}: not a checkpoint folder, run folder or run name")
