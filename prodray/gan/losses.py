"""GAN losses: hinge and non-saturating (logistic), the R1 gradient penalty, mode seeking and
the auxiliary classifier's cross-entropy.

Sign conventions: the discriminator outputs a real-valued score, higher = more real. Both
discriminator losses fall as real scores rise and fake scores fall; the generator losses fall
as fake scores rise.
"""

import torch
from torch.nn import functional as F


def d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    if kind == "nonsaturating":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; known: hinge, nonsaturating")


def g_loss(fake_scores: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return -fake_scores.mean()
    if kind == "nonsaturating":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; known: hinge, nonsaturating")


def r1_penalty(real_scores: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |d score / d image|^2 on real images (Mescheder et al. 2018).
    `real_images` must have requires_grad set before the discriminator saw them."""
    (gradient,) = torch.autograd.grad(real_scores.sum(), real_images, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()


def mode_seeking_loss(images: torch.Tensor, noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019, MSGAN): the batch's first and second halves share
    attributes but not noise; the loss falls as their images differ more per unit of noise
    distance, so G cannot map all noise of one attribute combination to one image."""
    half = images.shape[0] // 2
    image_gap = (images[:half] - images[half:2 * half]).abs().flatten(1).mean(1)
    noise_gap = (noise[:half] - noise[half:2 * half]).abs().flatten(1).mean(1)
    return 1.0 / ((image_gap / noise_gap).mean() + eps)


def class_loss(logits: dict[str, torch.Tensor], attributes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the auxiliary classifier's logits against attribute indices, averaged over
    attributes (AC-GAN, Odena et al. 2017): D lowers it on real images, G on its own."""
    return sum(F.cross_entropy(logits[name].float(), attributes[name]) for name in logits) / len(logits)
