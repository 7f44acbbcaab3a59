"""Driver side of a training run: data → TorchTrainer → best checkpoint → test metrics.

    RUNS/<run>/       RUNS = $TUNESTACK_STORAGE/runs: a local folder or a storage URI (s3://…)
      run_config.json           # what `--resume` needs: resolved config + loop config
      features/                 # triplets: the model's feature transform (pipeline.data.features)
      run.json                  # written at the end: best checkpoint, its metrics, test metrics
                                # (routers: the threshold calibrated on the validation split, also
                                # stored in the best checkpoint; pipeline.train.router_eval)
      checkpoint_epoch0007/     # the top-k checkpoints (pipeline.train.checkpoint format)
      tensorboard/              # event files: `tensorboard --logdir $TUNESTACK_HOME/runs`
      checkpoint_manager_snapshot.json   # Ray Train's own bookkeeping (JSON)

Re-running a run name makes Ray Train restore its checkpoint manager and hand the latest
checkpoint to the workers; that is how `resume` continues an interrupted run. Runs on a storage
URI go through Ray's own `storage_filesystem` and pipeline.storage, so `--resume` and `--from`
work from any node.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import sys
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config, ConfigError, config_from_dict
from pipeline.errors import DataError
from pipeline.home import default_store_uri, expand, runs_dir
from pipeline.runtime import ensure_ray, releasing_placement_groups
from pipeline.storage import absolute, is_uri, join_uri, resolve, write_json_atomic
from pipeline.train.checkpoint import RUN_FILE, CheckpointError, load_checkpoint
from pipeline.train.router_eval import calibrate_checkpoint, is_router

RUN_CONFIG_FILE = "run_config.json"
FEATURES_DIR = "features"  # the run's feature transform (triplets), what its workers load

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it committed


# ---------------------------------------------------------------------------------------------
# Data preparation (driver)


@dataclass
class PreparedData:
    datasets: dict  # {"train": Dataset, "val": Dataset}
    test: object  # a sequences Split, or None (triplets: the val split is the evaluation split)
    meta: dict  # normalization, store, fingerprint: saved in every checkpoint
    dims: dict  # model options implied by the data (input_size / num_classes / input_dim)
    features: object = None  # triplets: the model's FeatureTransform (pipeline.data.features)
    features_dir: str | None = None  # where it is saved for the workers (loop_config["features"])


FINGERPRINT_KEYS = ("kind", "version", "sha256", "manifest_sha256")


def triplet_fingerprint(store, val_fraction: float) -> dict:
    """What identifies a triplet store's training data: its live version and manifest digest."""
    manifest = store.require()
    return {
        "kind": "triplet_store",
        "uri": store.uri,
        "version": manifest["version"],
        "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
        "val_fraction": val_fraction,
    }


def same_training_data(saved: dict, now: dict) -> bool:
    """Whether two data fingerprints name the same data: the same kind and the same digest (a
    sequences file's `sha256`; a triplet store's `version` and `manifest_sha256`)."""
    return all(saved.get(k) == now.get(k) for k in FINGERPRINT_KEYS)


def prepare_data(
    cfg: Config,
    normalization: dict | None = None,
    *,
    features=None,
    parent_features=None,
    features_dir: str | None = None,
) -> PreparedData:
    """Ray Datasets for the config's data section, and what the checkpoint must remember.

    Triplets: the model's feature transform is `features` when given (a resumed run's), else the
    store's (`parent_features` — a fine-tuned model's parent — extended with the store's new pairs),
    saved in `features_dir`; rows are scaled as it scales them."""
    d = cfg.data
    if d.source == "triplets":
        from pipeline.data.features import FeatureTransform
        from pipeline.data.triplets import triplet_dataset
        from pipeline.store.layout import TripletStore

        uri = expand(d.path) if d.path else default_store_uri()
        uri = absolute(uri)  # workers run in another directory
        store = TripletStore(uri)
        manifest = store.require()  # no store: StoreError, before Ray starts
        fresh = features is None
        if fresh:
            features = (
                parent_features.extend(store) if parent_features else FeatureTransform.from_store(store)
            )
        dims = {"input_dim": features.embed_dim + 1}
        fill_model_dims(cfg, dims).family_config(f"data {uri}")  # a model that cannot take this data
        if fresh and features_dir:  # the data and the model checked: only now write anything
            features.save(features_dir)
        # The store's scaled_value column when it is what the model's scalers give (always, for a
        # transform just taken from the store); else the raw values, scaled by the model's scalers.
        scale = None if features.store_scaling_matches(store) else features.view().value_scaler()
        ensure_ray()
        datasets = {
            "train": triplet_dataset(uri, "train", d.val_fraction, scale=scale),
            "val": triplet_dataset(uri, "val", d.val_fraction, scale=scale),
        }
        meta = {
            "normalization": None,  # values are scaled per pair by the model's feature transform
            "store": {
                "uri": uri,
                "version": manifest["version"],
                "data_dir": manifest["data_dir"],
                "feature_version": features.source.get("feature_version"),
            },
            "fingerprint": triplet_fingerprint(store, d.val_fraction),
        }
        return PreparedData(datasets, None, meta, dims, features, features_dir)

    from pipeline.data.sequences import Normalization, load_sequence_data, to_dataset

    data = load_sequence_data(
        expand(d.path),
        test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
        seed=cfg.train.seed,
        normalize=d.normalize,
        log1p=d.log1p,
        normalization=Normalization.from_dict(normalization),
    )
    val = data.val if data.val is not None else data.test  # val_fraction 0: the test split stops early
    dims = {"input_size": data.input_size, "num_classes": data.num_classes}
    fill_model_dims(cfg, dims).family_config(f"data {d.path}")  # a model that cannot take this data
    ensure_ray()  # the data loaded and checked: only now start (or join) Ray
    meta = {
        "normalization": data.normalization.to_dict() if data.normalization else None,
        "store": None,
        "fingerprint": {"kind": d.source, **data.fingerprint},
        # a model answers only sequence lengths it was trained on (a single-step FastGRNN's U is untrained)
        "sequence_lengths": [1] if data.train.x.ndim == 2 else [int(data.train.x.shape[1])],
    }
    return PreparedData(
        {"train": to_dataset(data.train), "val": to_dataset(val)},
        data.test,
        meta,
        dims,
    )


def fill_model_dims(cfg: Config, dims: dict) -> Config:
    """Set the model options the data implies; an explicit value that disagrees is an error."""
    params = dict(cfg.model.params)
    for key, value in dims.items():
        if key in params and key != "num_classes" and params[key] != value:
            where = f"data {cfg.data.path or default_store_uri()}"
            raise ConfigError(
                where,
                f"model.{key}",
                f"the config says {params[key]}, the data has {value} (leave model.{key} out to take the data's)",
            )
        if key == "num_classes" and params.get(key, 0) >= value:
            continue  # a test split may lack the top class; more classes than seen is fine
        params[key] = value
    return cfg.with_model(params=params)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    run: str
    path: str
    best_checkpoint: str | None
    best_metrics: dict
    test_metrics: dict
    route_calibration: dict | None = None  # routers: the threshold stored in the best checkpoint


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.train.use_gpu is not None:
        return cfg.train.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def train(cfg: Config, *, run_name: str | None = None, init_from: str | None = None) -> TrainResult:
    """Train once with `cfg` (no search). `init_from`: a checkpoint/run to fine-tune from.
    Everything that can be checked locally (the checkpoint, the teacher, the data) is, before
    prepare_data starts Ray."""
    normalization = parent_features = None
    if init_from:
        parent = load_checkpoint(init_from)
        init_from = parent.path
        parent_model = dict(parent.config["model"])
        cfg = cfg.with_model(arch=parent_model.pop("arch"), params=parent_model)
        normalization = parent.meta.get("normalization")  # the model was trained on these inputs
        parent_features = parent.features()  # and the autoencoder on these features
        if cfg.data.source == "triplets" and parent_features is None:
            from pipeline.train.evaluate import NO_FEATURES

            raise CheckpointError(f"{parent.path}: {NO_FEATURES}")
    name = run_name or f"{cfg.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_path = join_uri(absolute(runs_dir()), name)
    data = prepare_data(
        cfg, normalization, parent_features=parent_features, features_dir=join_uri(run_path, FEATURES_DIR)
    )
    cfg = fill_model_dims(cfg, data.dims)
    cfg.family_config("<config + data>")  # the completed model config, before any worker starts
    teacher = None
    if cfg.distill:  # found (registry versions sha256-checked) and size-checked before training
        from pipeline.train.teacher import check_teacher

        teacher = check_teacher(cfg.distill.teacher, cfg.to_dict(), data.meta)

    loop_config = {
        "config": cfg.to_dict(),
        "meta": {**data.meta, "run": name},
        "tensorboard_dir": join_uri(run_path, "tensorboard"),
        "init_from": init_from,
        "teacher": teacher,
        "features": data.features_dir,
    }
    write_json_atomic(run_path, RUN_CONFIG_FILE, loop_config)
    return _fit(cfg, name, run_path, loop_config, data)


def resume(run: str) -> TrainResult:
    """Continue an interrupted run (a name under runs_dir(), a run folder or its URI) from its
    latest checkpoint."""
    run_path = absolute(run if resolve(run).is_file(RUN_CONFIG_FILE) else join_uri(runs_dir(), run))
    loc = resolve(run_path)
    if not loc.is_file(RUN_CONFIG_FILE):
        raise CheckpointError(f"{run}: no {RUN_CONFIG_FILE} (not a tunestack run folder)")
    config_file = loc.uri_of(RUN_CONFIG_FILE)
    loop_config = json.loads(loc.read_bytes(RUN_CONFIG_FILE))
    dropped = drop_partial_checkpoints(run_path)
    if dropped:
        print(
            f"tunestack: removed checkpoint folder(s) Ray Train never committed: {', '.join(dropped)}",
            file=sys.stderr,
        )
    cfg = config_from_dict(loop_config["config"], config_file)
    features = None
    if loop_config.get("features"):  # the transform the run started with, not the store's of today
        from pipeline.data.features import FeatureTransform

        features = FeatureTransform.load(loop_config["features"])
    data = prepare_data(cfg, loop_config["meta"].get("normalization"), features=features)
    if not same_training_data(loop_config["meta"]["fingerprint"], data.meta["fingerprint"]):
        raise DataError(
            f"{run}: the training data changed since the run started "
            f"({loop_config['meta']['fingerprint']} → {data.meta['fingerprint']})"
        )
    return _fit(cfg, posixpath.basename(loc.path), run_path, loop_config, data)


def drop_partial_checkpoints(run_path: str) -> list[str]:
    """Remove the checkpoint folders of a run that Ray Train never committed and that do not load:
    uploads cut short (a killed driver, a full disk). Returns their names. Without Ray's snapshot
    nothing is touched; a complete but uncommitted folder is left (the resumed run rewrites it).
    A killed driver's Ray actors can outlive it for a moment and still prune the run's folders:
    one that vanishes while being looked at is theirs to remove, not reported here."""
    loc = resolve(run_path)
    try:
        snapshot = json.loads(loc.read_bytes(SNAPSHOT_FILE))
    except (OSError, ValueError):
        return []
    results = list(snapshot.get("checkpoint_results") or []) + [
        snapshot.get("latest_checkpoint_result") or {}
    ]
    committed = {r.get("checkpoint_dir_name") for r in results if isinstance(r, dict)}
    dropped = []
    for name, is_dir in sorted(loc.list_dir().items()):
        if not name.startswith("checkpoint_") or not is_dir or name in committed:
            continue
        try:
            load_checkpoint(loc.uri_of(name))
        except Exception:  # any way of being unreadable: CheckpointError, a safetensors error, OSError
            if loc.delete_dir(name):
                dropped.append(name)
    return dropped


def ray_storage(location: str) -> dict:
    """Ray's `storage_path` (+ `storage_filesystem` for a URI) for a runs location: Ray writes and
    restores checkpoints through the same filesystem pipeline.storage resolves."""
    if not is_uri(location):
        return {"storage_path": os.path.abspath(location)}
    loc = resolve(location)
    return {"storage_path": loc.path, "storage_filesystem": loc.fs}


def build_trainer(
    cfg: Config, name: str, storage_path: str, loop_config: dict, data: PreparedData, callbacks=()
):
    """The TorchTrainer of one run: `storage_path/name` holds its checkpoints. Re-creating it with
    the same name restores the run's checkpoint manager, so the workers start from its latest
    checkpoint. Tune trials build theirs here too, with TuneReportCallback among `callbacks`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.train.loop import train_loop_per_worker

    t = cfg.train
    use_gpu = _use_gpu(cfg)
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **ray_storage(storage_path),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_top_k, checkpoint_score_attribute="score", checkpoint_score_order=t.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=data.datasets,
        # One worker gets every dataset whole: splitting would only add a SplitCoordinator actor
        # (a process to start) per dataset to every run and trial, and split nothing.
        dataset_config=None if t.num_workers > 1 else ray.train.DataConfig(datasets_to_split=[]),
    )


def _fit(cfg: Config, name: str, run_path: str, loop_config: dict, data: PreparedData) -> TrainResult:
    t = cfg.train
    trainer = build_trainer(cfg, name, parent_of(run_path), loop_config, data)
    with releasing_placement_groups():
        result = trainer.fit()
    best = _best_checkpoint(result, t.mode)
    # Ray names a checkpoint by its path inside the storage filesystem; keep the URI form
    best_path = join_uri(run_path, posixpath.basename(best[0].path.rstrip("/"))) if best else None
    best_metrics = best[1] if best else {}
    if best_path and data.features is not None:
        from pipeline.train.baseline import attach_error_baseline

        attach_error_baseline(best_path, data.datasets["train"])
    test_metrics = evaluate_checkpoint(best_path, data=data) if best_path else {}
    calibration = None
    if best_path and is_router(loop_config["config"]):
        calibration = calibrate_checkpoint(best_path, cfg.route.max_lightweight_error)
    write_json_atomic(
        run_path,
        RUN_FILE,
        {
            "run": name,
            "best_checkpoint": best_path,
            "best_metrics": best_metrics,
            "test_metrics": test_metrics,
            "route_calibration": calibration,
            "config": loop_config["config"],
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return TrainResult(name, run_path, best_path, best_metrics, test_metrics, calibration)


def _best_checkpoint(result, mode: str):
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if "score" in m]
    if not ranked:
        return (result.checkpoint, result.metrics) if result.checkpoint else None
    # ties go to the later epoch (trained longer, at a lower learning rate)
    sign = 1 if mode == "max" else -1
    return max(ranked, key=lambda cm: (sign * cm[1]["score"], cm[1].get("epoch", 0)))


# ---------------------------------------------------------------------------------------------
# Evaluation (driver; no Train workers)


def evaluate_checkpoint(
    checkpoint: str,
    source: str | None = None,
    split: str = "test",
    data: PreparedData | None = None,
    batch_size: int = 4096,
    by: str | None = None,
) -> dict:
    """Metrics of a checkpoint on a data source (default: the one it was trained on).

    Sequences/routing: the `split` ("test", "val", "train" or "all") of `source`, split and
    normalized exactly as in training (the checkpoint's seed, fractions and z-score). Triplet
    store: its validation folds (`split` "val"/"test"), training folds or every row ("all"),
    through the model's own feature transform (pipeline.train.evaluate; `by`: "entity" or "pair")."""
    import torch

    from pipeline.models import family
    from pipeline.train.tasks import accumulate

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.config, join_uri(ckpt.path, "checkpoint.json"))
    if cfg.data.source == "triplets":  # read through the model's own feature transform
        from pipeline.train.evaluate import evaluate_autoencoder

        return evaluate_autoencoder(ckpt, source, split, by, cfg.data.val_fraction)
    if by is not None:
        raise DataError(f"--by {by}: only for a model of the triplet store (the autoencoder)")
    model = ckpt.build_model()
    task = family(cfg.model.arch).task_class()()
    if data is not None and source is None and split == "test":
        x, y = data.test.x, data.test.y
    else:
        from pipeline.data.sequences import Normalization, load_sequence_data

        seq = load_sequence_data(
            source or expand(cfg.data.path),
            test_fraction=cfg.data.test_fraction,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.train.seed,
            normalization=Normalization.from_dict(ckpt.meta.get("normalization")),
            normalize=False,
        )
        parts = {
            "test": [seq.test],
            "val": [seq.val],
            "train": [seq.train],
            "all": [seq.train, seq.val, seq.test],
        }[split]
        parts = [p for p in parts if p is not None]
        if not parts:
            raise DataError(f"{source}: no {split!r} split (val_fraction is 0)")
        x = np.concatenate([p.x for p in parts])
        y = np.concatenate([p.y for p in parts])
    batches = (
        {"x": torch.from_numpy(x[i : i + batch_size]), "y": torch.from_numpy(y[i : i + batch_size])}
        for i in range(0, len(y), batch_size)
    )
    return {"rows": int(len(y)), **task.finalize(accumulate(task, model, batches))}


def parent_of(location: str) -> str:
    """The folder (or URI) holding `location`."""
    if not is_uri(location):
        return os.path.dirname(os.path.abspath(location))
    head, _, tail = location.partition("?")
    return head.rstrip("/").rsplit("/", 1)[0] + (f"?{tail}" if tail else "")
