"""A trial's best checkpoint is ranked as `tunestack train` ranks a run's: eligible checkpoints only
(with sparsity, the final phase), ties to the later epoch. Real checkpoint files, no Ray."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from pipeline.train.checkpoint import save_checkpoint
from pipeline.tune.run import _best_checkpoint
from pipeline.tune.spec import load_tune_spec


def test_best_checkpoint_skips_ineligible_phases_and_breaks_ties_to_the_later_epoch(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        textwrap.dedent("""
        name: digits
        data: {source: sequences, path: digits.npz}
        model: {arch: sequence_classifier, cell: fastgrnn, hidden_size: 4, input_size: 8, num_classes: 10}
        train: {epochs: 6, monitor: val_accuracy, mode: max}
        """)
    )
    spec = load_tune_spec(str(cfg))
    run = tmp_path / "trial"
    model = torch.nn.Linear(2, 2)
    # epoch 1: the dense phase's best val_accuracy, but not eligible (score -1e30); 3 and 4 tie.
    for epoch, val, score in ((1, 0.99, -1e30), (3, 0.90, 0.90), (4, 0.90, 0.90), (5, 0.80, 0.80)):
        save_checkpoint(
            str(run / f"checkpoint_epoch{epoch:04d}"),
            model,
            {"epoch": epoch, "metrics": {"val_accuracy": val, "score": score}},
        )
    path, value, meta = _best_checkpoint(str(run), spec)
    assert (Path(path).name, value, meta["epoch"]) == ("checkpoint_epoch0004", 0.90, 4)
    assert _best_checkpoint(str(tmp_path / "missing"), spec) == (None, None, None)
