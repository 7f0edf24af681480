"""Calibration data for `auto` restoration strength: for a grid of damages (JPEG levels, noise,
noise under JPEG, double JPEG, blur + noise + two JPEG saves, blur) on product photos, the
features `auto` can see (the file's JPEG quality, the noise estimate, the block-edge measure) and
the PSNR-Y of each fixed strength. Run it on photos that the strength benchmark and the catalog
eval do not score (the default skips the first 100 val images); `--fit` searches the block and noise
ranges of `auto` on that record, and `--report` prints, per damage,
the best fixed strength and how far below it `auto` (enhancer/strength.choose_strength, from the
recorded measurements) lands.

    .venv/bin/python scripts/calibrate_strength.py --skip 100 --limit 16 --threads 2 --out runs/strength-calib.jsonl
    .venv/bin/python scripts/calibrate_strength.py --fit runs/strength-calib.jsonl
    .venv/bin/python scripts/calibrate_strength.py --report runs/strength-calib.jsonl
"""

import argparse
import itertools
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from prodray.enhancer.evaluation import blur_damage, chain_damages, jpeg_damage, list_images, noise_damage
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.strength import GRID, block_edges, choose_strength, estimate_noise
from prodray.io.codec import decode_image
from prodray.io.images import imresize_uint8
from prodray.metrics import psnr_ssim_y


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


def read_records(path: str) -> dict:
    by_damage = defaultdict(list)
    for line in open(path):
        record = json.loads(line)
        by_damage[record["damage"]].append(record)
    return by_damage


def auto_psnr(records: list, **ranges) -> tuple[float, list]:
    choices = [choose_strength(r["quality"], r["noise"], r["blocks"], **ranges) for r in records]
    return sum(r["psnr"][f"{c:g}"] for r, c in zip(records, choices)) / len(records), choices


def fixed_psnr(records: list) -> dict:
    return {f"{s:g}": sum(r["psnr"][f"{s:g}"] for r in records) / len(records) for s in GRID}


def report(path: str) -> None:
    print(f"{'damage':<34}{'images':>7}" + "".join(f"{'s' + format(s, 'g'):>8}" for s in GRID)
          + f"{'auto':>8}{'best':>6}{'gap':>7}  auto's choices")
    for damage, records in read_records(path).items():
        fixed = fixed_psnr(records)
        auto, choices = auto_psnr(records)
        best = max(fixed, key=fixed.get)
        print(f"{damage:<34}{len(records):>7}" + "".join(f"{v:>8.2f}" for v in fixed.values())
              + f"{auto:>8.2f}{best:>6}{auto - fixed[best]:>7.2f}  {dict(sorted(Counter(choices).items()))}")


def fit(path: str) -> None:
    """The block and noise ranges with the best worst-case gap to the best fixed strength (blur alone
    left out: `auto` has no blur measure), then the best mean gap; prints the five best."""
    by_damage = {damage: records for damage, records in read_records(path).items() if "+" in damage
                 or not damage.startswith("blur")}
    best_fixed = {damage: max(fixed_psnr(records).values()) for damage, records in by_damage.items()}
    scored = []
    for blocks_range in itertools.combinations((0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.25, 0.3), 2):
        for noise_range in itertools.product((1.0, 1.2, 1.4, 1.6), (4.0, 4.5, 5.0, 5.5, 6.0)):
            gaps = [auto_psnr(records, blocks_range=blocks_range, noise_range=noise_range)[0] - best_fixed[damage]
                    for damage, records in by_damage.items()]
            scored.append((min(gaps), sum(gaps) / len(gaps), blocks_range, noise_range))
    for worst, mean, blocks_range, noise_range in sorted(scored, reverse=True)[:5]:
        print(f"blocks none/full {blocks_range}, noise none/full {noise_range}: worst gap {worst:.3f} dB, "
              f"mean {mean:.3f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="restore-x2")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/grocery-store/val"))
    parser.add_argument("--skip", type=int, default=100, help="leave out the first N images (the scored ones)")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--crop", type=int, default=0, help="score a centre crop of this size (output px), 0: whole")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON lines, one per (image, damage)")
    parser.add_argument("--report", metavar="JSONL", help="print the table of an earlier --out and stop")
    parser.add_argument("--fit", metavar="JSONL", help="search the block and noise ranges on an earlier --out")
    args = parser.parse_args()
    if args.report or args.fit:
        return report(args.report) if args.report else fit(args.fit)
    if not args.out:
        parser.error("--out, --report or --fit is required")
    torch.set_num_threads(args.threads)
    enhancer = Enhancer.load(args.model)
    scale, grid = enhancer.scale, damage_grid()
    paths = list_images(args.data)[args.skip:args.skip + args.limit]
    started = time.monotonic()
    with open(args.out, "w") as out:
        for index, path in enumerate(paths):
            hr = decode_image(path.read_bytes()).rgb
            if args.crop:
                top, left = (hr.shape[0] - args.crop) // 2, (hr.shape[1] - args.crop) // 2
                hr = hr[top:top + args.crop, left:left + args.crop]
            hr = hr[:hr.shape[0] - hr.shape[0] % scale, :hr.shape[1] - hr.shape[1] % scale]
            clean = imresize_uint8(hr, 1.0 / scale) if scale > 1 else hr
            for number, (damage, apply) in enumerate(grid.items()):
                lr, quality = apply(clean, np.random.default_rng([1, args.skip + index, number]))
                psnr = {f"{s:g}": psnr_ssim_y(enhancer.enhance_many([lr], [s])[0], hr, shave=scale)[0]
                        for s in GRID}
                out.write(json.dumps({"image": path.name, "damage": damage, "quality": quality,
                                      "noise": estimate_noise(lr), "blocks": block_edges(lr), "psnr": psnr}) + "\n")
            out.flush()
            print(f"{index + 1}/{len(paths)} images, {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
