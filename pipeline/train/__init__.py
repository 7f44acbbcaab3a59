"""Training on Ray Train: config → TorchTrainer workers → safetensors checkpoints → metrics.

run.py         driver: data, TorchTrainer, resume, evaluation
loop.py        the per-worker loop (DDP, AMP, schedules, early stopping, sparsity phases)
tasks.py       per-family loss and metrics
checkpoint.py  the one checkpoint format and loader (safetensors + JSON, never pickle)
cli.py         `tunestack train` and `tunestack evaluate`
"""

from pipeline.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.train.run import TrainResult, evaluate_checkpoint, resume, train

__all__ = [
    "train",
    "resume",
    "evaluate_checkpoint",
    "TrainResult",
    "load_checkpoint",
    "save_checkpoint",
    "CheckpointError",
]
