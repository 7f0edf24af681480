"""Ray Job: enhance a whole catalog with Ray Data (resumable; one result per input).

    ray job submit --working-dir . -- python jobs/enhance_catalog.py --input s3://prodray/catalog \
        --output s3://prodray/enhanced [--model URI_OR_NAME] [--scale 2] [--format png] [--quality 90]
"""

import argparse
import json

from prodray.cluster.jobs import connect_ray, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="s3:// prefix, local folder, or a .parquet manifest of keys")
    parser.add_argument("--output", required=True, help="s3:// prefix or local folder for results + manifest")
    parser.add_argument("--model", help="export folder, s3:// URI or shipped name (default: shipped for --scale)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--format", default="png")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=1, help="enhancer actors (model replicas)")
    parser.add_argument("--actor-cpus", type=float, default=1.0,
                        help="CPUs reserved per enhancer actor; leave 1 of the cluster free for Ray Data")
    parser.add_argument("--actor-gpus", type=float,
                        help="GPUs per enhancer actor (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--actor-memory-gib", type=float, default=2.0,
                        help="memory reserved per enhancer actor for Ray's scheduler (0: none)")
    parser.add_argument("--max-error-fraction", type=float, help="fail if more than this share is rejected/error")
    parser.add_argument("--min-longest-side", type=int, help="reject outputs whose longest side is below this (px)")
    parser.add_argument("--pad-square", action="store_true", help="centre outputs on a pure-white square")
    parser.add_argument("--max-output-bytes", type=int, help="lower JPEG/WebP quality until outputs fit (PNG: reject)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average over the 8 flips/turns of each image: 8x the compute, slightly sharper")
    args = parser.parse_args()
    from prodray.cluster.bulk import BulkOptions, run_bulk
    options = BulkOptions(input=args.input, output=args.output, model=args.model, scale=args.scale, format=args.format,
                          quality=args.quality, batch_size=args.batch_size, actors=args.actors, actor_cpus=args.actor_cpus,
                          actor_gpus=args.actor_gpus, actor_memory_gib=args.actor_memory_gib,
                          max_error_fraction=args.max_error_fraction, min_longest_side=args.min_longest_side,
                          pad_square=args.pad_square, max_output_bytes=args.max_output_bytes,
                          self_ensemble=args.self_ensemble).check()
    connect_ray()
    print(json.dumps(run_bulk(options), indent=2))


if __name__ == "__main__":
    run_main(main)
