"""Ray Train shell for the enhancer's optional second stage: adversarial fine-tuning.

Starts from an exported PSNR model (`adversarial.init_from`), trains it against a spectral-norm
discriminator with L1 + perceptual + GAN loss (phases `g_step`, `d_step`, `ema`), and exports
the EMA weights under their own name (`adversarial.export_name`, default `enhancer-gan`), which
the bulk job and Serve load like any enhancer. Networks and losses are pure modules
(`models/sr_discriminator.py`, `enhancer_losses.py`); data, ticks and files are shared with
`train/enhancer.py`.
"""

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prodray.io import artifacts as ckpt_io
from prodray.io import storage
from prodray.config import ConfigError, EnhancerTrainConfig
from prodray.enhancer.degradations import DegradationRanges
from prodray.enhancer.losses import build_perceptual
from prodray.gan.losses import d_loss, g_loss
from prodray.enhancer.evaluation import score_sr
from prodray.enhancer.discriminator import build_discriminator
from prodray.enhancer.training import (build_enhancer, load_pool, make_batch, read_init_model, run_uri, sample_grid,
                                    upscale_with)
from prodray.training import (apply_configured_hyperparameters, lr_at, make_ema, restore_rng, rng_state, set_lr,
                                update_ema)
from prodray.run_files import RunFiles, end_tick


def check_init_model(cfg: EnhancerTrainConfig) -> dict:
    """In the driver, before any work: the init model exists and matches `model.*`; -> its config."""
    adv = cfg.adversarial
    init = read_init_model(adv.init_from, "adversarial.init_from", cfg.model)
    if init.get("name") == adv.export_name:
        raise ConfigError(f"config field adversarial.export_name: {adv.export_name!r} is the init model's own "
                          "name; the fine-tuned model must be exported under its own name")
    return init


def finetune_worker(config: dict) -> None:
    """The per-worker loop of the adversarial stage (runs inside each Ray Train worker)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = EnhancerTrainConfig.model_validate(config)
    adv = cfg.adversarial
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.run.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    device = get_device()
    log = (lambda msg: print(f"[enhancer-gan] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    model, init_config = ckpt_io.load_export(adv.init_from, build_enhancer)  # same network: checked in the driver
    model = model.train().to(device)
    discriminator = build_discriminator(adv.discriminator, adv.d_channels).to(device)
    ema = make_ema(model)  # the average starts at the PSNR model, not at random weights
    perceptual, perceptual_name = build_perceptual(
        storage.get_bytes(adv.vgg19_weights) if adv.vgg19_weights else None, adv.vgg19_weights or "")
    perceptual = perceptual.to(device)
    g_optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                    betas=(0.9, 0.99))
    d_lr = adv.d_lr or cfg.optim.lr
    d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=d_lr, betas=(0.9, 0.99))
    use_amp = cfg.run.amp and device.type == "cuda"
    g_scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    d_scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator(device=device).manual_seed(cfg.run.seed + rank)
    rng = np.random.default_rng(cfg.run.seed + rank)
    images_seen, step = 0, 0

    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            folder = Path(folder)
            ckpt_io.load_weights_bytes(model, (folder / "model.safetensors").read_bytes())
            ckpt_io.load_weights_bytes(ema, (folder / "ema.safetensors").read_bytes())
            ckpt_io.load_weights_bytes(discriminator, (folder / "discriminator.safetensors").read_bytes())
            state = ckpt_io.load_state_bytes((folder / "state.pt").read_bytes())
        g_optimizer.load_state_dict(state["g_optimizer"])
        d_optimizer.load_state_dict(state["d_optimizer"])
        # lr follows the schedule every step; G's weight decay would otherwise stay the checkpoint's
        apply_configured_hyperparameters({"g": g_optimizer}, {"g": {"weight_decay": cfg.optim.weight_decay}}, log)
        g_scaler.load_state_dict(state["g_scaler"])
        d_scaler.load_state_dict(state["d_scaler"])
        images_seen, step = int(state["images_seen"]), int(state["step"])
        if rank < len(state["rng"]):
            restore_rng(state["rng"][rank], generator, rng)
        log(f"resumed from checkpoint at step {step}, {images_seen} images seen")
    # Each network is wrapped on its own. The g_step scores the enhancer's output with the *bare*
    # discriminator (frozen, eval: no DDP reducer waiting for its gradients, no power-iteration
    # update); its weights are the same on every rank because the d_step is DDP-synchronised.
    ddp_model = prepare_model(model)
    ddp_discriminator = prepare_model(discriminator)

    files = RunFiles(run_uri(cfg)) if rank == 0 else None
    if files:
        files.write_config(cfg)
        log(f"adversarial fine-tuning of {init_config.get('model_id')} ({adv.init_from}); discriminator "
            f"{adv.discriminator} ({sum(p.numel() for p in discriminator.parameters()):,} parameters); "
            f"perceptual loss: {perceptual_name}; run folder {files.uri}")
    val_images = []
    if rank == 0 and cfg.data.val_folder:
        from prodray.enhancer.evaluation import list_images, load_benchmark_image
        val_images = [load_benchmark_image(p) for p in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]]

    pool = load_pool(ray.train.get_dataset_shard("train"), cfg.data.patch_size, log, tuple(cfg.data.hr_scales))
    ranges = DegradationRanges(**cfg.degradation.model_dump())
    global_batch = cfg.data.batch_size * world
    next_tick = (images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
    tick_start, tick_images = time.perf_counter(), 0
    sums: dict[str, float] = {}

    while images_seen < cfg.optim.total_images:
        lr_now = lr_at(images_seen, cfg.optim.lr, cfg.optim.warmup_images, cfg.optim.total_images)
        set_lr(g_optimizer, lr_now)
        set_lr(d_optimizer, lr_now * d_lr / cfg.optim.lr)
        lr_batch, hr_batch = make_batch(pool, cfg, rng, generator, device, ranges)  # (B,3,h,w), (B,3,H,W) in [0,1]

        # ---- g_step: enhancer against the frozen discriminator
        discriminator.requires_grad_(False).eval()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            sr = ddp_model(lr_batch)
            loss_pixel = F.l1_loss(sr, hr_batch)
            loss_perceptual = perceptual(sr, hr_batch) if adv.perceptual_weight else sr.new_zeros(())
            loss_adversarial = g_loss(discriminator(sr), adv.gan_loss)
            loss_g = (adv.pixel_weight * loss_pixel + adv.perceptual_weight * loss_perceptual
                      + adv.adversarial_weight * loss_adversarial)
        g_optimizer.zero_grad(set_to_none=True)
        g_scaler.scale(loss_g).backward()
        g_scaler.unscale_(g_optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        g_scaler.step(g_optimizer)
        g_scaler.update()

        # ---- d_step: real HR against the enhancer's output, one DDP forward for both halves
        discriminator.requires_grad_(True).train()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            real_logits, fake_logits = ddp_discriminator(torch.cat([hr_batch, sr.detach()])).chunk(2)
            loss_d = d_loss(real_logits, fake_logits, adv.gan_loss)
        d_optimizer.zero_grad(set_to_none=True)
        d_scaler.scale(loss_d).backward()
        d_scaler.step(d_optimizer)
        d_scaler.update()

        # ---- ema
        images_seen += global_batch
        update_ema(ema, model, global_batch, cfg.run.ema_half_life_images, images_seen)
        step += 1
        tick_images += global_batch
        for key, value in (("loss_g", loss_g), ("loss_pixel", loss_pixel), ("loss_perceptual", loss_perceptual),
                           ("loss_adversarial", loss_adversarial), ("loss_d", loss_d),
                           ("d_real", real_logits.mean()), ("d_fake", fake_logits.mean())):
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        sums["count"] = sums.get("count", 0.0) + 1

        if images_seen < next_tick and images_seen < cfg.optim.total_images:
            continue
        # ---- tick maintenance: every rank reports; rank 0 validates, logs and checkpoints.
        elapsed = time.perf_counter() - tick_start
        count = max(sums.pop("count", 1.0), 1.0)
        metrics = {"step": step, "images_seen": images_seen, **{k: v / count for k, v in sums.items()},
                   "lr": lr_now, "images_per_s": tick_images / max(elapsed, 1e-9)}
        tick_index = images_seen // cfg.run.tick_images
        if rank == 0 and val_images:
            result = score_sr(enumerate(val_images), cfg.model.scale, {"ema": upscale_with(ema, device)})["ema"]
            metrics.update(val_psnr_y=result["psnr_y"], val_ssim_y=result["ssim_y"])
            files.save_sample(f"tick-{tick_index:06d}.png", sample_grid(ema, val_images, cfg.model.scale, device))
        end_tick(metrics, files, tick_index % cfg.run.checkpoint_ticks == 0 or images_seen >= cfg.optim.total_images,
                 lambda folder: write_checkpoint(folder, model, ema, discriminator, g_optimizer, d_optimizer, g_scaler,
                                                 d_scaler, step, images_seen, generator, rng, world), log)
        next_tick += cfg.run.tick_images
        tick_start, tick_images, sums = time.perf_counter(), 0, {}

    if rank == 0:
        export_uri = storage.join(run_uri(cfg), "export")
        model_id = ckpt_io.export_model(export_uri, adv.export_name, ema, {
            **cfg.model.model_dump(), "kind": "enhancer", "stage": "adversarial", "images_seen": images_seen,
            "init_from": adv.init_from, "init_model_id": init_config.get("model_id"), "perceptual": perceptual_name,
            "discriminator": adv.discriminator})
        log(f"exported {model_id} to {export_uri}")


def write_checkpoint(folder: Path, model, ema, discriminator, g_optimizer, d_optimizer, g_scaler, d_scaler,
                     step, images_seen, generator, rng, world) -> None:
    (folder / "model.safetensors").write_bytes(ckpt_io.weights_bytes(model))
    (folder / "ema.safetensors").write_bytes(ckpt_io.weights_bytes(ema))
    (folder / "discriminator.safetensors").write_bytes(ckpt_io.weights_bytes(discriminator))
    state = {"g_optimizer": g_optimizer.state_dict(), "d_optimizer": d_optimizer.state_dict(),
             "g_scaler": g_scaler.state_dict(), "d_scaler": d_scaler.state_dict(), "step": step,
             "images_seen": images_seen, "rng": [rng_state(generator, rng)], "world": world}
    (folder / "state.pt").write_bytes(ckpt_io.state_bytes(state))
