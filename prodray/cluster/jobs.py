"""Shared start-up for the Ray Job entrypoints: argument parsing, config errors as one line.

Jobs are thin: they parse arguments, load the config and call the package. A bad config or
source stops here with one clear line and exit code 2, before any work starts.
"""

import argparse
import logging
import sys


def config_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (see prodray/configs/)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="section.field=value overrides")
    return parser


def run_main(main) -> None:
    """Call main(); turn expected user errors into one line and a non-zero exit."""
    from prodray.config import ConfigError
    from prodray.io.storage import StorageError, redact
    from prodray.local.stack import StackError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ConfigError, StorageError, StackError, FileNotFoundError, ValueError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)


def connect_ray() -> None:
    """Join the cluster the job was submitted to (or start a local one when run directly)."""
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="WARNING", log_to_driver=True)


def train_job(description: str, default_kind: str | None = None) -> None:
    """jobs/train.py: load any training config (its `kind` picks the family), check and prepare it
    in the driver, run it on Ray Train and say where the export is."""
    from prodray.config import dump_config, load_train_config
    from prodray.run_files import run_uri

    args = config_parser(description).parse_args()
    cfg = load_train_config(args.config, args.overrides, default_kind).resolved()
    if args.dry_run:
        print(dump_config(cfg))
        return
    connect_ray()
    from prodray.cluster.trainer import build_trainer

    result = build_trainer(cfg).fit()
    if result.error is not None:
        raise SystemExit(f"error: training failed: {result.error}")
    print(f"training finished: {result.metrics}")
    print(f"export: {run_uri(cfg)}/export")


def config_job_parser(description: str, config_class) -> argparse.ArgumentParser:
    """A job's parser: one flag per field of `config_class` (prodray/cli_flags.py) plus --dry-run."""
    from prodray.cli_flags import add_config_flags

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, config_class)
    return parser


def enhance_job(args: argparse.Namespace) -> None:
    """jobs/enhance_catalog.py and `prodray enhance`: the bulk config from the flags, printed with
    --dry-run, otherwise run on the cluster; prints the _SUCCESS summary."""
    import json

    from prodray.cli_flags import config_from_args
    from prodray.config import BulkConfig, dump_config

    config = config_from_args(BulkConfig, args)
    if args.dry_run:
        print(dump_config(config))
        return
    connect_ray()
    from prodray.cluster.bulk import run_bulk

    print(json.dumps(run_bulk(config), indent=2))
