"""Differentiable augmentation for GAN training on small data (DiffAugment-style).

The same kind of random transform is applied to real and generated images before the
discriminator sees them, and gradients flow through it to the generator, so the discriminator
cannot memorise a small training set while the generator still learns the un-augmented
distribution. Randomness comes from an explicit torch.Generator (seeded per rank).
"""

import torch
from torch.nn import functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> list[str]:
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; known: {list(POLICIES)}")
    return names


def _uniform(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, saturation and contrast per image (images in [-1, 1])."""
    n, device = x.shape[0], x.device
    x = x + (_uniform((n, 1, 1, 1), generator, device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform((n, 1, 1, 1), generator, device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((n, 1, 1, 1), generator, device) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, padding with the edge value."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shifts = torch.stack([
        torch.randint(-max_dy, max_dy + 1, (n,), generator=generator, device=x.device),
        torch.randint(-max_dx, max_dx + 1, (n,), generator=generator, device=x.device)], dim=1)
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy), mode="replicate")
    rows = torch.arange(h, device=x.device)[None, :] + max_dy - shifts[:, :1]
    cols = torch.arange(w, device=x.device)[None, :] + max_dx - shifts[:, 1:]
    index_rows = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])
    picked = padded.gather(2, index_rows)
    index_cols = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return picked.gather(3, index_cols)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of `ratio` x the image size in each image."""
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h - size_h + 1, (n, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, w - size_w + 1, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~inside)[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: list[str], generator: torch.Generator) -> torch.Tensor:
    for name in policy:
        x = {"color": color, "translation": translation, "cutout": cutout}[name](x, generator)
    return x
