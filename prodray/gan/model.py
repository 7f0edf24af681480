"""Conditional product GAN: a generator with conditional batch norm and a projection discriminator.

Conditioning is on several attributes at once (e.g. articleType and baseColour): each
attribute has its own embedding, and the condition is their concatenation (generator) or the
sum of their projections (discriminator). Because attributes are embedded independently, a
combination never seen in training can still be requested.

Sizes are for CPU-friendly 32x32 / 64x64 training: channels halve at every upsampling step from
`g_channels` (generator) and double at every downsampling step from `d_channels` (discriminator).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

GENERATOR_BLOCKS = ("plain", "residual")


def _check_resolution(resolution: int) -> int:
    steps = int(math.log2(resolution)) - 2
    if resolution < 8 or 2 ** (steps + 2) != resolution:
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    return steps


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are predicted from the condition vector (BigGAN style)."""

    def __init__(self, channels: int, condition_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(condition_dim, channels)
        self.bias = nn.Linear(condition_dim, channels)
        nn.init.zeros_(self.gain.weight)  # starts as plain batch norm: gain 1, bias 0
        nn.init.zeros_(self.gain.bias)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.bias.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(condition)[:, :, None, None]
        return self.norm(x) * gain + self.bias(condition)[:, :, None, None]


class UpBlock(nn.Module):
    """x2 nearest upsampling, 3x3 conv, conditional BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = ConditionalBatchNorm(out_channels, condition_dim)

    def forward(self, x, condition):
        x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return F.relu(self.norm(x, condition))


class ResidualUpBlock(nn.Module):
    """BigGAN-style: CBN, ReLU, x2 upsampling, 3x3 conv, CBN, ReLU, 3x3 conv, plus a 1x1-conv skip
    of the upsampled input. Two convolutions per resolution instead of one, so a GAN step costs
    more (MODEL_CARD.md has the A/B)."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(in_channels, condition_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ConditionalBatchNorm(out_channels, condition_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, condition):
        h = F.interpolate(F.relu(self.norm1(x, condition)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), condition)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class AttributeEmbedding(nn.Module):
    """One embedding table per attribute, in a fixed attribute order."""

    def __init__(self, vocab_sizes: dict[str, int], dim: int):
        super().__init__()
        self.names = list(vocab_sizes)
        self.tables = nn.ModuleDict({name: nn.Embedding(size, dim) for name, size in vocab_sizes.items()})

    def forward(self, attributes: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [name for name in self.names if name not in attributes]
        if missing:
            raise KeyError(f"missing attributes {missing}; the model is conditioned on {self.names}")
        return [self.tables[name](attributes[name]) for name in self.names]


class ConditionalGenerator(nn.Module):
    """(z, attributes) -> RGB image in [-1, 1], resolution x resolution.

    `blocks="plain"`: one conv per resolution (UpBlock); `"residual"`: two, with a skip
    (ResidualUpBlock), normalised before each conv, so the output gets a final BN + ReLU."""

    def __init__(self, vocab_sizes: dict[str, int], resolution: int = 32, z_dim: int = 128,
                 embed_dim: int = 64, g_channels: int = 256, min_channels: int = 32, blocks: str = "plain"):
        super().__init__()
        if blocks not in GENERATOR_BLOCKS:
            raise ValueError(f"unknown generator blocks {blocks!r}; known: {', '.join(GENERATOR_BLOCKS)}")
        steps = _check_resolution(resolution)
        self.z_dim, self.resolution, self.residual = z_dim, resolution, blocks == "residual"
        self.embedding = AttributeEmbedding(vocab_sizes, embed_dim)
        condition_dim = embed_dim * len(vocab_sizes)
        self.stem = nn.Linear(z_dim + condition_dim, 4 * 4 * g_channels)
        widths = [max(min_channels, g_channels // 2 ** i) for i in range(steps + 1)]
        block = ResidualUpBlock if self.residual else UpBlock
        self.blocks = nn.ModuleList(block(widths[i], widths[i + 1], condition_dim) for i in range(steps))
        if self.residual:  # each block normalises its own input; the output needs one more
            self.out_norm = nn.BatchNorm2d(widths[-1])
        else:
            self.stem_norm = ConditionalBatchNorm(g_channels, condition_dim)
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, attributes: dict[str, torch.Tensor]) -> torch.Tensor:
        condition = torch.cat(self.embedding(attributes), dim=1)
        x = self.stem(torch.cat([z, condition], dim=1)).view(z.shape[0], -1, 4, 4)
        if not self.residual:
            x = F.relu(self.stem_norm(x, condition))
        for block in self.blocks:
            x = block(x, condition)
        if self.residual:
            x = F.relu(self.out_norm(x))
        return torch.tanh(self.to_rgb(x))


class MinibatchStddev(nn.Module):
    """Appends one channel: the average standard deviation of the features across groups of
    `group` samples (Karras et al. 2018). A collapsed generator's batch has almost none, which
    the discriminator can then see and punish: the cheapest guard against mode collapse."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = math.gcd(self.group, n)  # a group size that divides the batch
        spread = x.float().view(group, -1, c, h, w).var(dim=0, unbiased=False).add(1e-8).sqrt()
        spread = spread.mean(dim=(1, 2, 3)).to(x.dtype)  # one value per group member position
        return torch.cat([x, spread.repeat(group)[:, None, None, None].expand(n, 1, h, w)], dim=1)


class ProjectionDiscriminator(nn.Module):
    """Spectral-normalised conv net; score = linear(h) + sum over attributes of <embed(y), h>
    (Miyato & Koyama's projection, one term per attribute). With `classify`, also one linear
    classifier per attribute on the same features (AC-GAN's auxiliary head), and forward returns
    (score, {attribute: logits})."""

    def __init__(self, vocab_sizes: dict[str, int], resolution: int = 32, d_channels: int = 64,
                 max_channels: int = 512, mbstd_group: int = 0, classify: bool = False):
        super().__init__()
        steps = _check_resolution(resolution)
        widths = [min(max_channels, d_channels * 2 ** i) for i in range(steps + 1)]
        layers = [spectral_norm(nn.Conv2d(3, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(steps):  # down to 4x4
            layers += [spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        if mbstd_group > 1:  # at 4x4, then a conv that mixes the spread into the features
            layers += [MinibatchStddev(mbstd_group),
                       spectral_norm(nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(widths[-1], 1))
        self.projections = nn.ModuleDict({name: spectral_norm(nn.Embedding(size, widths[-1]))
                                          for name, size in vocab_sizes.items()})
        # Not spectral-normalised: SN would cap the logits' scale and keep the cross-entropy soft.
        self.classifiers = nn.ModuleDict({name: nn.Linear(widths[-1], size) for name, size in vocab_sizes.items()}
                                         ) if classify else None

    def forward(self, images: torch.Tensor, attributes: dict[str, torch.Tensor]):
        h = self.features(images).sum(dim=(2, 3))
        score = self.head(h).squeeze(1)
        for name, table in self.projections.items():
            score = score + (table(attributes[name]) * h).sum(dim=1)
        if self.classifiers is None:
            return score
        return score, {name: classifier(h) for name, classifier in self.classifiers.items()}


def build_generator(config: dict) -> ConditionalGenerator:
    """From an export/train config: {"vocab": {name: [values]}, "resolution", "z_dim", ...}."""
    return ConditionalGenerator({name: len(values) for name, values in config["vocab"].items()},
                                resolution=config["resolution"], z_dim=config["z_dim"],
                                embed_dim=config["embed_dim"], g_channels=config["g_channels"],
                                blocks=config.get("g_blocks", "plain"))  # exports before g_blocks: plain


def build_discriminator(config: dict, classify: bool = False) -> ProjectionDiscriminator:
    return ProjectionDiscriminator({name: len(values) for name, values in config["vocab"].items()},
                                   resolution=config["resolution"], d_channels=config["d_channels"],
                                   mbstd_group=config.get("d_mbstd_group", 0), classify=classify)
