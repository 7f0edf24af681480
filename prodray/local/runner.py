"""Train the product GAN in one process, without Ray: for a lent GPU machine that has torch but no
Ray, or a quick experiment. Same config, same step (`GanTraining`), same run folder as
jobs/train_gan.py (config.json, stats.jsonl, samples/, export/), plus `checkpoint/` (the full
state, rewritten each time). Stops at optim.total_images or after --minutes, whichever comes
first, then checkpoints and exports; run again and it resumes from `checkpoint/`. With
`--decay-last F` the schedule is fitted to the time: after every tick, optim.total_images becomes
what the mean rate so far reaches by the deadline, and the lr falls over its last F (once the fall
has begun, its start stays put).

    python -m prodray.local.runner --config prodray/configs/gan_fashion_mnist.yaml \\
        [--minutes M [--decay-last F]] [--device cuda|cpu] [key=value ...]
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from prodray.io import storage
from prodray.config import ConfigError, GanTrainConfig, load_config
from prodray.gan.data import load_split, read_vocab
from prodray.training import count_parameters
from prodray.gan.training import (GanTraining, TickStats, check_attributes, export_generator, model_config,
                                    pool_to_device, sample_batch)
from prodray.run_files import RunFiles, format_metrics


def load_pool(prepared: str, names: list[str], device: torch.device, log) -> tuple[torch.Tensor, dict]:
    """The whole train split on `device`: uint8 NHWC images + attribute index tensors."""
    split = load_split(prepared, "train", threads=min(16, os.cpu_count() or 1))
    log(f"training pool: {len(split)} images from {prepared}")
    return pool_to_device((split.images, {name: split.attributes[name] for name in names}), device)


def save_checkpoint(training: GanTraining, run_dir: Path) -> Path:
    """Full state to run_dir/checkpoint, swapped in whole: a crash mid-write leaves the previous
    state as checkpoint/ or, during the swap itself, as checkpoint.old/ (which `latest_checkpoint`
    falls back to)."""
    final, partial = run_dir / "checkpoint", run_dir / "checkpoint.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    training.save(partial)
    if final.exists():
        old = run_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old)
    else:
        partial.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    return next((p for p in (run_dir / "checkpoint", run_dir / "checkpoint.old") if p.is_dir()), None)


def fit_schedule(cfg: GanTrainConfig, images_seen: int, images_per_s: float, seconds_left: float,
                 decay_last: float, decay_began_at: int | None = None) -> GanTrainConfig:
    """The config with optim.total_images set to what `images_per_s` reaches in `seconds_left`
    (95 %: ticks cost time too) and the lr decaying over the last `decay_last` of the run, or from
    `decay_began_at` when the decay is already under way (so the lr never jumps back up)."""
    total = images_seen + max(1, int(0.95 * images_per_s * seconds_left))
    if decay_began_at is not None:
        decay_from = decay_began_at
    else:
        decay_from = min(int(total * (1 - decay_last)), total - 1) if decay_last > 0 else None
    optim = cfg.optim.model_copy(update={"total_images": total, "lr_decay_from_images": decay_from})
    return cfg.model_copy(update={"optim": optim})


def train(cfg: GanTrainConfig, device: torch.device, minutes: float | None = None, decay_last: float | None = None,
          log=print) -> dict:
    """Run (or resume) the run folder run.storage_path/run.name; returns the last tick's metrics
    plus `export` (the model id) and `stopped` ("total_images" or "minutes")."""
    if storage.is_s3(cfg.run.storage_path):
        raise ConfigError("config field run.storage_path: the one-process trainer writes a local folder, "
                          f"not {cfg.run.storage_path}")
    meta = read_vocab(cfg.data.prepared)
    check_attributes(cfg, meta)
    mconfig = model_config(cfg, meta)
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    files = RunFiles(str(run_dir))
    files.write_config(cfg)
    if device.type == "cpu":
        torch.set_num_threads(cfg.run.threads_per_worker or os.cpu_count() or 1)

    training = GanTraining(cfg, mconfig, device)
    resumed_digest, checkpoint = None, latest_checkpoint(run_dir)
    if checkpoint:
        resumed_digest = training.resume(checkpoint, log)
        log(f"resumed from {checkpoint.name}/ at step {training.step}, {training.images_seen} images seen "
            f"(state {resumed_digest})")
    log(f"generator {count_parameters(training.generator):,} parameters, discriminator "
        f"{count_parameters(training.discriminator):,}; {mconfig['resolution']}px on {device}"
        f"{' with mixed precision' if training.use_amp else ''}; run folder {run_dir}")
    pool = load_pool(cfg.data.prepared, list(mconfig["vocab"]), device, log)

    started, images_at_start = time.perf_counter(), training.images_seen
    deadline = started + minutes * 60 if minutes else None
    next_tick = (training.images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
    tick_start, tick_images, tick_stats = started, 0, TickStats()
    stopped, metrics = None, {}
    fit, fitted = decay_last is not None and deadline is not None, False
    while stopped is None:
        real, attributes = sample_batch(pool, cfg.data.batch_size, training.rng, device)
        tick_stats.add(training.train_step(real, attributes))
        tick_images += cfg.data.batch_size
        if training.images_seen >= cfg.optim.total_images:
            stopped = "total_images"
        elif deadline and time.perf_counter() >= deadline:
            stopped = "minutes"
        if training.images_seen < next_tick and stopped is None:
            continue

        # ---- tick: stats line, sample grid, checkpoint every run.checkpoint_ticks and at the end.
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - tick_start
        metrics = {**training.tick_metrics(tick_images, elapsed, tick_stats), "time": time.time()}
        if resumed_digest:
            metrics["resumed_state"], resumed_digest = resumed_digest, None
        files.append_stats(metrics)
        log(format_metrics(metrics))
        tick_index = training.images_seen // cfg.run.tick_images
        files.save_sample(f"tick-{tick_index:06d}.png", training.grid())
        if stopped or tick_index % cfg.run.checkpoint_ticks == 0:
            save_checkpoint(training, run_dir)
        if fit and stopped is None:  # every tick, on the mean rate so far: the rate drifts over a run
            now, decay_from = time.perf_counter(), cfg.optim.lr_decay_from_images
            began = decay_from if fitted and decay_from is not None and training.images_seen >= decay_from else None
            rate = (training.images_seen - images_at_start) / (now - started)
            refit = fit_schedule(cfg, training.images_seen, rate, deadline - now, decay_last, began)
            if not fitted or abs(refit.optim.total_images - cfg.optim.total_images) > 0.01 * cfg.optim.total_images:
                log(f"schedule fitted to the time left: optim.total_images={refit.optim.total_images} "
                    f"optim.lr_decay_from_images={refit.optim.lr_decay_from_images}")
            cfg = training.cfg = refit
            files.write_config(cfg)
            fitted = True
        next_tick = (training.images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
        tick_start, tick_images, tick_stats = time.perf_counter(), 0, TickStats()

    model_id = export_generator(str(run_dir / "export"), training.generator_ema, mconfig, training.images_seen,
                                meta.get("source"))
    log(f"stopped at {training.images_seen} images ({stopped}) after {time.perf_counter() - started:.0f} s; "
        f"exported {model_id} to {run_dir / 'export'}")
    return {**metrics, "export": model_id, "stopped": stopped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="GAN config YAML (prodray/configs/gan_*.yaml)")
    parser.add_argument("--minutes", type=float, help="stop (checkpoint + export) after this many minutes")
    parser.add_argument("--decay-last", type=float, metavar="F",
                        help="with --minutes: fit optim.total_images to the time after every tick and "
                             "decay the lr over the last F (0-1) of it")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.total_images=1000000")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.decay_last is not None and (args.minutes is None or not 0 <= args.decay_last < 1):
        parser.error("--decay-last needs --minutes and a fraction in [0, 1)")
    try:
        cfg = load_config(GanTrainConfig, args.config, args.overrides).resolved()
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        train(cfg, device, args.minutes, args.decay_last, log=lambda msg: print(f"[gan] {msg}", flush=True))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
