"""Pure, seeded, batched image degradations used to make training pairs.

Everything works on float tensors (B, 3, H, W) in [0, 1] on any device, with randomness taken
from an explicit torch.Generator. Includes the benchmark degradation: MATLAB-compatible
antialiased bicubic `imresize` (from io/images.py). JPEG is a real codec round-trip on the CPU (via codec.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prodray.io.images import from_uint8_hwc, imresize, to_uint8_hwc

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
    # Blur kernel shape exponent: 2 is Gaussian, below 2 heavier tails, above 2 a plateau
    # (generalised Gaussian, as in Real-ESRGAN); drawn per image.
    kernel_beta: tuple = (2.0, 2.0)
    # Resize to a random size around the target (factor range) before the noise, then to the target
    # at the end; one draw per batch so the batch stays one tensor.
    resize_prob: float = 0.0
    resize_range: tuple = (0.5, 1.5)
    # A JPEG before the second stage too: suppliers' images are often saved twice.
    first_jpeg_prob: float = 0.0


def _uniform(generator, low, high, count, device):
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def gaussian_kernels(sigma_x, sigma_y, theta, size: int = 21, beta=None) -> torch.Tensor:
    """(B, size, size) normalised (an)isotropic (generalised, exponent `beta`) Gaussian kernels."""
    device = sigma_x.device
    half = size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    distance = (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2
    if beta is not None:
        distance = distance ** (beta[:, None, None] / 2)
    kernels = torch.exp(-0.5 * distance)
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def random_blur(images, ranges: DegradationRanges, generator) -> torch.Tensor:
    """Blur each image with its own random (an)isotropic Gaussian kernel (reflect padding)."""
    batch, channels, _, _ = images.shape
    device = images.device
    sigma_x = _uniform(generator, *ranges.blur_sigma, batch, device)
    aniso = torch.rand(batch, generator=generator, device=device) < ranges.anisotropic_prob
    sigma_y = torch.where(aniso, _uniform(generator, *ranges.blur_sigma, batch, device), sigma_x)
    theta = _uniform(generator, 0.0, math.pi, batch, device)
    low, high = ranges.kernel_beta
    beta = None if low == high == 2.0 else _uniform(generator, low, high, batch, device)
    kernels = gaussian_kernels(sigma_x, sigma_y, theta, beta=beta)
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
    from prodray.io.codec import decode_image, encode_image

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


def _random_resize(images, ranges: DegradationRanges, generator):
    """Resize the batch by one random factor, with a random interpolation (all images alike)."""
    if ranges.resize_prob <= 0 or float(torch.rand(1, generator=generator)) >= ranges.resize_prob:
        return images
    factor = float(_uniform(generator, *ranges.resize_range, 1, "cpu"))
    mode = ("area", "bilinear", "bicubic")[int(torch.randint(0, 3, (1,), generator=generator))]
    size = [max(4, round(side * factor)) for side in images.shape[-2:]]
    return F.interpolate(images, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def degrade(hr: torch.Tensor, scale: int, ranges: DegradationRanges, generator: torch.Generator) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1] -> LR (B, 3, H/scale, W/scale) in [0, 1].

    Order (Real-ESRGAN style): blur -> bicubic downscale [-> random resize] -> noise [-> JPEG]
    -> [second stage: blur, noise] [-> back to the target size] -> JPEG.
    With all probabilities at 0 this is exactly the benchmark bicubic degradation.
    """
    images = _maybe(random_blur, hr, ranges.blur_prob, ranges, generator)
    if scale != 1:
        images = imresize(images, 1.0 / scale)
    target = images.shape[-2:]
    images = _random_resize(images, ranges, generator)
    images = _maybe(add_gaussian_noise, images, ranges.noise_prob, ranges, generator)
    images = _maybe(add_poisson_noise, images, ranges.poisson_prob, ranges, generator)
    images = _maybe(jpeg_roundtrip, images.clamp(0, 1), ranges.first_jpeg_prob, ranges, generator)
    images = _maybe(_one_stage, images.clamp(0, 1), ranges.second_stage_prob, ranges, generator)
    if images.shape[-2:] != target:
        images = F.interpolate(images, size=list(target), mode="bicubic", align_corners=False)
    images = _maybe(jpeg_roundtrip, images.clamp(0, 1), ranges.jpeg_prob, ranges, generator)
    # Quantise to 8 bit, as every real input to the model is.
    return (images.clamp(0, 1) * 255).round() / 255
