"""`tunestack export`: a trained model → a standalone float32 or INT8 artifact (format:
pipeline.lean.artifact) that `evaluate`, `score`, the registry and Serve all accept.

    $TUNESTACK_HOME/exports/<run or checkpoint>-<precision>/   (default; --out DIR)
      weights.safetensors   the encoding: values, sparse bitmaps, scales (its size is the model's size)
      export.json           config, normalization, trained sequence lengths, metrics, source, layout

The artifact carries everything needed to interpret its inputs (the checkpoint's metadata: the
normalization, the feature transform or store references its family uses), so it answers the same
wherever it is copied. Weights a family marks as unused for the model (a single-step FastGRNN's
recurrent matrix) are recorded by shape only.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np

from pipeline.errors import UserError
from pipeline.lean.artifact import META_FILE, PRECISIONS, WEIGHTS_FILE, encode, write_export

# checkpoint metadata that describes training, not the model: not carried into an export
TRAINING_ONLY = ("train_state", "early_stopping", "attempts", "stopped", "config", "format")
FIDELITY_ROWS = 512  # random inputs the exported classifier is compared on (max |Δ probability|)


class ExportError(UserError, ValueError):
    """A model that cannot be exported as asked (named, with the reason)."""


def default_out(ckpt_path: str, precision: str) -> str:
    from pipeline.home import home

    parts = os.path.normpath(ckpt_path).split(os.sep)
    if parts[-1] == "checkpoint" and len(parts) > 2:  # a registry version: FAMILY/vNNNN/checkpoint
        name = f"{parts[-3]}-{parts[-2]}"
    elif parts[-1].startswith("checkpoint_") and len(parts) > 1:  # a run's: RUN/checkpoint_epochNNNN
        name = parts[-2]
    else:
        name = parts[-1]
    return os.path.join(home(), "exports", f"{name}-{precision}")


def export_model(ref: str, precision: str = "int8", out: str | None = None) -> dict:
    """Export the model `ref` names (checkpoint or run folder, run name, FAMILY:vNNNN) at
    `precision`; returns what was written: path, sizes, and for a classifier the largest
    probability difference to the float model on random inputs."""
    from pipeline.lean import sequence_lengths_of
    from pipeline.models import family
    from pipeline.train.checkpoint import load_checkpoint

    if precision not in PRECISIONS:
        raise ExportError(f"--format must be one of {PRECISIONS}, got {precision!r}")
    ckpt = load_checkpoint(ref)
    if "export" in ckpt.meta:
        raise ExportError(
            f"{ref}: already an export ({ckpt.meta['precision']}); export its source checkpoint"
        )
    arch = ckpt.config["model"]["arch"]
    fam = family(arch)
    lengths = sequence_lengths_of(ckpt.meta)
    state = {k: v.detach().float().numpy() for k, v in ckpt.weights.items()}
    unused = fam.unused(ckpt.config["model"], lengths)
    tensors, layout, counts = encode(state, precision, zero=unused)

    from pipeline.registry.registry import sha256_file

    model_file = os.path.join(ckpt.path, "model.safetensors")
    meta = {
        "format": "tunestack-export-v1",
        "precision": precision,
        "arch": arch,
        "config": ckpt.config,
        "meta": {
            **{k: v for k, v in ckpt.meta.items() if k not in TRAINING_ONLY},
            "sequence_lengths": lengths,
        },
        "source": {
            "checkpoint": ckpt.path,
            "model_sha256": sha256_file(model_file) if os.path.isfile(model_file) else None,
        },
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "unused": list(unused),
        "tensors": layout,
        "size": counts,
    }
    features = None
    if ckpt._feature_tensors is not None:  # the model's own feature transform travels with it
        from safetensors.numpy import save

        features = save(ckpt._feature_tensors)
    out = os.path.abspath(out or default_out(ckpt.path, precision))
    try:
        written = write_export(out, tensors, meta, features)
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write the export ({e})") from e
    summary = {
        "path": out,
        "precision": precision,
        "arch": arch,
        "weights_file": os.path.join(out, WEIGHTS_FILE),
        "file_bytes": os.path.getsize(os.path.join(out, WEIGHTS_FILE)),
        "json_bytes": os.path.getsize(os.path.join(out, META_FILE)),
        "breakdown": {k: written["size"][k] for k in ("values", "indices", "scales", "header")},
        "unused": list(unused),
    }
    if fam.distillable:  # class logits: how far the export's probabilities are from the float model's
        summary["max_probability_diff"] = _fidelity(ckpt, out, lengths)
    return summary


def _fidelity(ckpt, out: str, lengths) -> float:
    """max |softmax(float model) − softmax(exported model)| over random normalized inputs of the
    lengths the model was trained on (the exported model run as Serve runs it)."""
    import torch

    from pipeline.train.checkpoint import load_checkpoint

    model = ckpt.build_model()
    exported = load_checkpoint(out).build_model()
    c = model.config
    rng = np.random.default_rng(0)
    worst = 0.0
    for t in lengths or [1]:
        x = torch.from_numpy(rng.standard_normal((FIDELITY_ROWS, t, c.input_size)).astype(np.float32))
        with torch.inference_mode():
            p, q = torch.softmax(model(x), -1), torch.softmax(exported(x), -1)
        worst = max(worst, float((p - q).abs().max()))
    return worst


# ---------------------------------------------------------------------------------------------
# CLI


def add_export_parser(subparsers) -> None:
    """Add `tunestack export` to an argparse subparsers object."""
    import argparse

    s = subparsers.add_parser(
        "export",
        help="write a standalone float32 or INT8 artifact of a model (safetensors + JSON)",
        description="Export a trained model (checkpoint or run folder, run name, FAMILY:vNNNN) as "
        "weights.safetensors (values, sparse bitmaps, scales) + export.json (config, "
        "normalization, metrics, layout). `evaluate`, `score`, the registry and Serve accept it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  tunestack export digits-run --format int8\n"
        "  tunestack export router:v0001 --format int8 --register router --promote",
    )
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--format", dest="precision", default="int8", choices=list(PRECISIONS))
    s.add_argument("--out", metavar="DIR", help="default $TUNESTACK_HOME/exports/<model>-<format>")
    s.add_argument(
        "--register", metavar="FAMILY", help="also register the artifact as the next version of FAMILY"
    )
    s.add_argument("--promote", action="store_true", help="with --register: make it production")
    s.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    import json

    from pipeline.registry import Registry
    from pipeline.train.checkpoint import load_checkpoint

    if args.promote and not args.register:
        raise ExportError("--promote needs --register FAMILY")
    summary = export_model(args.model, args.precision, args.out)
    if args.register:
        exported = load_checkpoint(summary["path"])
        metrics = {
            k: v for k, v in (exported.meta.get("metrics") or {}).items() if isinstance(v, (int, float))
        }
        record = Registry().register(
            args.register,
            summary["path"],
            config=exported.config,
            metrics=metrics,
            source=summary["path"],
            promote=args.promote,
            precision=args.precision,
        )
        summary["registered"] = {
            "family": record["family"],
            "version": record["version"],
            "stage": record["stage"],
        }
    print(json.dumps(summary, indent=2))
    return 0
