"""Ray Train shell for the conditional product GAN: TorchTrainer builder and the per-worker loop.

Owns the wiring: Ray Data reads the prepared manifest into each worker's in-memory pool, the
networks are wrapped for DDP (G and D each on their own), and rank 0 logs, samples, checkpoints
and exports once per tick. The step itself (d_step, lazy r1, g_step, ema) is the pure-torch
`GanTraining` in gan_core.py, which gan_local.py also runs in one process without Ray.
"""

import os
import time
from pathlib import Path

import numpy as np
import torch

from prodray.io import artifacts as ckpt_io
from prodray.io import storage
from prodray.config import GanTrainConfig
from prodray.gan.data import decode_small, encode_attributes, read_vocab
from prodray.training import count_parameters
from prodray.gan.model import build_generator
from prodray.gan.training import (GanTraining, TickStats, check_attributes, export_generator, model_config,
                                    pool_to_device, sample_batch)
from prodray.run_files import RunFiles, end_tick, maybe_crash_for_test


# ---------------------------------------------------------------- data

def decode_rows(batch: dict, prepared: str, resolution: int, vocab: dict) -> dict:
    """Ray Data map_batches: manifest rows -> decoded images + attribute indices."""
    images = [decode_small(storage.get_bytes(storage.join(prepared, uri)), resolution) for uri in batch["uri"]]
    encoded = encode_attributes({name: list(batch[name]) for name in vocab}, vocab)
    return {"image": np.stack(images), **{f"attr_{name}": encoded[name] for name in vocab}}


def build_dataset(cfg: GanTrainConfig, mconfig: dict):
    import ray.data
    from ray.data.expressions import col

    filesystem, path = storage.pyarrow_filesystem(storage.join(cfg.data.prepared, "manifest.parquet"))
    return (ray.data.read_parquet(path, filesystem=filesystem).filter(expr=col("split") == "train")
            .map_batches(decode_rows, batch_size=1024, num_cpus=0.5,
                         fn_kwargs={"prepared": cfg.data.prepared, "resolution": mconfig["resolution"],
                                    "vocab": mconfig["vocab"]}))


def load_pool(shard, names: list[str], log) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """This worker's shard, read once into memory: uint8 NHWC images + attribute index arrays."""
    images, attributes = [], {name: [] for name in names}
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        images.append(batch["image"])
        for name in names:
            attributes[name].append(batch[f"attr_{name}"])
    if not images:
        raise RuntimeError("no training images in this worker's shard")
    pool = np.concatenate(images), {name: np.concatenate(parts) for name, parts in attributes.items()}
    log(f"training pool: {len(pool[0])} images in memory")
    return pool


# ---------------------------------------------------------------- worker loop

def train_worker(config: dict) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = GanTrainConfig.model_validate(config["cfg"])
    mconfig = config["model"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.run.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    device = get_device()
    log = (lambda msg: print(f"[gan] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    training = GanTraining(cfg, mconfig, device, rank)
    resumed = ray.train.get_checkpoint()
    resumed_digest = None
    if resumed:
        with resumed.as_directory() as folder:
            resumed_digest = training.resume(Path(folder), log)
        log(f"resumed at step {training.step}, {training.images_seen} images seen (state {resumed_digest})")
    training.wrap(prepare_model)

    files = RunFiles(storage.join(cfg.run.storage_path, cfg.run.name)) if rank == 0 else None
    if files:
        files.write_config(cfg)
        log(f"generator {count_parameters(training.generator):,} parameters, discriminator "
            f"{count_parameters(training.discriminator):,}; {mconfig['resolution']}px; attributes "
            + ", ".join(f"{k} ({len(v)})" for k, v in mconfig["vocab"].items()) + f"; run folder {files.uri}")

    pool = load_pool(ray.train.get_dataset_shard("train"), list(mconfig["vocab"]), log)
    if device.type == "cuda":
        pool = pool_to_device(pool, device)
    next_tick = (training.images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
    tick_start, tick_images, tick_stats = time.perf_counter(), 0, TickStats()
    while training.images_seen < cfg.optim.total_images:
        real, attributes = sample_batch(pool, cfg.data.batch_size, training.rng, device)
        tick_stats.add(training.train_step(real, attributes, world))
        tick_images += cfg.data.batch_size * world
        if rank == world - 1:
            maybe_crash_for_test(cfg.run.name, training.images_seen)
        if training.images_seen < next_tick and training.images_seen < cfg.optim.total_images:
            continue

        # ---- tick maintenance: every rank reports; rank 0 logs, samples and checkpoints.
        elapsed = time.perf_counter() - tick_start
        metrics = training.tick_metrics(tick_images, elapsed, tick_stats)
        if resumed_digest:
            metrics["resumed_state"] = resumed_digest
            resumed_digest = None
        tick_index = training.images_seen // cfg.run.tick_images
        if files:
            files.save_sample(f"tick-{tick_index:06d}.png", training.grid())
        checkpoint_due = (tick_index % cfg.run.checkpoint_ticks == 0
                          or training.images_seen >= cfg.optim.total_images)
        end_tick(metrics, files, checkpoint_due, training.save, log)
        next_tick += cfg.run.tick_images
        tick_start, tick_images, tick_stats = time.perf_counter(), 0, TickStats()

    if rank == 0:
        export_uri = storage.join(cfg.run.storage_path, cfg.run.name, "export")
        model_id = export_generator(export_uri, training.generator_ema, mconfig, training.images_seen,
                                    read_vocab(cfg.data.prepared).get("source"))
        log(f"exported {model_id} to {export_uri}")


def export_checkpoint(run_uri: str, checkpoint: str, export_uri: str) -> str:
    """Export a checkpoint's EMA generator (e.g. a run stopped early) like the end of training
    does; returns the model id. The networks' sizes come from the run's config.json."""
    cfg = GanTrainConfig.model_validate_json(storage.get_bytes(storage.join(run_uri, "config.json")))
    meta = read_vocab(cfg.data.prepared)
    mconfig = model_config(cfg, meta)
    generator_ema = build_generator(mconfig)
    ckpt_io.load_weights_bytes(generator_ema, storage.get_bytes(storage.join(checkpoint, "generator_ema.safetensors")))
    images_seen = int(ckpt_io.load_state_bytes(storage.get_bytes(storage.join(checkpoint, "state.pt")))["images_seen"])
    return export_generator(export_uri, generator_ema, mconfig, images_seen, meta.get("source"))


def build_trainer(cfg: GanTrainConfig):
    """A TorchTrainer for `cfg`: DDP over num_workers, checkpoints to run.storage_path, retries."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    meta = read_vocab(cfg.data.prepared)
    check_attributes(cfg, meta)
    mconfig = model_config(cfg, meta)
    filesystem, storage_path = storage.pyarrow_filesystem(cfg.run.storage_path)
    if not storage.is_s3(cfg.run.storage_path):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model": mconfig},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": build_dataset(cfg, mconfig)},
    )
