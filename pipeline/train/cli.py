"""`tunestack train` and `tunestack evaluate` (added to the main CLI by `add_train_parsers`)."""

from __future__ import annotations

import argparse
import json
import sys


def add_train_parsers(subparsers) -> None:
    """Add the `train` and `evaluate` subcommands to an argparse subparsers object."""
    s = subparsers.add_parser(
        "train",
        help="train once with a config's defaults (no search), or resume a run",
        description="Train on Ray Train (GPU when the cluster has one, CPU otherwise). Checkpoints, "
        "TensorBoard events and run.json go to $TUNESTACK_HOME/runs/<run>.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  tunestack train --config tune_configs/digits.yaml\n"
        "  tunestack train --config tune_configs/router.yaml --set optim.lr=3e-3 --set train.epochs=5\n"
        "  tunestack train --resume digits-20250101-120000\n"
        "  tunestack train --config tune_configs/router.yaml --from RUN_OR_CHECKPOINT --set data.path=new/",
    )
    s.add_argument("--config", help="tune_configs/FILE.yaml")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-3 (repeatable; value parsed as YAML)",
    )
    s.add_argument(
        "--from",
        dest="init_from",
        metavar="CHECKPOINT",
        help="fine-tune from a checkpoint folder, run folder, run name or registry version FAMILY:vNNNN",
    )
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its latest checkpoint")
    s.add_argument("--name", help="run name (default <config name>-<timestamp>)")
    s.set_defaults(func=_cmd_train)

    s = subparsers.add_parser(
        "evaluate",
        help="print a checkpoint's metrics on a data source as JSON (routers: cost and quality too)",
        description="Evaluate a checkpoint (folder, run folder, run name or registry version "
        "FAMILY:vNNNN / FAMILY:production). SOURCE: .npz/.parquet sequences, a routing-log folder, or a "
        "triplet store; default: the data it was trained on. An autoencoder reads the store through its "
        "own feature transform and reports pairs it knows and pairs it does not apart. A router also "
        'gets its cost-quality figures under "router": the share it routes lightweight at its calibrated '
        "threshold and the error among them, the curve's key points and APGR (beside the oracle's on "
        "synth's logs), and the plot of the curve (--plot).",
    )
    s.add_argument("--model", required=True, metavar="CHECKPOINT")
    s.add_argument(
        "--plot",
        metavar="PNG",
        help="routers: where to write the cost-quality plot (default "
        "$TUNESTACK_HOME/reports/<model>-<split>-cost-quality.png)",
    )
    s.add_argument("--data", metavar="SOURCE")
    s.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train", "all"],
        help="which split of SOURCE (as split in training; triplets: test = val folds)",
    )
    s.add_argument(
        "--by",
        choices=["entity", "pair"],
        help="triplets: metrics per company or per (concept, unit) pair, each beside a PCA of the "
        "model's latent width fitted on the training companies",
    )
    s.set_defaults(func=_cmd_evaluate)


def _cmd_train(args) -> int:
    from pipeline.config import load_config
    from pipeline.train.run import resume, train

    if bool(args.config) == bool(args.resume):
        print("tunestack train: give --config FILE or --resume RUN", file=sys.stderr)
        return 2
    if args.resume and (args.overrides or args.init_from):
        print(
            "tunestack train: --resume continues a run as it was; --set/--from do not apply", file=sys.stderr
        )
        return 2
    # A bad config, missing data or no store is a UserError: the CLI prints one line, exit 2.
    if args.resume:
        result = resume(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)  # the whole file, before Ray starts
        result = train(cfg, run_name=args.name, init_from=args.init_from)
    print(
        json.dumps(
            {
                "run": result.run,
                "path": result.path,
                "best_checkpoint": result.best_checkpoint,
                "best_metrics": result.best_metrics,
                "test_metrics": result.test_metrics,
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _cmd_evaluate(args) -> int:
    import os
    import re

    from pipeline.home import home
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.router_eval import evaluate_router, is_router
    from pipeline.train.run import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.model, args.data, split=args.split, by=args.by
    )  # UserError: one line, exit 2
    if is_router(load_checkpoint(args.model).config):
        plot = args.plot or os.path.join(
            home(), "reports", f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model)}-{args.split}-cost-quality.png"
        )
        os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
        metrics["router"] = r = evaluate_router(args.model, args.data, args.split, plot=plot)
        _print_router(r)
    print(json.dumps(metrics, indent=2))
    return 0


def _print_router(r: dict) -> None:
    """The router's figures in words (stderr: stdout stays one JSON document)."""
    lines = [f"router on the {r['split']} split ({r['rows']} rows):"]
    if r["threshold"] is not None:
        lines.append(
            f"  calibrated threshold {r['threshold']:.4f} (target: at most {r['max_lightweight_error']:.1%} "
            f"wrong among lightweight; calibrated on the {r['calibrated_on']})"
        )
        lines.append(
            f"  routes {r['share_lightweight']:.1%} lightweight, {r['error_among_lightweight']:.2%} of them wrong"
        )
    else:
        lines.append("  no calibrated threshold (" + r["threshold_source"] + ")")
    apgr = f"  APGR {r['apgr']:.4f}"
    if "oracle_apgr" in r:
        apgr += f" (oracle {r['oracle_apgr']:.4f}: {r['apgr_vs_oracle']:.1%} of it)"
    lines.append(apgr)
    for k in r["key_points"]:
        lines.append(f"  at {k['share']:.0%} lightweight: {k['error_among_routed']:.2%} of them wrong")
    lines.append(f"  plot: {r['plot']}")
    print("\n".join(lines), file=sys.stderr)
