"""The attribute classifier: a small CNN with one softmax head per attribute.

It serves the GAN metrics: its pooled penultimate features are the embedding for FID/KID, its
heads score attribute accuracy, and the same recipe trained on generated data gives CAS. It owns
the network and the uint8 -> input conversion only; training lives in prodray/classifier.py.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) in [-1, 1]: the one conversion point."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttributeClassifier(nn.Module):
    """Stem, then stages of two 3x3 convs each halved by max-pooling, global average pool.

    At 64 px the stem has stride 2, so the body always works from 32x32: the attributes
    (garment type, colour) are coarse and the CPU budget is small.
    """

    def __init__(self, attributes: dict[str, int], resolution: int = 32, widths: tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.2):
        super().__init__()
        if resolution not in (32, 64):
            raise ValueError(f"resolution must be 32 or 64, got {resolution}")
        self.attribute_names = list(attributes)
        self.resolution = resolution
        self.widths = tuple(int(w) for w in widths)
        stages = [_conv_bn(3, widths[0], stride=resolution // 32)]
        channels = widths[0]
        for index, width in enumerate(widths[1:]):
            stages += [_conv_bn(channels, width), _conv_bn(width, width)]
            if index < len(widths) - 2:
                stages.append(nn.MaxPool2d(2))
            channels = width
        stages.insert(1, nn.MaxPool2d(2))  # stem 32x32 -> 16x16 before the first stage
        self.body = nn.Sequential(*stages)
        self.feature_dim = channels
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(channels, count) for name, count in attributes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) in [-1, 1] -> (N, D) globally pooled penultimate features."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(f"classifier expects {self.resolution}x{self.resolution} input, got {tuple(x.shape)}")
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, R, R) -> {attribute: (N, K) logits}."""
        pooled = self.dropout(self.features(x))
        return {name: head(pooled) for name, head in self.heads.items()}


def default_widths(resolution: int) -> tuple[int, ...]:
    return (32, 64, 128) if resolution == 32 else (32, 64, 128, 128)


def build_classifier(config: dict) -> AttributeClassifier:
    """config (as in an export's config.json) -> an untrained network of that shape."""
    vocab = config["attributes"]
    return AttributeClassifier({name: len(values) for name, values in vocab.items()},
                               resolution=int(config["resolution"]),
                               widths=tuple(config.get("widths") or default_widths(int(config["resolution"]))),
                               dropout=float(config.get("dropout", 0.2)))
