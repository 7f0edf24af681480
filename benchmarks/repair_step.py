"""Repair training-step throughput, side by side: RepairTraining.train_step (the step both runners
run: generator, discriminator, EMA, mask drawing) in fp32 (the baseline) and in reduced precision
(bf16 on a CPU; bf16 and fp16 on a GPU), both channels-last as shipped. Pure torch, no Ray; random
photos. Arms run in interleaved rounds so drift on a shared machine hits them alike; prints
images/s per round, each arm's median and its ratio to the baseline.

    .venv/bin/python benchmarks/repair_step.py [--batch 8] [--patch 128] [--threads 2] [--seconds 10] [--rounds 2]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from prodray.config import RepairTrainConfig, load_config
from prodray.precision import cpu_flags
from prodray.repair.training import RepairTraining


def build_arm(args, precision: str) -> RepairTraining:
    cfg = load_config(RepairTrainConfig, "prodray/configs/repair.yaml", [
        "data.sources=[unused]", "data.val_folder=null", f"data.batch_size={args.batch}",
        f"data.patch_size={args.patch}", f"run.precision={precision}"])
    torch.manual_seed(0)
    training = RepairTraining(cfg, {}, args.device)
    rng = np.random.default_rng(0)
    training.pool = [rng.integers(0, 256, (2 * args.patch, 2 * args.patch, 3), dtype=np.uint8) for _ in range(16)]
    training.train_step(*training.next_batch())  # warm-up
    return training


def images_per_s(training: RepairTraining, seconds: float, batch: int) -> float:
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        training.train_step(*training.next_batch())
        images += batch
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    print(f"device {args.device}, {args.threads} threads, batch {args.batch} of {args.patch}x{args.patch}; "
          f"CPU flags: {sorted(cpu_flags() & {'amx_bf16', 'avx512_bf16', 'avx512f'})}")
    arms = {name: build_arm(args, name) for name in names}
    rates = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name, training in arms.items():
            rates[name].append(images_per_s(training, args.seconds, args.batch))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items()), flush=True)
    base = statistics.median(rates["fp32"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<5} {median:7.1f} images/s  x{median / base:.2f}")


if __name__ == "__main__":
    main()
