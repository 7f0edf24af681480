"""Restoration strength: how far a restoration model moves away from the clean model it was
trained from, as weight interpolation between the two (ESRGAN's network interpolation):
weights = clean + strength * (restore - clean). 0 is the clean model, 1 the full restoration.
Both share one network, so any strength costs one forward pass.

`auto` chooses per image from three things it can see: the JPEG quality in the file's quantisation
tables, the block edges left in the pixels (an earlier, coarser save that a later, finer one hides
from the tables) and the noise level estimated in the pixels. The constants were calibrated on
held-out product photos under a grid of damages (scripts/calibrate_strength.py, MODEL_CARD.md).
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from prodray.enhancer.interpolation import blend_states, check_same_network

STEP = 0.25  # strengths are rounded to this grid, so `auto` batches share a few weight sets
GRID = tuple(i * STEP for i in range(round(1 / STEP) + 1))  # every strength a model runs at
# The file's JPEG quality -> strength, linear between the points.
QUALITY_POINTS = ((60, 1.0), (75, 0.75), (90, 0.5), (95, 0.25), (100, 0.0))
NONE_BELOW_BLOCKS, FULL_AT_BLOCKS = 0.06, 0.08  # block_edges of a JPEG file
STEP_CLIP = 8.0  # grey levels: a block edge is a small step; texture edges must not outweigh it
STEP_FLOOR = 1.0  # grey levels added to the typical step: smooth gradients and flat white have almost none
NONE_BELOW_NOISE, FULL_AT_NOISE = 1.2, 5.5  # estimated noise sigma in grey levels


def _ramp(value: float, full_at: float, none_at: float) -> float:
    """1 at or beyond `full_at`, 0 at or beyond `none_at`, linear between."""
    return float(np.clip((value - none_at) / (full_at - none_at), 0.0, 1.0))


def _luma(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))


def estimate_noise(rgb: np.ndarray) -> float:
    """Gaussian noise sigma (grey levels) of a uint8 image: Immerkaer's Laplacian-difference
    estimator on luminance, over the pixels that are not on strong edges (texture reads as noise)."""
    grey = _luma(rgb)[None, None]
    if min(grey.shape[-2:]) < 8:
        return 0.0
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]
    response = F.conv2d(grey, kernel).abs()[0, 0]
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
    gradient = (F.conv2d(grey, sobel_x).abs() + F.conv2d(grey, sobel_x.transpose(2, 3)).abs())[0, 0]
    flat = gradient <= torch.quantile(gradient.flatten(), 0.5)
    if int(flat.sum()) < 16:
        return 0.0
    return float(math.sqrt(math.pi / 2) * response[flat].mean() / 6.0)


def block_edges(rgb: np.ndarray) -> float:
    """How much stronger luminance steps are across one column (and row) phase of the 8-pixel grid
    than across the others, relative to the typical step: near 0 for an image never saved as JPEG,
    larger the coarser a JPEG save was, even when a later, finer save hides the first quality from
    the file's tables. The strongest phase is taken, so crops off the grid read the same."""
    grey = _luma(rgb)
    if min(grey.shape) < 32:
        return 0.0
    excess = []
    for steps in ((grey[:, 1:] - grey[:, :-1]).abs(), (grey[1:, :] - grey[:-1, :]).abs().T):
        steps = steps.clamp(max=STEP_CLIP)
        length = steps.shape[1] - steps.shape[1] % 8
        # mean step per column, then the median over the columns of one phase: a product's
        # straight outline lifts a column or two, JPEG lifts every column of its phase.
        per_phase = steps[:, :length].mean(dim=0).reshape(-1, 8).median(dim=0).values
        strongest = int(per_phase.argmax())
        others = torch.cat([per_phase[:strongest], per_phase[strongest + 1:]])
        typical = others.median()
        excess.append(float((per_phase[strongest] - typical) / (typical + STEP_FLOOR)))
    return float(np.mean(excess))


def choose_strength(jpeg_quality: int | None, noise: float, blocks: float,
                    blocks_range: tuple = (NONE_BELOW_BLOCKS, FULL_AT_BLOCKS),
                    noise_range: tuple = (NONE_BELOW_NOISE, FULL_AT_NOISE)) -> float:
    """The strength for an image's measurements, on the STEP grid (the ranges: none below, full at;
    other values only for calibration). Block edges count only in JPEG files: downscaled camera
    photos carry some at random. A JPEG save hides part of the noise from the estimate, so
    compression and noise add instead of the larger one winning."""
    compression = 0.0
    if jpeg_quality is not None:
        points, strengths = zip(*QUALITY_POINTS)
        compression = max(float(np.interp(jpeg_quality, points, strengths)),
                          _ramp(blocks, blocks_range[1], blocks_range[0]))
    return snap(min(1.0, compression + _ramp(noise, noise_range[1], noise_range[0])))


def auto_strength(rgb: np.ndarray, jpeg_quality: int | None) -> float:
    """The strength for one image, on the STEP grid."""
    blocks = block_edges(rgb) if jpeg_quality is not None else 0.0
    return choose_strength(jpeg_quality, estimate_noise(rgb), blocks)


def snap(strength: float) -> float:
    return round(round(strength / STEP) * STEP, 4)


def identity_partner(model: torch.nn.Module) -> torch.nn.Module:
    """A same-size (scale 1) model's clean partner: the same network with its last layer zeroed, which
    returns the input unchanged. Only that layer differs, so strength s outputs input + s * detail."""
    partner = copy.deepcopy(model)
    partner.zero_detail()
    return partner


class StrengthModels:
    """The restoration network at each strength asked for, built once per strength and kept."""

    def __init__(self, restore: torch.nn.Module, clean: torch.nn.Module):
        self.restore = restore
        self.clean_state = {k: v.detach().clone() for k, v in clean.state_dict().items()}
        self.restore_state = {k: v.detach().clone() for k, v in restore.state_dict().items()}
        try:
            check_same_network(self.clean_state, self.restore_state)
        except ValueError as exc:
            raise ValueError(f"the clean model is not the same network as the restoration model: {exc}") from None
        self.models: dict[float, torch.nn.Module] = {1.0: restore}

    def at(self, strength: float) -> torch.nn.Module:
        strength = snap(strength)
        if strength not in self.models:
            model = copy.deepcopy(self.restore)
            model.load_state_dict(blend_states(self.clean_state, self.restore_state, strength))
            self.models[strength] = model.eval()
        return self.models[strength]
