"""The repair model's `Training` (kind `repair`): random crops of undamaged photos, a seeded
training mask per crop (masks.py), phases `g_step` (L1 on the hole + edge loss + optional VGG
perceptual + adversarial), `d_step` (spectral-norm discriminator on real crops vs repaired ones;
skipped when adversarial_weight is 0) and `ema`. Validation: masked PSNR of the EMA model on fixed
masks of the validation photos, beside the push-pull fill. Pure torch: the runners drive it.
"""

import numpy as np
import torch

from prodray.enhancer.evaluation import list_images
from prodray.enhancer.losses import EdgeLoss, build_perceptual
from prodray.gan.losses import g_loss
from prodray.image_training import ImageToImageTraining
from prodray.io import artifacts, storage
from prodray.io.codec import decode_image
from prodray.io.images import image_grid
from prodray.repair.evaluation import blur_fill, masked_scores, suite_mask
from prodray.repair.inference import Repairer
from prodray.repair.masks import training_mask
from prodray.repair.model import build_repairer
from prodray.training import count_parameters, read_init_model

VAL_KINDS = ("thick", "large")  # validation masks: where learning shows first


def show_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The damaged input as a person sees it: the hole painted magenta."""
    return np.where(mask[..., None], np.array([255, 0, 255], np.uint8), rgb)


class RepairTraining(ImageToImageTraining):
    name = "repair"

    @classmethod
    def prepare(cls, cfg) -> dict:
        if not cfg.init_from:
            return {}
        init = read_init_model(cfg.init_from, "init_from", cfg.model)
        return {"init_from": cfg.init_from, "init_model_id": init.get("model_id")}

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        # From init_from the weights fit cfg.model's network (checked in `prepare`), which is built
        # as cfg.model says (its weight-free fields may differ from the export's); a checkpoint wins.
        model = (artifacts.load_export(cfg.init_from, lambda _: build_repairer(cfg.model.model_dump()))[0].train()
                 if cfg.init_from else build_repairer(cfg.model.model_dump()))
        super().__init__(cfg, context, device, rank, model, cfg.loss.discriminator)
        loss = cfg.loss
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

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images (B, 3, P, P) in [0, 1], masks (B, 1, P, P) in {0, 1})."""
        crops = self.random_crops()
        return self.as_batch(np.stack(crops)), self.as_batch(np.stack([self.draw_mask() for _ in crops]))

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

    def describe(self) -> str:
        return (f"repair {self.cfg.model.arch}: {count_parameters(self.model):,} parameters, "
                f"{self.model.flops_per_pixel() / 1e3:.0f} kFLOP per pixel; {self.describe_discriminator()}; "
                f"perceptual: {self.perceptual_name}"
                + (f"; started from {self.cfg.init_from}" if self.cfg.init_from else ""))

    def train_step(self, images: torch.Tensor, holes: torch.Tensor, world: int = 1) -> dict:
        loss = self.cfg.loss
        lr_now = self.start_step()
        hole_share = holes.mean().clamp_min(1e-3)
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
        self.update("g", loss_g, clip=self.model)
        stats = {"loss_g": loss_g, "loss_hole": loss_hole, "loss_edge": loss_edge, "loss_adversarial": loss_adversarial}
        if self.adversarial:
            stats.update(self.update_discriminator(images, repaired, lr_now, loss.gan_loss))
        return self.finish_step(stats, world)

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
        return self.export_network(export_uri, self.cfg.export_name, self.ema, {
            **self.cfg.model.model_dump(), "kind": "repair", "images_seen": self.images_seen,
            "perceptual": self.perceptual_name, "adversarial_weight": self.cfg.loss.adversarial_weight,
            **self.context})
