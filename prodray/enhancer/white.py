"""Pure-white regions stay exactly 255 through a model, also after JPEG or noise touched them.

Marketplaces require RGB 255 backgrounds; a network's small ripples (254) show as grey boxes on
a white product page. Rules, on the model's input:
- exact: a pixel that is 255 in a whole 3x3 neighbourhood is 255 in the output;
- tolerant: a white area that a codec or sensor disturbed keeps a local mean near 255 although
  single pixels fall to 220-254. A connected area of such pixels counts as white when it still
  clips (in many of its pixels most channels are exactly 255: noise around 255 does, a light
  grey or pastel surface does not), or when it is a bright background (it touches the border,
  covers a real part of the image and averages near 255: what JPEG leaves of a noisy white).
  White areas are grown by two pixels into near-white neighbours (ringing next to the product).
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

CORE_MEAN = 250.0  # 5x5 local mean (all channels) inside a disturbed white area
CORE_DARKEST = 240.0  # ... and of its darkest channel: a pastel colour is not white
MIN_CLIPPED_SHARE = 0.3  # share of pixels whose median channel is 255
BACKGROUND_MEAN = 251.0  # a border-touching area this bright on average is a white background
BACKGROUND_SHARE = 0.01  # ... when it covers at least this share of the image
MIN_REGION_PIXELS = 16
EDGE_MEAN = 242.0  # 3x3 local mean of the darkest channel of the pixels a white area grows into
EDGE_PIXEL = 250  # or the pixel's own darkest channel
GROW_PIXELS = 2


def exact_white(lr: np.ndarray) -> np.ndarray:
    """(H, W) bool: pure white with pure-white 3x3 neighbours."""
    white = torch.from_numpy(np.all(lr == 255, axis=2)).float()[None, None]
    if not bool(white.any()):
        return np.zeros(lr.shape[:2], bool)
    return (-F.max_pool2d(-white, 3, stride=1, padding=1))[0, 0].bool().numpy()


def _local_mean(plane: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(plane.astype(np.float32))[None, None]
    x = F.pad(x, [size // 2] * 4, mode="replicate")
    return F.avg_pool2d(x, size, stride=1)[0, 0].numpy()


def white_regions(lr: np.ndarray) -> np.ndarray:
    """(H, W) bool: the disturbed white areas of `lr` (uint8 HWC RGB)."""
    height, width = lr.shape[:2]
    none = np.zeros((height, width), bool)
    if min(height, width) < 3:
        return none
    darkest, mean = lr.min(axis=2), lr.mean(axis=2)
    candidates = (_local_mean(mean, 5) >= CORE_MEAN) & (_local_mean(darkest, 5) >= CORE_DARKEST)
    labels, count = ndimage.label(candidates)
    if count == 0:
        return none
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    clipped = np.bincount(flat, weights=(np.median(lr, axis=2) == 255).ravel(), minlength=count + 1)
    brightness = np.bincount(flat, weights=mean.ravel(), minlength=count + 1) / np.maximum(sizes, 1)
    border = np.zeros(count + 1, bool)
    border[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    background = border & (brightness >= BACKGROUND_MEAN) & (sizes >= BACKGROUND_SHARE * height * width)
    keep = (sizes >= MIN_REGION_PIXELS) & ((clipped >= MIN_CLIPPED_SHARE * sizes) | background)
    keep[0] = False  # label 0: not a candidate
    core = keep[labels]
    if not core.any():
        return none
    near_white = (_local_mean(darkest, 3) >= EDGE_MEAN) | (darkest >= EDGE_PIXEL)
    return core | (ndimage.binary_dilation(core, iterations=GROW_PIXELS) & near_white)


def keep_white(lr: np.ndarray, out: np.ndarray, scale: int, tolerant: bool = True) -> np.ndarray:
    """`out` (the model's output for `lr`) with the white pixels of `lr` forced to 255."""
    mask = exact_white(lr)
    if tolerant:
        mask |= white_regions(lr)
    if not mask.any():
        return out
    if scale > 1:
        mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    out = out.copy()
    out[mask] = 255
    return out
