"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`).

Each worker: builds the model (fine-tune weights or the latest checkpoint loaded), wraps it with
`prepare_model` (device placement; DDP when there is more than one worker), streams its shard of
the "train" and "val" datasets in the task's batches (`task.batches`: the triplet store's blocks
are cut into batches in the worker; shards of sources read whole on the driver are loaded into
tensors once and reshuffled every epoch), and every epoch reports metrics with a
checkpoint (written by rank 0). On a GPU worker it trains with AMP; on CPU in float32 — the same
code either way. A worker group restarted after a failure finds the latest checkpoint through
`ray.train.get_checkpoint()` and continues from the epoch after it.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import torch

from pipeline.config import Config, config_from_dict
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint, unwrap
from pipeline.train.tasks import TASKS

INELIGIBLE_SCORE = 1e30  # |score| of a checkpoint that may not be a run's best (e.g. a dense phase)
# Sources the driver reads whole (routing logs, .npz/Parquet sequences): each worker loads its
# shard into tensors once and reshuffles them every epoch. Streaming them through Ray Data every
# epoch costs about a millisecond a batch on a CPU worker — as long as a small model's whole
# step (bench/training.py). The triplet store streams as before.
IN_MEMORY_SOURCES = ("routing", "sequences")


def shard_tensors(shard, device, **iter_args) -> dict:
    """Every row of a Ray Data shard as one tensor per column on `device` (one pass)."""
    parts = list(shard.iter_torch_batches(batch_size=65_536, device=device, **iter_args))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def tensor_batches(tensors: dict, batch_size: int, seed: int | None = None):
    """Batches of the rows of `tensors` ({column: tensor}), in a seeded random order (None: in order)."""
    if not tensors:
        return
    n = len(next(iter(tensors.values())))
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if seed is not None
        else torch.arange(n)
    )
    for idx in order.split(batch_size):
        yield {k: v[idx.to(v.device)] for k, v in tensors.items()}


def make_optimizer(cfg: Config, params):
    o = cfg.optim
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


def make_scheduler(cfg: Config, optimizer):
    """Stepped once per epoch (plateau: with the monitored metric). None for "none"."""
    s = cfg.schedule
    if s.name == "cosine":  # stepped per batch (batch_step) as well as per epoch
        from pipeline.train.cosine import CosineAnnealing

        return CosineAnnealing(optimizer, cfg.train.epochs, s.eta_min)
    if s.name == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s.t0, T_mult=s.t_mult, eta_min=s.eta_min
        )
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.train.mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
        )
    return None


def load_features(loop_config: dict):
    """The run's feature transform (triplets), as the driver saved it; None for other sources."""
    if not loop_config.get("features"):
        return None
    from pipeline.data.features import FeatureTransform

    return FeatureTransform.load(loop_config["features"])


def make_task(cfg: Config, loop_config: dict, device, features=None):
    """The task of the config's arch, with what it needs (teacher model, the feature transform)."""
    if cfg.model.arch == "autoencoder":
        return TASKS["autoencoder"].for_features(features)
    teacher = None
    if cfg.distill is not None:
        teacher = load_checkpoint(loop_config["teacher"]).build_model().to(device).eval()
    return TASKS[cfg.model.arch](distill=cfg.distill, teacher=teacher)


def _all_reduce_sums(sums: dict, device, world_size: int) -> dict:
    """Add up every worker's metric sums (one flat float64 all_reduce)."""
    if world_size == 1:
        return sums
    import torch.distributed as dist

    keys = sorted(sums)
    arrays = [np.atleast_1d(np.asarray(sums[k], dtype=np.float64)) for k in keys]
    flat = torch.from_numpy(np.concatenate(arrays)).to(device)
    dist.all_reduce(flat)
    flat = flat.cpu().numpy()
    out, offset = {}, 0
    for k, a in zip(keys, arrays):
        out[k] = flat[offset : offset + a.size].reshape(np.shape(sums[k]))
        offset += a.size
    return out


class EarlyStopping:
    """Tracks the best monitored value; `bad_epochs` counts epochs since it last improved."""

    def __init__(self, mode: str, patience: int, min_delta: float, state: dict | None = None):
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        state = state or {}
        self.best, self.bad_epochs = state.get("best"), state.get("bad_epochs", 0)

    def update(self, value: float) -> bool:
        """Record this epoch's value; True when training should stop."""
        if self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        ):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. loop_config: {"config": resolved config dict, "meta": checkpoint
    metadata (normalization, store, fingerprint, run), "tensorboard_dir", "init_from", "teacher"}."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"], source="<resolved config>")
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_amp = t.amp and device.type == "cuda"
    torch.manual_seed(t.seed)

    features = load_features(loop_config)  # the model's own transform, whatever the store holds now
    task = make_task(cfg, loop_config, device, features)
    model = cfg_model(cfg)
    start_epoch, attempts = 0, []
    early = EarlyStopping(t.mode, t.patience, t.min_delta)
    loaded = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or `tunestack train --resume`
        with checkpoint.as_directory() as d:
            loaded = load_checkpoint(d)
        model.load_state_dict(loaded.weights)
        start_epoch = loaded.meta["epoch"] + 1
        attempts = list(loaded.meta.get("attempts", []))
        early = EarlyStopping(t.mode, t.patience, t.min_delta, loaded.meta.get("early_stopping"))
        if loaded.meta.get("stopped"):
            return
    elif loop_config.get("init_from"):  # fine-tuning: weights only, fresh optimizer
        model.load_state_dict(load_checkpoint(loop_config["init_from"]).weights)
    elif hasattr(model, "init_linear_from_pca") and model.config.init == "pca":  # autoencoder: start at PCA
        from pipeline.train.pca_init import init_from_pca

        init_from_pca(
            model,
            task.batches(ray.train.get_dataset_shard("train"), t.eval_batch_size, "cpu"),
            device,
            world_size,
        )
    # node: where this attempt ran (a restarted group, or a trial on a multi-node cluster, may move)
    attempts.append(
        {
            "start_epoch": start_epoch,
            "world_size": world_size,
            "device": device.type,
            "node": ray.get_runtime_context().get_node_id(),
        }
    )

    model = ray.train.torch.prepare_model(model)  # to device; DDP when world_size > 1
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if loaded is not None:
        if loaded.optimizer_state() is not None:
            optimizer.load_state_dict(loaded.optimizer_state())
        if scheduler is not None and loaded.scheduler_state() is not None:
            scheduler.load_state_dict(loaded.scheduler_state())
        if use_amp and loaded.grad_scaler_state() is not None:
            grad_scaler.load_state_dict(loaded.grad_scaler_state())

    sparsity = None
    if cfg.uses_sparsity:
        from pipeline.models.fastgrnn import SparsitySchedule

        sparsity = SparsitySchedule(t.epochs, cfg.sparsity.dense_frac, cfg.sparsity.iht_frac)
    final_phase = sparsity.phase(t.epochs - 1) if sparsity else "dense"

    writer = tensorboard = None
    if rank == 0 and loop_config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = TensorBoardDir(loop_config["tensorboard_dir"])
        writer = SummaryWriter(tensorboard.local, purge_step=start_epoch)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    in_memory, cached = cfg.data.source in IN_MEMORY_SOURCES, {}
    for epoch in range(start_epoch, t.epochs):
        phase = sparsity.phase(epoch) if sparsity else "dense"
        epoch_start, epoch_started_at = time.perf_counter(), time.time()
        model.train()
        train_sums = {"n": 0.0, "loss": 0.0}
        if in_memory:
            if not cached:  # the first epoch of this worker pays the one pass over its shards
                cached = {
                    "train": shard_tensors(train_shard, device, **task.iter_args),
                    "val": shard_tensors(val_shard, device, **task.iter_args),
                }
            train_batches = tensor_batches(cached["train"], t.batch_size, seed=t.seed * 100_003 + epoch)
        else:
            train_batches = task.batches(train_shard, t.batch_size, device, seed=t.seed * 100_003 + epoch)
        for i, batch in enumerate(train_batches):
            if hasattr(scheduler, "batch_step"):
                scheduler.batch_step(epoch, i)
            with torch.autocast(device.type, enabled=use_amp):
                loss, _ = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            grad_scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                grad_scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            grad_scaler.step(optimizer)
            grad_scaler.update()
            if phase != "dense":
                from pipeline.models.fastgrnn import apply_sparsity

                apply_sparsity(unwrap(model), phase)
            n = len(next(iter(batch.values())))
            train_sums["n"] += n
            train_sums["loss"] += loss.item() * n

        train_seconds = time.perf_counter() - epoch_start  # this worker's pass over its shard

        model.eval()
        val_sums: dict = {}
        with torch.autocast(device.type, enabled=use_amp):
            val_batches = (
                tensor_batches(cached["val"], t.eval_batch_size)
                if in_memory
                else task.batches(val_shard, t.eval_batch_size, device)
            )
            for batch in val_batches:
                for k, v in task.eval_sums(model, batch).items():
                    val_sums[k] = val_sums.get(k, 0.0) + np.asarray(v, dtype=np.float64)
        val_sums = _all_reduce_sums(val_sums, device, world_size)
        train_sums = _all_reduce_sums(train_sums, device, world_size)
        val_metrics = task.finalize(val_sums)

        metrics = {
            "epoch": epoch,
            "train_loss": float(train_sums["loss"]) / max(float(train_sums["n"]), 1.0),
            "lr": optimizer.param_groups[0]["lr"],
            **{f"val_{k}": v for k, v in val_metrics.items()},
            # throughput: all workers' rows over rank 0's train-pass time (data iteration
            # included); epoch_seconds adds validation, not the checkpoint and report below
            # (the next epoch's epoch_started_at, a Unix time, includes those)
            "train_seconds": train_seconds,
            "train_samples_per_s": float(train_sums["n"]) / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - epoch_start,
            "epoch_started_at": epoch_started_at,
        }
        if t.monitor not in metrics:
            raise KeyError(f"train.monitor={t.monitor!r} is not a metric; have {sorted(metrics)}")
        value = float(metrics[t.monitor])
        # With sparsity, only the final (fixed-support) phase competes for "best": a dense
        # model's score says nothing about the sparse model that ships.
        eligible = phase == final_phase
        stop = early.update(value) if eligible else False
        metrics["score"] = value if eligible else (-INELIGIBLE_SCORE if t.mode == "max" else INELIGIBLE_SCORE)
        metrics["sparsity_phase"] = ["dense", "iht", "fixed"].index(phase)
        metrics["stopped"] = int(stop)  # early stopping (patience), as opposed to a scheduler's cut
        if cfg.schedule.name == "plateau":
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()

        if writer is not None:
            for k, v in metrics.items():
                if k not in ("epoch", "score", "epoch_started_at"):  # a Unix time is no float32 scalar
                    writer.add_scalar(
                        k.replace("_", "/", 1) if k.startswith(("val_", "train_")) else k, v, epoch
                    )
            writer.flush()
            tensorboard.sync()

        meta = {
            **loop_config["meta"],
            "config": loop_config["config"],
            "epoch": epoch,
            "metrics": metrics,
            "early_stopping": early.state(),
            "stopped": stop,
            "attempts": attempts,
            "sparsity_phase": phase,
        }
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model, meta, optimizer, scheduler, grad_scaler, features=features)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}")
        if stop:
            break
    if writer is not None:
        writer.close()
        tensorboard.close()


class TensorBoardDir:
    """Where rank 0 writes TensorBoard events: the run's own folder on a local disk; on a storage URI
    (s3://…) a local folder whose files are copied up after every epoch."""

    def __init__(self, target: str):
        from pipeline.storage import is_uri

        self.target = target if is_uri(target) else None
        self.local = tempfile.mkdtemp(prefix="tunestack-tb-") if self.target else target

    def sync(self) -> None:
        if self.target:
            from pipeline.storage import resolve

            resolve(self.target).upload(self.local)

    def close(self) -> None:
        self.sync()
        if self.target:
            shutil.rmtree(self.local, ignore_errors=True)


def cfg_model(cfg: Config):
    from pipeline.models import build_model

    return build_model(cfg.model.arch, **cfg.model.params)
