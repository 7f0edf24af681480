"""The enhancer's two training stages as `Training` classes: the PSNR stage (a pixel loss,
kind `enhancer`) and the adversarial stage (kind `enhancer-adversarial`: L1 + perceptual + GAN
loss against a spectral-norm discriminator, phases `g_step`, `d_step`, `ema`, from an exported
PSNR model). Both share the data, validation and sample grid of `EnhancerStage`. Pure torch:
the runners (cluster/trainer.py, local/runner.py) drive them.
"""

import numpy as np
import torch
import torch.nn.functional as F

from prodray.config import ConfigError
from prodray.enhancer import data
from prodray.enhancer.degradations import DegradationRanges
from prodray.enhancer.discriminator import build_discriminator
from prodray.enhancer.evaluation import bicubic_upscale, list_images, load_benchmark_image, score_sr
from prodray.enhancer.inference import clean_partner_id
from prodray.enhancer.losses import build_perceptual, pixel_loss
from prodray.enhancer.model import build_enhancer, deepen
from prodray.gan.losses import g_loss
from prodray.image_training import PhotoCropTraining
from prodray.io import artifacts, storage
from prodray.io.codec import decode_image, encode_image
from prodray.io.images import from_uint8_hwc, image_grid, imresize_uint8, to_uint8_hwc
from prodray.training import count_parameters, make_ema, read_init_model, set_lr


def upscale_with(model: torch.nn.Module, device) -> callable:
    """uint8 HWC -> uint8 HWC through the model (whole image, no tiling: for validation)."""
    @torch.no_grad()
    def upscale(lr: np.ndarray, scale: int) -> np.ndarray:
        return to_uint8_hwc(model(from_uint8_hwc(lr)[None].to(device))[0])
    return upscale


def jpeg_damaged(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 HWC (or HW) -> the same image after one JPEG round-trip at `quality`."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    return decode_image(encode_image(rgb, fmt="jpeg", quality=quality)).rgb


def sample_grid(model, val_images, scale, device, crop: int = 96) -> np.ndarray:
    """Rows of [bicubic | model | original] centre crops of the validation images (a blank tile when
    none is large enough, so every tick still has its sample)."""
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


class EnhancerStage(PhotoCropTraining):
    """What both stages share: the HR patch pool and its degraded batches, the EMA model scored
    on the validation images with the SR protocol, and its sample grid."""

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        self.ranges = DegradationRanges(**cfg.degradation.model_dump())
        self.val_images = []
        if rank == 0 and cfg.data.val_folder:
            self.val_images = [load_benchmark_image(p)
                               for p in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = data.make_batch(self.pool, self.cfg.data, self.cfg.model.scale, self.ranges, self.rng,
                                 self.torch_rng, self.device)
        return lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)

    def validate(self) -> dict[str, float]:
        if not self.val_images:
            return {}
        upscale = upscale_with(self.ema, self.device)
        upscalers = {"ema": upscale}
        quality = self.cfg.data.val_jpeg_quality
        if quality:
            upscalers["jpeg"] = lambda lr, scale: upscale(jpeg_damaged(lr, quality), scale)
        result = score_sr(enumerate(self.val_images), self.cfg.model.scale, upscalers)
        metrics = {"val_psnr_y": result["ema"]["psnr_y"], "val_ssim_y": result["ema"]["ssim_y"]}
        if quality:
            metrics[f"val_jpeg{quality}_psnr_y"] = result["jpeg"]["psnr_y"]
        return metrics

    def grid(self) -> np.ndarray | None:
        return sample_grid(self.ema, self.val_images, self.cfg.model.scale, self.device) if self.val_images else None


class PsnrTraining(EnhancerStage):
    """The PSNR stage: the enhancer alone, a pixel loss (`loss`), from random weights or `init_from`."""

    name = "enhancer"

    @classmethod
    def prepare(cls, cfg) -> dict:
        if not cfg.init_from:
            return {}
        init = read_init_model(cfg.init_from, "init_from", cfg.model, growable=("blocks",))
        context = {"init_from": cfg.init_from, "init_model_id": init.get("model_id")}
        partner = clean_partner_id(init) if int(init["scale"]) > 1 else None
        if partner:  # continuing a restoration model: keep its partner
            context["clean_model_id"] = partner
        return context

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        if cfg.init_from:  # same network or deeper (checked in `prepare`); a checkpoint, when there is one, wins
            self.model = deepen(artifacts.load_export(cfg.init_from, build_enhancer)[0], cfg.model.blocks).train()
        else:
            self.model = build_enhancer(cfg.model.model_dump())
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.train_model = self.model
        self.networks = {"model": self.model, "ema": self.ema}
        self.optimizers = {"enhancer": torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                                         weight_decay=cfg.optim.weight_decay)}
        self.scalers = {"enhancer": self.grad_scaler()}

    def wrap(self, prepare) -> None:
        self.train_model = prepare(self.model)

    def describe(self) -> str:
        model = self.cfg.model
        return (f"model {model.arch} x{model.scale}: {count_parameters(self.model):,} parameters, "
                f"{self.model.flops_per_input_pixel() / 1e3:.0f} kFLOP per input pixel"
                + (f"; started from {self.cfg.init_from}" if self.cfg.init_from else ""))

    def configured_hyperparameters(self) -> dict[str, dict]:
        # lr follows the schedule every step; weight decay would otherwise stay the checkpoint's
        return {"enhancer": {"weight_decay": self.cfg.optim.weight_decay}}

    def train_step(self, lr_batch: torch.Tensor, hr_batch: torch.Tensor, world: int = 1) -> dict:
        """One step on (B, 3, h, w) LR and (B, 3, H, W) HR batches in [0, 1]."""
        set_lr(self.optimizers["enhancer"], self.scheduled_lr())
        with self.autocast():
            loss = pixel_loss(self.train_model(lr_batch).float(), hr_batch, self.cfg.loss.kind,
                              self.cfg.loss.luma_weight)
        self.update("enhancer", loss, clip=self.model)
        self.count(world)
        return {"loss": loss.detach()}

    def export(self, export_uri: str) -> str:
        return self.export_network(export_uri, "enhancer", self.ema, {
            **self.cfg.model.model_dump(), "kind": "enhancer", "images_seen": self.images_seen, **self.context})


class AdversarialTraining(EnhancerStage):
    """The adversarial stage: the enhancer (from an exported PSNR model) against a discriminator.

    Each network is wrapped on its own. The g_step scores the enhancer's output with the *bare*
    discriminator (frozen, eval: no DDP reducer waiting for its gradients, no power-iteration
    update); its weights are the same on every rank because the d_step is DDP-synchronised."""

    name = "enhancer-gan"

    @classmethod
    def prepare(cls, cfg) -> dict:
        adv = cfg.adversarial
        init = read_init_model(adv.init_from, "adversarial.init_from", cfg.model)
        if init.get("name") == adv.export_name:
            raise ConfigError(f"config field adversarial.export_name: {adv.export_name!r} is the init model's own "
                              "name; the fine-tuned model must be exported under its own name")
        return {"init_model_id": init.get("model_id")}

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        adv = cfg.adversarial
        self.model = artifacts.load_export(adv.init_from, build_enhancer)[0].train().to(
            self.device, memory_format=torch.channels_last)
        self.discriminator = build_discriminator(adv.discriminator, adv.d_channels).to(
            self.device, memory_format=torch.channels_last)
        self.ema = make_ema(self.model)  # the average starts at the PSNR model, not at random weights
        self.g_train, self.d_train = self.model, self.discriminator
        perceptual, self.perceptual_name = build_perceptual(
            storage.get_bytes(adv.vgg19_weights) if adv.vgg19_weights else None, adv.vgg19_weights or "")
        self.perceptual = perceptual.to(self.device)
        self.d_lr = adv.d_lr or cfg.optim.lr
        self.networks = {"model": self.model, "ema": self.ema, "discriminator": self.discriminator}
        self.optimizers = {
            "g": torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                   betas=(0.9, 0.99)),
            "d": torch.optim.AdamW(self.discriminator.parameters(), lr=self.d_lr, betas=(0.9, 0.99))}
        self.scalers = {name: self.grad_scaler() for name in ("g", "d")}

    def wrap(self, prepare) -> None:
        self.g_train, self.d_train = prepare(self.model), prepare(self.discriminator)

    def describe(self) -> str:
        adv = self.cfg.adversarial
        return (f"adversarial fine-tuning of {self.context.get('init_model_id')} ({adv.init_from}); discriminator "
                f"{adv.discriminator} ({count_parameters(self.discriminator):,} parameters); "
                f"perceptual loss: {self.perceptual_name}")

    def configured_hyperparameters(self) -> dict[str, dict]:
        # lr follows the schedule every step; G's weight decay would otherwise stay the checkpoint's
        return {"g": {"weight_decay": self.cfg.optim.weight_decay}}

    def train_step(self, lr_batch: torch.Tensor, hr_batch: torch.Tensor, world: int = 1) -> dict:
        """One step on (B, 3, h, w) LR and (B, 3, H, W) HR batches in [0, 1]."""
        adv = self.cfg.adversarial
        lr_now = self.scheduled_lr()
        set_lr(self.optimizers["g"], lr_now)

        # g_step: enhancer against the frozen discriminator
        self.discriminator.requires_grad_(False).eval()
        with self.autocast():
            sr = self.g_train(lr_batch).float()
            loss_pixel = F.l1_loss(sr, hr_batch)
            loss_perceptual = self.perceptual(sr, hr_batch) if adv.perceptual_weight else sr.new_zeros(())
            loss_adversarial = g_loss(self.discriminator(sr).float(), adv.gan_loss)
            loss_g = (adv.pixel_weight * loss_pixel + adv.perceptual_weight * loss_perceptual
                      + adv.adversarial_weight * loss_adversarial)
        self.update("g", loss_g, clip=self.model)
        # d_step: real HR against the enhancer's output
        stats = self.update_discriminator(hr_batch, sr, lr_now, adv.gan_loss)
        self.count(world)  # ema
        stats.update(loss_g=loss_g, loss_pixel=loss_pixel, loss_perceptual=loss_perceptual,
                     loss_adversarial=loss_adversarial)
        return {name: value.detach() for name, value in stats.items()}

    def export(self, export_uri: str) -> str:
        adv = self.cfg.adversarial
        return self.export_network(export_uri, adv.export_name, self.ema, {
            **self.cfg.model.model_dump(), "kind": "enhancer", "stage": "adversarial", "images_seen": self.images_seen,
            "init_from": adv.init_from, "init_model_id": self.context.get("init_model_id"),
            "perceptual": self.perceptual_name, "discriminator": adv.discriminator})
