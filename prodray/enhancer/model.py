"""The enhancer: a compact residual network working at input resolution, upscaled by PixelShuffle.

It restores (scale 1) or super-resolves (scale 2, 4) any H x W RGB image. It owns the network
only; degradations, losses and tiling live elsewhere.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv-ReLU-conv with a scaled identity skip (EDSR-style, no batch norm)."""

    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x):
        # add's alpha folds the scale into the sum: one pass over the features instead of two.
        return torch.add(x, self.conv2(F.relu(self.conv1(x), inplace=True)), alpha=self.res_scale)


class ResidualPixelShuffleNet(nn.Module):
    """Features at LR resolution, PixelShuffle upsampling, plus a bilinear global skip.

    The global skip means the body learns only the missing detail, which trains much
    faster on small compute than predicting the whole image. `unshuffle` folds each u x u block
    of input pixels into channels first (Real-ESRGAN does this at x1 and x2), so the body runs on
    1/u^2 of the pixels with a u times wider view; the output is unfolded back by the upsampler.
    """

    def __init__(self, scale: int = 2, channels: int = 48, blocks: int = 8, res_scale: float = 1.0,
                 unshuffle: int = 1):
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"scale must be 1, 2, 3 or 4, got {scale}")
        if unshuffle not in (1, 2, 4):
            raise ValueError(f"unshuffle must be 1, 2 or 4, got {unshuffle}")
        self.scale, self.unshuffle = scale, unshuffle
        self.head = nn.Conv2d(3 * unshuffle * unshuffle, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels, res_scale) for _ in range(blocks)])
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        out_factor = scale * unshuffle
        self.upsample = nn.Sequential(
            nn.Conv2d(channels, 3 * out_factor * out_factor, 3, padding=1),
            nn.PixelShuffle(out_factor),
        )
        self.zero_detail()  # start as "bilinear upscaling" (the identity at scale 1)

    def zero_detail(self) -> None:
        """Zero the last layer: the network then returns its global skip, whatever the body computes."""
        nn.init.zeros_(self.upsample[0].weight)
        nn.init.zeros_(self.upsample[0].bias)

    def forward(self, x):
        # x: (B, 3, H, W) in [0, 1] -> (B, 3, H*s, W*s) in [0, 1] (not clamped: losses see raw values)
        height, width = x.shape[-2:]
        folded = x - 0.5
        if self.unshuffle > 1:
            u = self.unshuffle
            folded = F.pad(folded, (0, -width % u, 0, -height % u), mode="replicate")
            folded = F.pixel_unshuffle(folded, u)
        features = self.head(folded)
        features = features + self.body_tail(self.body(features))
        detail = self.upsample(features)[..., :height * self.scale, :width * self.scale]
        if self.scale == 1:
            base = x
        else:
            base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + detail

    def flops_per_input_pixel(self) -> int:
        """Multiply-adds x 2 per input (LR) pixel: every layer is a 3x3 conv on the (folded) input."""
        total = 0
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                total += 2 * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        return total // (self.unshuffle * self.unshuffle)


def deepen(model: ResidualPixelShuffleNet, blocks: int,
           template: ResidualPixelShuffleNet | None = None) -> ResidualPixelShuffleNet:
    """`model` with `blocks` residual blocks and the same function: its own blocks first, then new
    blocks whose second convolution is zero, so they add nothing until trained (a continuation may
    grow a network this way). `template`, a network of the grown shape, gives the new blocks' first
    convolutions: a deeper restoration model's clean partner is the clean model grown with the
    restoration model's own new blocks, so their weights interpolate."""
    have = len(model.body)
    if blocks < have:
        raise ValueError(f"a network of {have} blocks cannot be deepened to {blocks}")
    grown = ResidualPixelShuffleNet(scale=model.scale, channels=model.head.out_channels, blocks=blocks,
                                    res_scale=model.body[0].res_scale, unshuffle=model.unshuffle)
    state = grown.state_dict()
    if template is not None:
        state.update(template.state_dict())
    state.update(model.state_dict())
    grown.load_state_dict(state)
    for block in grown.body[have:]:
        nn.init.zeros_(block.conv2.weight)
        nn.init.zeros_(block.conv2.bias)
    return grown.train(model.training)


ARCHS = {
    "rpsnet": ResidualPixelShuffleNet,
}


def build_model(arch: str, **kwargs):
    """Build a network by registry name; unknown names fail with the list of known ones."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](**kwargs)


def build_enhancer(config: dict) -> nn.Module:
    """The network an enhancer config (or an export's config.json) describes."""
    return build_model(config["arch"], scale=config["scale"], channels=config["channels"], blocks=config["blocks"],
                       unshuffle=config.get("unshuffle", 1))
