"""An autoencoder's metrics on a triplet store, through its own feature transform.

    tunestack evaluate --model autoencoder:production [--data STORE] [--split test] [--by entity|pair]

Rows are read raw and scaled with the model's scalers; pairs the model never saw are embedded from
their text with its recorded embedder and projection and scaled with their unit's fallback — so the
figures are the model's, whatever the store holds now. The report gives the metrics over all rows,
over rows of pairs the model knows and over rows of pairs it does not. With `--by`, the same per
company (`entity`: with whether it was in the training store) or per (concept, unit) pair, each
beside a PCA of the model's latent width fitted on the training companies' training rows (the same
transform, the same metric code) — the baseline an autoencoder has to beat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.errors import DataError

BLOCK_ROWS = 65_536
STATS = ("n", "elements", "sum_y", "sum_y2", "ss_res", "sum_v", "sum_v2", "ss_res_v", "cosine", "rel")
NO_FEATURES = (
    "the checkpoint carries no feature transform (it was saved before models kept their own "
    "features): train it again with `tunestack train`"
)
SPLITS = {"test": "val", "val": "val", "train": "train", "all": None}


def evaluate_autoencoder(
    ckpt, source: str | None = None, split: str = "test", by: str | None = None, val_fraction: float = 0.1
) -> dict:
    """Metrics of a loaded autoencoder checkpoint on a store (default: the one it was trained on)."""
    from pipeline.data.triplets import triplet_dataset
    from pipeline.runtime import ensure_ray
    from pipeline.store.layout import TripletStore
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.tasks import AutoencoderTask

    if by not in (None, "entity", "pair"):
        raise DataError(f"--by {by!r}: expected entity or pair")
    features = ckpt.features()
    if features is None:
        raise CheckpointError(f"{ckpt.path}: {NO_FEATURES}")
    uri = source or features.source["uri"]
    store = TripletStore(uri)
    store.require()  # no store: StoreError, before Ray starts
    pairs = store.read_pairs()
    view = features.view(pairs)
    task = AutoencoderTask(view)
    model = ckpt.build_model()
    scale = view.value_scaler()
    columns = ("entity_id", "entity_name") if by == "entity" else ()
    ensure_ray()

    pca = None
    if by is not None:
        pca = fit_pca(
            view,
            triplet_dataset(uri, "train", val_fraction, scale=scale, columns=("entity_id",)),
            set(features.entities),
            model.config.latent_dim,
        )
    rows = triplet_dataset(uri, SPLITS[split], val_fraction, scale=scale, columns=columns)
    frame, losses = _accumulate(task, model, view, rows, by, pca)
    if by == "pair":  # groups are store pair ids until here
        cols = pairs.select(["pair_id", "concept", "unit"]).to_pydict()
        names = {p: f"{c}|{u}" for p, c, u in zip(cols["pair_id"], cols["concept"], cols["unit"])}
        frame["group"] = frame["group"].map(names)
    if frame.empty:
        raise DataError(f"{uri}: no rows in the {split!r} split to evaluate")

    out = {"rows": int(frame["n"].sum()), **_metrics(task, frame, "", losses)}
    for name, part in (("pairs_known", frame[frame.known]), ("pairs_unknown", frame[~frame.known])):
        out[name] = {"rows": int(part["n"].sum()), **(_metrics(task, part, "") if len(part) else {})}
    if by is None:
        return out
    out["by"] = by
    out["pca"] = _metrics(task, frame, "pca_")
    out["baseline"] = {
        "kind": "pca",
        "width": int(pca["components"].shape[0]),
        "fitted_rows": int(pca["rows"]),
        "fitted_on": f"training folds of the {len(features.entities)} companies of the training store",
    }
    trained = set(features.entities)
    groups = []
    for key, part in frame.groupby("group", sort=False):
        g = {"rows": int(part["n"].sum())}
        if by == "entity":
            g = {"entity": key, "name": part["name"].iloc[0], "in_training": key in trained, **g}
        else:
            g = {"pair": key, "known": bool(part["known"].iloc[0]), **g}
        g["autoencoder"] = _metrics(task, part, "")
        g["pca"] = _metrics(task, part, "pca_")
        if by == "entity":
            for name, sub in (("pairs_known", part[part.known]), ("pairs_unknown", part[~part.known])):
                g[name] = {"rows": int(sub["n"].sum()), **(_metrics(task, sub, "") if len(sub) else {})}
        groups.append(g)
    out["groups"] = sorted(groups, key=lambda g: -g["rows"])
    return out


def fit_pca(view, train_rows, entities: set[str], width: int) -> dict:
    """PCA of `width` components of the model inputs of `train_rows` whose entity is in `entities`."""
    from pipeline.models.autoencoder import pca_from_moments

    dim = view.embeddings.shape[1] + 1
    n, sum_x, sum_xx = 0.0, np.zeros(dim), np.zeros((dim, dim))
    for block in train_rows.iter_batches(batch_size=None, batch_format="numpy"):
        keep = np.isin(block["entity_id"], list(entities))
        x = view.features(block["pair_id"][keep], block["value"][keep]).astype(np.float64)
        n += len(x)
        sum_x += x.sum(axis=0)
        sum_xx += x.T @ x
    mean, components = pca_from_moments(n, sum_x, sum_xx, width)
    return {"mean": mean, "components": components, "rows": n}


@torch.no_grad()
def _accumulate(task, model, view, rows, by: str | None, pca: dict | None) -> tuple[pd.DataFrame, dict]:
    """Per (group, known, pair) sums of every row's metric stats (and the PCA's, prefixed "pca_"),
    and the overall loss sums."""
    parts, losses = [], {"loss": 0.0, "loss_embed": 0.0, "loss_value": 0.0}
    for block in rows.iter_batches(batch_size=BLOCK_ROWS, batch_format="numpy"):
        pid = block["pair_id"].astype(np.int64)
        x = view.features(pid, block["value"])
        xt = torch.from_numpy(x)
        recon, _ = model(xt)
        total, embed_part, value_part = model.reconstruction_loss(xt, recon)
        for key, value in zip(losses, (total, embed_part, value_part)):
            losses[key] += float(value) * len(x)
        df = pd.DataFrame(task.row_stats(x, recon.numpy(), pid))
        if pca is not None:
            z = (x - pca["mean"]) @ pca["components"].T
            pca_stats = task.row_stats(x, z @ pca["components"] + pca["mean"], pid)
            for k in STATS:
                df[f"pca_{k}"] = pca_stats[k]
        df["pair"] = pid
        df["known"] = view.known[pid]
        if by == "entity":
            df["group"], df["name"] = block["entity_id"], block["entity_name"]
        elif by == "pair":
            df["group"] = pid
        else:
            df["group"] = ""
        keys = ["group", "name", "known", "pair"] if by == "entity" else ["group", "known", "pair"]
        parts.append(df.groupby(keys, sort=False, dropna=False).sum().reset_index())
        if len(parts) > 64:
            parts = [pd.concat(parts).groupby(keys, sort=False, dropna=False).sum().reset_index()]
    if not parts:
        return pd.DataFrame(), losses
    keys = [c for c in ("group", "name", "known", "pair") if c in parts[0]]
    return pd.concat(parts).groupby(keys, sort=False, dropna=False).sum().reset_index(), losses


def _metrics(task, frame: pd.DataFrame, prefix: str, losses: dict | None = None) -> dict:
    """The task's metrics of the rows summed in `frame` (one line per pair or finer)."""
    sums = {k: float(frame[prefix + k].sum()) for k in STATS if k != "rel"}
    per_pair = frame.groupby("pair", sort=False)[[prefix + "rel", prefix + "n"]].sum()
    sums["pair_rel"] = per_pair[prefix + "rel"].to_numpy()
    sums["pair_n"] = per_pair[prefix + "n"].to_numpy()
    if losses is not None:
        sums.update(losses)
    return task.finalize(sums)
