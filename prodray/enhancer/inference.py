"""Inference with an exported enhancer: whole images or overlapping tiles, batched by shape.

Tiles carry `pad` pixels of real context on every side that has neighbours (more than the
network's receptive field), and only their centres are kept, so a tiled result equals the
whole-image result up to float rounding: no blending, no seams. Alpha is upscaled separately
(bicubic); pure-white regions stay exactly 255 (enhancer/white.py).
"""

from dataclasses import dataclass

import numpy as np
import torch

from prodray.config import parse_strength
from prodray.enhancer.model import build_enhancer, deepen
from prodray.enhancer.strength import StrengthModels, auto_strength, identity_partner, snap
from prodray.enhancer.white import keep_white
from prodray.io.artifacts import load_export, shipped_name_of
from prodray.io.images import from_uint8_hwc, imresize_uint8
from prodray.precision import autocast
from prodray.precision import resolve as resolve_precision


@dataclass
class EnhanceResult:
    rgb: np.ndarray  # (H*s, W*s, 3) uint8
    alpha: np.ndarray | None  # (H*s, W*s) uint8


def _axis_tiles(length: int, tile: int, pad: int):
    """[(core_start, core_end, context_start, context_end)] covering 0..length."""
    spans = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        spans.append((start, end, max(0, start - pad), min(length, end + pad)))
    return spans


def default_model(scale: int) -> str:
    """The shipped model for a scale: same size is restoration; x2 / x4 the clean enhancers."""
    return "restore-x1" if scale == 1 else f"enhancer-x{scale}"


def clean_partner_id(config: dict) -> str | None:
    """The model id of an export's clean partner for strength: the shipped model it was trained from,
    or, when that was itself a restoration model, that model's partner (`clean_model_id`, recorded by
    the training), so a continued restoration model keeps the clean model it interpolates with."""
    if config.get("clean_model_id"):
        return config["clean_model_id"]
    init_id = config.get("init_model_id")
    return init_id if shipped_name_of(init_id) else None


def runs_at_a_strength(config: dict) -> bool:
    """Whether an export has a clean partner for strength: a same-size model is its own (the input
    unchanged), a larger one the shipped model it was trained from (`clean_partner_id`)."""
    return int(config["scale"]) == 1 or bool(shipped_name_of(clean_partner_id(config)))


class Enhancer:
    """An enhancer network ready for inference on uint8 images.

    A restoration model with its clean partner (`clean_model`: the model it was trained from)
    also runs at a `strength` in [0, 1] or `auto` (enhancer/strength.py); without a partner the
    model runs as it is and a strength is refused."""

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu", tile: int = 256, pad: int = 24,
                 max_batch: int = 16, self_ensemble: bool = False, precision: str = "auto", channels_last: bool = True,
                 clean_model: torch.nn.Module | None = None, strength=None):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        # channels-last activations: oneDNN / cuDNN convolutions then run without layout reorders.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.config = config
        self.scale = int(config["scale"])
        self.model_id = config.get("model_id", "unknown")
        # `pad` counts the body's pixels: a folded (unshuffled) body sees u times further, and tiles
        # must start on the fold's grid.
        fold = getattr(model, "unshuffle", 1)
        if tile % fold:
            raise ValueError(f"tile {tile} must be a multiple of the model's unshuffle {fold}")
        self.tile, self.pad, self.max_batch = tile, pad * fold, max_batch
        self.self_ensemble = self_ensemble
        self.strengths = None
        if clean_model is not None:
            self.strengths = StrengthModels(self.model, clean_model.to(self.device, memory_format=self.memory_format))
        self.strength = parse_strength(strength)
        if self.strength is not None and self.strengths is None:
            raise ValueError(f"model {self.model_id} is not a restoration model with a clean partner: "
                             "a strength does not apply to it")

    @classmethod
    def load(cls, reference: str, device: str = "cpu", clean: str | None = None, **kwargs) -> "Enhancer":
        """`clean`: the partner for strength; by default the shipped model this one was trained from."""
        model, config = load_export(reference, build_enhancer)
        if int(config["scale"]) == 1 and not clean:
            clean_model = identity_partner(model)  # strength 0 at the same size: the input unchanged
        else:
            clean = clean or shipped_name_of(clean_partner_id(config))
            clean_model = load_export(clean, build_enhancer)[0] if clean else None
            if clean_model is not None and len(clean_model.body) < len(model.body):
                clean_model = deepen(clean_model, len(model.body), template=model)  # trained from it, grown
        return cls(model, config, device=device, clean_model=clean_model, **kwargs)

    @property
    def restores(self) -> bool:
        return self.strengths is not None

    def strength_for(self, rgb: np.ndarray, jpeg_quality: int | None = None, requested=None) -> float | None:
        """The strength one image runs at: `requested` (parsed), else the Enhancer's own setting
        (None: the model as it is)."""
        if self.strengths is None:
            return None
        strength = self.strength if requested is None else requested
        if strength == "auto":
            return auto_strength(rgb, jpeg_quality)
        return 1.0 if strength is None else snap(strength)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """(B, 3, h, w) float in [0, 1] -> (B, 3, h*s, w*s) float in [0, 1]."""
        batch = batch.to(self.device, memory_format=self.memory_format)
        model = self.model if strength is None or self.strengths is None else self.strengths.at(strength)
        with autocast(self.precision, self.device):
            return self._forward(model, batch)

    def _forward(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        # The model's skip and sum stay float32 under autocast; only its convolutions run in bf16/fp16.
        if not self.self_ensemble:
            return model(batch).float().clamp_(0, 1)
        # Geometric self-ensemble (EDSR's "+"): the mean over the 8 flips/turns of the input,
        # each mapped back. 8x the compute for a steadier estimate of the same network.
        total = torch.zeros(())
        for turns in range(4):
            for flip in (False, True):
                x = batch.rot90(turns, (2, 3))
                x = x.flip(3) if flip else x
                y = model(x).float()
                y = y.flip(3) if flip else y
                total = total + y.rot90(-turns, (2, 3))
        return total.div_(8).clamp_(0, 1)

    def _pieces(self, image: np.ndarray):
        """Split one image into (shape key, tensor, placement) pieces: whole or tiles."""
        height, width = image.shape[:2]
        tensor = from_uint8_hwc(image)
        if max(height, width) <= self.tile:
            return [((height, width), tensor, (0, height, 0, width, 0, 0))]
        pieces = []
        for y0, y1, cy0, cy1 in _axis_tiles(height, self.tile, self.pad):
            for x0, x1, cx0, cx1 in _axis_tiles(width, self.tile, self.pad):
                crop = tensor[:, cy0:cy1, cx0:cx1]
                pieces.append((tuple(crop.shape[1:]), crop, (y0, y1, x0, x1, y0 - cy0, x0 - cx0)))
        return pieces

    def enhance_many(self, images: list[np.ndarray], strengths: list | None = None) -> list[np.ndarray]:
        """uint8 RGB images (any sizes) -> enhanced uint8 RGB, batching same-shape pieces across images
        (and same strengths: `strengths[i]` from `strength_for`, None for the model as it is)."""
        scale = self.scale
        strengths = strengths or [None] * len(images)
        outputs = [np.empty((im.shape[0] * scale, im.shape[1] * scale, 3), np.uint8) for im in images]
        groups: dict = {}
        for index, image in enumerate(images):
            for key, tensor, placement in self._pieces(image):
                groups.setdefault((key, strengths[index]), []).append((index, tensor, placement))
        for (_, strength), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start:start + self.max_batch]
                result = self.forward(torch.stack([m[1] for m in chunk]), strength)
                result = (result * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for (index, _, (y0, y1, x0, x1, oy, ox)), out in zip(chunk, result):
                    core = out[oy * scale:(oy + y1 - y0) * scale, ox * scale:(ox + x1 - x0) * scale]
                    outputs[index][y0 * scale:y1 * scale, x0 * scale:x1 * scale] = core
        return [keep_white(image, out, scale) for image, out in zip(images, outputs)]

    def enhance(self, rgb: np.ndarray, alpha: np.ndarray | None = None,
                jpeg_quality: int | None = None) -> EnhanceResult:
        out = self.enhance_many([rgb], [self.strength_for(rgb, jpeg_quality)])[0]
        return EnhanceResult(out, upscale_alpha(alpha, self.scale))


def upscale_alpha(alpha: np.ndarray | None, scale: int) -> np.ndarray | None:
    if alpha is None or scale == 1:
        return alpha
    return imresize_uint8(alpha, scale, dtype=torch.float32)
