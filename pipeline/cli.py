"""The `tunestack` command. Every subcommand honours TUNESTACK_HOME and prints --help.

A user error (pipeline.errors.UserError: a config key, missing data, no store, an unknown
registry version, …) from any command is printed as one line naming what is wrong and what to
do, exit status 2, no traceback; `tunestack --debug COMMAND` (or TUNESTACK_DEBUG=1) shows it.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from bench.runner import add_bench_parser
from pipeline import home
from pipeline.errors import UserError
from pipeline.export import add_export_parser
from pipeline.train.cli import add_train_parsers
from pipeline.tune.cli import add_tune_parser
from serve.cli import add_serve_parser
from serve.score import add_score_parser


def _cmd_ingest(args) -> int:
    from pipeline.ingest import IngestError, ingest
    from pipeline.store.layout import StoreError

    try:
        report = ingest(
            args.paths,
            args.store,
            skip_bad=args.skip_bad,
            embedder=args.embedder,
            embed_dim=args.embed_dim,
            progress=None,
            lock_wait=args.wait,
            keep=args.keep,
            address=args.address,
            workers=args.workers,
            memory_limit=args.memory_limit,
        )
    except (IngestError, StoreError, OSError) as e:  # OSError: writing the store failed (a full disk, …)
        print(f"tunestack ingest: {e}", file=sys.stderr)
        print("tunestack ingest: nothing was written; the store is as it was", file=sys.stderr)
        return 2
    d = report.as_dict()
    print(json.dumps(d, indent=2))
    for note in report.notes:
        print(f"tunestack ingest: note: {note}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    if report.skipped_documents or report.skipped_records:
        print(
            f"skipped {len(report.skipped_documents)} document(s) and {report.skipped_records} record(s)",
            file=sys.stderr,
        )
    return 0


def _cmd_synth(args) -> int:
    from pipeline import synth

    if args.kind == "digits":
        from pipeline.data.sequences import write_digits_npz

        path = write_digits_npz(args.out or os.path.join(home.home(), "digits.npz"), seed=args.seed)
        print(json.dumps({"digits": path}))
        return 0
    if args.kind == "companyfacts":
        from pipeline.synth_companyfacts import synth_companyfacts

        out = args.out or os.path.join(home.home(), "companyfacts.zip")
        print(json.dumps(synth_companyfacts(out, args.companies, seed=args.seed), indent=2))
        return 0
    if args.kind == "gaap":
        out = synth.synth_gaap(
            args.out or home.default_store_uri(), args.triplets, from_store=args.from_store, seed=args.seed
        )
    else:
        try:
            out = synth.synth_routing(
                args.out or os.path.join(home.home(), "routing"),
                args.rows,
                seed=args.seed,
                noise=args.noise,
                difficulty=args.difficulty,
            )
        except ValueError as e:
            print(f"tunestack synth routing: {e}", file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


def _cmd_store(args) -> int:
    from pipeline.store.layout import StoreError, TripletStore

    if args.action == "verify":
        from pipeline.store.integrity import verify_store

        try:
            check = verify_store(args.store or home.default_store_uri())
        except FileNotFoundError as e:
            print(f"tunestack store: {e}", file=sys.stderr)
            return 2
        print("\n".join(check.lines()))
        return 0 if check.ok else 1
    if args.action == "refit":
        from pipeline.ingest.run import refit

        try:
            report = refit(
                args.store,
                embedder=args.embedder,
                embed_dim=args.embed_dim,
                lock_wait=args.wait,
                keep=args.keep,
            )
        except (StoreError, OSError) as e:
            print(f"tunestack store: {e}", file=sys.stderr)
            print("tunestack store: nothing was written; the store is as it was", file=sys.stderr)
            return 2
        print(json.dumps(report.as_dict(), indent=2))
        for note in report.notes:
            print(f"tunestack store: note: {note}", file=sys.stderr)
        return 0
    try:
        store = TripletStore(args.store or home.default_store_uri())
        m = store.require()
        if args.action == "gc":
            with store.writing(args.wait):
                removed = store.gc(args.keep)
                print(
                    json.dumps(
                        {
                            "live": store.manifest["version"],
                            "removed": removed,
                            "kept": store.previous_versions(),
                        }
                    )
                )
            return 0
    except (StoreError, OSError) as e:
        print(f"tunestack store: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                **{k: m[k] for k in ("version", "data_dir", "counts", "embedder", "buckets", "updated")},
                "feature_version": store.feature_version,
                "feature_versions": store.feature_versions(),
                "previous_versions": store.previous_versions(),
            },
            indent=2,
        )
    )
    return 0


def _cmd_models(args) -> int:
    from pipeline.registry import Registry

    reg = Registry()
    try:
        if args.action == "list":
            rows = reg.list(args.family)
            for r in rows:
                metrics = ", ".join(
                    f"{k}={v:.4g}" for k, v in r["metrics"].items() if isinstance(v, (int, float))
                )
                print(f"{r['family']:<14} {r['version']:<7} {r['stage']:<11} {r['created']}  {metrics}")
            if not rows:
                print(f"no models registered under {reg.root}")
        elif args.action == "show":
            print(json.dumps(reg.get(args.family, args.version), indent=2))
        elif args.action == "promote":
            r = reg.promote(args.family, args.version)
            print(f"{r['family']} {r['version']} is now production")
        elif args.action == "rollback":
            r = reg.rollback(args.family)
            print(f"{r['family']} rolled back to {r['version']}")
        elif args.action == "verify":
            problems = reg.verify(args.family)
            print("\n".join(problems) or f"registry {reg.root}: every file matches its sha256")
            return 1 if problems else 0
        if args.action in ("list", "promote", "rollback") and reg.conditional_writes is None:
            print(
                f"note: {reg.root} has no conditional writes: concurrent promotions or rollbacks are not "
                "detected there (the last writer wins); promote from one place at a time"
            )
    except OSError as e:  # a registry write failed; the registry is as it was
        print(f"tunestack models: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_config(args) -> int:
    from pipeline.config import json_schema, load_tune_config, read_yaml
    from pipeline.errors import ConfigError
    from serve.config import load_serve_config, serve_json_schema

    if args.action == "schema":
        kinds = ["train", "tune", "serve"] if args.kind == "all" else [args.kind]
        schemas = {k: serve_json_schema() if k == "serve" else json_schema(k) for k in kinds}
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            for kind, schema in schemas.items():
                path = os.path.join(args.out, f"{kind}.schema.json")
                with open(path, "w") as f:
                    json.dump(schema, f, indent=2)
                print(path)
        else:
            print(json.dumps(schemas[kinds[0]] if len(kinds) == 1 else schemas, indent=2))
        return 0
    if not args.files:
        raise ConfigError("tunestack config check", "FILE", "name one or more config files to check")
    failed = 0
    for path in args.files:  # every file checked; each bad one listed with all its problems
        try:
            if "applications" in read_yaml(path):
                load_serve_config(path)
            else:
                load_tune_config(path, args.overrides)
            print(f"{path}: ok")
        except ConfigError as e:
            print(e, file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _cmd_demo(args) -> int:
    from pipeline.demo import run_demo

    return run_demo()


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive integer")
    return n


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def size_arg(text: str) -> int:
    """A size such as 2GB, 512MB, 1.5G or 300000000 (bytes; K/M/G are powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2GB, 512MB or 1.5G")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def _add_writer_args(s: argparse.ArgumentParser) -> None:
    from pipeline.store.layout import DEFAULT_KEEP
    from pipeline.store.lock import DEFAULT_WAIT

    s.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for another writer of the store (default {DEFAULT_WAIT:g}; 0: fail at once)",
    )
    s.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help=f"previous store versions kept for readers; older ones are deleted (default {DEFAULT_KEEP})",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunestack",
        description="Train, tune and serve small neural models on Ray. "
        f"Data, runs and the registry live under TUNESTACK_HOME (now {home.home()}).",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=bool(os.environ.get("TUNESTACK_DEBUG")),
        help="show the traceback of an error (default: one line; also TUNESTACK_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "ingest",
        help="ingest SEC companyfacts JSON/.json.gz/folders/bulk zip and narrative CSV",
        description="Validate, de-duplicate (latest filing wins), scale per pair, embed pairs, "
        "and swap a new version into the triplet store. On bad input nothing is written. One "
        "writer at a time per store: another ingest waits for the first (--wait).",
    )
    s.add_argument("paths", nargs="+", help="files or folders (.json, .json.gz, .zip, .csv)")
    s.add_argument("--store", help="store path or pyarrow filesystem URI (default $TUNESTACK_HOME/store)")
    s.add_argument(
        "--skip-bad", action="store_true", help="skip and report bad documents/records instead of failing"
    )
    s.add_argument(
        "--embedder",
        choices=["auto", "minilm", "hashed"],
        help="pair embedder of a new store (auto: MiniLM with the 'embed' extra, else hashed n-grams); "
        "default: the store's recorded one, auto for a new store; another than the recorded one is "
        "refused (see `store refit`)",
    )
    s.add_argument(
        "--embed-dim", type=int, help="embedding width of a new store after PCA (default: the store's, 64)"
    )
    _add_writer_args(s)
    s.add_argument(
        "--address",
        default=None,
        help="Ray cluster to parse on (default: $RAY_ADDRESS; else this machine, see --workers)",
    )
    s.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="parse on a local Ray with this many CPUs (1: in this process, no Ray, one thread). "
        "Default: every core for inputs of 256 MB or more, else in this process (buckets de-duplicated "
        "and written on a thread per core)",
    )
    s.add_argument(
        "--memory-limit",
        type=size_arg,
        default="2GB",
        help="rows held at once by one machine's de-duplication (default 2GB); a larger store "
        "is de-duplicated in more chunks of whole companies, never all at once",
    )
    s.set_defaults(func=_cmd_ingest)

    s = sub.add_parser(
        "synth",
        help="write data for tests and demos: a synthetic GAAP store, routing logs, "
        "or scikit-learn's digits as a sequence task",
    )
    s.add_argument(
        "kind",
        choices=["gaap", "routing", "digits", "companyfacts"],
        help="gaap: synthetic store; routing: logs with a known P(lightweight suffices) and the oracle "
        "router's cost-quality curve; digits: the real 8x8 digits "
        "as 8 steps x 8 features (.npz, stratified 75/25 split); companyfacts: a bulk zip of "
        "synthetic companies in the format of SEC's companyfacts.zip (input for `tunestack ingest`)",
    )
    s.add_argument("--triplets", type=int, default=1_000_000, help="gaap: number of triplets")
    s.add_argument("--rows", type=int, default=100_000, help="routing: number of log rows")
    s.add_argument(
        "--companies", type=_positive_int, default=100, help="companyfacts: number of companies (default 100)"
    )
    s.add_argument("--from-store", help="gaap: draw (concept, unit) pairs from this existing store")
    s.add_argument(
        "--difficulty",
        choices=["features", "uniform"],
        default=None,
        help="routing: features (default): each label drawn from a feature-dependent probability, easy "
        "and hard requests; uniform (the default when --noise is given): a rule with labels flipped "
        "uniformly at random",
    )
    s.add_argument(
        "--noise", type=float, default=None, help="routing, uniform: label noise (best accuracy = 1 - noise)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--out",
        help="gaap: store URI (default $TUNESTACK_HOME/store); routing: folder "
        "(default $TUNESTACK_HOME/routing); digits: file (default $TUNESTACK_HOME/digits.npz); "
        "companyfacts: zip file (default $TUNESTACK_HOME/companyfacts.zip)",
    )
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser(
        "store",
        help="show the triplet store's manifest summary, verify its files, refit its features, or "
        "delete old versions",
        description="show: the manifest summary. verify: check the manifest and every file of the "
        "live version (present, size, sha256, Parquet footer, row counts); exit 1 on damage. "
        "refit: fit a new embedding basis and new per-pair scalers on the whole store and start a "
        "new feature version (ingest never refits them; models trained on an older feature version "
        "keep theirs). gc: delete previous store versions but the newest --keep (readers that "
        "opened one may still be streaming it).",
    )
    s.add_argument("action", nargs="?", default="show", choices=["show", "verify", "refit", "gc"])
    s.add_argument("--store", help="store path or URI (default $TUNESTACK_HOME/store)")
    s.add_argument(
        "--embedder",
        choices=["auto", "minilm", "hashed"],
        help="refit: the pair embedder of the new feature version (default: the recorded one)",
    )
    s.add_argument("--embed-dim", type=int, help="refit: its width (default: the recorded one)")
    _add_writer_args(s)
    s.set_defaults(func=_cmd_store)

    s = sub.add_parser("models", help="the model registry: list, show, promote, rollback, verify")
    s.add_argument("action", choices=["list", "show", "promote", "rollback", "verify"])
    s.add_argument("family", nargs="?", help="model family (router, autoencoder, digits, …)")
    s.add_argument("version", nargs="?", help="version (v0001, …); show: default production")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser(
        "config",
        help="check config files in full, or print the JSON Schema of each config kind",
        description="check: validate training/tune files (tune_configs/*.yaml) and Serve configs "
        "(serve/config.yaml) in full, every problem named with its key; exit 2 if any is bad. "
        "schema: the JSON Schema of a kind (train, tune, serve) for editors and CI.",
    )
    s.add_argument("action", choices=["check", "schema"])
    s.add_argument("files", nargs="*", metavar="FILE", help="check: the files to validate")
    s.add_argument(
        "--kind", default="all", choices=["all", "train", "tune", "serve"], help="schema: which (default all)"
    )
    s.add_argument("--out", help="schema: write DIR/KIND.schema.json instead of printing")
    s.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="check: overrides"
    )
    s.set_defaults(func=_cmd_config)

    add_train_parsers(sub)
    add_tune_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    add_score_parser(sub)
    add_bench_parser(sub)

    s = sub.add_parser("demo", help="run the main job end to end on generated or bundled data")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        if args.debug:
            raise
        print(error_line(args.command, e), file=sys.stderr)
        return 2


def error_line(command: str, e: UserError) -> str:
    """`tunestack COMMAND: what is wrong (what to do)`: the message, and the hint when it has one."""
    return f"tunestack {command}: {e}" + (f" ({e.hint})" if e.hint else "")


if __name__ == "__main__":
    sys.exit(main())
