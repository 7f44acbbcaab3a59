"""`tunestack tune`: Ray Tune over Ray Train runs, ASHA early stopping, the best into the registry.

Each trial is a function trainable that builds a TorchTrainer (Train V2) for its configuration
and forwards the workers' reports to Tune with TuneReportCallback. A trial's Train run lives in
the experiment folder under `trials/<trial>`; a restored trial re-creates the Train run under the
same name, and Train hands the workers its latest checkpoint, so nothing restarts from scratch.

    $TUNESTACK_STORAGE/runs/tune/<experiment>/   (or the `tune.storage` URI; s3://… included: Ray
                                                 stores through the same filesystem pipeline.storage
                                                 resolves, so --resume works from any node)
      experiment_state-*.json, …                 Ray Tune's own bookkeeping (for --resume)
      trials/<trial>/checkpoint_epoch…/          each trial's Train checkpoints (safetensors + JSON)
      tune_spec.json                             what was asked: file, overrides, resolved config
      report.md, trials.csv, curves.png          the report
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.home import expand, runs_dir
from pipeline.storage import absolute, join_uri, resolve, write_json_atomic
from pipeline.tune.space import overrides_of, param_space
from pipeline.tune.spec import TuneSpec, load_tune_spec, trial_config

SPEC_FILE = "tune_spec.json"


@dataclass
class TuneOutcome:
    experiment: str
    path: str
    best: dict | None  # the best trial's row (see _trial_rows)
    trials: list[dict]
    registered: dict | None
    report: dict


def trial_resources(spec: TuneSpec) -> dict:
    """What one trial holds: its driver's CPU plus its Train workers' CPUs (and GPUs)."""
    import ray

    t = spec.config.train
    gpu = t.use_gpu if t.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    return {
        "CPU": spec.tune.trial_cpus + t.num_workers * t.cpus_per_worker,
        "GPU": t.num_workers if gpu else 0,
    }


DATA_CPU_HEADROOM = 1.0


def max_concurrent(spec: TuneSpec) -> int:
    """Trials that fit the cluster at once (at least one), unless the file fixes it.

    One CPU is left free for Ray Data: some of its tasks (Parquet file listing, from_arrow
    metadata) ask for a whole CPU, and if trials held every CPU those tasks — and so the trials
    waiting on their data — would never start."""
    import ray

    if spec.tune.max_concurrent:
        return spec.tune.max_concurrent
    total = dict(ray.cluster_resources())
    total["CPU"] = total.get("CPU", 0) - DATA_CPU_HEADROOM
    fits = [math.floor(total.get(k, 0) / v + 1e-9) for k, v in trial_resources(spec).items() if v > 0]
    return max(1, min(fits))


def _trial_name(trial) -> str:
    """Short, stable trial names: Tune's folder and the trial's Train run share it."""
    return f"trial_{trial.trial_id}"


def _trial(
    trial_params: dict, base: dict, source: str, trials_dir: str, shared_data, teacher: str | None = None
) -> None:
    """The Tune function trainable: one Ray Train run for this trial's configuration.

    `shared_data` was prepared once by the driver while the cluster was idle: building a Ray
    Dataset (from_arrow) runs a 1-CPU metadata task, which cannot start inside a trial once the
    other trials hold the CPUs. A trial that searches a `data.*` key prepares its own. `teacher`:
    the distillation teacher's checkpoint folder as the driver found and checked it (a run name or
    registry version means nothing in a worker whose TUNESTACK_HOME differs)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train.run import build_trainer, fill_model_dims, prepare_data

    overrides = overrides_of(trial_params)
    cfg = trial_config(base, source, overrides)
    name = tune.get_context().get_trial_name()
    if any(k.startswith("data.") for k in overrides):
        data = prepare_data(cfg, features_dir=join_uri(trials_dir, name, "features"))
    else:
        data = shared_data
    cfg = fill_model_dims(cfg, data.dims)
    if cfg.distill is not None:  # the teacher fits this trial's student (its sizes may be searched)
        from pipeline.train.teacher import check_teacher

        ref = cfg.distill.teacher if "distill.teacher" in overrides or teacher is None else teacher
        teacher = check_teacher(ref, cfg.to_dict(), data.meta)
    done = _finished_run_metrics(join_uri(trials_dir, name), cfg.train.epochs)
    if done is not None:  # nothing left to train: give Tune the result a killed driver never recorded
        tune.report(done)
        return
    loop_config = {
        "config": cfg.to_dict(),
        "meta": {**data.meta, "run": name, "tune_overrides": overrides},
        "tensorboard_dir": join_uri(trials_dir, name, "tensorboard"),
        "init_from": None,
        "teacher": teacher,
        "features": data.features_dir,
    }
    build_trainer(cfg, name, trials_dir, loop_config, data, callbacks=[TuneReportCallback()]).fit()


def _finished_run_metrics(run_dir: str, epochs: int) -> dict | None:
    """The last epoch's metrics when this trial's Train run already finished, else None.

    A driver killed after a trial's last checkpoint but before Tune recorded the trial as done
    leaves it to be run again on `--resume`; its restored Train run has nothing left to train and
    would report nothing, which Tune treats as an error (the metric is missing)."""
    from pipeline.train.checkpoint import CheckpointError, load_checkpoint

    last = _checkpoint_dirs(run_dir, "checkpoint_epoch")
    try:
        meta = load_checkpoint(join_uri(run_dir, last[-1])).meta if last else None
    except CheckpointError:  # cut off mid-write: Train restores the one before and trains on
        return None
    if meta is None or not (meta.get("epoch", -1) >= epochs - 1 or meta.get("stopped")):
        return None
    return meta.get("metrics")


def run_tune(
    config_path: str,
    *,
    name: str | None = None,
    resume: bool = False,
    promote: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
) -> TuneOutcome:
    """Run (or resume, by `name`) the experiment a tune file describes; register its best checkpoint."""
    from ray import tune

    from pipeline.runtime import releasing_placement_groups
    from pipeline.train.router_eval import calibrate_checkpoint, is_router
    from pipeline.train.run import prepare_data, ray_storage
    from pipeline.tune.report import write_report

    spec = load_tune_spec(config_path, overrides)  # the whole file checked before Ray starts
    root = absolute(expand(spec.tune.storage) if spec.tune.storage else join_uri(runs_dir(), "tune"))
    if resume and not name:
        raise UserError("--resume needs --name EXPERIMENT (the folder under the tune storage)")
    exp_name = name or f"{spec.config.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    exp_path = join_uri(root, exp_name)
    storage = ray_storage(root)
    exp_ray_path = posixpath.join(storage["storage_path"], exp_name)  # what Ray calls it
    # triplets: the experiment's feature transform; a resumed one keeps the transform it started with
    features_dir = join_uri(exp_path, "features")
    features = None
    if resume and spec.config.data.source == "triplets":
        from pipeline.data.features import FeatureTransform

        features = FeatureTransform.load_if_saved(features_dir)
    shared_data = prepare_data(spec.config, features=features, features_dir=features_dir)
    teacher = None
    if spec.config.distill is not None:  # a teacher that cannot teach fails here, before any trial
        from pipeline.train.run import fill_model_dims
        from pipeline.train.teacher import check_teacher

        student = fill_model_dims(spec.config, shared_data.dims).to_dict()
        teacher = check_teacher(spec.config.distill.teacher, student, shared_data.meta)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=spec.base,
            source=spec.source,
            trials_dir=join_uri(exp_path, "trials"),
            shared_data=shared_data,
            teacher=teacher,
        ),
        {"cpu": spec.tune.trial_cpus},
    )

    if resume:
        fs = storage.get("storage_filesystem")
        if not tune.Tuner.can_restore(exp_ray_path, storage_filesystem=fs):
            raise UserError(f"no experiment to resume at {exp_path}")
        tuner = tune.Tuner.restore(
            exp_ray_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=fs,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec.search, spec.plan),
            tune_config=tune_config(spec),
            run_config=tune.RunConfig(name=exp_name, verbose=0, **storage),
        )
    with releasing_placement_groups():  # every trial has ended when it closes: leftovers only
        results = tuner.fit()
    asked = {
        "file": config_path,
        "overrides": list(overrides),
        "config": spec.config.to_dict(),
        "search": spec.search,
        "plan": spec.plan,
    }
    write_json_atomic(exp_path, SPEC_FILE, asked)
    trials = _trial_rows(results, spec, join_uri(exp_path, "trials"))
    scored = [t for t in trials if t["metric"] is not None]
    best = (max if spec.mode == "max" else min)(scored, key=lambda t: t["metric"]) if scored else None
    report = write_report(exp_path, trials, spec.metric, spec.mode)
    if best and is_router(spec.config.to_dict()):  # the threshold travels in the best checkpoint
        best["route_calibration"] = calibrate_checkpoint(
            best["checkpoint"], spec.config.route.max_lightweight_error
        )
    registered = _register(spec, best, promote, shared_data) if best else None
    return TuneOutcome(exp_name, exp_path, best, trials, registered, report)


def tune_config(spec: TuneSpec):
    """Ray Tune's TuneConfig for a spec: metric, samples, ASHA, search algorithm, concurrency."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.tune.asha is not None:
        a = spec.tune.asha
        scheduler = ASHAScheduler(
            time_attr=a.time_attr,
            max_t=a.max_t or spec.config.train.epochs,
            grace_period=a.grace_period,
            reduction_factor=a.reduction_factor,
            brackets=a.brackets,
        )
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        # Each point of tune.points_to_evaluate takes one of Tune's samples: add them, so the
        # file's num_samples draws all run.
        num_samples=spec.tune.num_samples + len(spec.tune.points_to_evaluate),
        scheduler=scheduler,
        search_alg=_search_alg(spec),
        max_concurrent_trials=max_concurrent(spec),
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )


def _search_alg(spec: TuneSpec):
    from pipeline.config import ConfigError

    points = [dict(p) for p in spec.tune.points_to_evaluate] or None
    if spec.tune.search_alg == "random":
        if not points:
            return None  # Tune's basic variant generator: random draws and grid_search
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=points)  # a point expands over the plan's grid
    if spec.plan != [{}]:
        raise ConfigError(spec.source, "tune.search_alg", "a plan or grid needs search_alg: random")
    try:
        if spec.tune.search_alg == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(points_to_evaluate=points)
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(points_to_evaluate=points)
    except (ImportError, AssertionError) as e:
        raise ConfigError(
            spec.source, "tune.search_alg", f"{spec.tune.search_alg} is not installed ({e})"
        ) from e


def _trial_rows(results, spec: TuneSpec, trials_dir: str) -> list[dict]:
    """One row per trial: overrides, learning curve, epochs run, stopped early, best checkpoint."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        history = [] if df is None or spec.metric not in df else [float(v) for v in df[spec.metric].dropna()]
        name = posixpath.basename(r.path.rstrip("/"))
        overrides = overrides_of(r.config or {})
        ckpt, value, _ = _best_checkpoint(join_uri(trials_dir, name), spec)
        # Epochs trained, from the Train run itself: Tune's history of a trial restarted by
        # --resume holds only what it reported after the restart.
        trained = max(len(history), _epochs_trained(join_uri(trials_dir, name)))
        epochs = overrides.get("train.epochs", spec.config.train.epochs)
        max_t = min(spec.tune.asha.max_t or epochs, epochs) if spec.tune.asha else epochs
        patience_stop = bool((r.metrics or {}).get("stopped"))  # the trial's own early stopping
        rows.append(
            {
                "trial": name,
                "overrides": overrides,
                "history": history,
                "epochs": trained,
                "final_metric": history[-1] if history else None,
                "metric": value,
                "checkpoint": ckpt,
                "error": str(r.error) if r.error else None,
                "stopped_early": spec.tune.asha is not None
                and 0 < trained < max_t
                and not r.error
                and not patience_stop,
            }
        )
    return rows


def _checkpoint_dirs(run_dir: str, prefix: str = "checkpoint_") -> list[str]:
    """The checkpoint folders of a Train run (a local folder or a storage URI), sorted by name."""
    return sorted(n for n, is_dir in resolve(run_dir).list_dir().items() if is_dir and n.startswith(prefix))


def _epochs_trained(run_dir: str) -> int:
    """1 + the epoch of a Train run's latest checkpoint (Train always keeps the latest), or 0."""
    names = _checkpoint_dirs(run_dir, "checkpoint_epoch")
    return max(
        (int(d[len("checkpoint_epoch") :]) + 1 for d in names if d[len("checkpoint_epoch") :].isdigit()),
        default=0,
    )


def _best_checkpoint(run_dir: str, spec: TuneSpec):
    """(path, metric, meta) of a trial's best kept checkpoint by the tune metric, or Nones.

    Ranked as `tunestack train` ranks a run's checkpoints: only those the loop marked eligible
    (with sparsity, the final fixed-support phase: a dense-phase model is not the model that
    ships; the loop gives the others a score of ±1e30), ties to the later epoch (trained longer,
    at a lower learning rate)."""
    from pipeline.train.checkpoint import CheckpointError, load_checkpoint
    from pipeline.train.loop import INELIGIBLE_SCORE

    best, best_key = (None, None, None), None
    sign = 1 if spec.mode == "max" else -1
    for d in _checkpoint_dirs(run_dir):
        try:
            meta = load_checkpoint(join_uri(run_dir, d)).meta
        except CheckpointError:
            continue
        metrics = meta.get("metrics") or {}
        value = metrics.get(spec.metric)
        if value is None or abs(metrics.get("score", 0.0)) >= INELIGIBLE_SCORE:
            continue
        key = (sign * float(value), meta.get("epoch", -1))
        if best_key is None or key > best_key:
            best, best_key = (join_uri(run_dir, d), float(value), meta), key
    return best


def _register(spec: TuneSpec, best: dict, promote: bool, data) -> dict:
    from pipeline.registry import Registry
    from pipeline.train.baseline import attach_error_baseline
    from pipeline.train.checkpoint import load_checkpoint

    if data.features is not None:  # the autoencoder's error baseline, from the training rows, once
        attach_error_baseline(best["checkpoint"], data.datasets["train"])
    ckpt = load_checkpoint(best["checkpoint"])
    metrics = {k: v for k, v in (ckpt.meta.get("metrics") or {}).items() if isinstance(v, (int, float))}
    return Registry().register(
        spec.config.name,
        best["checkpoint"],
        config=ckpt.config,
        metrics=metrics,
        source=best["checkpoint"],
        promote=promote,
    )
