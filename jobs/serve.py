"""Ray Job: deploy the prodray HTTP API on the cluster and leave it running.

    ray job submit --working-dir . -- python jobs/serve.py --model s3://bucket/run/export \
        [--generator s3://bucket/gan-run/export | --generator none] [--port 8000]

The Serve controller is a detached actor, so the app outlives this job; stop it with
`serve shutdown` (or `serve delete prodray`). Serve binds to 127.0.0.1 unless --host says otherwise.
"""

import argparse
import time
import urllib.request

from prodray.cluster.jobs import connect_ray, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="export folder, s3:// URI or shipped name "
                        "(default: $PRODRAY_MODEL, else enhancer-x2)")
    parser.add_argument("--generator", default=None, help="product generator: export folder, s3:// URI "
                        "or shipped name (default: $PRODRAY_GENERATOR, else gan-fashion-products); "
                        "'none' serves the enhancer only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the API to the network")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for /healthz")
    args = parser.parse_args()

    connect_ray()
    from ray import serve

    from prodray.cluster.serve import build_app
    # Serve's controller is always detached (Ray >= 2.x has no `detached` flag any more).
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args.model, generator=args.generator), name="prodray", route_prefix="/", blocking=False)

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {url}/healthz did not answer within {args.timeout:.0f} s")
        time.sleep(1)
    print(f"prodray serving at {url}/ (POST {url}/v1/enhance, {url}/v1/generate)", flush=True)


if __name__ == "__main__":
    run_main(main)
