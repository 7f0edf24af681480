"""The repair model's `Training` (kind `repair`): random crops of undamaged photos, a seeded
training mask per crop (masks.py), phases `g_step` (L1 on the hole + edge loss + optional VGG
perceptual + adversarial), `d_step` (spectral-norm discriminator on real crops vs repaired ones;
skipped when adversarial_weight is 0) and `ema`. Validation: masked PSNR of the EMA model on fixed
masks of the validation photos, beside the push-pull fill. Pure torch: the runners drive it.
"""

import numpy as np
import torch

from prodray.enhancer import data
from prodray.enhancer.discriminator import build_discriminator
from prodray.enhancer.evaluation import list_images
from prodray.enhancer.losses import EdgeLoss, build_perceptual
from prodray.gan.losses import d_loss, g_loss
from prodray.io import artifacts, storage
from prodray.io.codec import decode_image
from prodray.io.images import image_grid
from prodray.repair.evaluation import blur_fill, masked_scores, suite_mask
from prodray.repair.inference import Repairer
from prodray.repair.masks import training_mask
from prodray.repair.model import build_repairer
from prodray.training import Training, count_parameters, lr_at, make_ema, set_lr, update_ema

VAL_KINDS = ("thick", "large")  # validation masks: where learning shows first


def show_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The damaged input as a person sees it: the hole painted magenta."""
    return np.where(mask[..., None], np.array([255, 0, 255], np.uint8), rgb)


class RepairTraining(Training):
    name = "repair"
    read_batch_size = 32

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        loss = cfg.loss
        self.model = build_repairer(cfg.model.model_dump()).to(self.device, memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.g_train = self.model
        self.networks = {"model": self.model, "ema": self.ema}
        self.optimizers = {"g": torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                                  weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.99))}
        self.scalers = {"g": self.grad_scaler()}
        self.adversarial = loss.adversarial_weight > 0
        if self.adversarial:
            self.discriminator = build_discriminator(loss.discriminator, loss.d_channels).to(
                self.device, memory_format=torch.channels_last)
            self.d_train = self.discriminator
            self.d_lr = loss.d_lr or cfg.optim.lr
            self.networks["discriminator"] = self.discriminator
            self.optimizers["d"] = torch.optim.AdamW(self.discriminator.parameters(), lr=self.d_lr, betas=(0.9, 0.99))
            self.scalers["d"] = self.grad_scaler()
        self.edge = EdgeLoss().to(self.device)
        self.perceptual, self.perceptual_name = None, "none"
        if loss.perceptual_weight:
            perceptual, self.perceptual_name = build_perceptual(storage.get_bytes(loss.vgg19_weights),
                                                                loss.vgg19_weights)
            self.perceptual = perceptual.to(self.device)
        self.val_images = []
        if rank == 0 and cfg.data.val_folder:
            self.val_images = [decode_image(p.read_bytes()).rgb
                               for p in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]]
        self.pool: list[np.ndarray] = []

    # ---- data
    @classmethod
    def source_rows(cls, cfg, context: dict) -> list[dict]:
        return data.source_rows(cfg.data.sources)

    @staticmethod
    def read_rows(batch: dict, cfg: dict, context: dict) -> dict:
        return data.read_rows(batch)

    def load_pool(self, batches, log) -> None:
        self.pool = data.load_pool(batches, self.cfg.data.patch_size, log, tuple(self.cfg.data.hr_scales))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images (B, 3, P, P) in [0, 1], masks (B, 1, P, P) in {0, 1})."""
        cfg = self.cfg.data
        crops = []
        while len(crops) < cfg.batch_size:
            image = self.pool[int(self.rng.integers(0, len(self.pool)))]
            crops += data.random_crops(image, cfg.patch_size, min(cfg.patches_per_image, cfg.batch_size - len(crops)),
                                       self.rng)
        masks = np.stack([self.draw_mask() for _ in crops])
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)
        holes = torch.from_numpy(masks.astype(np.float32))[:, None]
        return (images.to(self.device).contiguous(memory_format=torch.channels_last),
                holes.to(self.device).contiguous(memory_format=torch.channels_last))

    def draw_mask(self) -> np.ndarray:
        """A (P, P) training mask: drawn on a canvas data.mask_canvas x P wide, a P x P part of it kept."""
        cfg, size = self.cfg.data, self.cfg.data.patch_size
        low, high = cfg.mask_canvas
        side = int(round(size * self.rng.uniform(low, high))) if high > low else int(round(size * low))
        for _ in range(8):
            canvas = training_mask(side, side, self.rng, tuple(cfg.mask_kinds))
            top, left = self.rng.integers(0, side - size + 1, size=2)
            mask = canvas[top:top + size, left:left + size]
            if mask.any() and not mask.all():
                return mask
        return training_mask(size, size, self.rng, tuple(cfg.mask_kinds))

    # ---- step
    def wrap(self, prepare) -> None:
        self.g_train = prepare(self.model)
        if self.adversarial:
            self.d_train = prepare(self.discriminator)

    def describe(self) -> str:
        model, loss = self.cfg.model, self.cfg.loss
        adversarial = (f"{loss.discriminator} discriminator ({count_parameters(self.discriminator):,} parameters), "
                       f"weight {loss.adversarial_weight}") if self.adversarial else "no discriminator"
        return (f"repair {model.arch}: {count_parameters(self.model):,} parameters, "
                f"{self.model.flops_per_pixel() / 1e3:.0f} kFLOP per pixel; {adversarial}; "
                f"perceptual: {self.perceptual_name}")

    def scheduled_lr(self) -> float:
        optim = self.cfg.optim
        return lr_at(self.images_seen, optim.lr, optim.warmup_images, optim.total_images)

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.scheduled_lr()}

    def configured_hyperparameters(self) -> dict[str, dict]:
        return {"g": {"weight_decay": self.cfg.optim.weight_decay}}

    def train_step(self, images: torch.Tensor, holes: torch.Tensor, world: int = 1) -> dict:
        loss, optimizers, scalers = self.cfg.loss, self.optimizers, self.scalers
        lr_now = self.scheduled_lr()
        set_lr(optimizers["g"], lr_now)
        hole_share = holes.mean().clamp_min(1e-3)

        # g_step
        if self.adversarial:
            self.discriminator.requires_grad_(False).eval()
        with self.autocast():
            repaired = self.g_train(images, holes).float()
            loss_hole = (repaired - images).abs().mean() / hole_share  # L1 over the hole's pixels
            loss_edge = self.edge(repaired, images) if loss.edge_weight else repaired.new_zeros(())
            loss_perceptual = (self.perceptual(repaired, images) if self.perceptual is not None
                               else repaired.new_zeros(()))
            loss_adversarial = (g_loss(self.discriminator(repaired).float(), loss.gan_loss) if self.adversarial
                                else repaired.new_zeros(()))
            loss_g = (loss.hole_weight * loss_hole + loss.edge_weight * loss_edge
                      + loss.perceptual_weight * loss_perceptual + loss.adversarial_weight * loss_adversarial)
        optimizers["g"].zero_grad(set_to_none=True)
        scalers["g"].scale(loss_g).backward()
        scalers["g"].unscale_(optimizers["g"])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        scalers["g"].step(optimizers["g"])
        scalers["g"].update()
        stats = {"loss_g": loss_g, "loss_hole": loss_hole, "loss_edge": loss_edge, "loss_adversarial": loss_adversarial}

        # d_step: real crops against repaired ones, one forward for both halves
        if self.adversarial:
            set_lr(optimizers["d"], lr_now * self.d_lr / self.cfg.optim.lr)
            self.discriminator.requires_grad_(True).train()
            with self.autocast():
                real_logits, fake_logits = self.d_train(torch.cat([images, repaired.detach()])).float().chunk(2)
                loss_d = d_loss(real_logits, fake_logits, loss.gan_loss)
            optimizers["d"].zero_grad(set_to_none=True)
            scalers["d"].scale(loss_d).backward()
            scalers["d"].step(optimizers["d"])
            scalers["d"].update()
            stats.update(loss_d=loss_d, d_real=real_logits.mean(), d_fake=fake_logits.mean())

        # ema
        global_batch = self.cfg.data.batch_size * world
        self.images_seen += global_batch
        update_ema(self.ema, self.model, global_batch, self.cfg.run.ema_half_life_images, self.images_seen)
        self.step += 1
        return {name: value.detach() for name, value in stats.items()}

    # ---- maintenance
    def _val_cases(self):
        for index, image in enumerate(self.val_images):
            for kind in VAL_KINDS:
                yield image, suite_mask(kind, index, *image.shape[:2], seed=1)

    def validate(self) -> dict[str, float]:
        if not self.val_images:
            return {}
        repairer = Repairer(self.ema, {}, device=str(self.device), precision=self.precision)
        model, blur = [], []
        for image, mask in self._val_cases():
            damaged = np.where(mask[..., None], np.uint8(0), image)
            model.append(masked_scores(repairer.network(damaged, mask), image, mask)["psnr_masked"])
            blur.append(masked_scores(blur_fill(damaged, mask), image, mask)["psnr_masked"])
        return {"val_psnr_masked": float(np.mean(model)), "val_blur_psnr_masked": float(np.mean(blur))}

    def grid(self) -> np.ndarray | None:
        if not self.val_images:
            return None
        repairer = Repairer(self.ema, {}, device=str(self.device), precision=self.precision)
        rows, size = [], 160
        for image, mask in list(self._val_cases())[:4]:
            top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
            crop, hole = image[top:top + size, left:left + size], mask[top:top + size, left:left + size]
            if not hole.any():
                hole = hole.copy()
                hole[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = True
            damaged = np.where(hole[..., None], np.uint8(0), crop)
            rows.append([show_mask(crop, hole), blur_fill(damaged, hole), repairer.network(damaged, hole), crop])
        return image_grid(rows)

    def export(self, export_uri: str) -> str:
        return artifacts.export_model(export_uri, self.cfg.export_name, self.ema, {
            **self.cfg.model.model_dump(), "kind": "repair", "images_seen": self.images_seen,
            "perceptual": self.perceptual_name, "adversarial_weight": self.cfg.loss.adversarial_weight})
