"""`tunestack export`: the artifact format (pipeline.lean.artifact), its size accounting, loading
it everywhere a checkpoint loads (evaluate, the registry, Serve's predictor), and refusing damage.

INT8 tolerance: pipeline.lean.artifact.INT8_PROBABILITY_TOLERANCE (documented in the README):
weights are rounded to 1/254 of each matrix's range, which moves a small classifier's class
probabilities by a few hundredths on its inputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pipeline.lean.artifact import INT8_PROBABILITY_TOLERANCE, ArtifactError, decode, encode
from pipeline.models import build_model
from pipeline.models.fastgrnn import apply_sparsity
from pipeline.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_encoding_round_trip_and_sparse_layout():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((16, 8)).astype(np.float32)
    sparse = dense * (rng.random((16, 8)) < 0.3)
    state = {
        "a": dense,
        "b": sparse,
        "bias": rng.standard_normal(16).astype(np.float32),
        "s": np.float32([0.5]),
    }
    tensors, layout, counts = encode(state, "float32", zero=())
    back = decode(tensors, layout)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)  # float32: exact
    enc = {e["name"]: e["encoding"] for e in layout}
    assert enc == {"a": "dense", "b": "bitmap", "bias": "dense", "s": "dense"}
    assert counts["indices"] == 16  # one bit per entry of b

    tensors, layout, counts = encode(state, "int8", zero=("a",))
    back = decode(tensors, layout)
    assert np.all(back["a"] == 0) and back["a"].shape == (16, 8)
    step = np.abs(sparse).max() / 127
    assert np.abs(back["b"] - sparse).max() <= step / 2 + 1e-7  # rounding to the nearest level
    assert np.all(back["b"][sparse == 0] == 0)  # the support survives
    np.testing.assert_allclose(back["bias"], state["bias"], rtol=1e-3)  # float16
    assert back["s"][0] == np.float32(0.5)  # scalars stay float32
    assert tensors["int8"].dtype == np.int8 and counts["scales"] == 4


def _digits_like(tmp_path, **cell):
    from pipeline.data.sequences import fit_zscore

    torch.manual_seed(0)
    model = build_model(
        "sequence_classifier", input_size=8, hidden_size=48, num_classes=10, u_rank=12, **cell
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    apply_sparsity(model, "iht")
    x = np.random.default_rng(1).standard_normal((64, 8, 8)).astype(np.float32) * 4 + 2
    norm = fit_zscore(x)
    cfg = {"model": {"arch": "sequence_classifier", **vars(model.config)}}
    meta = {
        "config": cfg,
        "normalization": norm.to_dict(),
        "sequence_lengths": [8],
        "metrics": {"val_accuracy": 0.5},
    }
    return model, norm, x, save_checkpoint(str(tmp_path / "ckpt"), model, meta)


def test_export_files_size_and_fidelity(tmp_path):
    from pipeline.export import export_model

    model, norm, x, ckpt = _digits_like(tmp_path, w_sparsity=0.5, u_sparsity=0.5)
    out = export_model(ckpt, "int8", str(tmp_path / "int8"))
    assert sorted(os.listdir(out["path"])) == ["export.json", "weights.safetensors"]
    assert out["file_bytes"] == os.path.getsize(out["weights_file"])
    assert sum(out["breakdown"].values()) == out["file_bytes"]  # values + bitmaps + scales + header
    assert out["breakdown"]["indices"] > 0  # the sparse matrices pay for their support
    assert out["file_bytes"] < 2048
    assert out["max_probability_diff"] < INT8_PROBABILITY_TOLERANCE

    loaded = load_checkpoint(out["path"])
    assert loaded.meta["precision"] == "int8" and loaded.meta["sequence_lengths"] == [8]
    assert loaded.meta["normalization"] == norm.to_dict()  # the inputs' transform travels with it
    exported = loaded.build_model()
    xt = torch.from_numpy(norm.apply(x))
    with torch.inference_mode():
        diff = (torch.softmax(exported(xt), -1) - torch.softmax(model(xt), -1)).abs().max()
    assert float(diff) < INT8_PROBABILITY_TOLERANCE

    f32 = export_model(ckpt, "float32", str(tmp_path / "f32"))
    assert f32["max_probability_diff"] == 0.0 and f32["file_bytes"] > out["file_bytes"]
    with torch.inference_mode():
        torch.testing.assert_close(load_checkpoint(f32["path"]).build_model()(xt), model(xt), rtol=0, atol=0)
    with pytest.raises(ValueError, match="already an export"):
        export_model(out["path"], "int8", str(tmp_path / "again"))


def test_single_step_router_export_leaves_out_the_untrained_recurrent_matrix(tmp_path):
    from pipeline.export import export_model

    torch.manual_seed(0)
    model = build_model("sequence_classifier", input_size=5, hidden_size=16, num_classes=2).eval()
    cfg = {"model": {"arch": "sequence_classifier", **vars(model.config)}}
    ckpt = save_checkpoint(str(tmp_path / "r"), model, {"config": cfg, "fingerprint": {"kind": "routing"}})
    out = export_model(ckpt, "int8", str(tmp_path / "r8"))
    assert out["unused"] == ["rnn.cell.U"]
    layout = {e["name"]: e["encoding"] for e in json.load(open(tmp_path / "r8" / "export.json"))["tensors"]}
    assert layout["rnn.cell.U"] == "zero"
    x = torch.randn(50, 5)
    with torch.inference_mode():
        p = torch.softmax(model(x), -1)
        q = torch.softmax(load_checkpoint(out["path"]).build_model()(x), -1)
    assert float((p - q).abs().max()) < INT8_PROBABILITY_TOLERANCE


def test_damaged_or_foreign_exports_are_refused(tmp_path):
    from pipeline.export import export_model
    from pipeline.lean import load

    _, _, _, ckpt = _digits_like(tmp_path)
    out = export_model(ckpt, "int8", str(tmp_path / "e"))["path"]
    weights = os.path.join(out, "weights.safetensors")
    blob = bytearray(open(weights, "rb").read())
    blob[-1] ^= 0x01
    open(weights, "wb").write(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(out)
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load(out)
    out2 = export_model(ckpt, "int8", str(tmp_path / "f"))["path"]
    open(os.path.join(out2, "model.pt"), "wb").write(b"\x80\x04")
    with pytest.raises(CheckpointError, match="an export holds"):
        load_checkpoint(out2)


def test_evaluate_accepts_an_export(tmp_path):
    from pipeline.data.sequences import write_digits_npz
    from pipeline.export import export_model
    from pipeline.train.run import evaluate_checkpoint

    digits = write_digits_npz(str(tmp_path / "digits.npz"))
    _, _, _, ckpt = _digits_like(tmp_path)
    meta = json.load(open(os.path.join(ckpt, "checkpoint.json")))
    meta["config"]["data"] = {"source": "sequences", "path": digits, "val_fraction": 0.1}
    from pipeline.data.sequences import load_sequence_data

    data = load_sequence_data(digits, val_fraction=0.1)
    meta["normalization"] = data.normalization.to_dict()
    json.dump(meta, open(os.path.join(ckpt, "checkpoint.json"), "w"))
    out = export_model(ckpt, "float32", str(tmp_path / "f32"))["path"]
    assert evaluate_checkpoint(out, split="test") == evaluate_checkpoint(ckpt, split="test")


def test_registered_int8_router_serves_on_the_lean_engine(tmp_path):
    from pipeline.export import export_model
    from pipeline.registry.registry import Registry
    from serve.models import InputError, load_predictor
    from tests.support.serve_world import routing_features, train_router

    ckpt = train_router(tmp_path / "router", steps=60)
    meta_path = os.path.join(ckpt, "checkpoint.json")
    meta = json.load(open(meta_path))
    meta["fingerprint"] = {"kind": "routing"}  # trained on single-step routing rows
    json.dump(meta, open(meta_path, "w"))
    reg = Registry(tmp_path / "registry")
    reg.register("router", ckpt, config=meta["config"], metrics={}, promote=True)
    out = export_model(ckpt, "int8", str(tmp_path / "router-int8"))["path"]
    rec = reg.register("router", out, config=meta["config"], metrics={}, precision="int8")
    assert rec["version"] == "v0002" and rec["precision"] == "int8"
    assert reg.get("router", "v0001")["precision"] == "float32"

    f32, i8 = load_predictor(reg, "router", "v0001"), load_predictor(reg, "router", "v0002")
    assert i8.info()["engine"] == "lean-numpy" and i8.info()["precision"] == "int8"
    assert i8.info()["sequence_lengths"] == [1]
    xs = [[float(v) for v in row] for row in routing_features(200, seed=5)]
    p32 = np.array([r["probability"] for r in f32.predict([f32.prepare({"features": x}) for x in xs])])
    p8 = np.array([r["probability"] for r in i8.predict([i8.prepare({"features": x}) for x in xs])])
    assert np.abs(p32 - p8).max() < INT8_PROBABILITY_TOLERANCE
    with pytest.raises(
        InputError, match="a sequence of 3 steps: this model was trained on 1-step inputs only"
    ):
        i8.prepare({"sequence": [xs[0]] * 3})
    assert i8.prepare({"sequence": [xs[0]]}).shape == (1, 5)  # one step is what it was trained on

    # the INT8 version decides with the threshold calibrated in training (the export carries it),
    # in a Serve host as in the embedded lean API
    from pipeline.lean import load
    from serve.models import ModelHost

    threshold = meta["route_calibration"]["threshold"]
    host = ModelHost("router", "route", str(reg.root))
    reg.promote("router", "v0002")
    assert host.sync() and host.predictor.version == "v0002"
    (answer,) = host.predict([{"features": xs[0]}])
    assert answer["threshold_source"] == "calibrated" and answer["threshold"] == pytest.approx(threshold)
    assert answer["route"] == ("lightweight" if answer["probability"] >= threshold else "powerful")
    assert load(out).threshold == pytest.approx(threshold)


def test_export_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path))
    assert main(["export", "no-such-run", "--format", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tunestack export: no-such-run: not a checkpoint folder")
    assert main(["export", "x", "--promote"]) == 2
    assert "--promote needs --register" in capsys.readouterr().err
    assert not (tmp_path / "exports").exists()


def test_autoencoder_export_carries_its_feature_transform(tmp_path):
    """Export is family-generic: an autoencoder's INT8 artifact holds its feature transform
    (features.safetensors, sha256-checked), so registered it answers /v1/encode's predictor as the
    float version does, without any store; a transform that is not the exported one is refused."""
    from pathlib import Path

    from pipeline.export import export_model
    from pipeline.registry.registry import Registry
    from serve.models import LoadError, load_predictor
    from tests.support.serve_world import make_store, register, some_pairs, train_autoencoder

    store = make_store(tmp_path / "store")
    ckpt = train_autoencoder(tmp_path / "ae", store, steps=50)
    out = export_model(ckpt, "int8", str(tmp_path / "ae8"))
    assert "max_probability_diff" not in out
    assert sorted(os.listdir(out["path"])) == ["export.json", "features.safetensors", "weights.safetensors"]
    assert out["file_bytes"] < os.path.getsize(os.path.join(ckpt, "model.safetensors"))
    loaded = load_checkpoint(out["path"])
    assert loaded.meta["precision"] == "int8" and loaded.features() is not None

    reg = Registry(tmp_path / "registry")
    register(reg, "autoencoder", ckpt)
    reg.register("autoencoder", out["path"], config=loaded.config, metrics={}, precision="int8")
    instances = [{"concept": c, "unit": u, "value": v} for c, u, v in some_pairs(store, k=4)]
    answers = {}
    for version in ("v0001", "v0002"):
        predictor = load_predictor(reg, "autoencoder", version, task="encode")
        answers[version] = predictor.predict([predictor.prepare(i) for i in instances])
    for a, b in zip(answers["v0001"], answers["v0002"]):
        assert a["pair_known"] and b["pair_known"] and a["baseline"] == b["baseline"]
        z0, z1 = np.asarray(a["latent"]), np.asarray(b["latent"])
        # 8-bit weights move the latent by about 1% of its range; 5% bounds it with room
        assert np.abs(z0 - z1).max() < 0.05 * np.abs(z0).max()

    features = Path(out["path"]) / "features.safetensors"
    features.write_bytes(features.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError, match="features.safetensors: does not match the sha256"):
        load_checkpoint(out["path"])
    with pytest.raises(LoadError):  # the registered copy is intact; a damaged one is not served
        Path(reg.get("autoencoder", "v0002")["checkpoint"], "features.safetensors").write_bytes(b"x")
        load_predictor(reg, "autoencoder", "v0002", task="encode")
