"""Ray Train for every training kind: one TorchTrainer builder and one per-worker loop.

The loop drives any `Training` (prodray/training.py): rank 0 writes the run folder, every rank
steps in DDP and reports at the end of each tick (Ray Train requires all ranks to report
together), checkpoints go to Ray Train's storage and come back on a restart, and rank 0 exports
at the end. Ray Data reads and decodes the kind's rows into each worker's share of the pool.
"""

import os
import tempfile
from pathlib import Path

import torch

from prodray.config import TRAIN_CONFIGS
from prodray.families import TRAININGS
from prodray.io import storage
from prodray.run_files import RunFiles, run_uri
from prodray.training import Ticks, checkpoint_due, record_tick, torch_threads


def train_worker(config: dict) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    kind, context = config["kind"], config["context"]
    cfg = TRAIN_CONFIGS[kind].model_validate(config["cfg"])
    ray_context = ray.train.get_context()
    rank, world = ray_context.get_world_rank(), ray_context.get_world_size()
    torch.set_num_threads(torch_threads(cfg, world, os.cpu_count()))
    training = TRAININGS[kind](cfg, context, get_device(), rank)
    log = (lambda msg: print(f"[{training.name}] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    resumed, resumed_digest = ray.train.get_checkpoint(), None
    if resumed:
        with resumed.as_directory() as folder:
            resumed_digest = training.resume(Path(folder), log)
        log(f"resumed from checkpoint at step {training.step}, {training.images_seen} images seen "
            f"(state {resumed_digest})")
    training.wrap(prepare_model)
    files = RunFiles(run_uri(cfg)) if rank == 0 else None
    if files:
        files.write_config(cfg)
        log(f"{training.describe()}; run folder {files.uri}")
    shard = ray.train.get_dataset_shard("train")
    training.load_pool(shard.iter_batches(batch_size=training.read_batch_size, batch_format="numpy"), log)

    total, ticks = cfg.optim.total_images, Ticks(cfg.run.tick_images, training.images_seen)
    while training.images_seen < total:
        ticks.add(training.train_step(*training.next_batch(), world=world), cfg.data.batch_size * world)
        if rank == world - 1:
            maybe_crash_for_test(cfg.run.name, training.images_seen)
        if not ticks.due(training.images_seen) and training.images_seen < total:
            continue
        metrics, tick_index = ticks.close(training), ticks.index(training.images_seen)
        if resumed_digest:
            metrics["resumed_state"], resumed_digest = resumed_digest, None
        checkpoint_dir = None
        if files:
            record_tick(training, files, metrics, tick_index, log)
            if checkpoint_due(cfg, tick_index, training.images_seen):
                checkpoint_dir = tempfile.mkdtemp(prefix="prodray-ckpt-")
                training.save(Path(checkpoint_dir))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    if rank == 0:
        export_uri = storage.join(run_uri(cfg), "export")
        log(f"exported {training.export(export_uri)} to {export_uri}")


def maybe_crash_for_test(run_name: str, images_seen: int) -> None:
    """Fault injection for the recovery tests: PRODRAY_TEST_CRASH="<run name>:<images>" kills this
    worker process once (hard, like a lost node) when it passes that many images."""
    spec = os.environ.get("PRODRAY_TEST_CRASH", "")
    if not spec.startswith(f"{run_name}:"):
        return
    marker = Path(tempfile.gettempdir()) / f"prodray-crashed-{run_name}"
    if images_seen >= int(spec.rsplit(":", 1)[1]) and not marker.exists():
        marker.touch()
        os._exit(1)


def build_dataset(training_class, cfg, context: dict):
    """The kind's rows as a Ray Data dataset, read and decoded by `read_rows` in Ray Data tasks."""
    import ray.data

    rows = training_class.source_rows(cfg, context)
    return ray.data.from_items(rows).map_batches(
        training_class.read_rows, batch_size=training_class.read_batch_size, num_cpus=0.5,
        fn_kwargs={"cfg": cfg.model_dump(mode="json"), "context": context})


def build_trainer(cfg):
    """A TorchTrainer for any training config: checked and prepared in the driver before any work,
    DDP over run.num_workers, checkpoints under run.storage_path, retries on worker failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    training_class = TRAININGS[cfg.kind]
    context = training_class.prepare(cfg)
    dataset = build_dataset(training_class, cfg, context)
    filesystem, storage_path = storage.pyarrow_filesystem(cfg.run.storage_path)
    if not storage.is_s3(cfg.run.storage_path):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        train_worker,
        train_loop_config={"kind": cfg.kind, "cfg": cfg.model_dump(mode="json"), "context": context},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
    )
