"""Image arrays: the one uint8 <-> float conversion, MATLAB-compatible bicubic resize, sample
grids, pad-to-square on white, and the image file suffixes. Pure numpy / torch; no codecs here
(io/codec.py owns bytes <-> arrays).
"""

import math

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------- the one uint8 <-> float place

def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def from_uint8_hwc(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------- MATLAB-compatible bicubic

def _cubic(x: torch.Tensor) -> torch.Tensor:
    absx = x.abs()
    absx2, absx3 = absx**2, absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


def _resize_matrix(in_len: int, out_len: int, scale: float, dtype=torch.float64) -> torch.Tensor:
    """(out_len, in_len) weights reproducing MATLAB imresize(..., 'bicubic') along one axis.

    Downscaling widens the kernel by 1/scale (antialiasing); borders are mirrored (symmetric).
    """
    kernel_width = 4.0
    if scale < 1:
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _cubic
    x = torch.arange(1, out_len + 1, dtype=dtype)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + torch.arange(taps, dtype=dtype)[None, :]  # (out, taps), 1-based
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric padding: index -1 maps to 0, in_len maps to in_len - 1, and so on.
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    zero_based = mirror[torch.remainder(indices.long() - 1, 2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=dtype)
    matrix.scatter_add_(1, zero_based, weights)
    return matrix


_MATRIX_CACHE: dict = {}


def _cached_matrix(in_len, out_len, scale, dtype, device):
    key = (in_len, out_len, scale, dtype, str(device))
    if key not in _MATRIX_CACHE:
        if len(_MATRIX_CACHE) > 256:
            _MATRIX_CACHE.clear()
        _MATRIX_CACHE[key] = _resize_matrix(in_len, out_len, scale).to(device=device, dtype=dtype)
    return _MATRIX_CACHE[key]


def imresize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB `imresize(img, scale, 'bicubic')` on (B, C, H, W) float tensors (no clamping/rounding).

    Output size is ceil(H * scale), ceil(W * scale), as in MATLAB.
    """
    _, _, height, width = images.shape
    out_h, out_w = int(math.ceil(height * scale)), int(math.ceil(width * scale))
    rows = _cached_matrix(height, out_h, scale, images.dtype, images.device)
    cols = _cached_matrix(width, out_w, scale, images.dtype, images.device)
    # Resize along the axis with the larger reduction first, as MATLAB does; separable, so
    # either order agrees up to float rounding.
    return torch.einsum("oh,bchw,pw->bcop", rows, images, cols)


def imresize_uint8(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize on a uint8 HWC (or HW) array, rounded back to uint8 as MATLAB does."""
    grey = image.ndim == 2
    tensor = torch.from_numpy(image.astype(np.float64))
    tensor = tensor[None, None] if grey else tensor.permute(2, 0, 1)[None]
    out = imresize(tensor, scale)[0]
    out = out[0] if grey else out.permute(1, 2, 0)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- grids and canvases

def image_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile uint8 HWC images (same size within the whole grid) into one image, 2 px white gaps."""
    height, width = rows[0][0].shape[:2]
    gap = 2
    columns = max(len(r) for r in rows)
    grid = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = tile
    return grid


def pad_to_square(rgb: np.ndarray, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Centre (H, W, 3) on a pure-white square canvas; padded alpha is opaque (white shows as white)."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    canvas = np.full((side, side, 3), 255, np.uint8)
    canvas[top:top + height, left:left + width] = rgb
    if alpha is not None:
        padded = np.full((side, side), 255, np.uint8)
        padded[top:top + height, left:left + width] = alpha
        alpha = padded
    return canvas, alpha
