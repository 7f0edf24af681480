"""What the image families trained on photos share beyond the training contract.
`PhotoCropTraining` (the enhancer, repair, recolour): photos from image folders held in memory at
data.hr_scales, random crops of them, the cosine schedule, an optimizer's update through its
scaler, the discriminator's update, and the step's count and EMA.
`ImageToImageTraining` (repair, recolour) adds the generator with AdamW and its EMA and an optional
spectral-norm discriminator (on when loss.adversarial_weight > 0, with loss.d_lr or optim.lr): a
family builds its generator, draws its batch and writes its losses. Pure torch.
"""

import numpy as np
import torch

from prodray.enhancer import data
from prodray.enhancer.discriminator import build_discriminator
from prodray.gan.losses import d_loss
from prodray.training import Training, count_parameters, lr_at, make_ema, set_lr, update_ema


class PhotoCropTraining(Training):
    """Subclasses set `model` and `ema` (the EMA follows `model`)."""

    read_batch_size = 32  # photos per read_rows call

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        self.pool: list[np.ndarray] = []

    # ---- data: photos from image folders, random crops of them
    @classmethod
    def source_rows(cls, cfg, context: dict) -> list[dict]:
        return data.source_rows(cfg.data.sources)

    @staticmethod
    def read_rows(batch: dict, cfg: dict, context: dict) -> dict:
        return data.read_rows(batch)

    def load_pool(self, batches, log) -> None:
        self.pool = data.load_pool(batches, self.cfg.data.patch_size, log, tuple(self.cfg.data.hr_scales))

    def random_crops(self) -> list[np.ndarray]:
        """data.batch_size crops (P, P, 3) uint8, at most data.patches_per_image from one photo."""
        cfg = self.cfg.data
        crops = []
        while len(crops) < cfg.batch_size:
            image = self.pool[int(self.rng.integers(0, len(self.pool)))]
            crops += data.random_crops(image, cfg.patch_size, min(cfg.patches_per_image, cfg.batch_size - len(crops)),
                                       self.rng)
        return crops

    def as_batch(self, array: np.ndarray) -> torch.Tensor:
        """(B, H, W, C) uint8 or (B, H, W) bool -> (B, C, H, W) float on the device, channels-last,
        in [0, 1]."""
        tensor = torch.from_numpy(array)
        tensor = tensor.permute(0, 3, 1, 2).float().div_(255) if tensor.dim() == 4 else tensor[:, None].float()
        return tensor.to(self.device).contiguous(memory_format=torch.channels_last)

    def scheduled_lr(self) -> float:
        optim = self.cfg.optim
        return lr_at(self.images_seen, optim.lr, optim.warmup_images, optim.total_images)

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.scheduled_lr()}

    def update(self, name: str, loss: torch.Tensor, clip: torch.nn.Module | None = None) -> None:
        """One step of optimizer `name` on `loss` through its scaler; with `clip`, that network's
        gradient norm is clipped to optim.grad_clip first."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip.parameters(), self.cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    def update_discriminator(self, real: torch.Tensor, fake: torch.Tensor, lr_now: float, gan_loss: str) -> dict:
        """Optimizer `d` on real images against the generator's (detached) results, one forward for
        both halves; needs `discriminator`, `d_train` and `d_lr`."""
        set_lr(self.optimizers["d"], lr_now * self.d_lr / self.cfg.optim.lr)
        self.discriminator.requires_grad_(True).train()
        with self.autocast():
            real_logits, fake_logits = self.d_train(torch.cat([real, fake.detach()])).float().chunk(2)
            loss_d = d_loss(real_logits, fake_logits, gan_loss)
        self.update("d", loss_d)
        return {"loss_d": loss_d, "d_real": real_logits.mean(), "d_fake": fake_logits.mean()}

    def count(self, world: int) -> None:
        """After a step of `world` ranks' batches: images seen, step, EMA."""
        global_batch = self.cfg.data.batch_size * world
        self.images_seen += global_batch
        update_ema(self.ema, self.model, global_batch, self.cfg.run.ema_half_life_images, self.images_seen)
        self.step += 1


class ImageToImageTraining(PhotoCropTraining):
    def __init__(self, cfg, context: dict, device, rank: int, model: torch.nn.Module, discriminator: str):
        super().__init__(cfg, context, device, rank)
        loss = cfg.loss
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.g_train = self.model
        self.networks = {"model": self.model, "ema": self.ema}
        self.optimizers = {"g": torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                                  weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.99))}
        self.scalers = {"g": self.grad_scaler()}
        self.adversarial = loss.adversarial_weight > 0
        self.discriminator_arch = discriminator
        if self.adversarial:
            self.discriminator = build_discriminator(discriminator, loss.d_channels).to(
                self.device, memory_format=torch.channels_last)
            self.d_train = self.discriminator
            self.d_lr = loss.d_lr or cfg.optim.lr
            self.networks["discriminator"] = self.discriminator
            self.optimizers["d"] = torch.optim.AdamW(self.discriminator.parameters(), lr=self.d_lr, betas=(0.9, 0.99))
            self.scalers["d"] = self.grad_scaler()

    # ---- the contract's schedule and wrapping
    def wrap(self, prepare) -> None:
        self.g_train = prepare(self.model)
        if self.adversarial:
            self.d_train = prepare(self.discriminator)

    def configured_hyperparameters(self) -> dict[str, dict]:
        return {"g": {"weight_decay": self.cfg.optim.weight_decay}}

    def describe_discriminator(self) -> str:
        if not self.adversarial:
            return "no discriminator"
        return (f"{self.discriminator_arch} discriminator ({count_parameters(self.discriminator):,} parameters), "
                f"weight {self.cfg.loss.adversarial_weight}")

    # ---- the step's parts
    def start_step(self) -> float:
        """Sets the generator's learning rate and freezes the discriminator for the generator's
        update; -> the learning rate."""
        lr_now = self.scheduled_lr()
        set_lr(self.optimizers["g"], lr_now)
        if self.adversarial:
            self.discriminator.requires_grad_(False).eval()
        return lr_now

    def finish_step(self, stats: dict, world: int) -> dict:
        """Counts the global batch, moves the EMA; -> the step's stats, detached."""
        self.count(world)
        return {name: value.detach() for name, value in stats.items()}
