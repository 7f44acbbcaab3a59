"""Training on Ray Train: config → TorchTrainer workers → safetensors checkpoints → metrics.

run.py         driver: data, TorchTrainer, resume, evaluation
loop.py        the per-worker loop (DDP, AMP, schedules, early stopping, sparsity phases)
tasks.py       per-family loss and metrics
checkpoint.py  the one checkpoint format and loader (safetensors + JSON, never pickle)
cli.py         `tunestack train` and `tunestack evaluate`
"""

from importlib import import_module

# Loaded on first use (PEP 562): `import pipeline.train.cli` — what every `tunestack` command
# does to build its parser — must not pay for torch and Ray.
_EXPORTS = {
    "train": "run",
    "resume": "run",
    "evaluate_checkpoint": "run",
    "TrainResult": "run",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"pipeline.train.{_EXPORTS[name]}"), name)
