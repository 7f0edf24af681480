"""The classical recolouring baseline: over the product's mask, move the mean CIELAB colour to the
target's and keep every pixel's deviation from that mean (shading, folds, prints, logos). Pixels
outside the mask are returned byte for byte, so a pure-white background stays exactly 255. What a
learned model is measured against; it knows nothing of materials, so dark and white sources (little
chroma to keep, lightness far from the target) are where it is weakest.
"""

import numpy as np

from prodray.metrics import lab_to_srgb, srgb_to_lab


def lab_shift(rgb: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, (3,) uint8 target sRGB, (H, W) bool -> (H, W, 3) uint8."""
    if not mask.any():
        return rgb.copy()
    region = srgb_to_lab(rgb[mask])  # (N, 3)
    goal = srgb_to_lab(target.reshape(1, 3).astype(np.uint8))[0]
    shifted = region - region.mean(axis=0) + goal
    shifted[:, 0] = np.clip(shifted[:, 0], 0, 100)
    out = rgb.copy()
    out[mask] = lab_to_srgb(shifted)
    return out
