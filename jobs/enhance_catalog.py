"""Ray Job: enhance a whole catalog with Ray Data (resumable; one result per input).

    ray job submit --working-dir . -- python jobs/enhance_catalog.py --input s3://prodray/catalog \
        --output s3://prodray/enhanced [--model URI_OR_NAME] [--scale 2] [--format png] [--quality 90]

The flags are prodray.config.BulkConfig's fields, the same as `prodray enhance`'s; --dry-run
prints the resolved config and starts nothing.
"""

import argparse
import json

from prodray.cli_flags import add_config_flags, config_from_args
from prodray.cluster.jobs import connect_ray, run_main
from prodray.config import BulkConfig, dump_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, BulkConfig)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(BulkConfig, args)
    if args.dry_run:
        print(dump_config(config))
        return
    connect_ray()
    from prodray.cluster.bulk import run_bulk
    print(json.dumps(run_bulk(config), indent=2))


if __name__ == "__main__":
    run_main(main)
