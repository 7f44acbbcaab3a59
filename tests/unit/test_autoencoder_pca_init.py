"""The autoencoder's linear path, PCA initialisation, per-column losses and the per-batch cosine."""

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.models.autoencoder import AutoencoderConfig, pca_from_moments
from pipeline.train.cosine import CosineAnnealing
from pipeline.train.pca_init import shard_moments


def _rows(n=400, d=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))
    return (x + rng.normal(size=d)).astype(np.float32)  # an offset: the mean matters


def test_pca_from_moments_matches_svd_of_the_rows():
    x = _rows().astype(np.float64)
    moments = shard_moments(({"x": x[i : i + 64]} for i in range(0, len(x), 64)), 9)  # batches add up
    assert moments["n"] == len(x)
    mean, comps = pca_from_moments(moments["n"], moments["sum_x"], moments["sum_xx"], 3)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-10, atol=1e-12)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-10)  # orthonormal rows
    np.testing.assert_allclose(np.abs(comps @ vt[:3].T), np.eye(3), atol=1e-6)  # same axes (up to sign)
    assert all(c[np.abs(c).argmax()] > 0 for c in comps)  # deterministic signs
    empty = shard_moments([], 9)  # an empty shard adds nothing to the other workers' sums
    assert empty["n"] == 0 and not empty["sum_xx"].any()
    with pytest.raises(ValueError, match="at least 2 training rows"):
        pca_from_moments(empty["n"], empty["sum_x"], empty["sum_xx"], 3)
    with pytest.raises(ValueError, match="width 9"):
        shard_moments([{"x": x[:, :5]}], 9)


def test_pca_initialised_model_reconstructs_exactly_as_pca_then_trains():
    x = _rows()
    model = build_model(
        "autoencoder", input_dim=9, hidden=[16], latent_dim=3, dropout=0.0, linear_path=True, init="pca"
    ).eval()
    m = shard_moments([{"x": x}], 9)
    mean, comps = pca_from_moments(m["n"], m["sum_x"], m["sum_xx"], 3)
    model.init_linear_from_pca(mean, comps)
    recon, latent = model(torch.from_numpy(x))
    pca_recon = (x - mean) @ comps.T @ comps + mean
    np.testing.assert_allclose(recon.detach().numpy(), pca_recon, atol=1e-4)
    assert latent.shape == (400, 3)
    # the zeroed MLP branches still get gradients, so training moves them at once
    model.train()
    loss = model.reconstruction_loss(torch.from_numpy(x), model(torch.from_numpy(x))[0])[0]
    loss.backward()
    assert model.encoder[-1].weight.grad.abs().sum() > 0 and model.decoder[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not fit"):
        model.init_linear_from_pca(mean[:5], comps)
    with pytest.raises(ValueError, match="linear_path"):
        build_model("autoencoder", input_dim=9, hidden=[16], latent_dim=3).init_linear_from_pca(mean, comps)


def test_without_linear_path_the_model_has_no_linear_maps():
    # checkpoints from before the option load unchanged: same parameter names
    names = set(build_model("autoencoder").state_dict())
    assert not any("linear" in n for n in names)
    assert {"encoder_linear.weight", "decoder_linear.bias"} <= set(
        build_model("autoencoder", linear_path=True).state_dict()
    )


def test_value_loss_can_differ_from_the_embedding_loss():
    model = build_model(
        "autoencoder",
        input_dim=5,
        hidden=[8],
        latent_dim=2,
        loss="mse",
        value_loss="l1",
        alpha_embed=1.0,
        alpha_value=2.0,
    )
    x = torch.zeros(2, 5)
    recon = x.clone()
    recon[:, -1] = torch.tensor([1.0, 3.0])
    recon[0, 0] = 2.0
    total, embed, value = model.reconstruction_loss(x, recon)
    assert value.item() == pytest.approx(2.0)  # L1: mean(1, 3), not MSE's 5
    assert embed.item() == pytest.approx(4.0 / 8)  # MSE on the embedding
    assert total.item() == pytest.approx(0.5 + 2 * 2.0)
    assert model.per_sample_error(x, recon).mean().item() == pytest.approx(total.item())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"value_loss": "huber"}, "value_loss"),
        ({"init": "xavier"}, "init"),
        ({"init": "pca"}, "linear_path"),
        ({"init": "pca", "linear_path": True, "latent_dim": 70}, "latent_dim"),
    ],
)
def test_config_rejects_bad_new_options(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AutoencoderConfig(**kwargs)


def test_cosine_sets_every_batch_and_ends_near_eta_min():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineAnnealing(opt, epochs=4, eta_min=0.01)
    lrs = []
    for epoch in range(4):
        for i in range(10):
            sched.batch_step(epoch, i)
            lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:10] == [1.0] * 10  # the first epoch does not know its length yet: flat at the top
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then strictly down, batch by batch
    assert len(set(lrs[10:20])) == 10
    assert lrs[20] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    assert 0.01 < lrs[-1] < 0.012  # the last batch runs close to eta_min
    # the state (batches per epoch) survives a checkpoint: a resumed run continues exactly
    resumed = CosineAnnealing(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 4, 0.01)
    resumed.load_state_dict(sched.state_dict())
    resumed.batch_step(3, 9)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[-1])


def test_cosine_state_round_trips_through_a_checkpoint(tmp_path):
    from pipeline.train.checkpoint import load_checkpoint, save_checkpoint

    model = build_model("autoencoder", input_dim=5, hidden=[8], latent_dim=2, linear_path=True, init="pca")
    opt = torch.optim.AdamW(model.parameters(), lr=0.003)
    sched = CosineAnnealing(opt, epochs=8, eta_min=0.0)
    for i in range(7):
        sched.batch_step(0, i)
    sched.step()
    save_checkpoint(str(tmp_path / "ckpt"), model, {"config": {}}, opt, sched)
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    again = CosineAnnealing(torch.optim.AdamW(model.parameters(), lr=0.003), epochs=8)
    again.load_state_dict(loaded.scheduler_state())
    assert again.batches_per_epoch == 7 and again.base_lrs == [0.003]
    assert {p.suffix for p in (tmp_path / "ckpt").iterdir()} <= {".safetensors", ".json"}
