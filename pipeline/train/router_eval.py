"""A router checkpoint judged by cost and quality (pipeline.router_metrics) on its own data.

`calibrate_checkpoint` runs at the end of every router training and tuning run: on the validation
split it computes the cost-quality curve, its area (APGR) and the threshold whose error among the
requests routed lightweight is at most `route.max_lightweight_error`, and stores them in the
checkpoint's checkpoint.json (`route_calibration`), so the registered version carries its threshold
and Serve uses it. `evaluate_router` is `tunestack evaluate` for a router: the same figures on the
test split with the version's own threshold, beside the oracle's when the logs are synth's.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np

from pipeline.errors import DataError
from pipeline.router_metrics import plot_report, router_report

DEFAULT_MAX_ERROR = 0.02
CALIBRATION_KEY = "route_calibration"  # in checkpoint.json


def is_router(config: dict) -> bool:
    """A two-class sequence classifier trained on routing logs."""
    model, data = config.get("model") or {}, config.get("data") or {}
    return (
        model.get("arch") == "sequence_classifier"
        and data.get("source") == "routing"
        and model.get("num_classes") in (2, None)
    )


def max_lightweight_error(config: dict) -> float:
    return float((config.get("route") or {}).get("max_lightweight_error", DEFAULT_MAX_ERROR))


def router_scores(ckpt, split: str, source: str | None = None):
    """(P(lightweight) [N], labels [N], source row numbers [N], data path) of `split` of the data,
    split and normalized exactly as in training."""
    import torch

    from pipeline.data.sequences import Normalization, load_sequence_data
    from pipeline.home import expand

    cfg = ckpt.config
    path = source or expand(cfg["data"]["path"])
    seq = load_sequence_data(
        path,
        test_fraction=cfg["data"]["test_fraction"],
        val_fraction=cfg["data"]["val_fraction"],
        seed=cfg["train"]["seed"],
        normalization=Normalization.from_dict(ckpt.meta.get("normalization")),
        normalize=False,
    )
    part = {"test": seq.test, "val": seq.val, "train": seq.train}[split]
    if part is None:
        raise DataError(f"{path}: no {split!r} split (val_fraction is 0)")
    model = ckpt.build_model()
    with torch.no_grad():
        p = np.concatenate(
            [
                torch.softmax(model(torch.from_numpy(part.x[i : i + 8192])), dim=-1)[:, 1].double().numpy()
                for i in range(0, len(part.y), 8192)
            ]
        )
    return p, part.y, part.rows, path


def oracle_scores(path: str, rows: np.ndarray) -> np.ndarray | None:
    """The true P(lightweight suffices) of those rows when the logs are synth_routing's, else None."""
    import pyarrow.parquet as pq

    from pipeline.data.sequences import ROUTING_FILE
    from pipeline.synth import ROUTING_FEATURES, oracle_probability

    folder = path if os.path.isdir(path) else os.path.dirname(path)
    meta_path = os.path.join(folder, "routing.json")
    if rows is None or not os.path.isfile(meta_path):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    data = path if path.endswith(".parquet") else os.path.join(folder, ROUTING_FILE)
    table = pq.read_table(data, columns=ROUTING_FEATURES)
    if table.num_rows != meta.get("rows"):
        return None
    return oracle_probability({k: table.column(k).to_numpy()[rows] for k in ROUTING_FEATURES}, meta)


def _summary(report: dict, split: str) -> dict:
    cal = report["calibration"]
    out = {
        "split": split,
        "rows": report["rows"],
        "max_lightweight_error": cal["max_lightweight_error"],
        "apgr": report["apgr"],
        "key_points": report["key_points"],
    }
    if "oracle" in report:
        out.update(oracle_apgr=report["oracle"]["apgr"], apgr_vs_oracle=report["apgr_vs_oracle"])
    return out


def calibrate_checkpoint(checkpoint: str, max_error: float | None = None) -> dict:
    """Calibrate a router checkpoint on its validation split and store the result in it."""
    from pipeline.train.checkpoint import load_checkpoint, update_meta

    ckpt = load_checkpoint(checkpoint)
    max_error = max_lightweight_error(ckpt.config) if max_error is None else max_error
    split = "val" if (ckpt.config["data"].get("val_fraction") or 0) > 0 else "test"
    p, y, rows, path = router_scores(ckpt, split)
    report = router_report(p, y, max_error, oracle=oracle_scores(path, rows))
    cal = report["calibration"]
    calibration = {
        "threshold": cal["threshold"],
        "share_lightweight": cal["share_lightweight"],
        "error_among_lightweight": cal["error_among_lightweight"],
        **_summary(report, split),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    update_meta(ckpt.path, **{CALIBRATION_KEY: calibration})
    return calibration


def evaluate_router(checkpoint: str, source: str | None = None, split: str = "test", plot: str | None = None):
    """The router's cost and quality on `split`: what its calibrated threshold does there (share
    routed lightweight, error among them), the curve's key points and APGR (beside the oracle's on
    the same rows when known), and the threshold a calibration on these rows would pick."""
    from pipeline.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    stored = ckpt.meta.get(CALIBRATION_KEY)
    max_error = stored["max_lightweight_error"] if stored else max_lightweight_error(ckpt.config)
    parts = ["train", "val", "test"] if split == "all" else [split]
    scored = [router_scores(ckpt, s, source) for s in parts]
    p = np.concatenate([s[0] for s in scored])
    y = np.concatenate([s[1] for s in scored])
    oracles = [oracle_scores(s[3], s[2]) for s in scored]
    oracle = None if any(o is None for o in oracles) else np.concatenate(oracles)
    report = router_report(p, y, max_error, stored["threshold"] if stored else None, oracle)
    out = _summary(report, split)
    if stored:
        here = report["at_threshold"]
        out.update(
            threshold=stored["threshold"],
            threshold_source="calibrated",
            calibrated_on=f"{stored['split']} split, {stored['rows']} rows",
            share_lightweight=here["share_lightweight"],
            error_among_lightweight=here["error_among_lightweight"],
        )
    else:
        out.update(threshold=None, threshold_source="none: this checkpoint was not calibrated")
    out["calibration_here"] = {
        k: report["calibration"][k] for k in ("threshold", "share_lightweight", "error_among_lightweight")
    }
    if plot:
        out["plot"] = plot_report(report, plot, title=os.path.basename(os.path.normpath(ckpt.path)))
    return out
