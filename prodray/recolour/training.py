"""The recolouring model's `Training` (kind `recolour`): random crops of photos, a seeded region mask
per crop (the repair module's blobs, rectangles and large shapes stand in for products, on white
outside them, as on a catalog photo), a target per crop (a named reference colour, or any sRGB
colour), and phases `g_step` (detail SSIM + colour distance beyond a margin + naming + gamut +
adversarial), `d_step` (spectral-norm patch discriminator: real crops against recoloured ones;
skipped when adversarial_weight is 0) and `ema`. No colour labels are needed: the target is what
the loss measures against, so any licensed photos train it. Validation: the evaluation's own scores
(evaluation.py) on a few product photos. Pure torch.
"""

import numpy as np
import torch
import torch.nn.functional as F

from prodray.enhancer.evaluation import list_images
from prodray.gan.data import pad_square_resize
from prodray.gan.losses import g_loss
from prodray.image_training import ImageToImageTraining
from prodray.io.codec import decode_image
from prodray.io.images import image_grid
from prodray.recolour import colour_space, losses
from prodray.recolour.colours import REFERENCE_HEX, hex_to_rgb, parse_colour, reference_lab
from prodray.recolour.evaluation import evaluate_recolour
from prodray.recolour.inference import Recolourer
from prodray.recolour.model import build_recolourer, transform
from prodray.recolour.segmentation import product_mask
from prodray.repair.masks import training_mask
from prodray.training import count_parameters

VAL_COLOURS = ("Red", "Navy Blue", "Yellow", "Black", "White")
GRID_COLOURS = ("Red", "Navy Blue", "Green", "Yellow", "Black", "White")
GRID_TILE = 96


def product_region(size: int, rng: np.random.Generator, kinds: tuple[str, ...]) -> np.ndarray:
    """A (size, size) region standing in for a product: one of the repair module's shapes, covering
    10-90 % of the square (the centre half after 8 misses)."""
    for _ in range(8):
        mask = training_mask(size, size, rng, kinds)
        if 0.1 <= mask.mean() <= 0.9:
            return mask
    mask = np.zeros((size, size), bool)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    return mask


class RecolourTraining(ImageToImageTraining):
    name = "recolour"

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank, build_recolourer(cfg.model.model_dump()), "patch")
        self.names, references = reference_lab()
        self.references = torch.from_numpy(references).float().to(self.device)
        self.reference_rgb = np.stack([hex_to_rgb(REFERENCE_HEX[name]) for name in self.names])
        self.val_images = []
        if rank == 0 and cfg.data.val_folder:
            for path in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]:
                decoded = decode_image(path.read_bytes())
                self.val_images.append((path.name, decoded.rgb, decoded.alpha))

    def next_batch(self):
        """-> (crops (B, 3, P, P) in [0, 1], masks (B, 1, P, P) in {0, 1}, targets (B, 3) sRGB in
        [0, 255], target name index (B,), -1 for an unnamed colour)."""
        crops = np.stack(self.random_crops())
        masks = np.stack([self.draw_mask() for _ in crops])
        if self.cfg.data.white_background:
            crops = np.where(masks[..., None], crops, np.uint8(255))
        named = self.rng.random(len(crops)) < self.cfg.data.named_share
        index = np.where(named, self.rng.integers(0, len(self.names), len(crops)), -1)
        targets = np.where(named[:, None], self.reference_rgb[index.clip(0)],
                           self.rng.integers(0, 256, (len(crops), 3))).astype(np.float32)
        return (self.as_batch(crops), self.as_batch(masks), torch.from_numpy(targets).to(self.device),
                torch.from_numpy(index).to(self.device))

    def draw_mask(self) -> np.ndarray:
        return product_region(self.cfg.data.patch_size, self.rng, tuple(self.cfg.data.mask_kinds))

    def describe(self) -> str:
        model = self.cfg.model
        return (f"recolour bilateral grid {model.grid_size}x{model.grid_size}x{model.grid_depth} from a "
                f"{model.input_size}px view: {count_parameters(self.model):,} parameters, "
                f"{self.model.flops_per_image() / 1e6:.0f} MFLOP per image; {self.describe_discriminator()}")

    def judged(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees: colours and shading at loss.d_input_size (detail is the SSIM term's)."""
        size = self.cfg.loss.d_input_size
        return images if images.shape[-1] <= size else F.interpolate(images, size=(size, size), mode="area")

    def train_step(self, images, masks, targets, index, world: int = 1) -> dict:
        loss = self.cfg.loss
        lr_now = self.start_step()
        target_lab = colour_space.srgb_to_lab(targets[..., None, None] / 255)[..., 0, 0]
        # the transform runs in float32 (transform() says why); the discriminator under autocast
        recoloured, linear = transform(self.g_train, images, masks, target_lab)
        detail = losses.detail_ssim(images, recoloured, masks).mean()
        product = losses.product_colour(recoloured, masks)
        distance = losses.colour_distance(product, target_lab)
        naming = losses.naming_loss(product, self.references, index).mean()
        gamut = losses.gamut_excess(linear, masks).mean()
        with self.autocast():
            adversarial = (g_loss(self.discriminator(self.judged(recoloured)).float(), loss.gan_loss)
                           if self.adversarial else recoloured.new_zeros(()))
        beyond_margin = losses.smooth_distance(F.relu(distance - loss.colour_margin)).mean()
        loss_g = (loss.detail_weight * (1 - detail) + loss.colour_weight * beyond_margin
                  + loss.naming_weight * naming + loss.gamut_weight * gamut + loss.adversarial_weight * adversarial)
        self.update("g", loss_g, clip=self.model)
        stats = {"loss_g": loss_g, "detail_ssim": detail, "de76": distance.mean(), "naming": naming, "gamut": gamut,
                 "loss_adversarial": adversarial}
        if self.adversarial:
            stats.update(self.update_discriminator(self.judged(images), self.judged(recoloured), lr_now, loss.gan_loss))
        return self.finish_step(stats, world)

    # ---- maintenance
    def validate(self) -> dict[str, float]:
        if not self.val_images:
            return {}
        recolourer = Recolourer(self.ema, {}, device=str(self.device))
        scores = evaluate_recolour(self.val_images, {"model": recolourer.recolour}, product_mask, VAL_COLOURS)
        return {f"val_{key}": value for key, value in scores["model"].items() if key != "by_source"}

    def grid(self) -> np.ndarray | None:
        if not self.val_images:
            return None
        recolourer = Recolourer(self.ema, {}, device=str(self.device))
        rows = []
        for _, rgb, alpha in self.val_images[:4]:
            mask = product_mask(rgb, alpha)
            tiles = [rgb] + [recolourer.recolour(rgb, parse_colour(c)[1], mask) for c in GRID_COLOURS]
            rows.append([pad_square_resize(tile, GRID_TILE) for tile in tiles])  # photos of any size
        return image_grid(rows)

    def export(self, export_uri: str) -> str:
        return self.export_network(export_uri, self.cfg.export_name, self.ema, {
            **self.cfg.model.model_dump(), "kind": "recolour", "images_seen": self.images_seen,
            "adversarial_weight": self.cfg.loss.adversarial_weight})
