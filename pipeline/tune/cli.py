"""`tunestack tune` (added to the main CLI by `add_tune_parser`)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_tune_parser(subparsers) -> None:
    s = subparsers.add_parser(
        "tune",
        help="search a config's space with Ray Tune + ASHA; register the best model",
        description="Each trial is a Ray Train run; ASHA stops weak trials early. The best trial's best "
        "checkpoint is registered as the next version of the config's family (`name:`). Runs locally "
        "(a local Ray) or inside `ray job submit --working-dir . -- tunestack tune ...` on a cluster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  tunestack tune --config tune_configs/router.yaml --promote\n"
        "  tunestack tune --config tune_configs/digits.yaml --name digits-sweep\n"
        "  tunestack tune --config tune_configs/digits.yaml --name digits-sweep --resume",
    )
    s.add_argument(
        "--config", required=True, help="tune_configs/FILE.yaml (training config + search/plan/tune)"
    )
    s.add_argument("--name", help="experiment name (default <config name>-<timestamp>); needed by --resume")
    s.add_argument(
        "--resume", action="store_true", help="finish an interrupted experiment; finished trials are kept"
    )
    s.add_argument("--promote", action="store_true", help="put the new best straight into production")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key (e.g. --set train.epochs=4)",
    )
    s.add_argument(
        "--result-file",
        metavar="PATH",
        help="also write the run's summary (registered version, best trial, or the error) to this "
        "JSON file; POST /v1/jobs reads it to report a job's outcome",
    )
    s.set_defaults(func=_cmd_tune)


def _cmd_tune(args) -> int:
    from pipeline.tune.run import run_tune

    try:
        out = run_tune(
            args.config, name=args.name, resume=args.resume, promote=args.promote, overrides=args.overrides
        )
    except Exception as e:  # the jobs endpoint reads the outcome from the result file; the CLI prints it
        _write_result(args.result_file, {"ok": False, "error": str(e), "registered": None})
        raise
    widths = [max(len(str(h)), 10) for h in out.report["header"]]
    print("  ".join(str(h).ljust(w) for h, w in zip(out.report["header"], widths)))
    for row in out.report["rows"]:
        print(
            "  ".join(
                (f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")).ljust(w)
                for v, w in zip(row, widths)
            )
        )
    summary = {
        "experiment": out.experiment,
        "path": out.path,
        "best": {
            k: out.best[k]
            for k in ("trial", "overrides", "metric", "epochs", "checkpoint", "route_calibration")
            if k in out.best
        }
        if out.best
        else None,
        "registered": {k: out.registered[k] for k in ("family", "version", "stage")}
        if out.registered
        else None,
        "report": {k: out.report[k] for k in ("table", "csv", "plot")},
    }
    print(json.dumps(summary, indent=2, default=str))
    failed = [t["trial"] for t in out.trials if t["error"]]
    if failed:
        print(f"tunestack tune: {len(failed)} trial(s) failed: {', '.join(failed)}", file=sys.stderr)
    _write_result(
        args.result_file,
        {
            "ok": bool(out.best),
            "failed_trials": failed,
            "error": None if out.best else "no trial reported the metric",
            **summary,
        },
    )
    return 0 if out.best else 1


def _write_result(path: str | None, result: dict) -> None:
    """Write `result` as JSON to `path` atomically (a reader never sees half a file)."""
    if path:
        from pipeline.storage import write_json_atomic

        folder, name = os.path.split(os.path.abspath(path))
        write_json_atomic(folder, name, result)
