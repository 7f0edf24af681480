"""Which pixels are the product: its alpha when the photo has one, else everything that is not the
near-white background connected to the photo's border (so white prints and labels inside the
product stay product). Pure numpy + scipy; a learned segmentation can replace it behind the same
function.
"""

import numpy as np
from scipy import ndimage

from prodray.metrics import srgb_to_lab

# Near-white: lighter than L 94 and almost no chroma (JPEG leaves 250-254 around a 255 background).
BACKGROUND_MIN_L = 94.0
BACKGROUND_MAX_CHROMA = 4.0
# Fewer product pixels than this: nothing to recolour (a blank or white-only photo).
MIN_PRODUCT_PIXELS = 16


def product_mask(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 [+ (H, W) uint8 alpha] -> (H, W) bool, True = the product."""
    if alpha is not None:
        return alpha >= 128
    lab = srgb_to_lab(rgb)
    near_white = (lab[..., 0] >= BACKGROUND_MIN_L) & (np.hypot(lab[..., 1], lab[..., 2]) <= BACKGROUND_MAX_CHROMA)
    labels, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    # One-pixel specks of JPEG noise on the background are not product.
    return ndimage.binary_opening(~background, iterations=1)
