"""Small seeded enhancer networks for the enhancer tests, every weight moved off its initial value
(a freshly built network's last layer is zero, which would hide what interpolation and strength do)."""

import torch

from prodray.enhancer.model import build_enhancer

CONFIG = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"}


def nudge(model: torch.nn.Module, amount: float = 0.05) -> torch.nn.Module:
    """Move every weight by Gaussian noise of `amount` (from torch's current seed), in place."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(amount * torch.randn_like(parameter))
    return model


def random_enhancer(seed: int, **config) -> torch.nn.Module:
    """The network of CONFIG (with `config` over it), built and nudged from `seed`."""
    torch.manual_seed(seed)
    return nudge(build_enhancer({**CONFIG, **config})).eval()
