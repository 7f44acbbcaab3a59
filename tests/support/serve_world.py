"""Tiny real models trained in-process and registered (a router with and without dropout, a
corrupted and an unloadable version, an autoencoder over a small store), and the reference answers
computed straight from a checkpoint that served answers must equal. Used by the serve tests of
both tiers (tests/unit/test_serve_models.py, tests/integration/test_serve.py, …).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
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
    out_dir,
    *,
    seed: int = 0,
    steps: int = 150,
    hidden: int = 8,
    dropout: float = 0.0,
    cell: str = "fastgrnn",
    calibrate: bool = True,
) -> str:
    """Train a small router on the synthetic routing rule; save a checkpoint (calibrated as training
    does, unless `calibrate` is False); return its folder."""
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.synth import routing_rule

    cfg = load_config(
        ROOT / "tune_configs" / "router.yaml",
        [
            f"model.hidden_size={hidden}",
            f"model.dropout={dropout}",
            f"model.cell={cell}",
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
    meta = {"config": cfg, "normalization": norm.to_dict(), "metrics": metrics, "epoch": 0}
    if calibrate:  # as training does, on held-out rows: the threshold for at most 2% wrong lightweight
        from pipeline.router_metrics import calibrate as calibrate_threshold

        xv = routing_features(2048, seed + 1000)
        yv = routing_rule({k: xv[:, i] for i, k in enumerate(ROUTING_FEATURES)})
        with torch.no_grad():
            pv = torch.softmax(model(torch.from_numpy(norm.apply(xv))), -1)[:, 1].numpy()
        meta["route_calibration"] = {**calibrate_threshold(pv, yv, 0.02), "split": "val", "rows": len(yv)}
    save_checkpoint(str(out_dir), model, meta=meta)
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
    """Train a small autoencoder on the store; save it with its feature transform and error
    baseline (as a training run ends); return its folder."""
    from pipeline.config import load_config
    from pipeline.data.features import FeatureTransform
    from pipeline.models import build_model
    from pipeline.store.layout import TripletStore
    from pipeline.train.baseline import fit_error_baseline

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
    store = TripletStore(store_uri)
    manifest = store.require()
    meta = {
        "config": cfg,
        "normalization": None,
        "metrics": {"val_loss": loss.item()},
        "epoch": 0,
        "store": {"uri": store_uri, "version": manifest["version"], "data_dir": manifest["data_dir"]},
    }
    # the model's own features: the store's transform, and the error baseline over its train folds
    features = FeatureTransform.from_store(store)
    pid, value, _ = train_fold_rows(store_uri)
    baseline = fit_error_baseline(model, features, [{"pair_id": pid, "value": value}])
    save_checkpoint(str(out_dir), model, meta=meta, features=features.with_baseline(baseline))
    return str(out_dir)


def train_fold_rows(store_uri: str, val_fraction: float = 0.1):
    """(pair_id, scaled value, raw value) of the store's training-fold rows."""
    import pyarrow.parquet as pq

    from pipeline.data.triplets import split_folds
    from pipeline.store.layout import TripletStore

    t = pq.read_table(
        TripletStore(store_uri).triplet_files(), columns=["pair_id", "scaled_value", "value", "fold"]
    )
    lo, hi = split_folds("train", val_fraction)
    fold = t.column("fold").to_numpy()
    keep = (fold >= lo) & (fold < hi)
    return (
        t.column("pair_id").to_numpy()[keep].astype(np.int64),
        t.column("scaled_value").to_numpy()[keep],
        t.column("value").to_numpy()[keep],
    )


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
    """(latent [B, k], error [B]) of the production autoencoder for raw triplets of pairs the store
    it was trained on holds (with that store's embeddings and scalers, as training saw them)."""
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


def router_replicas(ray, app: str = "tunestack") -> list[str]:
    """Actor names of the running `model-router` replicas of Serve application `app`."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"{app}#model-router#" in a["name"]
    ]
