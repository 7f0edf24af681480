"""Export a weight-space interpolation of two enhancer exports of one network, (1 - t) * start + t * end,
e.g. two restoration models fine-tuned from the same start on different damage chains (MODEL_CARD.md,
restore-x2, ninth rule). The result keeps `start`'s config and clean partner, and records both ids and t.

    .venv/bin/python scripts/interpolate_weights.py --start RUN_A/export --end RUN_B/export --t 0.3 --out DIR
"""

import argparse

from prodray.enhancer.interpolation import interpolate_exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="export folder, s3:// URI or shipped name (t = 0)")
    parser.add_argument("--end", required=True, help="export of the same network (t = 1)")
    parser.add_argument("--t", type=float, required=True, help="0 gives start, 1 gives end")
    parser.add_argument("--out", required=True, help="export folder or s3:// URI to write")
    args = parser.parse_args()
    try:
        model_id = interpolate_exports(args.start, args.end, args.t, args.out)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"exported {model_id} to {args.out}")


if __name__ == "__main__":
    main()
