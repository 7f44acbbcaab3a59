"""serve.models without Ray: loading registry versions, the router's normalization, uncertainty and
decision, the encoder's anomaly score, hot swapping; and the HTTP API over in-process models
(FastAPI TestClient), so validation is covered in the fast tier.

The builders at the top (tiny models trained in-process, registered in a registry) are also used by
tests/integration/test_serve.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.sequences import ROUTING_FEATURES, fit_zscore
from pipeline.registry.registry import Registry
from pipeline.train.checkpoint import META_FILE, MODEL_FILE, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Builders: tiny real models, registered


def _one_thread(fn):
    """Train with one intra-op thread: tiny models on a shared 2-core box run 8x faster so."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def routing_features(n: int, seed: int) -> np.ndarray:
    """[n, 5] float32 routing features shaped like synth_routing's (raw scale, not normalized)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.beta(2, 2, n),
            np.exp(-rng.exponential(72.0, n) / 168.0),
            np.floor(rng.lognormal(math.log(3.0), 1.2, n)),
            rng.beta(6, 2, n),
            rng.binomial(4, 0.5, n) / 4.0,
        ],
        axis=1,
    ).astype(np.float32)


@_one_thread
def train_router(
    out_dir, *, seed: int = 0, steps: int = 150, hidden: int = 8, dropout: float = 0.0, cell: str = "fastgrnn"
) -> str:
    """Train a small router on the synthetic routing rule; save a checkpoint; return its folder."""
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.synth import routing_rule

    cfg = load_config(
        ROOT / "tune_configs" / "router.yaml",
        [
            f"model.hidden_size={hidden}",
            f"model.dropout={dropout}",
            f"model.cell={cell}",
            *(["model.w_rank=null", "model.u_rank=null"] if cell != "fastgrnn" else []),
            f"train.seed={seed}",
        ],
    ).to_dict()
    x = routing_features(2048, seed)
    y = routing_rule({k: x[:, i] for i, k in enumerate(ROUTING_FEATURES)}).astype(np.int64)
    norm = fit_zscore(x, list(ROUTING_FEATURES))
    xt, yt = torch.from_numpy(norm.apply(x)), torch.from_numpy(y)
    torch.manual_seed(seed)
    params = {k: v for k, v in cfg["model"].items() if k != "arch"}
    model = build_model("sequence_classifier", **params)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(yt), (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    metrics = {"val_accuracy": acc, "steps": steps}
    save_checkpoint(
        str(out_dir),
        model,
        meta={"config": cfg, "normalization": norm.to_dict(), "metrics": metrics, "epoch": 0},
    )
    return str(out_dir)


def make_store(uri, *, companies: int = 2) -> str:
    """A small triplet store from synthetic companyfacts documents (hashed embedder: offline)."""
    from pipeline.ingest import ingest
    from pipeline.synth import write_companyfacts_json

    src = Path(str(uri) + "-src")
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(companies):
        p = src / f"CIK{1000 + i:010d}.json"
        write_companyfacts_json(str(p), 1000 + i, f"Company {i}", facts_per_concept=8, seed=i)
        paths.append(str(p))
    ingest(paths, str(uri), embedder="hashed", progress=False)
    return str(uri)


def store_rows(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, d+1] float32, pair_id [n]) of every row of the store, as training builds them."""
    import pyarrow.parquet as pq

    from pipeline.store.layout import TripletStore

    store = TripletStore(uri)
    emb = store.embeddings()
    t = pq.read_table(store.triplet_files(), columns=["pair_id", "scaled_value"])
    pid = t.column("pair_id").to_numpy().astype(np.int64)
    x = np.concatenate([emb[pid], t.column("scaled_value").to_numpy()[:, None]], axis=1).astype(np.float32)
    return x, pid


@_one_thread
def train_autoencoder(out_dir, store_uri: str, *, seed: int = 0, steps: int = 200) -> str:
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.store.layout import TripletStore

    x, _ = store_rows(store_uri)
    cfg = load_config(
        ROOT / "tune_configs" / "autoencoder.yaml",
        [
            f"data.path={store_uri}",
            "model.hidden=[32]",
            "model.latent_dim=8",
            f"model.input_dim={x.shape[1]}",
        ],
    ).to_dict()
    params = {k: v for k, v in cfg["model"].items() if k != "arch"}
    torch.manual_seed(seed)
    model = build_model("autoencoder", **params)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt = torch.from_numpy(x)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (128,), generator=g)
        recon, _ = model(xt[idx])
        loss, _, _ = model.reconstruction_loss(xt[idx], recon)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    manifest = TripletStore(store_uri).require()
    meta = {
        "config": cfg,
        "normalization": None,
        "metrics": {"val_loss": loss.item()},
        "epoch": 0,
        "store": {"uri": store_uri, "version": manifest["version"], "data_dir": manifest["data_dir"]},
    }
    save_checkpoint(str(out_dir), model, meta=meta)
    return str(out_dir)


def register(registry: Registry, family: str, ckpt_dir: str, promote: bool = False) -> str:
    ckpt = load_checkpoint(ckpt_dir)
    rec = registry.register(
        family, ckpt_dir, config=ckpt.config, metrics=ckpt.meta["metrics"], promote=promote
    )
    return rec["version"]


def corrupt(registry: Registry, family: str, version: str) -> None:
    """Flip bytes of the version's weights, after registration: its sha256 no longer matches."""
    p = Path(registry.get(family, version)["checkpoint"]) / MODEL_FILE
    data = bytearray(p.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    p.write_bytes(bytes(data))


def register_unloadable(registry: Registry, family: str, good_ckpt: str, tmp: Path) -> str:
    """A version whose files are intact (sha256 fine) but whose weights do not fit its config."""
    import shutil

    bad = tmp / "unloadable"
    shutil.copytree(good_ckpt, bad)
    meta = json.loads((bad / META_FILE).read_text())
    meta["config"]["model"]["hidden_size"] = meta["config"]["model"]["hidden_size"] + 3
    (bad / META_FILE).write_text(json.dumps(meta))
    return register(registry, family, str(bad))


def build_world(tmp: Path) -> dict:
    """A registry at tmp/home/registry (so TUNESTACK_HOME=tmp/home finds it) with router v0001
    (no dropout, production), v0002 (dropout: MC uncertainty), v0003 (corrupted after
    registration), v0004 (intact files that do not load); autoencoder v0001 over a small store."""
    reg = Registry(tmp / "home" / "registry")
    r1 = train_router(tmp / "r1", seed=0)
    register(reg, "router", r1, promote=True)
    register(reg, "router", train_router(tmp / "r2", seed=1, dropout=0.2))
    register(reg, "router", train_router(tmp / "r3", seed=2, steps=10))
    corrupt(reg, "router", "v0003")
    register_unloadable(reg, "router", r1, tmp)
    store = make_store(tmp / "store")
    register(reg, "autoencoder", train_autoencoder(tmp / "ae1", store), promote=True)
    return {"registry": reg, "root": str(reg.root), "home": str(tmp / "home"), "store": store, "tmp": tmp}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serve-models"))


# ---------------------------------------------------------------------------------------------
# Reference computations, straight from the checkpoint (what the served answers must equal)


def reference_route(registry: Registry, version: str, x_raw: np.ndarray) -> np.ndarray:
    """P(lightweight) of the checkpoint for raw inputs [B, T, D] or [B, D]."""
    ckpt = load_checkpoint(registry.get("router", version)["checkpoint"])
    n = ckpt.meta["normalization"]
    x = np.array(x_raw, dtype=np.float32)
    if n.get("log1p"):  # heavy-tailed features are log1p'd before the z-score
        x[..., n["log1p"]] = np.log1p(np.maximum(x[..., n["log1p"]], 0.0))
    x = (x - np.asarray(n["mean"], np.float32)) / np.asarray(n["std"], np.float32)
    with torch.no_grad():
        return torch.softmax(ckpt.build_model()(torch.from_numpy(x.astype(np.float32))), -1)[:, 1].numpy()


def reference_encode(registry: Registry, store_uri: str, triplets: list[tuple[str, str, float]]):
    """(latent [B, k], error [B]) of the production autoencoder for raw triplets."""
    from pipeline.store.layout import TripletStore

    ckpt = load_checkpoint(registry.get("autoencoder")["checkpoint"])
    store = TripletStore(store_uri)
    lookup, emb, scalers = store.pair_lookup(), store.embeddings(), store.scalers()
    rows = []
    for c, u, v in triplets:
        pid = lookup[(c, u)]
        rows.append(np.concatenate([emb[pid], scalers[pid].transform(np.asarray([v]))]).astype(np.float32))
    model = ckpt.build_model()
    with torch.no_grad():
        xt = torch.from_numpy(np.stack(rows))
        recon, latent = model(xt)
        return latent.numpy(), model.per_sample_error(xt, recon).numpy()


def some_pairs(store_uri: str, k: int = 3) -> list[tuple[str, str, float]]:
    """k (concept, unit, typical value) triplets the store knows."""
    import pyarrow.parquet as pq

    from pipeline.store.layout import TripletStore

    store = TripletStore(store_uri)
    t = pq.read_table(store.triplet_files(), columns=["concept", "unit", "value"]).to_pylist()
    seen, out = set(), []
    for r in t:
        if (r["concept"], r["unit"]) not in seen:
            seen.add((r["concept"], r["unit"]))
            out.append((r["concept"], r["unit"], float(r["value"])))
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_binary_entropy_is_normalized_and_symmetric():
    from serve.models import binary_entropy

    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == pytest.approx(0.0, abs=1e-9) and binary_entropy(1.0) == pytest.approx(
        0.0, abs=1e-9
    )
    p = np.linspace(0.01, 0.99, 99)
    h = binary_entropy(p)
    assert np.all((h >= 0) & (h <= 1)) and np.allclose(h, binary_entropy(1 - p))
    assert np.all(np.diff(h[p >= 0.5]) < 0)  # more confident → less uncertain
    assert binary_entropy(0.979) < 0.15 < binary_entropy(0.977)  # the documented default interplay


def test_decide_route_needs_both_confidence_and_certainty():
    from serve.models import decide_route

    assert decide_route(0.9, 0.1, 0.85, 0.15) == "lightweight"
    assert decide_route(0.85, 0.15, 0.85, 0.15) == "lightweight"  # bounds inclusive
    assert decide_route(0.84, 0.0, 0.85, 0.15) == "powerful"
    assert decide_route(0.99, 0.16, 0.85, 0.15) == "powerful"


# ---------------------------------------------------------------------------------------------
# Router predictor


def test_router_applies_saved_normalization_and_equals_the_checkpoint(world):
    from serve.models import load_predictor

    reg = world["registry"]
    pred = load_predictor(reg, "router")
    assert pred.version == "v0001" and pred.features == list(ROUTING_FEATURES)
    x = routing_features(16, seed=9)
    want = reference_route(reg, "v0001", x)
    as_dict = [pred.prepare({"features": dict(zip(ROUTING_FEATURES, map(float, row)))}) for row in x]
    as_list = [pred.prepare({"features": [float(v) for v in row]}) for row in x]
    as_seq = [pred.prepare({"sequence": [[float(v) for v in row]]}) for row in x]
    for prepared in (as_dict, as_list, as_seq):
        got = np.array([r["probability"] for r in pred.predict(prepared)])
        np.testing.assert_allclose(got, want, atol=1e-6)
    # the z-score matters: without it the answers differ
    raw = np.array([r["probability"] for r in pred.predict([row[None].astype(np.float32) for row in x])])
    assert np.abs(raw - want).max() > 1e-3


def test_router_entropy_uncertainty_without_dropout(world):
    from serve.models import binary_entropy, load_predictor

    pred = load_predictor(world["registry"], "router")
    assert pred.uncertainty_kind == "binary_entropy"
    out = pred.predict(
        [pred.prepare({"features": [float(v) for v in row]}) for row in routing_features(32, 3)]
    )
    p = np.array([o["probability"] for o in out])
    np.testing.assert_allclose([o["uncertainty"] for o in out], binary_entropy(p), atol=1e-9)


def test_router_mc_dropout_uncertainty_is_deterministic_and_bounded(world):
    from serve.models import MC_SAMPLES, load_predictor

    reg = world["registry"]
    pred = load_predictor(reg, "router", "v0002")
    assert pred.uncertainty_kind == f"mc_dropout(k={MC_SAMPLES})"
    xs = [pred.prepare({"features": [float(v) for v in row]}) for row in routing_features(64, 4)]
    a, b = pred.predict(xs), load_predictor(reg, "router", "v0002").predict(xs)
    assert a == b  # fixed masks: same answer every time, on every replica
    u = np.array([o["uncertainty"] for o in a])
    assert np.all((u >= 0) & (u <= 1)) and u.max() > 0
    # the probability is the eval-mode model's, not the MC mean
    x = routing_features(64, 4)
    np.testing.assert_allclose([o["probability"] for o in a], reference_route(reg, "v0002", x), atol=1e-6)
    # batch composition does not change an instance's answer
    alone = pred.predict(xs[:1])[0]
    assert alone["probability"] == pytest.approx(a[0]["probability"], abs=1e-6)
    assert alone["uncertainty"] == pytest.approx(a[0]["uncertainty"], abs=1e-6)


def test_router_monotone_in_similarity(world):
    """Behaviour: the synthetic rule rewards similarity, so P(lightweight) rises with it."""
    from serve.models import load_predictor

    pred = load_predictor(world["registry"], "router")
    base = {"similarity": 0.0, "recency": 0.8, "frequency": 5.0, "success_rate": 0.9, "metadata_match": 0.75}
    ps = [
        pred.predict([pred.prepare({"features": {**base, "similarity": s}})])[0]["probability"]
        for s in (0.0, 0.5, 1.0)
    ]
    assert ps[0] < ps[1] < ps[2]


@pytest.mark.parametrize(
    "instance, fragment",
    [
        ({"features": [0.1, 0.2]}, "has 2 values; the model takes 5"),
        ({"features": {"similarity": 0.1}}, "missing"),
        ({"features": {**dict.fromkeys(ROUTING_FEATURES, 0.1), "colour": 1.0}}, "unknown ['colour']"),
        ({"sequence": [[0.1] * 5, [0.1] * 4]}, "sequence step 1 has 4 features"),
        ({"features": [3e38] * 5}, "numeric range"),
    ],
)
def test_router_rejects_inputs_it_cannot_answer(world, instance, fragment):
    from serve.models import InputError, load_predictor

    with pytest.raises(InputError, match=None) as e:
        load_predictor(world["registry"], "router").prepare(instance)
    assert fragment in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loading and refusing versions


def test_corrupted_and_unloadable_versions_are_refused(world):
    from serve.models import LoadError, load_predictor

    reg = world["registry"]
    with pytest.raises(LoadError, match="sha256"):
        load_predictor(reg, "router", "v0003")
    with pytest.raises(LoadError, match="cannot load"):
        load_predictor(reg, "router", "v0004")
    with pytest.raises(LoadError) as e:
        load_predictor(reg, "router", "v0099")
    assert e.value.not_found
    with pytest.raises(LoadError, match="cannot serve 'encode'"):
        load_predictor(reg, "router", "v0001", task="encode")


def test_host_follows_the_pointer_and_keeps_serving_through_a_bad_version(world, tmp_path):
    import shutil

    from serve.models import ModelHost

    root = tmp_path / "registry"
    shutil.copytree(world["root"], root)
    reg = Registry(root)
    host = ModelHost("router", "route", str(root))
    assert host.sync() and host.predictor.version == "v0001"
    old = host.predictor
    inst = [{"features": [0.5, 0.5, 3.0, 0.8, 0.5]}]
    reg.promote("router", "v0002")
    assert (
        host.sync()
        and host.predictor.version == "v0002"
        and host.predict(inst)[0]["model_version"] == "v0002"
    )
    # a version that passes its sha256 but does not load: the pointer moves (the CLI does not load
    # models), the host refuses it, remembers why, and keeps serving v0002
    reg.promote("router", "v0004")
    assert not host.sync() and host.predictor.version == "v0002" and "v0004" in host.error
    assert not host.sync()  # not retried on every poll
    assert host.predict(inst)[0]["model_version"] == "v0002"
    # a request that took the old predictor before the swap finishes on it
    outs = ModelHost.run([(old, [old.prepare(inst[0])]), (host.predictor, [host.predictor.prepare(inst[0])])])
    assert len(outs) == 2 and outs[0] != outs[1]
    # staging loads without serving
    assert host.stage("v0003")["ok"] is False and host.predictor.version == "v0002"
    assert host.stage("v0001") == {"ok": True, "version": "v0001"} and host.predictor.version == "v0002"


def test_host_without_production_version_says_why(tmp_path):
    from serve.models import ModelHost, NotLoaded

    host = ModelHost("router", "route", str(tmp_path / "empty"))
    assert not host.sync()
    with pytest.raises(NotLoaded, match="no production version"):
        host.prepare([{"features": [0.0] * 5}])
    assert host.info()["loaded"] is False


# ---------------------------------------------------------------------------------------------
# Encoder predictor


def test_encode_equals_the_checkpoint_and_scores_against_the_pair(world):
    from serve.models import MIN_PAIR_ROWS, ModelHost

    reg, store = world["registry"], world["store"]
    host = ModelHost("autoencoder", "encode", world["root"])
    host.sync()
    triplets = some_pairs(store, 3)
    out = host.predict([{"concept": c, "unit": u, "value": v} for c, u, v in triplets])
    latent, err = reference_encode(reg, store, triplets)
    np.testing.assert_allclose([o["latent"] for o in out], latent, atol=1e-6)
    np.testing.assert_allclose([o["reconstruction_error"] for o in out], err, atol=1e-6)
    for o in out:
        b = o["baseline"]
        assert b["scope"] == "pair" and b["count"] >= MIN_PAIR_ROWS
        assert o["anomaly_score"] == pytest.approx(
            (o["reconstruction_error"] - b["mean"]) / b["std"], rel=1e-9
        )
    # a value far outside the pair's range is more anomalous than a typical one
    c, u, v = triplets[0]
    typical, wild = host.predict(
        [{"concept": c, "unit": u, "value": v}, {"concept": c, "unit": u, "value": v * 1e6 + 1e9}]
    )
    assert wild["anomaly_score"] > typical["anomaly_score"] + 3


def test_encode_baseline_is_the_training_error_distribution(world):
    """The pair's baseline mean/std are those of the model's errors over its train-fold rows."""
    import pyarrow.parquet as pq

    from pipeline.data.triplets import split_folds
    from pipeline.store.layout import TripletStore
    from serve.models import load_predictor

    store = world["store"]
    pred = load_predictor(world["registry"], "autoencoder")
    s = TripletStore(store)
    t = pq.read_table(s.triplet_files(), columns=["pair_id", "scaled_value", "fold"])
    lo, hi = split_folds("train", 0.1)
    fold = t.column("fold").to_numpy()
    keep = (fold >= lo) & (fold < hi)
    pid = t.column("pair_id").to_numpy()[keep].astype(np.int64)
    val = t.column("scaled_value").to_numpy()[keep]
    err = pred._errors(pred._rows(pid, val)).astype(np.float64)
    p0 = int(np.bincount(pid).argmax())
    b = pred.baseline(p0)
    assert b["count"] == int((pid == p0).sum())
    assert b["mean"] == pytest.approx(err[pid == p0].mean(), rel=1e-9)
    assert b["std"] == pytest.approx(err[pid == p0].std(), rel=1e-6, abs=1e-12)


def test_encode_unknown_pair_is_named(world):
    from serve.models import InputError, ModelHost

    host = ModelHost("autoencoder", "encode", world["root"])
    host.sync()
    with pytest.raises(InputError, match=r"unknown \(concept, unit\) pair \('NoSuchConcept', 'USD'\)"):
        host.predict([{"concept": "NoSuchConcept", "unit": "USD", "value": 1.0}])


# ---------------------------------------------------------------------------------------------
# The HTTP API over in-process models (no Ray)


@pytest.fixture(scope="module")
def client(world):
    import shutil

    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    root = world["tmp"] / "api-registry"
    shutil.copytree(world["root"], root)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)  # this client runs without a token
        api = make_local_api({"registry_root": str(root), "max_instances": 8, "max_body_bytes": 4096})
    with TestClient(api) as c:
        c.root = root
        yield c


def test_api_route_and_encode(client, world):
    r = client.post("/v1/route", json={"features": dict.fromkeys(ROUTING_FEATURES, 0.5)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"route", "probability", "uncertainty", "model_version", "latency_us", "fallback"}
    assert body["model_version"] == "v0001" and body["fallback"] is False
    r = client.post("/v1/route", json={"instances": [{"features": [0.5] * 5}, {"sequence": [[0.5] * 5] * 3}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    c, u, v = some_pairs(world["store"], 1)[0]
    r = client.post("/v1/encode", json={"concept": c, "unit": u, "value": v})
    assert r.status_code == 200, r.text
    assert len(r.json()["latent"]) == 8 and r.json()["concept"] == c


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"features": [0.5] * 4}, 422, "the model takes 5"),
        ({"features": [0.5, 0.5, "0.5", 0.5, 0.5]}, 422, "valid number"),
        ({"features": [0.5, 0.5, True, 0.5, 0.5]}, 422, "valid number"),
        ({"instances": []}, 422, "at least 1"),
        ({"instances": [{"features": [0.5] * 5}] * 9}, 422, "at most 8"),
        ({"features": [0.5] * 5, "sequence": [[0.5] * 5]}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"features": [0.5] * 5, "extra": 1}, 422, "Extra inputs"),
        ({"sequence": []}, 422, "at least 1"),
    ],
)
def test_api_route_rejects_bad_input(client, body, status, fragment):
    r = client.post("/v1/route", json=body)
    assert r.status_code == status and fragment in r.text, r.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"features": [NaN, 0.5, 0.5, 0.5, 0.5]}',
        b'{"features": [Infinity, 1, 1, 1, 1]}',
        b'{"features": [1e400, 1, 1, 1, 1]}',
        b'{"features": [0.5, ',
        b"\xff\xfe",
        b"[" * 2000 + b"]" * 2000,
        b'"just a string"',
    ],
)
def test_api_route_rejects_bad_json(client, raw):
    r = client.post("/v1/route", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (raw[:40], r.status_code, r.text)
    assert r.status_code == 422 or r.status_code == 400


def test_api_body_limit_is_413_before_parsing(client):
    big = b'{"features": [' + b"0.5, " * 2000 + b"0.5]}"
    assert (
        client.post("/v1/route", content=big, headers={"content-type": "application/json"}).status_code == 413
    )

    def chunks():  # no Content-Length: counted while read
        for _ in range(100):
            yield b" " * 100

    assert (
        client.post("/v1/route", content=chunks(), headers={"content-type": "application/json"}).status_code
        == 413
    )


def test_api_encode_rejects_bad_input(client):
    r = client.post("/v1/encode", json={"concept": "NoSuchConcept", "unit": "USD", "value": 1.0})
    assert r.status_code == 422 and "NoSuchConcept" in r.text
    assert client.post("/v1/encode", json={"concept": "x", "unit": "USD"}).status_code == 422
    assert client.post("/v1/encode", json={"concept": "x", "unit": "USD", "value": "1"}).status_code == 422


def test_api_promote_refuses_bad_versions_and_changes_nothing(client):
    reg = Registry(client.root)
    before = reg.pointer("router")
    r = client.post("/v1/models/router/promote", json={"version": "v0003"})
    assert r.status_code == 409 and "sha256" in r.text
    r = client.post("/v1/models/router/promote", json={"version": "v0004"})
    assert r.status_code == 409 and "cannot load" in r.text
    assert client.post("/v1/models/router/promote", json={"version": "v0042"}).status_code == 404
    assert client.post("/v1/models/router/promote", json={"version": "latest"}).status_code == 422
    assert client.post("/v1/models/nope/promote", json={"version": "v0001"}).status_code == 404
    assert reg.pointer("router") == before
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == before["version"]


def test_api_promote_and_rollback(client):
    r = client.post("/v1/models/router/promote", json={"version": "v0002"})
    assert r.status_code == 200 and r.json()["serving"] is True, r.text
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == "v0002"
    info = client.get("/v1/models/router").json()
    assert info["version"] == "v0002" and info["serving"]["uncertainty"].startswith("mc_dropout")
    r = client.post("/v1/models/router/rollback")
    assert r.status_code == 200 and r.json()["version"] == "v0001"
    assert client.post("/v1/route", json={"features": [0.5] * 5}).json()["model_version"] == "v0001"


def test_api_health_ready_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["families"]["router"]["loaded"]
    text = client.get("/metrics").text
    assert "tunestack_requests_total" in text and "tunestack_route_decisions_total" in text
    assert client.get("/docs").status_code == 200
    assert "/v1/route" in client.get("/openapi.json").json()["paths"]


def test_api_admin_token(world, monkeypatch):
    from fastapi.testclient import TestClient

    from serve.app import make_local_api

    monkeypatch.setenv("TUNESTACK_ADMIN_TOKEN", "s3cret")
    with TestClient(make_local_api({"registry_root": world["root"]})) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and {m["family"] for m in r.json()["models"]} == {"router", "autoencoder"}
        assert c.post("/v1/models/router/rollback").status_code == 401
        assert c.post("/v1/route", json={"features": [0.5] * 5}).status_code == 200  # inference is open


# ---------------------------------------------------------------------------------------------
# The shipped Serve config and the CLI


def test_shipped_serve_config_is_valid_and_cli_overrides_apply(monkeypatch, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from serve.app import token_sha256
    from serve.cli import DEFAULT_CONFIG, serve_config_dict
    from serve.schemas import AppArgs

    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNESTACK_ADMIN_TOKEN", raising=False)
    raw = serve_config_dict(str(DEFAULT_CONFIG))
    assert raw["http_options"] == {
        **raw["http_options"],
        "host": "127.0.0.1",
        "port": 8000,
    }  # loopback default
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    args = AppArgs(**app.args)
    assert args.registry_root == str(tmp_path / "home" / "registry") and args.admin_token_sha256 is None
    assert (args.confidence_threshold, args.max_uncertainty) == (0.85, 0.15)
    assert {d.name for d in app.deployments} == {"Gateway", *(f"model-{f}" for f in args.families)}
    monkeypatch.setenv("TUNESTACK_ADMIN_TOKEN", "tok")
    raw = serve_config_dict(str(DEFAULT_CONFIG), host="0.0.0.0", port=9001)
    assert raw["http_options"]["host"] == "0.0.0.0" and raw["http_options"]["port"] == 9001
    assert raw["applications"][0]["args"]["admin_token_sha256"] == token_sha256("tok") != "tok"


def test_app_args_reject_unknown_keys_and_two_families_per_endpoint():
    from pydantic import ValidationError

    from serve.schemas import AppArgs

    with pytest.raises(ValidationError, match="confidence_treshold"):
        AppArgs(confidence_treshold=0.9)
    with pytest.raises(ValidationError, match="one family per endpoint"):
        AppArgs(families={"router": "route", "router2": "route"})


def test_serve_subcommand_help(capsys):
    import argparse

    from serve.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="tunestack")
    add_serve_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["serve", "--help"])
    assert e.value.code == 0 and "--port" in capsys.readouterr().out
    ns = parser.parse_args(["serve"])
    assert ns.host is None and ns.port is None and ns.config.endswith("config.yaml")


def test_client_retries_idempotent_calls_only(monkeypatch):
    from serve.client import TunestackClient, TunestackError

    class Resp:
        def __init__(self, status, body):
            self.status_code, self._body, self.text = status, body, json.dumps(body)

        def json(self):
            return self._body

    class Session:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def request(self, method, url, **kw):
            self.calls += 1
            return self.answers.pop(0)

    monkeypatch.setattr("serve.client.time.sleep", lambda s: None)
    s = Session(
        [Resp(503, {"detail": "loading"}), Resp(503, {"detail": "loading"}), Resp(200, {"route": "powerful"})]
    )
    assert TunestackClient(session=s, token="").route([0.5] * 5) == {"route": "powerful"} and s.calls == 3
    s = Session([Resp(422, {"detail": "features has 4 values"})])
    with pytest.raises(TunestackError) as e:
        TunestackClient(session=s, token="").route([0.5] * 4)
    assert e.value.status == 422 and s.calls == 1  # a client error is not retried
    s = Session([Resp(503, {"detail": "busy"}), Resp(200, {})])
    with pytest.raises(TunestackError):
        TunestackClient(session=s, token="").rollback("router")  # not idempotent: sent once
    assert s.calls == 1
