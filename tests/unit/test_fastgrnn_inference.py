"""FastGRNN's inference path (taken under no_grad / inference_mode) computes the same recurrence
as the training path, for dense, low-rank and sparse cells, small and large batches."""

import pytest
import torch

from pipeline.models import build_model
from pipeline.models.fastgrnn import apply_sparsity


@pytest.mark.parametrize("ranks", [{}, {"u_rank": 12}, {"w_rank": 4, "u_rank": 4}])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_inference_path_matches_training_path(ranks, batch):
    torch.manual_seed(0)
    model = build_model(
        "sequence_classifier",
        input_size=8,
        hidden_size=48,
        num_classes=10,
        w_sparsity=0.5,
        u_sparsity=0.5,
        zeta_init=0.3,
        nu_init=-1.0,
        **ranks,
    ).eval()
    apply_sparsity(model, "iht")
    x, h0 = torch.randn(batch, 8, 8), torch.randn(batch, 48)
    states, last = model.rnn(x, h0)  # grad enabled: the training path
    assert states.requires_grad
    with torch.inference_mode():
        fast_states, fast_last = model.rnn(x, h0)
        fast_logits = model(x)
    with torch.no_grad():
        assert torch.equal(model(x), fast_logits)  # no_grad takes the same path
    torch.testing.assert_close(fast_states, states.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_last, last.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_logits, model(x).detach(), rtol=1e-5, atol=1e-6)
