"""Image arrays: the one uint8 <-> float conversion, MATLAB-compatible bicubic resize, sample
grids, pad-to-square on white, and the image file suffixes. Pure numpy / torch; no codecs here
(io/codec.py owns bytes <-> arrays).
"""

import math
from collections import OrderedDict

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# What the bulk job lists from a catalog: the formats it decodes, and image formats it refuses, so
# that a catalog's HEIC or GIF files get a manifest row with the reason instead of being passed over.
CATALOG_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".heic", ".heif", ".avif", ".svg", ".mpo", ".ico", ".jp2", ".jxl")


# ---------------------------------------------------------------- the one uint8 <-> float place

def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy, copying first when `array` is read-only (e.g. Ray Data's Arrow-backed images):
    torch warns on read-only memory and leaves writes through the tensor undefined."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def from_uint8_hwc(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------- MATLAB-compatible bicubic

def _cubic(x: torch.Tensor) -> torch.Tensor:
    absx = x.abs()
    absx2, absx3 = absx**2, absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


def _resize_taps(in_len: int, out_len: int, scale: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), both (out_len, taps): the input pixels (0-based) and weights that
    reproduce MATLAB imresize(..., 'bicubic') along one axis.

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
    return mirror[torch.remainder(indices.long() - 1, 2 * in_len)], weights


def _resize_matrix(in_len: int, out_len: int, scale: float, dtype=torch.float64) -> torch.Tensor:
    """(out_len, in_len) dense form of _resize_taps: one matmul per axis, fast for small images."""
    indices, weights = _resize_taps(in_len, out_len, scale, dtype)
    matrix = torch.zeros(out_len, in_len, dtype=dtype)
    matrix.scatter_add_(1, indices, weights)
    return matrix


# Dense resize matrices up to this many entries per axis; larger axes use the taps (a few per
# output pixel), so memory grows with the output, not with input x output.
DENSE_LIMIT = 2**21
CACHE_BYTES = 64 * 2**20  # resize weights kept per process (long-lived actors and replicas)
_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_cache_bytes = 0


def _cached(kind: str, in_len: int, out_len: int, scale: float, dtype, device):
    """Resize weights for one axis ('dense' matrix or 'taps'), from a byte-bounded LRU cache."""
    global _cache_bytes
    key = (kind, in_len, out_len, scale, dtype, str(device))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if kind == "dense":
        value = (_resize_matrix(in_len, out_len, scale).to(device=device, dtype=dtype),)
    else:
        indices, weights = _resize_taps(in_len, out_len, scale)
        value = (indices.to(device), weights.to(device=device, dtype=dtype))
    size = sum(t.numel() * t.element_size() for t in value)
    if size <= CACHE_BYTES:
        _CACHE[key] = value
        _cache_bytes += size
        while _cache_bytes > CACHE_BYTES:
            _, dropped = _CACHE.popitem(last=False)
            _cache_bytes -= sum(t.numel() * t.element_size() for t in dropped)
    return value


def cache_bytes() -> int:
    return _cache_bytes


def _resize_axis(images: torch.Tensor, dim: int, out_len: int, scale: float) -> torch.Tensor:
    in_len = images.shape[dim]
    if in_len * out_len <= DENSE_LIMIT:
        (matrix,) = _cached("dense", in_len, out_len, scale, images.dtype, images.device)
        return torch.movedim(torch.tensordot(torch.movedim(images, dim, -1), matrix, dims=([-1], [1])), -1, dim)
    indices, weights = _cached("taps", in_len, out_len, scale, images.dtype, images.device)
    shape = [1] * images.dim()
    shape[dim] = out_len
    out = None
    for tap in range(indices.shape[1]):
        term = images.index_select(dim, indices[:, tap]) * weights[:, tap].reshape(shape)
        out = term if out is None else out.add_(term)
    return out


def imresize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB `imresize(img, scale, 'bicubic')` on (B, C, H, W) float tensors (no clamping/rounding).

    Output size is ceil(H * scale), ceil(W * scale), as in MATLAB. Separable: rows, then columns.
    """
    _, _, height, width = images.shape
    out_h, out_w = int(math.ceil(height * scale)), int(math.ceil(width * scale))
    return _resize_axis(_resize_axis(images, 2, out_h, scale), 3, out_w, scale)


def imresize_uint8(image: np.ndarray, scale: float, dtype=torch.float64) -> np.ndarray:
    """MATLAB imresize on a uint8 HWC (or HW) array, rounded back to uint8 as MATLAB does.
    float32 (`dtype`) halves the memory and still rounds to the same uint8 but for rare ties."""
    grey = image.ndim == 2
    tensor = as_tensor(image).to(dtype)
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
