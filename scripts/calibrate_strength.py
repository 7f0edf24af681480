"""Calibration data for `auto` restoration strength: for a grid of damages (JPEG levels, noise,
noise under JPEG, double JPEG, blur + noise + two JPEG saves, blur) on product photos, the
features `auto` can see (the file's JPEG quality, the noise estimate, the block-edge measure) and
the PSNR-Y of each fixed strength. Run it on photos that the strength benchmark and the catalog
eval do not score (the default skips the first 100 val images); `--report` then prints, per damage,
the best fixed strength and how far below it `auto` (enhancer/strength.choose_strength, from the
recorded measurements) lands.

    .venv/bin/python scripts/calibrate_strength.py --skip 100 --limit 24 --out /work/runs/strength-calib.jsonl
    .venv/bin/python scripts/calibrate_strength.py --report /work/runs/strength-calib.jsonl
"""

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from prodray.enhancer.evaluation import blur_damage, chain_damages, jpeg_damage, list_images, noise_damage
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.strength import block_edges, choose_strength, estimate_noise
from prodray.io.codec import decode_image
from prodray.io.images import imresize_uint8
from prodray.metrics import psnr_ssim_y

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def damage_grid() -> dict:
    grid = {"clean": chain_damages(), "blur1.0": blur_damage(1.0)}
    for q in (20, 30, 40, 50, 60, 70, 80, 90, 95):
        grid[f"jpeg{q}"] = jpeg_damage(q)
    for sigma in (2, 4, 6, 10):
        grid[f"noise{sigma}"] = noise_damage(float(sigma))
    for sigma in (2, 5):
        for q in (75, 90):
            grid[f"noise{sigma}+jpeg{q}"] = chain_damages(noise_damage(float(sigma)), jpeg_damage(q))
    grid["jpeg40+jpeg85"] = chain_damages(jpeg_damage(40), jpeg_damage(85))
    grid["jpeg60+jpeg90"] = chain_damages(jpeg_damage(60), jpeg_damage(90))
    for sigma in (2, 4):
        for first in (50, 70):
            grid[f"blur0.8+noise{sigma}+jpeg{first}+jpeg85"] = chain_damages(
                blur_damage(0.8), noise_damage(float(sigma)), jpeg_damage(first), jpeg_damage(85))
    return grid


def report(path: str) -> None:
    by_damage = defaultdict(list)
    for line in open(path):
        record = json.loads(line)
        by_damage[record["damage"]].append(record)
    print(f"{'damage':<34}{'images':>7}" + "".join(f"{'s' + format(s, 'g'):>8}" for s in STRENGTHS)
          + f"{'auto':>8}{'best':>6}{'gap':>7}  auto's choices")
    for damage, records in by_damage.items():
        fixed = {f"{s:g}": sum(r["psnr"][f"{s:g}"] for r in records) / len(records) for s in STRENGTHS}
        choices = [choose_strength(r["quality"], r["noise"], r["blocks"]) for r in records]
        auto = sum(r["psnr"][f"{c:g}"] for r, c in zip(records, choices)) / len(records)
        best = max(fixed, key=fixed.get)
        print(f"{damage:<34}{len(records):>7}" + "".join(f"{v:>8.2f}" for v in fixed.values())
              + f"{auto:>8.2f}{best:>6}{auto - fixed[best]:>7.2f}  {dict(sorted(Counter(choices).items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="restore-x2")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/grocery-store/val"))
    parser.add_argument("--skip", type=int, default=100, help="leave out the first N images (the scored ones)")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--crop", type=int, default=192, help="score a centre crop of this size (output pixels)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON lines, one per (image, damage)")
    parser.add_argument("--report", metavar="JSONL", help="print the table of an earlier --out and stop")
    args = parser.parse_args()
    if args.report:
        return report(args.report)
    if not args.out:
        parser.error("--out or --report is required")
    torch.set_num_threads(args.threads)
    enhancer = Enhancer.load(args.model)
    scale, grid = enhancer.scale, damage_grid()
    paths = list_images(args.data)[args.skip:args.skip + args.limit]
    started = time.monotonic()
    with open(args.out, "w") as out:
        for index, path in enumerate(paths):
            hr = decode_image(path.read_bytes()).rgb
            top, left = (hr.shape[0] - args.crop) // 2, (hr.shape[1] - args.crop) // 2
            hr = hr[top:top + args.crop, left:left + args.crop]
            clean = imresize_uint8(hr, 1.0 / scale) if scale > 1 else hr
            for number, (damage, apply) in enumerate(grid.items()):
                lr, quality = apply(clean, np.random.default_rng([1, args.skip + index, number]))
                psnr = {f"{s:g}": psnr_ssim_y(enhancer.enhance_many([lr], [s])[0], hr, shave=scale)[0]
                        for s in STRENGTHS}
                out.write(json.dumps({"image": path.name, "damage": damage, "quality": quality,
                                      "noise": estimate_noise(lr), "blocks": block_edges(lr), "psnr": psnr}) + "\n")
            out.flush()
            print(f"{index + 1}/{len(paths)} images, {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
