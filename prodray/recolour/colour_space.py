"""sRGB <-> CIELAB (D65) and BT.601 luminance on torch tensors, differentiable, with the matrix and
white point of prodray/metrics.py's numpy versions (the evaluation's), so the model is trained on
the colours it is scored on. Images are (B, 3, H, W) float sRGB in [0, 1].
"""

import torch

from prodray.metrics import BT601_Y, D65_WHITE, SRGB_TO_XYZ

_EPSILON = (6 / 29) ** 3


def _matrix(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    to_xyz = _matrix(SRGB_TO_XYZ / D65_WHITE[:, None], rgb)
    xyz = torch.einsum("ij,bj...->bi...", to_xyz, linear)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(_EPSILON) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_linear(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> linear sRGB, not clipped: values outside [0, 1] are out of the sRGB gamut."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    from_xyz = _matrix(torch.linalg.inv(torch.as_tensor(SRGB_TO_XYZ)).numpy() * D65_WHITE[None, :], lab)
    return torch.einsum("ij,bj...->bi...", from_xyz, xyz)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear sRGB -> sRGB in [0, 1], out-of-gamut values clipped (as metrics.lab_to_srgb does)."""
    linear = linear.clamp(0, 1)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) Y of YCbCr (BT.601) in [16, 235], as metrics.rgb_to_y."""
    weights = _matrix(BT601_Y, rgb).view(1, 3, 1, 1)
    return 16.0 + (rgb * weights).sum(dim=1, keepdim=True)
