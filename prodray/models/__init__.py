"""Model registry: an explicit ARCHS dict from architecture name to constructor."""

from prodray.models.enhancer import ResidualPixelShuffleNet

ARCHS = {
    "rpsnet": ResidualPixelShuffleNet,
}


def build_model(arch: str, **kwargs):
    """Build a network by registry name; unknown names fail with the list of known ones."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](**kwargs)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
