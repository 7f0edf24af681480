"""Restoration strength: PSNR-Y of each fixed strength and of `auto`, side by side in one run.

One restoration model (default the shipped restore-x2) at strengths 0 (its clean partner), 0.25,
0.5, 0.75 and 1, and at `auto` (per image, from the damaged file's JPEG quality and the noise
estimate), with bicubic beside, on the damages of the catalog suite (prodray eval catalog
--suite standard). Prints one row per damage and the gap between `auto` and the best fixed
strength there (the claim: within 0.2 dB on every JPEG level).

    .venv/bin/python benchmarks/restore_strength.py [--model restore-x2] \\
        [--data ../shared/data/grocery-store/val] [--limit 30] [--skip 0] [--threads 1]
"""

import argparse
import json
from pathlib import Path

import torch

from prodray.enhancer.evaluation import STANDARD_SUITE, bicubic_upscale, evaluate_suite
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.strength import GRID


def upscalers(enhancer: Enhancer) -> dict:
    methods = {"bicubic": bicubic_upscale}
    for strength in GRID:
        methods[f"s{strength:g}"] = lambda lr, s, v=strength: enhancer.enhance_many([lr], [v])[0]

    def auto(lr, s, jpeg_quality=None):
        return enhancer.enhance_many([lr], [enhancer.strength_for(lr, jpeg_quality, requested="auto")])[0]
    methods["auto"] = auto
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="restore-x2")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/grocery-store/val"))
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N images")
    parser.add_argument("--damages", default=",".join(STANDARD_SUITE))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the full result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    enhancer = Enhancer.load(args.model)
    if not enhancer.restores:
        parser.error(f"{args.model} has no clean partner: not a restoration model")
    methods = upscalers(enhancer)
    result = evaluate_suite(args.data, enhancer.scale, methods, limit=args.limit, only=args.damages.split(","),
                             skip=args.skip)
    fixed = [f"s{v:g}" for v in GRID]
    print(f"{enhancer.model_id} x{enhancer.scale}, {result['images']} images of {args.data}; PSNR-Y dB")
    print(f"{'damage':<9}" + "".join(f"{m:>9}" for m in methods) + f"{'best':>7}{'auto gap':>10}")
    for damage, row in result["suite"].items():
        best = max(fixed, key=lambda m: row[m]["psnr_y"])
        gap = row["auto"]["psnr_y"] - row[best]["psnr_y"]
        print(f"{damage:<9}" + "".join(f"{row[m]['psnr_y']:>9.3f}" for m in methods) + f"{best:>7}{gap:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
