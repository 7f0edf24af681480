"""Inference speed of every shipped enhancer, side by side in one run: fp32 NCHW (the baseline),
fp32 channels-last, bf16 autocast + channels-last (and fp16 on a GPU), through the `Enhancer`
that bulk, Serve and eval use. Prints images/s, the ratio to the baseline, achieved GFLOP/s per
core (from the model's own FLOP count) and how far each path's 8-bit output is from fp32's.

    .venv/bin/python benchmarks/inference.py [--images 4] [--size 256] [--threads 2] [--repeats 3] [--device cpu]
        [--models restore-x2 /path/to/candidate/export]
"""

import argparse
import os
import time

import numpy as np
import torch

from prodray.enhancer.inference import Enhancer
from prodray.metrics import psnr
from prodray.precision import cpu_flags, resolve

SHIPPED = ("enhancer-x2", "enhancer-x4", "restore-x2", "restore-x4")


def arms(device: str) -> list[tuple[str, str, bool]]:
    """(label, precision, channels_last)."""
    rows = [("fp32 NCHW", "fp32", False), ("fp32 channels-last", "fp32", True), ("bf16 channels-last", "bf16", True)]
    if device == "cuda":
        rows.append(("fp16 channels-last", "fp16", True))
    return rows


def timed(enhancer: Enhancer, images: list[np.ndarray], repeats: int) -> tuple[float, list[np.ndarray]]:
    enhancer.enhance_many(images[:1])  # warm-up: oneDNN / cuDNN pick their kernels for the shape
    best, outputs = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = enhancer.enhance_many(images)
        if enhancer.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return len(images) / best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(SHIPPED),
                        help="shipped names or export folders (default: every shipped enhancer)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # Smooth content with texture, like product photos, rather than pure noise.
    yy, xx = np.mgrid[0:args.size, 0:args.size]
    base = np.stack([xx, yy, (xx + yy) // 2], axis=2) % 256
    images = [np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8) for _ in range(args.images)]
    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx") or f == "avx512f")
    card = torch.cuda.get_device_name() if args.device == "cuda" else os.uname().machine
    print(f"device {args.device} ({card}); torch {torch.__version__}; {args.threads} threads; CPU flags {flags}; "
          f"auto resolves to {resolve('auto', args.device)}")
    print(f"{args.images} images of {args.size}x{args.size}, best of {args.repeats}")
    for name in args.models:
        reference, baseline = None, None
        for label, precision, channels_last in arms(args.device):
            enhancer = Enhancer.load(name, device=args.device, precision=precision, channels_last=channels_last)
            rate, outputs = timed(enhancer, images, args.repeats)
            flops = enhancer.model.flops_per_input_pixel() * args.size * args.size
            if reference is None:
                reference, baseline = outputs, rate
            gap = min(psnr(a, b) for a, b in zip(outputs, reference))
            cores = args.threads if args.device == "cpu" else 1
            print(f"  {enhancer.model_id} {label:<20} {rate:7.2f} images/s  x{rate / baseline:5.2f}  "
                  f"{rate * flops / 1e9 / cores:7.1f} GFLOP/s per core  vs fp32 NCHW: "
                  + ("identical" if gap == float("inf") else f"{gap:.1f} dB (worst image)"))


if __name__ == "__main__":
    main()
