"""Restoration strength: how far a restoration model moves away from the clean model it was
trained from, as weight interpolation between the two (ESRGAN's network interpolation):
weights = clean + strength * (restore - clean). 0 is the clean model, 1 the full restoration.
Both share one network, so any strength costs one forward pass.

`auto` chooses per image: from the JPEG quality the file's quantisation tables give, and from the
noise level estimated in the pixels (for inputs that are not JPEG or were saved after the noise).
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

STEP = 0.25  # strengths are rounded to this grid, so `auto` batches share a few weight sets
# JPEG quality at and below which the full strength helps, and from which none is needed.
FULL_AT_QUALITY, NONE_FROM_QUALITY = 60, 95
FULL_AT_NOISE, NONE_BELOW_NOISE = 6.0, 1.5  # estimated noise sigma in grey levels


def _ramp(value: float, full_at: float, none_at: float) -> float:
    """1 at or beyond `full_at`, 0 at or beyond `none_at`, linear between."""
    return float(np.clip((value - none_at) / (full_at - none_at), 0.0, 1.0))


def estimate_noise(rgb: np.ndarray) -> float:
    """Gaussian noise sigma (grey levels) of a uint8 image: Immerkaer's Laplacian-difference
    estimator on luminance, over the pixels that are not on strong edges (texture reads as noise)."""
    grey = torch.from_numpy(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]
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


def auto_strength(rgb: np.ndarray, jpeg_quality: int | None) -> float:
    """The strength for one image, on the STEP grid."""
    from_jpeg = 0.0 if jpeg_quality is None else _ramp(jpeg_quality, FULL_AT_QUALITY, NONE_FROM_QUALITY)
    from_noise = _ramp(estimate_noise(rgb), FULL_AT_NOISE, NONE_BELOW_NOISE)
    return snap(max(from_jpeg, from_noise))


def snap(strength: float) -> float:
    return round(round(strength / STEP) * STEP, 4)


class StrengthModels:
    """The restoration network at each strength asked for, built once per strength and kept."""

    def __init__(self, restore: torch.nn.Module, clean: torch.nn.Module):
        self.restore = restore
        self.clean_state = {k: v.detach().clone() for k, v in clean.state_dict().items()}
        self.restore_state = {k: v.detach().clone() for k, v in restore.state_dict().items()}
        if self.clean_state.keys() != self.restore_state.keys() or any(
                self.clean_state[k].shape != v.shape for k, v in self.restore_state.items()):
            raise ValueError("the clean model is not the same network as the restoration model")
        self.models: dict[float, torch.nn.Module] = {1.0: restore}

    def at(self, strength: float) -> torch.nn.Module:
        strength = snap(strength)
        if strength not in self.models:
            model = copy.deepcopy(self.restore)
            model.load_state_dict({k: c + strength * (self.restore_state[k] - c) if c.is_floating_point() else c
                                   for k, c in self.clean_state.items()})
            self.models[strength] = model.eval()
        return self.models[strength]
