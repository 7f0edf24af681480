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
    from prodray.local.stack import StackError
    from prodray.io.storage import StorageError, redact

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
