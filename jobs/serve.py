"""Ray Job: deploy the prodray HTTP API on the cluster and leave it running.

    ray job submit --working-dir . -- python jobs/serve.py --model s3://bucket/run/export \
        [--generator s3://bucket/gan-run/export | --generator none] [--port 8000]

The flags are prodray.config.ServeJobConfig's fields: the app's (ServeConfig, which
serve_config.yaml passes as `args:`) plus --host, --port and --timeout; --dry-run prints the
resolved config and starts nothing. The Serve controller is a detached actor, so the app outlives
this job; stop it with `serve shutdown` (or `serve delete prodray`). Serve binds to 127.0.0.1
unless --host says otherwise. --direct-ingress also serves from each ingress replica's own port
(Ray Serve's experimental direct ingress; see ServeJobConfig.direct_ingress).
"""

import os

from prodray.cli_flags import config_from_args
from prodray.cluster.jobs import config_job_parser, connect_ray, run_main
from prodray.config import ServeJobConfig, dump_config


def build_parser():
    return config_job_parser(__doc__, ServeJobConfig)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(ServeJobConfig, args)
    if args.dry_run:
        print(dump_config(config))
        return
    if config.direct_ingress:
        # Read by every Ray process when it imports Serve: a Ray started below inherits it.
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    connect_ray()
    from prodray.cluster.serve import deploy, direct_ingress_urls
    url = deploy(config)
    print(f"prodray serving at {url}/ (POST {url}/v1/enhance, {url}/v1/generate)", flush=True)
    if config.direct_ingress:
        try:
            urls = direct_ingress_urls("prodray", config.host)
        except RuntimeError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"direct ingress (no proxy hop): {', '.join(urls)}", flush=True)


if __name__ == "__main__":
    run_main(main)
