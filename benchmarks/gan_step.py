"""GAN training-step throughput, side by side: the step with plain NCHW fp32 tensors (the baseline)
against NHWC fp32 and NHWC in reduced precision (bf16 on a CPU, bf16 and fp16 on a GPU).

Pure torch (prodray.gan.training.GanTraining, no Ray), random uint8 images at the resolution and
with the attribute vocabularies of the shipped generator of that dataset, the config's networks and
optimizer settings. Arms run in interleaved rounds so drift on a shared machine hits them alike;
prints images/s per round, the median of each arm and its ratio to the baseline.

    .venv/bin/python benchmarks/gan_step.py [--config prodray/configs/gan_fashion_mnist.yaml]
        [--device cpu|cuda] [--batch 64] [--threads 1] [--steps 12] [--rounds 3]
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from prodray.config import GanTrainConfig, load_config
from prodray.gan.training import GanTraining, model_config, sample_batch
from prodray.io.artifacts import SHIPPED_DIR
from prodray.precision import resolve


def build_arm(cfg: GanTrainConfig, mconfig: dict, device: torch.device, layout: str, precision: str) -> GanTraining:
    arm_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"precision": precision})})
    training = GanTraining(arm_cfg, mconfig, device)
    if layout == "nchw":  # undo the shipped NHWC weights (parameters stay the optimizers' own)
        for network in training.networks.values():
            network.to(memory_format=torch.contiguous_format)
    return training


def images_per_s(training: GanTraining, pool, batch: int, steps: int, layout: str) -> float:
    device = training.device
    start = time.perf_counter()
    for _ in range(steps):
        real, attributes = sample_batch(pool, batch, training.rng, device)
        if layout == "nchw":
            real = real.contiguous()
        training.train_step(real, attributes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="prodray/configs/gan_fashion_mnist.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per arm per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = load_config(GanTrainConfig, args.config, ["data.prepared=unused"])
    stem = args.config.rsplit("/", 1)[-1].removesuffix(".yaml")  # gan_fashion_mnist -> gan-fashion-mnist
    shipped = json.loads((SHIPPED_DIR / stem.replace("_", "-") / "config.json").read_text())
    resolution, vocab = shipped["resolution"], shipped["vocab"]
    mconfig = model_config(cfg, {"attributes": vocab, "resolution": resolution})
    rng = np.random.default_rng(0)
    pool = (rng.integers(0, 256, (4096, resolution, resolution, 3), dtype=np.uint8),
            {name: rng.integers(0, len(values), 4096) for name, values in vocab.items()})

    reduced = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    arms = [("nchw", "fp32"), ("nhwc", "fp32")] + [("nhwc", precision) for precision in reduced]
    name = {arm: f"{arm[0].upper()} {arm[1]}" + (" (baseline)" if arm == arms[0] else "") for arm in arms}
    print(f"run.precision=auto resolves to {resolve('auto', device)} here")
    trainings = {arm: build_arm(cfg, mconfig, device, arm[0], arm[1]) for arm in arms}
    for arm, training in trainings.items():  # warm-up: allocator, oneDNN / cuDNN kernel choice
        images_per_s(training, pool, args.batch, 3, arm[0])
    rates = {arm: [] for arm in arms}
    for round_index in range(args.rounds):
        for arm, training in trainings.items():
            rates[arm].append(images_per_s(training, pool, args.batch, args.steps, arm[0]))
        print(f"round {round_index + 1}: " + ", ".join(f"{name[a]} {rates[a][-1]:.1f}" for a in arms), flush=True)

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"\n{stem} at {resolution}px, batch {args.batch}, {label}; images/s, median of {args.rounds} rounds "
          f"of {args.steps} steps:")
    baseline = statistics.median(rates[arms[0]])
    for arm in arms:
        median = statistics.median(rates[arm])
        print(f"  {name[arm]:<34} {median:8.1f}   x{median / baseline:.2f}")


if __name__ == "__main__":
    main()
