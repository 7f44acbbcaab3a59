"""The lean NumPy engine (pipeline.lean) equals the torch FastGRNN classifier, for every cell
variant the config allows, single samples and batches; and it runs where torch cannot be imported.

Tolerance: the engine computes the same float32 recurrence as torch's inference path, reordered
(σ through tanh, the update rearranged, bias folded into the projection): the float32 rounding of
a few dozen operations per step over 8 steps stays below 1e-5 on logits of order 1–10, so 1e-5
absolute (plus 1e-5 relative for the larger logits) is what the numerics justify.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lean.engine import FACTORED_MIN_ROWS, LeanFastGRNNClassifier, softmax
from pipeline.models import build_model
from pipeline.models.fastgrnn import apply_sparsity

ROOT = Path(__file__).resolve().parents[2]
ATOL = RTOL = 1e-5


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    params = dict(input_size=8, hidden_size=48, num_classes=10, zeta_init=0.3, nu_init=-1.0) | kw
    model = build_model("sequence_classifier", **params).eval()
    with torch.no_grad():  # move away from the init so every term of the cell matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _engine(model, drop=()):
    c = model.config
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k not in drop}
    return LeanFastGRNNClassifier(weights, c.hidden_size, c.input_size, c.num_classes)


@pytest.mark.parametrize(
    "cell",
    [{}, {"u_rank": 12}, {"w_rank": 4, "u_rank": 6}, {"w_sparsity": 0.5, "u_sparsity": 0.5, "u_rank": 12}],
    ids=["dense", "low-rank-U", "low-rank-WU", "sparse-low-rank"],
)
@pytest.mark.parametrize("batch", [1, 7, FACTORED_MIN_ROWS + 36])
@pytest.mark.parametrize("steps", [1, 8])
def test_engine_equals_torch(cell, batch, steps):
    model = _model(**cell)
    if cell.get("w_sparsity"):
        apply_sparsity(model, "iht")
    x = np.random.default_rng(1).standard_normal((batch, steps, 8)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    engine = _engine(model)
    np.testing.assert_allclose(engine.logits(x), want, atol=ATOL, rtol=RTOL)
    one = np.stack([engine.logits_one(x[i]) for i in range(batch)])  # the single-sample fast path
    np.testing.assert_allclose(one, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(
        softmax(engine.logits(x)), torch.softmax(torch.from_numpy(want), -1), atol=1e-6
    )


def test_single_step_model_needs_no_recurrent_matrix_and_refuses_sequences():
    model = _model(input_size=5, hidden_size=16, num_classes=2)
    engine = _engine(model, drop=("rnn.cell.U",))  # h0 = 0: U h0 = 0, U is not needed
    x = np.random.default_rng(2).standard_normal((32, 5)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.logits(x), want, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="trained on single steps"):
        engine.logits(np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected input \[B, T, 5\]"):
        engine.logits(np.zeros((1, 4), np.float32))


def test_embedded_api_runs_without_torch(tmp_path):
    """pipeline.lean.load + predict_proba in a process where `import torch` fails."""
    from pipeline.data.sequences import fit_zscore
    from pipeline.export import export_model
    from pipeline.train.checkpoint import save_checkpoint

    model = _model(u_rank=12)
    x = np.random.default_rng(3).standard_normal((20, 8, 8)).astype(np.float32) * 3 + 1
    norm = fit_zscore(x)
    cfg = {"model": {"arch": "sequence_classifier", **vars(model.config)}}
    ckpt = save_checkpoint(
        str(tmp_path / "ckpt"),
        model,
        {"config": cfg, "normalization": norm.to_dict(), "sequence_lengths": [8]},
    )
    out = export_model(ckpt, "float32", str(tmp_path / "export"))["path"]
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(norm.apply(x))), -1).numpy()
    np.save(tmp_path / "x.npy", x)
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from pipeline.lean import load
import numpy as np
m = load({out!r})
np.save({str(tmp_path / "p.npy")!r}, m.predict_proba(np.load({str(tmp_path / "x.npy")!r})))
assert "torch" not in [k for k, v in sys.modules.items() if v is not None and k.startswith("torch")]
print(m.precision, m.sequence_lengths)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["float32", "[8]"]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, atol=1e-6)
