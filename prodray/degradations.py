"""Pure, seeded, batched image degradations used to make training pairs.

Everything works on float tensors (B, 3, H, W) in [0, 1] on any device, with randomness taken
from an explicit torch.Generator. Includes the benchmark degradation: MATLAB-compatible
antialiased bicubic `imresize`. JPEG is a real codec round-trip on the CPU (via codec.py).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


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


# ---------------------------------------------------------------- random degradations

@dataclass(frozen=True)
class DegradationRanges:
    """Ranges for the random degradation pipeline; probability 0 disables a stage."""

    blur_prob: float = 0.0
    blur_sigma: tuple = (0.2, 2.0)
    anisotropic_prob: float = 0.5
    noise_prob: float = 0.0
    noise_sigma: tuple = (1.0, 10.0)  # in 0-255 grey levels
    poisson_prob: float = 0.0
    poisson_scale: tuple = (0.05, 2.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple = (40, 95)
    second_stage_prob: float = 0.0


def _uniform(generator, low, high, count, device):
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def gaussian_kernels(sigma_x, sigma_y, theta, size: int = 21) -> torch.Tensor:
    """(B, size, size) normalised (an)isotropic Gaussian kernels, one per image."""
    device = sigma_x.device
    half = size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    kernels = torch.exp(-0.5 * ((u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2))
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def random_blur(images, ranges: DegradationRanges, generator) -> torch.Tensor:
    """Blur each image with its own random (an)isotropic Gaussian kernel (reflect padding)."""
    batch, channels, _, _ = images.shape
    device = images.device
    sigma_x = _uniform(generator, *ranges.blur_sigma, batch, device)
    aniso = torch.rand(batch, generator=generator, device=device) < ranges.anisotropic_prob
    sigma_y = torch.where(aniso, _uniform(generator, *ranges.blur_sigma, batch, device), sigma_x)
    theta = _uniform(generator, 0.0, math.pi, batch, device)
    kernels = gaussian_kernels(sigma_x, sigma_y, theta)
    size = kernels.shape[-1]
    padded = F.pad(images, [size // 2] * 4, mode="reflect")
    # Grouped conv: one kernel per image, applied to each of its channels.
    weight = kernels[:, None].repeat_interleave(channels, dim=0)  # (B*C, 1, k, k)
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(images.shape)


def add_gaussian_noise(images, ranges: DegradationRanges, generator) -> torch.Tensor:
    sigma = _uniform(generator, *ranges.noise_sigma, images.shape[0], images.device) / 255.0
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    return images + noise * sigma[:, None, None, None]


def add_poisson_noise(images, ranges: DegradationRanges, generator) -> torch.Tensor:
    """Shot noise: variance proportional to intensity (scale ~ how few photons were counted)."""
    scale = _uniform(generator, *ranges.poisson_scale, images.shape[0], images.device)
    photons = images.clamp(0, 1) * 255.0 / scale[:, None, None, None]
    noisy = torch.poisson(photons, generator=generator) * scale[:, None, None, None] / 255.0
    return noisy


def jpeg_roundtrip(images, ranges: DegradationRanges, generator) -> torch.Tensor:
    """Real libjpeg round-trip on the CPU, at a random quality per image."""
    from prodray.codec import decode_image, encode_image

    qualities = torch.randint(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1, (images.shape[0],),
                              generator=generator, device=images.device).tolist()
    out = []
    for image, quality in zip(images, qualities):
        rgb = to_uint8_hwc(image)
        out.append(from_uint8_hwc(decode_image(encode_image(rgb, fmt="jpeg", quality=quality)).rgb))
    return torch.stack(out).to(images.device, images.dtype)  # keep the caller's dtype (eval uses float64)


def _maybe(stage, images, prob, ranges, generator):
    """Apply `stage` to the images whose coin flip came up (each image decides on its own)."""
    if prob <= 0:
        return images
    chosen = torch.rand(images.shape[0], generator=generator, device=images.device) < prob
    if not bool(chosen.any()):
        return images
    out = images.clone()
    out[chosen] = stage(images[chosen], ranges, generator)
    return out


def _one_stage(images, ranges, generator):
    images = _maybe(random_blur, images, ranges.blur_prob, ranges, generator)
    images = _maybe(add_gaussian_noise, images, ranges.noise_prob, ranges, generator)
    images = _maybe(add_poisson_noise, images, ranges.poisson_prob, ranges, generator)
    return images.clamp(0, 1)


def degrade(hr: torch.Tensor, scale: int, ranges: DegradationRanges, generator: torch.Generator) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1] -> LR (B, 3, H/scale, W/scale) in [0, 1].

    Order (Real-ESRGAN style): blur -> bicubic downscale -> noise -> [second stage] -> JPEG.
    With all probabilities at 0 this is exactly the benchmark bicubic degradation.
    """
    images = _maybe(random_blur, hr, ranges.blur_prob, ranges, generator)
    if scale != 1:
        images = imresize(images, 1.0 / scale)
    images = _maybe(add_gaussian_noise, images, ranges.noise_prob, ranges, generator)
    images = _maybe(add_poisson_noise, images, ranges.poisson_prob, ranges, generator)
    images = _maybe(_one_stage, images.clamp(0, 1), ranges.second_stage_prob, ranges, generator)
    images = _maybe(jpeg_roundtrip, images.clamp(0, 1), ranges.jpeg_prob, ranges, generator)
    # Quantise to 8 bit, as every real input to the model is.
    return (images.clamp(0, 1) * 255).round() / 255


# ---------------------------------------------------------------- the one uint8 <-> float place

def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def from_uint8_hwc(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
