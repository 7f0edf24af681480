"""Self-ensemble: what averaging over the 8 flips/turns buys and costs, side by side in one run.

For each shipped enhancer (or --model) and each benchmark folder, the standard SR protocol
(prodray.enhancer.evaluation.evaluate_sr) with the plain model and with `Enhancer(self_ensemble=True)`:
PSNR/SSIM on Y, and the wall time of each pass over the folder (same process, same threads).

    .venv/bin/python benchmarks/self_ensemble.py [--data ../shared/data/sr-bench] [--threads 2]
"""

import argparse
import time
from pathlib import Path

import torch

from prodray.enhancer.evaluation import evaluate_sr
from prodray.enhancer.inference import Enhancer


def timed_scores(enhancer: Enhancer, folder: Path, scale: int) -> tuple[dict, float]:
    started = time.perf_counter()
    result = evaluate_sr(folder, scale, {"model": lambda lr, s: enhancer.enhance(lr).rgb})
    return result["model"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/sr-bench"),
                        help="folder holding Set5/ and Set14/")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<24} {'set':<6} {'plain dB':>9} {'ens8 dB':>8} {'gain':>6} "
          f"{'plain s':>8} {'ens8 s':>7} {'time x':>7}")
    for scale in (2, 4):
        plain = Enhancer.load(f"enhancer-x{scale}")
        ensemble = Enhancer.load(f"enhancer-x{scale}", self_ensemble=True)
        for name in ("Set5", "Set14"):
            folder = Path(args.data) / name
            base, base_s = timed_scores(plain, folder, scale)
            ens, ens_s = timed_scores(ensemble, folder, scale)
            print(f"{plain.model_id + f' x{scale}':<24} {name:<6} {base['psnr_y']:9.2f} {ens['psnr_y']:8.2f} "
                  f"{ens['psnr_y'] - base['psnr_y']:+6.2f} {base_s:8.1f} {ens_s:7.1f} {ens_s / base_s:7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
