"""Stage-1 autoencoder: shapes, loss split, training, and evaluation metrics."""

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.models.autoencoder import AutoencoderConfig, embedding_cosine_similarity


def test_shapes_and_default_config():
    model = build_model("autoencoder").eval()
    assert model.config.input_dim == 65 and model.config.hidden == [256, 128]
    x = torch.randn(3, 65)
    recon, latent = model(x)
    assert recon.shape == (3, 65) and latent.shape == (3, 64)
    torch.testing.assert_close(model.encode(x), latent)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 4


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_loss_splits_embedding_and_value(loss):
    model = build_model(
        "autoencoder", input_dim=5, hidden=[8], latent_dim=2, loss=loss, alpha_embed=0.5, alpha_value=3.0
    )
    x = torch.zeros(2, 5)
    recon = x.clone()
    recon[:, -1] = torch.tensor([1.0, 3.0])  # error only in the value column
    total, embed, value = model.reconstruction_loss(x, recon)
    expected_value = 2.0 if loss == "l1" else 5.0  # mean(|1|,|3|) or mean(1, 9)
    assert embed.item() == 0.0
    assert value.item() == pytest.approx(expected_value)
    assert total.item() == pytest.approx(3.0 * expected_value)

    recon = x.clone()
    recon[0, 0] = 2.0  # one embedding entry wrong, out of 2 x 4
    total, embed, value = model.reconstruction_loss(x, recon)
    expected_embed = (2.0 if loss == "l1" else 4.0) / 8
    assert value.item() == 0.0 and embed.item() == pytest.approx(expected_embed)
    assert total.item() == pytest.approx(0.5 * expected_embed)


def test_per_sample_error_averages_to_the_total_loss_and_flags_the_bad_row():
    torch.manual_seed(0)
    model = build_model("autoencoder", input_dim=9, hidden=[16], latent_dim=4, alpha_value=2.0)
    x = torch.randn(6, 9)
    recon = x + 0.01 * torch.randn(6, 9)
    recon[4, -1] += 5.0  # one grossly misreconstructed value
    scores = model.per_sample_error(x, recon)
    assert scores.shape == (6,) and scores.argmax().item() == 4
    total, _, _ = model.reconstruction_loss(x, recon)
    assert scores.mean().item() == pytest.approx(total.item(), rel=1e-5)


def test_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    # 64 rows on a 3-d manifold in 17 dims: compressible through a 4-d latent
    z = torch.randn(64, 3)
    x = torch.tanh(z @ torch.randn(3, 17))
    model = build_model("autoencoder", input_dim=17, hidden=[32], latent_dim=4, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    initial = model.reconstruction_loss(x, model(x)[0])[0].item()
    for _ in range(300):
        loss = model.reconstruction_loss(x, model(x)[0])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * initial


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"input_dim": 1}, "input_dim"),
        ({"hidden": [0]}, "hidden"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"dropout": -0.1}, "dropout"),
        ({"loss": "huber"}, "loss"),
        ({"alpha_value": -1.0}, "alpha_value"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AutoencoderConfig(**kwargs)


def test_embedding_cosine_ignores_the_value_column():
    x = np.array([[1.0, 0.0, 7.0], [1.0, 1.0, 7.0]])
    recon = np.array([[2.0, 0.0, -3.0], [-1.0, -1.0, 0.0]])  # the value column is ignored
    np.testing.assert_allclose(embedding_cosine_similarity(x, recon), [1.0, -1.0])
