"""Training throughput: Ray Train (1 worker, 2 workers) against the same loop in plain PyTorch.

Measures images/s of the enhancer's training step in one run, side by side, and prints the
ratios (Ray overhead = plain / Ray-1-worker; scaling = Ray-2 / Ray-1). Timing starts after a
warm-up so process start-up, data loading and DDP set-up are not counted.

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--batch 16] [--patch 64]
"""

import argparse
import json
import time

import numpy as np
import torch

from prodray.degradations import DegradationRanges, degrade
from prodray.models import build_model
from prodray.train.loop import charbonnier


def timed_loop(model, optimizer, steps, warmup, batch, patch, scale, seed, step_hook=None) -> float:
    """images/s of `steps` train steps after `warmup` untimed ones (random HR crops, bicubic LR)."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = torch.from_numpy(rng.integers(0, 256, (64, 3, patch, patch), dtype=np.uint8)).float() / 255
    started = None
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        hr = pool[torch.randint(0, len(pool), (batch,), generator=generator)]
        lr = degrade(hr, scale, DegradationRanges(), generator)
        loss = charbonnier(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def plain(args) -> float:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("rpsnet", scale=2, channels=48, blocks=8)
    return timed_loop(model, torch.optim.AdamW(model.parameters(), 1e-3), args.steps, args.warmup, args.batch, args.patch, 2, 0)


def ray_worker(config):
    import ray.train
    from ray.train.torch import prepare_model

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model = prepare_model(build_model("rpsnet", scale=2, channels=48, blocks=8))
    rank = ray.train.get_context().get_world_rank()
    rate = timed_loop(model, torch.optim.AdamW(model.parameters(), 1e-3), config["steps"], config["warmup"],
                      config["batch"], config["patch"], 2, rank)
    ray.train.report({"images_per_s": rate})


def with_ray(args, workers: int) -> float:
    """Global images/s: every worker runs the same number of steps in lockstep (DDP)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    import tempfile

    trainer = TorchTrainer(ray_worker, train_loop_config={"threads": max(1, args.threads // workers), "steps": args.steps,
                                                          "warmup": args.warmup, "batch": args.batch, "patch": args.patch},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(storage_path=tempfile.mkdtemp(), name=f"bench-{workers}"))
    return trainer.fit().metrics["images_per_s"] * workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import ray
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    plain_rate = plain(args)
    ray_1 = with_ray(args, 1)
    ray_2 = with_ray(args, 2)
    plain_again = plain(args)  # measured twice, before and after, to expose drift on a noisy machine
    baseline = (plain_rate + plain_again) / 2
    result = {"plain_images_per_s": [round(plain_rate, 2), round(plain_again, 2)], "ray_1_worker_images_per_s": round(ray_1, 2),
              "ray_2_workers_images_per_s": round(ray_2, 2), "overhead_ratio_plain_over_ray1": round(baseline / ray_1, 3),
              "scaling_ray2_over_ray1": round(ray_2 / ray_1, 3), "config": vars(args)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
