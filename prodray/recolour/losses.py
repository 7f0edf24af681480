"""The recolouring model's losses, differentiable versions of what evaluation.py scores: the
product's mean colour against the target (CIELAB distance, and the target being the nearest named
reference), SSIM of luminance detail over the product, and a penalty for colours outside the sRGB
gamut (clipping there is what flattens shading in white and black results).
"""

import torch
import torch.nn.functional as F

from prodray.recolour import colour_space
from prodray.recolour.evaluation import DETAIL_SIGMA
from prodray.recolour.model import masked_mean

SSIM_SIGMA, SSIM_WINDOW = 1.5, 11


def _gaussian(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def _separable(image: torch.Tensor, kernel: torch.Tensor, padding: str | None) -> torch.Tensor:
    radius = kernel.numel() // 2
    if padding:
        image = F.pad(image, (radius, radius, radius, radius), mode=padding)
    image = F.conv2d(image, kernel.view(1, 1, 1, -1))
    return F.conv2d(image, kernel.view(1, 1, -1, 1))


def detail(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance minus its Gaussian blur over the mask's pixels, zero outside the mask
    (evaluation.detail)."""
    kernel = _gaussian(DETAIL_SIGMA, int(4 * DETAIL_SIGMA + 0.5), y)
    blur = _separable(y * mask, kernel, "constant") / _separable(mask, kernel, "constant").clamp_min(1e-6)
    return (y - blur) * mask


def detail_ssim(source: torch.Tensor, result: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: SSIM of the luminance detail of two sRGB batches over the windows centred on the
    mask, with 4 standard deviations of the source's detail as the peak -> (B,)."""
    a, b = detail(colour_space.luminance(source), mask), detail(colour_space.luminance(result), mask)
    weight = mask.sum(dim=(2, 3)).clamp_min(1)
    mean_a = (a * mask).sum(dim=(2, 3)) / weight
    std_a = (((a - mean_a[..., None, None]) ** 2 * mask).sum(dim=(2, 3)) / weight).sqrt()
    peak = (4 * std_a).clamp_min(1.0)[..., None, None]
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    window = _gaussian(SSIM_SIGMA, SSIM_WINDOW // 2, a)

    def blur(x):
        return _separable(x, window, None)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    r = SSIM_WINDOW // 2
    centres = mask[..., r:-r, r:-r]
    return (ssim_map * centres).sum(dim=(2, 3))[:, 0] / centres.sum(dim=(2, 3))[:, 0].clamp_min(1)


def product_colour(result: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean CIELAB colour of each result's product -> (B, 3)."""
    return masked_mean(colour_space.srgb_to_lab(result), mask)


def colour_distance(mean: torch.Tensor, target_lab: torch.Tensor) -> torch.Tensor:
    """CIELAB distance (dE76) of the product colours (B, 3) to the targets -> (B,)."""
    return (mean - target_lab).pow(2).sum(dim=1).add(1e-6).sqrt()


def naming_loss(mean: torch.Tensor, references: torch.Tensor, index: torch.Tensor,
                temperature: float = 2.0) -> torch.Tensor:
    """Cross-entropy of 'the nearest named reference is the one asked for' (softmax over minus the
    CIELAB distances of the product colours (B, 3) / temperature), per image; index -1 (a hex
    target) gives 0."""
    logits = -torch.cdist(mean, references) / temperature
    named = index >= 0
    loss = F.cross_entropy(logits, index.clamp_min(0), reduction="none")
    return torch.where(named, loss, torch.zeros_like(loss))


def gamut_excess(linear: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean distance of the product's linear RGB outside [0, 1] -> (B,)."""
    excess = (F.relu(linear - 1) + F.relu(-linear)).sum(dim=1, keepdim=True)
    return (excess * mask).sum(dim=(2, 3))[:, 0] / mask.sum(dim=(2, 3))[:, 0].clamp_min(1)


def smooth_distance(distance: torch.Tensor) -> torch.Tensor:
    """sqrt(d^2 + 1) - 1: linear in dE far away, smooth at 0."""
    return (distance.pow(2) + 1).sqrt() - 1

