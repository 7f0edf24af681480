"""The recolouring model's `Training` (kind `recolour`): random crops of photos, a seeded region mask
per crop (the repair module's blobs, rectangles and large shapes stand in for products), a target
per crop (a named reference colour, or any sRGB colour), and phases `g_step` (detail SSIM + colour
distance + naming + gamut + adversarial), `d_step` (spectral-norm patch discriminator: real crops
against recoloured ones; skipped when adversarial_weight is 0) and `ema`. No colour labels are
needed: the target is what the loss measures against, so any licensed photos train it.
Validation: the evaluation's own scores (evaluation.py) on a few product photos. Pure torch.
"""

import numpy as np
import torch
import torch.nn.functional as F

from prodray.enhancer import data
from prodray.enhancer.discriminator import build_discriminator
from prodray.enhancer.evaluation import list_images
from prodray.gan.data import pad_square_resize
from prodray.gan.losses import d_loss, g_loss
from prodray.io import artifacts
from prodray.io.codec import decode_image
from prodray.io.images import image_grid
from prodray.recolour import colour_space, losses
from prodray.recolour.colours import REFERENCE_HEX, hex_to_rgb, parse_colour, reference_lab
from prodray.recolour.evaluation import evaluate_recolour
from prodray.recolour.inference import Recolourer
from prodray.recolour.model import build_recolourer, transform
from prodray.recolour.segmentation import product_mask
from prodray.repair.masks import training_mask
from prodray.training import Training, count_parameters, lr_at, make_ema, set_lr, update_ema

VAL_COLOURS = ("Red", "Navy Blue", "Yellow", "Black", "White")
GRID_COLOURS = ("Red", "Navy Blue", "Green", "Yellow", "Black", "White")
GRID_TILE = 96


class RecolourTraining(Training):
    name = "recolour"
    read_batch_size = 32

    def __init__(self, cfg, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        loss = cfg.loss
        self.model = build_recolourer(cfg.model.model_dump()).to(self.device)
        self.ema = make_ema(self.model)
        self.g_train = self.model
        self.networks = {"model": self.model, "ema": self.ema}
        self.optimizers = {"g": torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                                  weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.99))}
        self.scalers = {"g": self.grad_scaler()}
        self.adversarial = loss.adversarial_weight > 0
        if self.adversarial:
            self.discriminator = build_discriminator("patch", loss.d_channels).to(self.device)
            self.d_train = self.discriminator
            self.networks["discriminator"] = self.discriminator
            self.optimizers["d"] = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.optim.lr,
                                                     betas=(0.9, 0.99))
            self.scalers["d"] = self.grad_scaler()
        self.names, references = reference_lab()
        self.references = torch.from_numpy(references).float().to(self.device)
        self.reference_rgb = np.stack([hex_to_rgb(REFERENCE_HEX[name]) for name in self.names])
        self.val_images = []
        if rank == 0 and cfg.data.val_folder:
            for path in list_images(cfg.data.val_folder)[:cfg.data.val_max_images]:
                decoded = decode_image(path.read_bytes())
                self.val_images.append((path.name, decoded.rgb, decoded.alpha))
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

    def next_batch(self):
        """-> (crops (B, 3, P, P) in [0, 1], masks (B, 1, P, P) in {0, 1}, targets (B, 3) sRGB in
        [0, 255], target name index (B,), -1 for an unnamed colour)."""
        cfg = self.cfg.data
        crops = []
        while len(crops) < cfg.batch_size:
            image = self.pool[int(self.rng.integers(0, len(self.pool)))]
            crops += data.random_crops(image, cfg.patch_size, min(cfg.patches_per_image, cfg.batch_size - len(crops)),
                                       self.rng)
        masks = np.stack([self.draw_mask() for _ in crops])
        named = self.rng.random(len(crops)) < cfg.named_share
        index = np.where(named, self.rng.integers(0, len(self.names), len(crops)), -1)
        targets = np.where(named[:, None], self.reference_rgb[index.clip(0)],
                           self.rng.integers(0, 256, (len(crops), 3))).astype(np.float32)
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)
        holes = torch.from_numpy(masks.astype(np.float32))[:, None]
        return (images.to(self.device), holes.to(self.device), torch.from_numpy(targets).to(self.device),
                torch.from_numpy(index).to(self.device))

    def draw_mask(self) -> np.ndarray:
        """A (P, P) region: one of the repair module's shapes, covering 10-90 % of the crop."""
        size = self.cfg.data.patch_size
        for _ in range(8):
            mask = training_mask(size, size, self.rng, tuple(self.cfg.data.mask_kinds))
            if 0.1 <= mask.mean() <= 0.9:
                return mask
        mask = np.zeros((size, size), bool)
        mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
        return mask

    # ---- step
    def wrap(self, prepare) -> None:
        self.g_train = prepare(self.model)
        if self.adversarial:
            self.d_train = prepare(self.discriminator)

    def describe(self) -> str:
        model, loss = self.cfg.model, self.cfg.loss
        adversarial = (f"patch discriminator ({count_parameters(self.discriminator):,} parameters), weight "
                       f"{loss.adversarial_weight}") if self.adversarial else "no discriminator"
        return (f"recolour bilateral grid {model.grid_size}x{model.grid_size}x{model.grid_depth} from a "
                f"{model.input_size}px view: {count_parameters(self.model):,} parameters, "
                f"{self.model.flops_per_image() / 1e6:.0f} MFLOP per image; {adversarial}")

    def scheduled_lr(self) -> float:
        optim = self.cfg.optim
        return lr_at(self.images_seen, optim.lr, optim.warmup_images, optim.total_images)

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.scheduled_lr()}

    def configured_hyperparameters(self) -> dict[str, dict]:
        return {"g": {"weight_decay": self.cfg.optim.weight_decay}}

    def judged(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees: colours and shading at loss.d_input_size (detail is the SSIM term's)."""
        size = self.cfg.loss.d_input_size
        return images if images.shape[-1] <= size else F.interpolate(images, size=(size, size), mode="area")

    def train_step(self, images, masks, targets, index, world: int = 1) -> dict:
        loss, optimizers, scalers = self.cfg.loss, self.optimizers, self.scalers
        lr_now = self.scheduled_lr()
        set_lr(optimizers["g"], lr_now)
        target_lab = colour_space.srgb_to_lab(targets[..., None, None] / 255)[..., 0, 0]

        # g_step: the transform runs in float32 (transform() says why); the discriminator under autocast
        if self.adversarial:
            self.discriminator.requires_grad_(False).eval()
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
        optimizers["g"].zero_grad(set_to_none=True)
        scalers["g"].scale(loss_g).backward()
        scalers["g"].unscale_(optimizers["g"])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        scalers["g"].step(optimizers["g"])
        scalers["g"].update()
        stats = {"loss_g": loss_g, "detail_ssim": detail, "de76": distance.mean(), "naming": naming, "gamut": gamut,
                 "loss_adversarial": adversarial}

        # d_step: real crops against recoloured ones, one forward for both halves
        if self.adversarial:
            set_lr(optimizers["d"], lr_now)
            self.discriminator.requires_grad_(True).train()
            with self.autocast():
                both = self.judged(torch.cat([images, recoloured.detach()]))
                real_logits, fake_logits = self.d_train(both).float().chunk(2)
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
        return artifacts.export_model(export_uri, self.cfg.export_name, self.ema, {
            **self.cfg.model.model_dump(), "kind": "recolour", "images_seen": self.images_seen,
            "adversarial_weight": self.cfg.loss.adversarial_weight})
