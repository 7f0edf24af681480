"""Train any training kind in one process, without Ray: for a lent GPU machine that has torch but
no Ray, or a quick experiment. Same config, same `Training`, same run folder as jobs/train.py
(config.json, stats.jsonl, samples/, export/), plus `checkpoint/` (the full state, rewritten each
time). Stops at optim.total_images or after --minutes, whichever comes first, then checkpoints
and exports; run again and it resumes from `checkpoint/`. With `--fit` the schedule is fitted to
the time: after every tick, optim.total_images becomes what the mean rate so far reaches by the
deadline (a cosine lr ends at the deadline); with `--decay-last F` (kinds whose lr decays from
optim.lr_decay_from_images, such as the GAN) the lr also falls over its last F (once the fall has
begun, its start stays put). On a GPU the next batch is drawn on a thread while one trains.

    python -m prodray.local.runner --config prodray/configs/gan_fashion_mnist.yaml \\
        [--minutes M [--fit | --decay-last F]] [--device cuda|cpu] [key=value ...]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from prodray.config import ConfigError, load_train_config, train_config_from_tree
from prodray.families import TRAININGS
from prodray.io import storage
from prodray.run_files import RunFiles
from prodray.training import Ticks, checkpoint_due, record_tick, torch_threads


def read_pool_batches(training_class, cfg, context: dict, threads: int):
    """The kind's rows read and decoded in batches by `read_rows`, on a thread pool."""
    rows = training_class.source_rows(cfg, context)
    size = training_class.read_batch_size
    chunks = [{key: [row[key] for row in rows[i:i + size]] for key in rows[0]} for i in range(0, len(rows), size)]
    cfg_json = cfg.model_dump(mode="json")
    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(lambda chunk: training_class.read_rows(chunk, cfg_json, context), chunks)


def save_checkpoint(training, run_dir: Path) -> Path:
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


def fit_schedule(cfg, images_seen: int, images_per_s: float, seconds_left: float, decay_last: float | None,
                 decay_began_at: int | None = None):
    """The config with optim.total_images set to what `images_per_s` reaches in `seconds_left`
    (95 %: ticks cost time too) and, unless `decay_last` is None, the lr decaying over the last
    `decay_last` of the run, or from `decay_began_at` when the decay is already under way (so the lr
    never jumps back up)."""
    total = images_seen + max(1, int(0.95 * images_per_s * seconds_left))
    if decay_last is None:
        return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"total_images": total})})
    if decay_began_at is not None:
        decay_from = decay_began_at
    else:
        decay_from = min(int(total * (1 - decay_last)), total - 1) if decay_last > 0 else None
    optim = cfg.optim.model_copy(update={"total_images": total, "lr_decay_from_images": decay_from})
    return cfg.model_copy(update={"optim": optim})


def train(cfg, device: torch.device, minutes: float | None = None, decay_last: float | None = None,
          log=print, fit_time: bool = False) -> dict:
    """Run (or resume) the run folder run.storage_path/run.name; returns the last tick's metrics
    plus `export` (the model id) and `stopped` ("total_images" or "minutes")."""
    if storage.is_s3(cfg.run.storage_path):
        raise ConfigError("config field run.storage_path: the one-process runner writes a local folder, "
                          f"not {cfg.run.storage_path}")
    if decay_last is not None and "lr_decay_from_images" not in type(cfg.optim).model_fields:
        raise ConfigError(f"--decay-last: kind {cfg.kind!r} has no optim.lr_decay_from_images to fit")
    training_class = TRAININGS[cfg.kind]
    context = training_class.prepare(cfg)
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    files = RunFiles(str(run_dir))
    files.write_config(cfg)
    if device.type == "cpu":
        torch.set_num_threads(torch_threads(cfg, 1, os.cpu_count()))

    training = training_class(cfg, context, device)
    resumed_digest, checkpoint = None, latest_checkpoint(run_dir)
    if checkpoint:
        resumed_digest = training.resume(checkpoint, log)
        log(f"resumed from {checkpoint.name}/ at step {training.step}, {training.images_seen} images seen "
            f"(state {resumed_digest})")
    log(f"{training.describe()}; run folder {run_dir}")
    training.load_pool(read_pool_batches(training_class, cfg, context, min(16, os.cpu_count() or 1)), log)

    started, images_at_start = time.perf_counter(), training.images_seen
    deadline = started + minutes * 60 if minutes else None
    ticks, stopped, metrics = Ticks(cfg.run.tick_images, training.images_seen), None, {}
    fit, fitted = (fit_time or decay_last is not None) and deadline is not None, False
    prefetch = ThreadPoolExecutor(1) if device.type == "cuda" else None  # keeps a fast GPU fed
    upcoming = prefetch.submit(training.next_batch) if prefetch else None
    while stopped is None:
        batch = upcoming.result() if prefetch else training.next_batch()
        if prefetch:
            upcoming = prefetch.submit(training.next_batch)
        ticks.add(training.train_step(*batch), cfg.data.batch_size)
        if training.images_seen >= cfg.optim.total_images:
            stopped = "total_images"
        elif deadline and time.perf_counter() >= deadline:
            stopped = "minutes"
        if not ticks.due(training.images_seen) and stopped is None:
            continue

        # ---- tick: stats line, sample grid, checkpoint every run.checkpoint_ticks and at the end.
        metrics, tick_index = ticks.close(training), ticks.index(training.images_seen)
        if resumed_digest:
            metrics["resumed_state"], resumed_digest = resumed_digest, None
        record_tick(training, files, metrics, tick_index, log)
        if stopped or checkpoint_due(cfg, tick_index, training.images_seen):
            save_checkpoint(training, run_dir)
        if fit and stopped is None:  # every tick, on the mean rate so far: the rate drifts over a run
            now, decay_from = time.perf_counter(), getattr(cfg.optim, "lr_decay_from_images", None)
            began = decay_from if fitted and decay_from is not None and training.images_seen >= decay_from else None
            rate = (training.images_seen - images_at_start) / (now - started)
            refit = fit_schedule(cfg, training.images_seen, rate, deadline - now, decay_last, began)
            if not fitted or abs(refit.optim.total_images - cfg.optim.total_images) > 0.01 * cfg.optim.total_images:
                decay = getattr(refit.optim, "lr_decay_from_images", None)
                log(f"schedule fitted to the time left: optim.total_images={refit.optim.total_images}"
                    + (f" optim.lr_decay_from_images={decay}" if decay is not None else ""))
            cfg = training.cfg = refit
            files.write_config(cfg)
            fitted = True

    if prefetch:
        prefetch.shutdown(cancel_futures=True)
    model_id = training.export(str(run_dir / "export"))
    log(f"stopped at {training.images_seen} images ({stopped}) after {time.perf_counter() - started:.0f} s; "
        f"exported {model_id} to {run_dir / 'export'}")
    return {**metrics, "export": model_id, "stopped": stopped}


def export_checkpoint(run: str, checkpoint: str, export_uri: str) -> str:
    """Export a checkpoint (local folder or s3:// prefix, e.g. of a run stopped early) like the end
    of training does; returns the model id. The kind and sizes come from the run's config.json."""
    cfg = train_config_from_tree(json.loads(storage.get_bytes(storage.join(run, "config.json"))))
    training_class = TRAININGS[cfg.kind]
    training = training_class(cfg, training_class.prepare(cfg), torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="prodray-export-") as folder:
        for name in [*training.networks, "state"]:
            file = f"{name}.safetensors" if name != "state" else "state.pt"
            (Path(folder) / file).write_bytes(storage.get_bytes(storage.join(checkpoint, file)))
        training.resume(Path(folder), log=lambda _: None)
    return training.export(export_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config YAML (prodray/configs/*.yaml)")
    parser.add_argument("--minutes", type=float, help="stop (checkpoint + export) after this many minutes")
    parser.add_argument("--decay-last", type=float, metavar="F",
                        help="with --minutes: fit optim.total_images to the time after every tick and "
                             "decay the lr over the last F (0-1) of it")
    parser.add_argument("--fit", action="store_true",
                        help="with --minutes: fit optim.total_images to the time after every tick")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.total_images=1000000")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.decay_last is not None and (args.minutes is None or not 0 <= args.decay_last < 1):
        parser.error("--decay-last needs --minutes and a fraction in [0, 1)")
    if args.fit and args.minutes is None:
        parser.error("--fit needs --minutes")
    try:
        cfg = load_train_config(args.config, args.overrides).resolved()
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        train(cfg, device, args.minutes, args.decay_last,
              log=lambda msg: print(f"[{TRAININGS[cfg.kind].name}] {msg}", flush=True), fit_time=args.fit)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
