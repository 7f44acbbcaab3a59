"""Growing the store never changes a trained model (issue 12's "must show"), on the real SEC data:

ingest AAPL + GOOG → train the autoencoder → register and promote → `tunestack score` the store and
ask the real Serve app → ingest MSFT → score again and ask again (the same checkpoint registered
anew, so a fresh replica loads it after the ingest): every AAPL/GOOG row's latent, error and anomaly
score equal their first values, and so do the HTTP answers; MSFT's rows are scored, with pairs the
model never saw marked; `evaluate --by entity` reports MSFT on its own, beside a PCA of the same
width fitted on the training companies.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from tests.support import REPO, require_us_gaap

pytestmark = pytest.mark.ray
KEY = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn"]
# Both scores run the same model on the same float32 inputs; only the batches' composition differs
# (MSFT's rows share blocks with the others after the ingest), and BLAS may sum a row's products in
# a batch-size-dependent order: float32 rounding, ~1e-7 relative. 1e-6 is the bound.
TOL = 1e-6


def _scores(path: str):
    t = pq.read_table(path).to_pandas()
    return t.set_index(KEY).sort_index()


def _deploy(registry_root: str):
    from pipeline.runtime import free_port
    from serve.cli import DEFAULT_CONFIG, deploy, serve_config_dict

    port = free_port()
    config = serve_config_dict(str(DEFAULT_CONFIG), "127.0.0.1", port)
    app = config["applications"][0]
    app["args"].update(
        registry_root=registry_root,
        families={"autoencoder": "encode"},
        model_num_cpus=0.1,
        gateway_num_cpus=0.1,
        poll_interval_s=0.2,
    )
    # one hop: the Gateway replica holds the autoencoder (no separate model deployment)
    app["deployments"] = [{"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}]
    deploy(config, timeout=240)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while requests.get(url + "/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, requests.get(url + "/readyz", timeout=30).text
        time.sleep(0.2)
    return url


def _encode(url: str, instances: list[dict]) -> list[dict]:
    r = requests.post(url + "/v1/encode", json={"instances": instances}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _wait_for_version(url: str, version: str, probe: dict, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _encode(url, [probe])[0]["model_version"] != version:
        assert time.monotonic() < deadline, f"the replica never served {version}"
        time.sleep(0.2)


def test_growing_the_store_never_changes_the_model(ray_cluster, tmp_path, monkeypatch, capsys):
    data = require_us_gaap()
    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "home"))
    from ray import serve

    from pipeline.config import load_config
    from pipeline.ingest import ingest
    from pipeline.registry import Registry
    from pipeline.train import train
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.run import evaluate_checkpoint
    from serve.score import score

    store = str(tmp_path / "home" / "store")
    ingest([str(data / f"{t}_companyfacts.json.gz") for t in ("AAPL", "GOOG")], store, embedder="hashed")
    cfg = load_config(REPO / "tune_configs" / "autoencoder.yaml", [f"data.path={store}", "train.epochs=8"])
    result = train(cfg, run_name="ae-aapl-goog")
    features = load_checkpoint(result.best_checkpoint).features()
    assert features.baseline is not None and len(features.entities) == 2
    reg = Registry()
    reg.register("autoencoder", result.best_checkpoint, config=cfg.to_dict(), metrics={}, promote=True)

    first = score("autoencoder:production", str(tmp_path / "first.parquet"))
    from pipeline.store.layout import TripletStore

    assert (
        first["rows"] == TripletStore(store).require()["counts"]["triplets"] and first["pairs_unknown"] == 0
    )
    before = _scores(first["out"])
    assert before["pair_known"].all()
    # The store's reads run inside the scoring actors, one fused operator (bench.score: 1.45x at 10M
    # triplets). A Ray that stopped fusing them would still score, only slower: the plan says which.
    import ray.data

    from serve.score import _encode_pipeline

    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=2)
    capsys.readouterr()
    _encode_pipeline(load_checkpoint(result.best_checkpoint), None, pool, 1.0)[0].explain()
    physical = capsys.readouterr().out.rsplit("Physical Plan (Optimized)", 1)[-1]
    assert "ReadTriplet->MapBatches(EncodeScorer)" in physical, physical

    facts = before.reset_index().drop_duplicates(["concept", "unit"]).head(20)
    probe = [{"concept": r.concept, "unit": r.unit, "value": float(r.value)} for r in facts.itertuples()]
    unseen = {"concept": "MadeUpConceptNeverFiled", "unit": "USD", "value": 1234.0}
    url = _deploy(reg.root.as_posix())
    try:
        answers = _encode(url, probe + [unseen])
        assert not answers[-1]["pair_known"] and answers[-1]["fallback"] == "unit:USD"

        ingest([str(data / "MSFT_companyfacts.json.gz")], store, embedder="hashed")
        second = score("autoencoder:production", str(tmp_path / "second.parquet"))
        # the same checkpoint registered again: a fresh load, after the ingest
        reg.register("autoencoder", result.best_checkpoint, config=cfg.to_dict(), metrics={}, promote=True)
        _wait_for_version(url, "v0002", probe[0])
        again = _encode(url, probe + [unseen])
    finally:
        serve.shutdown()

    after = _scores(second["out"])
    assert second["rows"] > first["rows"] and second["pairs_unknown"] > 0
    old = after.loc[before.index]  # every AAPL/GOOG fact is still there, scored the same
    np.testing.assert_allclose(np.stack(old["latent"]), np.stack(before["latent"]), rtol=0, atol=TOL)
    for col in ("reconstruction_error", "anomaly_score"):
        np.testing.assert_allclose(old[col], before[col], rtol=TOL, atol=TOL)
    assert old["pair_known"].all()
    msft = after[~after.index.isin(before.index)]
    assert set(msft.index.get_level_values("entity_id")) == {"0000789019"}
    assert (~msft["pair_known"]).any() and msft["pair_known"].any()

    for a, b in zip(answers, again):
        assert b["model_version"] == "v0002"
        for key in ("pair_known", "fallback", "baseline"):
            assert a[key] == b[key]
        np.testing.assert_allclose(b["latent"], a["latent"], rtol=0, atol=TOL)
        np.testing.assert_allclose(
            [b["reconstruction_error"], b["anomaly_score"]],
            [a["reconstruction_error"], a["anomaly_score"]],
            rtol=TOL,
            atol=TOL,
        )

    report = evaluate_checkpoint("autoencoder:production", by="entity")
    groups = {g["entity"]: g for g in report["groups"]}
    ms = groups["0000789019"]
    assert not ms["in_training"] and all(groups[e]["in_training"] for e in features.entities)
    with capsys.disabled():
        print(
            "\nMSFT (never seen in training), val folds:",
            json.dumps(
                {
                    k: {m: float(f"{v[m]:.4g}") for m in ("r2", "embedding_cosine", "relative_mae_median")}
                    for k, v in ms.items()
                    if k in ("autoencoder", "pca")
                }
            ),
        )
        print("pairs known / unknown rows:", ms["pairs_known"]["rows"], ms["pairs_unknown"]["rows"])
    ae, pca = ms["autoencoder"], ms["pca"]
    assert ae["r2"] > pca["r2"]
    assert ae["embedding_cosine"] > pca["embedding_cosine"]
    assert ae["relative_mae_median"] < pca["relative_mae_median"]
