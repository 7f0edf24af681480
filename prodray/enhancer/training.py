"""Ray Train shell for the enhancer: TorchTrainer builder and the per-worker loop.

Owns the wiring (Ray Data shard -> crops -> on-the-fly degradation -> DDP step -> tick
maintenance -> checkpoint/report -> export). The model, degradations, losses and metrics it
calls are pure modules.
"""

import ctypes
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from prodray.io import artifacts as ckpt_io
from prodray.io import storage
from prodray.io.codec import ImageRejected, decode_image
from prodray.config import ConfigError, EnhancerModelConfig, EnhancerTrainConfig
from prodray.enhancer.degradations import DegradationRanges, degrade
from prodray.io.images import from_uint8_hwc, imresize_uint8, to_uint8_hwc
from prodray.enhancer.evaluation import bicubic_upscale, score_sr
from prodray.io.images import IMAGE_SUFFIXES
from prodray.enhancer.model import build_model
from prodray.training import count_parameters
from prodray.training import apply_configured_hyperparameters, charbonnier, lr_at, make_ema, random_crops, restore_rng, rng_state, set_lr, update_ema
from prodray.io.images import image_grid
from prodray.run_files import RunFiles, end_tick, maybe_crash_for_test

MAX_POOL_IMAGES = 20_000
INIT_MODEL_FIELDS = ("arch", "scale", "channels", "blocks")  # what an init model must share with model.*


def build_enhancer(model_config: dict) -> torch.nn.Module:
    return build_model(model_config["arch"], scale=model_config["scale"], channels=model_config["channels"],
                       blocks=model_config["blocks"])


def read_init_model(reference: str, field: str, model: EnhancerModelConfig) -> dict:
    """In the driver, before any work: the exported model `reference` exists and has the network
    `model` describes; -> its config. Errors name the config field."""
    try:
        _, config_uri = ckpt_io.resolve_export(reference)
        init = json.loads(storage.get_bytes(config_uri))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"config field {field}: {exc}") from None
    for name in INIT_MODEL_FIELDS:
        if init.get(name) != getattr(model, name):
            raise ConfigError(f"config field model.{name}: {getattr(model, name)!r} differs from the "
                              f"{field} model's {init.get(name)!r} ({reference})")
    return init


def run_uri(cfg: EnhancerTrainConfig) -> str:
    return storage.join(cfg.run.storage_path, cfg.run.name)


def upscale_with(model: torch.nn.Module, device) -> callable:
    """uint8 HWC -> uint8 HWC through the model (whole image, no tiling: for validation)."""
    @torch.no_grad()
    def upscale(lr: np.ndarray, scale: int) -> np.ndarray:
        x = from_uint8_hwc(lr)[None].to(device)
        return to_uint8_hwc(model(x)[0])
    return upscale


def load_pool(shard, patch_size: int, log, hr_scales: tuple[float, ...] = (1.0,)) -> list[np.ndarray]:
    """Read this worker's shard once into memory as decoded uint8 images (bounded), each at
    every factor of `hr_scales` (1.0 = as stored; copies smaller than the patch are left out).

    One pass only: every rank then draws crops from its own pool forever, so ranks never
    wait on each other at epoch boundaries (DDP steps stay in lockstep)."""
    pool, skipped = [], 0
    for batch in shard.iter_batches(batch_size=32, batch_format="numpy"):
        for data in batch["bytes"]:
            try:
                image = decode_image(bytes(data)).rgb
            except ImageRejected:
                skipped += 1
                continue
            for factor in hr_scales:
                if min(image.shape[:2]) * factor < patch_size:
                    skipped += 1
                elif len(pool) < MAX_POOL_IMAGES:
                    pool.append(image if factor == 1.0 else imresize_uint8(image, factor))
        _release_free_heap()
    log(f"training pool: {len(pool)} images in memory at scales {list(hr_scales)} "
        f"({skipped} skipped: unreadable images, or copies smaller than the patch)")
    if not pool:
        raise RuntimeError(f"no usable training images (need at least {patch_size}x{patch_size} px)")
    return pool


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only). Resizing leaves megabytes of freed float
    temporaries between the kept images, which glibc keeps: a 1.65 GiB pool at three scales held
    6.5 GiB of RSS without this, 2.2 GiB with it after each batch (Ray's OOM killer reads RSS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def make_batch(pool, cfg, rng, generator, device, ranges):
    """-> (lr, hr) float tensors: random HR crops and their degraded LR versions."""
    crops = []
    while len(crops) < cfg.data.batch_size:
        image = pool[int(rng.integers(0, len(pool)))]
        crops += random_crops(image, cfg.data.patch_size, min(cfg.data.patches_per_image, cfg.data.batch_size - len(crops)), rng)
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255).to(device)
    lr = degrade(hr, cfg.model.scale, ranges, generator)
    return lr, hr


def sample_grid(model, val_images, scale, device, crop: int = 96) -> np.ndarray:
    """Rows of [bicubic | model | original] centre crops of the validation images."""
    rows = []
    upscale = upscale_with(model, device)
    for hr in val_images[:4]:
        if hr.ndim == 2 or min(hr.shape[:2]) < crop:
            continue
        top, left = (hr.shape[0] - crop) // 2, (hr.shape[1] - crop) // 2
        patch = hr[top:top + crop, left:left + crop]
        lr = imresize_uint8(patch, 1.0 / scale) if scale > 1 else patch
        rows.append([bicubic_upscale(lr, scale) if scale > 1 else lr, upscale(lr, scale), patch])
    return image_grid(rows) if rows else np.full((8, 8, 3), 255, np.uint8)


def train_worker(config: dict) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = EnhancerTrainConfig.model_validate(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.run.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    device = get_device()
    log = (lambda msg: print(f"[enhancer] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    provenance = {}  # recorded in the export: which model this one continued
    if cfg.init_from:  # same network (checked in the driver); a checkpoint, when there is one, wins below
        model, init_config = ckpt_io.load_export(cfg.init_from, build_enhancer)
        model = model.train().to(device)
        provenance = {"init_from": cfg.init_from, "init_model_id": init_config.get("model_id")}
    else:
        model = build_enhancer(cfg.model.model_dump()).to(device)
    ema = make_ema(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    use_amp = cfg.run.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator(device=device).manual_seed(cfg.run.seed + rank)
    rng = np.random.default_rng(cfg.run.seed + rank)
    images_seen, step = 0, 0

    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            folder = Path(folder)
            ckpt_io.load_weights_bytes(model, (folder / "model.safetensors").read_bytes())
            ckpt_io.load_weights_bytes(ema, (folder / "ema.safetensors").read_bytes())
            state = ckpt_io.load_state_bytes((folder / "state.pt").read_bytes())
        optimizer.load_state_dict(state["optimizer"])
        # lr follows the schedule every step; weight decay would otherwise stay the checkpoint's
        apply_configured_hyperparameters({"enhancer": optimizer},
                                         {"enhancer": {"weight_decay": cfg.optim.weight_decay}}, log)
        scaler.load_state_dict(state["scaler"])
        images_seen, step = int(state["images_seen"]), int(state["step"])
        if rank < len(state["rng"]):
            restore_rng(state["rng"][rank], generator, rng)
        log(f"resumed from checkpoint at step {step}, {images_seen} images seen")
    ddp_model = prepare_model(model)

    files = RunFiles(run_uri(cfg)) if rank == 0 else None
    if files:
        files.write_config(cfg)
        log(f"model {cfg.model.arch} x{cfg.model.scale}: {count_parameters(model):,} parameters, "
            f"{model.flops_per_input_pixel() / 1e3:.0f} kFLOP per input pixel; run folder {files.uri}"
            + (f"; started from {cfg.init_from}" if cfg.init_from else ""))
    val_images = []
    if rank == 0 and cfg.data.val_folder:
        from prodray.enhancer.evaluation import list_images, load_benchmark_image
        val_images = [load_benchmark_image(p) for p in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]]

    pool = load_pool(ray.train.get_dataset_shard("train"), cfg.data.patch_size, log, tuple(cfg.data.hr_scales))
    ranges = DegradationRanges(**cfg.degradation.model_dump())
    global_batch = cfg.data.batch_size * world
    next_tick = (images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
    tick_start, tick_images, loss_sum, loss_count = time.perf_counter(), 0, 0.0, 0

    while images_seen < cfg.optim.total_images:
        lr_now = lr_at(images_seen, cfg.optim.lr, cfg.optim.warmup_images, cfg.optim.total_images)
        set_lr(optimizer, lr_now)
        lr_batch, hr_batch = make_batch(pool, cfg, rng, generator, device, ranges)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = charbonnier(ddp_model(lr_batch), hr_batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        images_seen += global_batch
        update_ema(ema, model, global_batch, cfg.run.ema_half_life_images, images_seen)
        step += 1
        tick_images += global_batch
        loss_sum += float(loss.detach())
        loss_count += 1

        if rank == world - 1:
            maybe_crash_for_test(cfg.run.name, images_seen)

        if images_seen < next_tick and images_seen < cfg.optim.total_images:
            continue
        # ---- tick maintenance: every rank reports; rank 0 validates, logs and checkpoints.
        elapsed = time.perf_counter() - tick_start
        metrics = {"step": step, "images_seen": images_seen, "loss": loss_sum / max(loss_count, 1),
                   "lr": lr_now, "images_per_s": tick_images / max(elapsed, 1e-9)}
        tick_index = images_seen // cfg.run.tick_images
        if rank == 0 and val_images:
            result = score_sr(enumerate(val_images), cfg.model.scale, {"ema": upscale_with(ema, device)})["ema"]
            metrics.update(val_psnr_y=result["psnr_y"], val_ssim_y=result["ssim_y"])
            files.save_sample(f"tick-{tick_index:06d}.png", sample_grid(ema, val_images, cfg.model.scale, device))
        end_tick(metrics, files, tick_index % cfg.run.checkpoint_ticks == 0 or images_seen >= cfg.optim.total_images,
                 lambda folder: write_checkpoint(folder, model, ema, optimizer, scaler, step, images_seen, generator,
                                                 rng, world), log)
        next_tick += cfg.run.tick_images
        tick_start, tick_images, loss_sum, loss_count = time.perf_counter(), 0, 0.0, 0

    if rank == 0:
        model_id = ckpt_io.export_model(storage.join(run_uri(cfg), "export"), "enhancer", ema,
                                        {**cfg.model.model_dump(), "kind": "enhancer", "images_seen": images_seen,
                                         **provenance})
        log(f"exported {model_id} to {storage.join(run_uri(cfg), 'export')}")


def write_checkpoint(folder: Path, model, ema, optimizer, scaler, step, images_seen, generator, rng, world) -> None:
    (folder / "model.safetensors").write_bytes(ckpt_io.weights_bytes(model))
    (folder / "ema.safetensors").write_bytes(ckpt_io.weights_bytes(ema))
    # Only rank 0's RNG is at hand; other ranks reseed from it deterministically on resume.
    state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
             "images_seen": images_seen, "rng": [rng_state(generator, rng)], "world": world}
    (folder / "state.pt").write_bytes(ckpt_io.state_bytes(state))


def build_dataset(sources: list[str]):
    """A Ray Data dataset of raw image bytes over local folders and/or s3:// prefixes."""
    import ray.data

    datasets = []
    for source in sources:
        files = [f["uri"] for f in storage.list_files(source, suffixes=tuple(IMAGE_SUFFIXES))]
        if not files:
            raise FileNotFoundError(f"no training images under {source}")
        filesystem, _ = storage.pyarrow_filesystem(source)
        paths = [storage.split_uri(f)[1] for f in files]
        datasets.append(ray.data.read_binary_files(paths, filesystem=filesystem, num_cpus=0.5))
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.union(other)
    return dataset


def build_trainer(cfg: EnhancerTrainConfig):
    """A TorchTrainer for `cfg`: DDP over num_workers, checkpoints to run.storage_path, retries.
    With an `adversarial:` section it runs the fine-tuning stage (train/finetune.py) instead."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    worker = train_worker
    if cfg.init_from:
        read_init_model(cfg.init_from, "init_from", cfg.model)
    if cfg.adversarial is not None:  # the optional second stage: adversarial fine-tuning
        from prodray.enhancer.adversarial import check_init_model, finetune_worker
        check_init_model(cfg)
        worker = finetune_worker
    filesystem, storage_path = storage.pyarrow_filesystem(cfg.run.storage_path)
    if not storage.is_s3(cfg.run.storage_path):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        worker,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": build_dataset(cfg.data.sources)},
    )
