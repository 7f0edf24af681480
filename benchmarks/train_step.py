"""Enhancer training-step throughput, side by side: the PSNR stage's step (PsnrTraining.train_step,
the step both runners run) with NCHW fp32 tensors (the baseline), channels-last fp32, and
channels-last in reduced precision (bf16 on a CPU; bf16 and fp16 on a GPU). Pure torch, no Ray;
random HR patches, bicubic LR. Arms run in interleaved rounds so drift on a shared machine hits
them alike; prints images/s per round, each arm's median and its ratio to the baseline.

    .venv/bin/python benchmarks/train_step.py [--batch 16] [--patch 96] [--threads 2] [--steps 10] [--rounds 3]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from prodray.config import EnhancerTrainConfig, load_config
from prodray.enhancer.training import PsnrTraining
from prodray.precision import cpu_flags, resolve


def build_arm(args, layout: str, precision: str) -> PsnrTraining:
    cfg = load_config(EnhancerTrainConfig, None, [
        "data.sources=[unused]", f"data.batch_size={args.batch}", f"data.patch_size={args.patch}",
        f"data.patches_per_image={args.batch}", "model.channels=48", "model.blocks=8", f"run.precision={precision}"])
    torch.manual_seed(0)
    training = PsnrTraining(cfg, {}, args.device)
    rng = np.random.default_rng(0)
    training.pool = [rng.integers(0, 256, (args.patch * 2, args.patch * 2, 3), dtype=np.uint8) for _ in range(32)]
    if layout == "nchw":  # undo the shipped channels-last weights (the parameters stay the optimizer's)
        for network in training.networks.values():
            network.to(memory_format=torch.contiguous_format)
    return training


def images_per_s(training: PsnrTraining, steps: int, layout: str) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        lr, hr = training.next_batch()
        if layout == "nchw":
            lr, hr = lr.contiguous(), hr.contiguous()
        training.train_step(lr, hr)
    if training.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * training.cfg.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=96, help="HR patch side (LR is patch / 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reduced = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    arms = [("nchw", "fp32"), ("channels-last", "fp32")] + [("channels-last", p) for p in reduced]
    trainings = {arm: build_arm(args, *arm) for arm in arms}
    for arm, training in trainings.items():  # warm-up: allocator, oneDNN / cuDNN kernel choice
        images_per_s(training, 2, arm[0])
    rates = {arm: [] for arm in arms}
    for round_index in range(args.rounds):
        for arm, training in trainings.items():
            rates[arm].append(images_per_s(training, args.steps, arm[0]))
        print(f"round {round_index + 1}: " + ", ".join(f"{a[0]} {a[1]} {rates[a][-1]:.1f}" for a in arms), flush=True)

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {args.threads} thread(s), bf16 flags {sorted(f for f in cpu_flags() if 'bf16' in f) or 'none'}")
    print(f"\nenhancer x2 (48 ch, 8 blocks) train step, batch {args.batch} of {args.patch // 2} px LR patches, "
          f"{label}; "
          f"run.precision=auto is {resolve('auto', device)} here; images/s, median of {args.rounds} rounds:")
    baseline = statistics.median(rates[arms[0]])
    for arm in arms:
        median = statistics.median(rates[arm])
        print(f"  {arm[0]:<14} {arm[1]:<5} {median:8.1f}   x{median / baseline:.2f}")


if __name__ == "__main__":
    main()
