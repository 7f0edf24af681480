"""Ray Job: enhance a whole catalog with Ray Data (resumable; one result per input; `--task repair`
and `--task recolour --colours red,navy`, one result per input and colour, run the same way).

    ray job submit --working-dir . -- python jobs/enhance_catalog.py --input s3://prodray/catalog \
        --output s3://prodray/enhanced [--model URI_OR_NAME] [--scale 2] [--format png] [--quality 90]

The flags are prodray.config.BulkConfig's fields, the same as `prodray enhance`'s; --dry-run
prints the resolved config and starts nothing.
"""

from prodray.cluster.jobs import config_job_parser, enhance_job, run_main
from prodray.config import BulkConfig


def build_parser():
    return config_job_parser(__doc__, BulkConfig)


def main(argv=None) -> None:
    enhance_job(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_main(main)
