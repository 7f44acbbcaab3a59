"""The GPU check (`make gpu-check`, under 5 minutes on one GPU): CUDA + AMP training of both
families through the real Ray Train loop, with metrics equal to the same run on CPU within
tolerance; a Serve replica on the GPU answering as the CPU predictor does; batches streamed into
pinned memory. Every test is marked `gpu` and skips without a CUDA device (so `make test` on a
CPU machine reports them skipped, with the reason).

Tolerances: AMP runs the forward pass in float16 (10-bit mantissa), so after a few epochs the two
runs' weights differ by rounding that compounds; a classifier's accuracy lands within a few points
(0.05 absolute on 450 digits) and the autoencoder's validation loss within 20% relative. The
served autoencoder runs float32 on the GPU: its answers equal the CPU's to 1e-4 (different kernels,
different summation order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")]
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tune_configs"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _train_both(cfg_path, overrides, name):
    from pipeline.config import load_config
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.run import train

    runs = {}
    for device, use_gpu in (("cpu", "false"), ("cuda", "true")):
        cfg = load_config(cfg_path, [*overrides, f"train.use_gpu={use_gpu}", "train.amp=true"])
        result = train(cfg, run_name=f"{name}-{device}")
        ckpt = load_checkpoint(result.best_checkpoint)
        assert [a["device"] for a in ckpt.meta["attempts"]] == [device]
        runs[device] = (result, ckpt)
    # AMP really ran on the GPU: its grad scaler state is saved with the checkpoint (CPU: none)
    assert runs["cuda"][1].grad_scaler_state() is not None and runs["cpu"][1].grad_scaler_state() is None
    return runs


def test_classifier_trains_on_cuda_with_amp_like_on_cpu(ray_cluster, home):
    from pipeline.data.sequences import write_digits_npz

    write_digits_npz(str(home / "digits.npz"))
    runs = _train_both(CONFIGS / "digits.yaml", ["train.epochs=6", "schedule.t0=6"], "digits")
    cpu, gpu = runs["cpu"][0].test_metrics, runs["cuda"][0].test_metrics
    assert cpu["accuracy"] > 0.5 and gpu["accuracy"] > 0.5
    assert gpu["accuracy"] == pytest.approx(cpu["accuracy"], abs=0.05)


def test_autoencoder_trains_on_cuda_with_amp_like_on_cpu(ray_cluster, home):
    from tests.support.serve_world import make_store

    store = make_store(home / "store", companies=2)
    overrides = [
        f"data.path={store}",
        "train.epochs=3",
        "train.patience=0",
        "model.hidden=[64]",
        "model.latent_dim=8",
    ]
    runs = _train_both(CONFIGS / "autoencoder.yaml", overrides, "autoencoder")
    cpu, gpu = runs["cpu"][0].test_metrics, runs["cuda"][0].test_metrics
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.2)
    assert gpu["r2"] == pytest.approx(cpu["r2"], abs=0.1)


def test_triplet_batches_are_staged_in_pinned_memory(monkeypatch):
    from pipeline.data.triplets import triplet_batch

    pinned = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    emb = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    pid, value = np.arange(10) % 10, np.linspace(-1, 1, 10).astype(np.float32)
    batch = triplet_batch(emb, pid, value, device="cuda")
    torch.cuda.synchronize()
    assert batch["x"].device.type == "cuda" and pinned == [True, True]
    cpu = triplet_batch(emb, pid, value)
    torch.testing.assert_close(batch["x"].cpu(), cpu["x"], rtol=0, atol=0)


def test_serve_replica_on_the_gpu(ray_cluster, home):
    from ray import serve

    from pipeline.registry.registry import Registry
    from serve.app import ModelServer
    from tests.support.serve_world import (
        make_store,
        reference_encode,
        register,
        some_pairs,
        train_autoencoder,
    )

    store = make_store(home / "store", companies=2)
    reg = Registry(home / "registry")
    register(reg, "autoencoder", train_autoencoder(home / "ae", store, steps=50), promote=True)
    app = ModelServer.options(
        name="model-autoencoder-gpu", ray_actor_options={"num_cpus": 0.25, "num_gpus": 1}
    ).bind("autoencoder", "encode", str(reg.root), store)
    handle = serve.run(app, name="gpu-check", route_prefix=None)
    try:
        info = handle.info.remote().result(timeout_s=120)
        assert info["device"] == "cuda", info
        instances = [{"concept": c, "unit": u, "value": v} for c, u, v in some_pairs(store, k=3)]
        (answer,) = handle.predict_many.remote([instances]).result(timeout_s=60)
        assert "outputs" in answer, answer
        latent, error = reference_encode(
            reg, store, [(i["concept"], i["unit"], i["value"]) for i in instances]
        )
        for got, z, e in zip(answer["outputs"], latent, error):  # the checkpoint on the CPU
            np.testing.assert_allclose(got["latent"], z, rtol=1e-4, atol=1e-4)
            assert got["reconstruction_error"] == pytest.approx(float(e), rel=1e-3, abs=1e-5)
    finally:
        serve.delete("gpu-check")
