"""Driver side of a training run: data → TorchTrainer → best checkpoint → test metrics.

    $TUNESTACK_HOME/runs/<run>/
      run_config.json           # what `--resume` needs: resolved config + loop config
      run.json                  # written at the end: best checkpoint, its metrics, test metrics
      checkpoint_epoch0007/     # the top-k checkpoints (pipeline.train.checkpoint format)
      tensorboard/              # event files: `tensorboard --logdir $TUNESTACK_HOME/runs`
      checkpoint_manager_snapshot.json   # Ray Train's own bookkeeping (JSON)

Re-running a run name makes Ray Train restore its checkpoint manager and hand the latest
checkpoint to the workers; that is how `resume` continues an interrupted run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config, ConfigError, config_from_dict
from pipeline.home import default_store_uri, expand, runs_dir
from pipeline.train.checkpoint import RUN_FILE, load_checkpoint, resolve_checkpoint

RUN_CONFIG_FILE = "run_config.json"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it committed


# A local Ray for one machine. The dashboard stays on 127.0.0.1, and it must run: Ray Train's
# PlacementGroupCleaner asks the state API (served by the dashboard) whether a run's controller
# is alive, and without it the worker group of every finished Tune trial keeps its CPUs.
LOCAL_RAY = dict(
    num_cpus=os.cpu_count() or 2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False
)
# Ray Train's controller takes a worker's epoch report only when it polls (every 2 s by default)
# and a worker can be at most one report ahead, so epochs shorter than the poll (a router on 100k
# rows trains one in well under a second) waited for it (bench/training.py). A local cluster's
# processes, the controller included, inherit this from the driver that starts it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # "token": every Ray API (GCS, dashboard, jobs) needs the cluster's token


def ensure_ray():
    """Connect to RAY_ADDRESS when set, else start a local cluster sized to this machine."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            # Token auth: Ray >= 2.59 turns it on for a new local cluster itself (RAY_AUTH_MODE unset:
            # it sets the variable and reloads its cached config; an explicit value is respected).
            # Setting the variable here instead comes after `import ray` cached "disabled": the
            # driver then cannot authenticate to the GCS it just started ("Failed to start GCS").
            ray.init(**LOCAL_RAY)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


# ---------------------------------------------------------------------------------------------
# Data preparation (driver)


@dataclass
class PreparedData:
    datasets: dict  # {"train": Dataset, "val": Dataset}
    test: object  # a sequences Split, or None (triplets: the val split is the evaluation split)
    meta: dict  # normalization, store, fingerprint: saved in every checkpoint
    dims: dict  # model options implied by the data (input_size / num_classes / input_dim)


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


def prepare_data(cfg: Config, normalization: dict | None = None) -> PreparedData:
    """Ray Datasets for the config's data section, and what the checkpoint must remember."""
    d = cfg.data
    if d.source == "triplets":
        from pipeline.data.triplets import triplet_dataset
        from pipeline.store.layout import TripletStore

        uri = expand(d.path) if d.path else default_store_uri()
        uri = uri if "://" in uri else os.path.abspath(uri)  # workers run in another directory
        store = TripletStore(uri)
        manifest = store.require()
        datasets = {
            "train": triplet_dataset(uri, "train", d.val_fraction),
            "val": triplet_dataset(uri, "val", d.val_fraction),
        }
        meta = {
            "normalization": None,  # values are scaled per pair by the store's scalers
            "store": {
                "uri": uri,
                "version": manifest["version"],
                "data_dir": manifest["data_dir"],
                "scalers": f"{manifest['data_dir']}/pairs.parquet",
            },
            "fingerprint": triplet_fingerprint(store, d.val_fraction),
        }
        return PreparedData(datasets, None, meta, {"input_dim": store.embeddings().shape[1] + 1})

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
    meta = {
        "normalization": data.normalization.to_dict() if data.normalization else None,
        "store": None,
        "fingerprint": {"kind": d.source, **data.fingerprint},
    }
    return PreparedData(
        {"train": to_dataset(data.train), "val": to_dataset(val)},
        data.test,
        meta,
        {"input_size": data.input_size, "num_classes": data.num_classes},
    )


def fill_model_dims(cfg: Config, dims: dict) -> Config:
    """Set the model options the data implies; an explicit value that disagrees is an error."""
    params = dict(cfg.model.params)
    for key, value in dims.items():
        if key in params and key != "num_classes" and params[key] != value:
            raise ConfigError("<data>", f"model.{key}", f"config says {params[key]}, the data has {value}")
        if key == "num_classes" and params.get(key, 0) >= value:
            continue  # a test split may lack the top class; more classes than seen is fine
        params[key] = value
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, params=params))


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    run: str
    path: str
    best_checkpoint: str | None
    best_metrics: dict
    test_metrics: dict


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.train.use_gpu is not None:
        return cfg.train.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def train(cfg: Config, *, run_name: str | None = None, init_from: str | None = None) -> TrainResult:
    """Train once with `cfg` (no search). `init_from`: a checkpoint/run to fine-tune from."""
    ensure_ray()
    normalization = None
    if init_from:
        parent = load_checkpoint(init_from)
        init_from = parent.path
        parent_model = dict(parent.config["model"])
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, arch=parent_model.pop("arch"), params=parent_model)
        )
        normalization = parent.meta.get("normalization")  # the model was trained on these inputs
    teacher = resolve_checkpoint(cfg.distill.teacher) if cfg.distill else None
    data = prepare_data(cfg, normalization)
    cfg = fill_model_dims(cfg, data.dims)
    cfg.model_config()  # validate the completed model config before any worker starts

    name = run_name or f"{cfg.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_path = os.path.abspath(os.path.join(runs_dir(), name))
    os.makedirs(run_path, exist_ok=True)
    loop_config = {
        "config": cfg.to_dict(),
        "meta": {**data.meta, "run": name},
        "tensorboard_dir": os.path.join(run_path, "tensorboard"),
        "init_from": init_from,
        "teacher": teacher,
    }
    _write_json(os.path.join(run_path, RUN_CONFIG_FILE), loop_config)
    return _fit(cfg, name, run_path, loop_config, data)


def resume(run: str) -> TrainResult:
    """Continue an interrupted run (a name under runs_dir() or a run folder) from its latest checkpoint."""
    run_path = os.path.abspath(run if os.path.isdir(run) else os.path.join(runs_dir(), run))
    config_file = os.path.join(run_path, RUN_CONFIG_FILE)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{run}: no {RUN_CONFIG_FILE} (not a tunestack run folder)")
    with open(config_file) as f:
        loop_config = json.load(f)
    dropped = drop_partial_checkpoints(run_path)
    if dropped:
        print(
            f"tunestack: removed checkpoint folder(s) Ray Train never committed: {', '.join(dropped)}",
            file=sys.stderr,
        )
    ensure_ray()
    cfg = config_from_dict(loop_config["config"], config_file)
    data = prepare_data(cfg, loop_config["meta"].get("normalization"))
    if not same_training_data(loop_config["meta"]["fingerprint"], data.meta["fingerprint"]):
        raise ValueError(
            f"{run}: the training data changed since the run started "
            f"({loop_config['meta']['fingerprint']} → {data.meta['fingerprint']})"
        )
    return _fit(cfg, os.path.basename(os.path.normpath(run_path)), run_path, loop_config, data)


def drop_partial_checkpoints(run_path: str) -> list[str]:
    """Remove the checkpoint folders of a run that Ray Train never committed and that do not load:
    uploads cut short (a killed driver, a full disk). Returns their names. Without Ray's snapshot
    nothing is touched; a complete but uncommitted folder is left (the resumed run rewrites it)."""
    try:
        with open(os.path.join(run_path, SNAPSHOT_FILE)) as f:
            snapshot = json.load(f)
    except (OSError, ValueError):
        return []
    results = list(snapshot.get("checkpoint_results") or []) + [
        snapshot.get("latest_checkpoint_result") or {}
    ]
    committed = {r.get("checkpoint_dir_name") for r in results if isinstance(r, dict)}
    dropped = []
    for name in sorted(os.listdir(run_path)):
        path = os.path.join(run_path, name)
        if not name.startswith("checkpoint_") or not os.path.isdir(path) or name in committed:
            continue
        try:
            load_checkpoint(path)
        except Exception:  # any way of being unreadable: CheckpointError, a safetensors error, OSError
            shutil.rmtree(path)
            dropped.append(name)
    return dropped


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
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_top_k, checkpoint_score_attribute="score", checkpoint_score_order=t.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=data.datasets,
    )


def job_placement_groups() -> set[str]:
    """Ids of the placement groups this Ray job holds (a group id ends with its job id)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return {
        pg
        for pg, t in ray.util.placement_group_table().items()
        if t["state"] == "CREATED" and pg.endswith(job)
    }


def release_placement_groups(ids: set[str]) -> None:
    """Remove placement groups that finished Train runs left behind.

    With Ray 2.60 a finished run's worker group can keep its placement group (the family of Ray
    issue #54305); on a small cluster the next run, Tune trial or Serve replica in the same job
    then waits for CPUs forever. Call only once the runs that created `ids` have ended."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg in ids:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg))))


def _fit(cfg: Config, name: str, run_path: str, loop_config: dict, data: PreparedData) -> TrainResult:
    t = cfg.train
    trainer = build_trainer(cfg, name, os.path.dirname(run_path), loop_config, data)
    before = job_placement_groups()
    try:
        result = trainer.fit()
    finally:
        release_placement_groups(job_placement_groups() - before)
    best = _best_checkpoint(result, t.mode)
    best_path = best[0].path if best else None
    best_metrics = best[1] if best else {}
    test_metrics = evaluate_checkpoint(best_path, data=data) if best_path else {}
    _write_json(
        os.path.join(run_path, RUN_FILE),
        {
            "run": name,
            "best_checkpoint": best_path,
            "best_metrics": best_metrics,
            "test_metrics": test_metrics,
            "config": loop_config["config"],
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return TrainResult(name, run_path, best_path, best_metrics, test_metrics)


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
) -> dict:
    """Metrics of a checkpoint on a data source (default: the one it was trained on).

    Sequences/routing: the `split` ("test", "val", "train" or "all") of `source`, split and
    normalized exactly as in training (the checkpoint's seed, fractions and z-score). Triplet
    store: its validation folds (`split` "val"/"test") or every row ("all")."""
    import torch

    from pipeline.train.tasks import TASKS, accumulate

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.config, os.path.join(ckpt.path, "checkpoint.json"))
    model = ckpt.build_model()
    if cfg.model.arch == "autoencoder":
        from pipeline.data.triplets import triplet_dataset
        from pipeline.store.layout import TripletStore

        ensure_ray()
        uri = (
            source
            or (ckpt.meta.get("store") or {}).get("uri")
            or (expand(cfg.data.path) if cfg.data.path else default_store_uri())
        )
        task = TASKS["autoencoder"].for_store(TripletStore(uri))
        ds = triplet_dataset(uri, None if split == "all" else "val", cfg.data.val_fraction)
        batches = task.batches(ds, batch_size, "cpu")
        sums = accumulate(task, model, batches)
        return {"rows": int(sums.get("n", 0)), **task.finalize(sums)}

    task = TASKS[cfg.model.arch]()
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
            raise ValueError(f"{source}: no {split!r} split (val_fraction is 0)")
        x = np.concatenate([p.x for p in parts])
        y = np.concatenate([p.y for p in parts])
    batches = (
        {"x": torch.from_numpy(x[i : i + batch_size]), "y": torch.from_numpy(y[i : i + batch_size])}
        for i in range(0, len(y), batch_size)
    )
    return {"rows": int(len(y)), **task.finalize(accumulate(task, model, batches))}


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)
