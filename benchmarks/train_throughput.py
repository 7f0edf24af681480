"""Training throughput: Ray Train (1 worker, 2 workers) against the same loop in plain PyTorch.

Measures images/s of the enhancer's training step in one run, side by side, and prints the
ratios (Ray overhead = plain / Ray-1-worker; scaling = Ray-2 / Ray-1). Every variant runs with
one torch thread per process, so the comparison is per core. Timing starts after a warm-up so
process start-up, DDP set-up and the first (slow) steps are not counted.

Each Ray worker writes its measured rate to a JSON file in a folder the driver owns (one file
per rank): Ray Train V2's `Result.metrics` only carries metrics reported *with a checkpoint*
(it is None otherwise), so the driver does not depend on it.

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--warmup 5] [--batch 16] [--patch 64]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prodray.enhancer.degradations import DegradationRanges, degrade
from prodray.enhancer.losses import charbonnier
from prodray.enhancer.model import build_model

MODEL = {"scale": 2, "channels": 48, "blocks": 8}


def timed_loop(model, optimizer, steps, warmup, batch, patch, scale, seed) -> float:
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


def one_thread() -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def plain(args) -> float:
    one_thread()
    torch.manual_seed(0)
    model = build_model("rpsnet", **MODEL)
    return timed_loop(model, torch.optim.AdamW(model.parameters(), 1e-3), args.steps, args.warmup, args.batch,
                      args.patch, 2, 0)


def ray_worker(config):
    import ray.train
    from ray.train.torch import prepare_model

    one_thread()
    torch.manual_seed(0)
    model = prepare_model(build_model("rpsnet", **MODEL))
    rank = ray.train.get_context().get_world_rank()
    rate = timed_loop(model, torch.optim.AdamW(model.parameters(), 1e-3), config["steps"], config["warmup"],
                      config["batch"], config["patch"], 2, rank)
    Path(config["out"], f"rank-{rank}.json").write_text(json.dumps({"images_per_s": rate}))
    ray.train.report({"images_per_s": rate})
    return rate


def with_ray(args, workers: int, out: Path) -> float:
    """Global images/s = sum of the ranks' local rates (DDP keeps them in lockstep)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = out / f"workers-{workers}"
    folder.mkdir()
    trainer = TorchTrainer(ray_worker,
                           train_loop_config={"steps": args.steps, "warmup": args.warmup, "batch": args.batch,
                                              "patch": args.patch, "out": str(folder)},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(storage_path=str(out / "runs"), name=f"bench-{workers}"))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run with {workers} worker(s) failed: {result.error}")
    rates = [json.loads((folder / f"rank-{rank}.json").read_text())["images_per_s"] for rank in range(workers)]
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    args = parser.parse_args()
    import ray
    # Workers ask for 0.5 CPU each, so two fit on a 2-core machine beside the Train controller.
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, logging_level="ERROR")
    out = Path(tempfile.mkdtemp(prefix="prodray-bench-"))
    started = time.time()
    plain_rate = plain(args)
    ray_1 = with_ray(args, 1, out)
    ray_2 = with_ray(args, 2, out)
    plain_again = plain(args)  # measured twice, before and after, to expose drift on a noisy machine
    ray.shutdown()
    baseline = (plain_rate + plain_again) / 2
    result = {"plain_images_per_s": [round(plain_rate, 2), round(plain_again, 2)],
              "ray_1_worker_images_per_s": round(ray_1, 2), "ray_2_workers_images_per_s": round(ray_2, 2),
              "overhead_ratio_plain_over_ray1": round(baseline / ray_1, 3),
              "scaling_ray2_over_ray1": round(ray_2 / ray_1, 3),
              "threads_per_process": 1, "cpu_count": os.cpu_count(), "wall_s": round(time.time() - started, 1),
              "config": vars(args)}
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
