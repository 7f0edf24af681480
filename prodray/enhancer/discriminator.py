"""Discriminators for the enhancer's adversarial fine-tuning stage (spectral norm, no batch norm).

Owns the two networks only: a U-Net discriminator that scores every pixel (Real-ESRGAN's idea,
our own code) and a PatchGAN-style one that scores overlapping patches. Losses and the training
loop live in `prodray/enhancer/losses.py` and `prodray/enhancer/training.py`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn_conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, bias=False))


class UNetDiscriminator(nn.Module):
    """Per-pixel real/fake logits: 3 stride-2 stages down, 3 bilinear stages up with skips.

    A per-pixel score gives the generator a local signal everywhere (texture on a label, an
    edge of a bottle) instead of one number per image. Input sides should be multiples of 8.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        self.conv0 = nn.Conv2d(3, c, 3, padding=1)  # first layer unnormalised, as is usual
        self.down1 = sn_conv(c, 2 * c, 4, 2)
        self.down2 = sn_conv(2 * c, 4 * c, 4, 2)
        self.down3 = sn_conv(4 * c, 8 * c, 4, 2)
        self.up1 = sn_conv(8 * c, 4 * c)
        self.up2 = sn_conv(4 * c, 2 * c)
        self.up3 = sn_conv(2 * c, c)
        self.refine1 = sn_conv(c, c)
        self.refine2 = sn_conv(c, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) logits (higher = more real)
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x0 = act(self.conv0(x * 2 - 1))
        x1 = act(self.down1(x0))   # (B, 2c, H/2, W/2)
        x2 = act(self.down2(x1))   # (B, 4c, H/4, W/4)
        x3 = act(self.down3(x2))   # (B, 8c, H/8, W/8)
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        y = act(self.up1(up(x3, x2))) + x2
        y = act(self.up2(up(y, x1))) + x1
        y = act(self.up3(up(y, x0))) + x0
        y = act(self.refine2(act(self.refine1(y))))
        return self.out(y)


class PatchDiscriminator(nn.Module):
    """Logits on a grid of overlapping patches (receptive field about 46 px): 3 stride-2 stages."""

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, padding=1), nn.LeakyReLU(0.2),
            sn_conv(c, 2 * c, 4, 2), nn.LeakyReLU(0.2),
            sn_conv(2 * c, 4 * c, 4, 2), nn.LeakyReLU(0.2),
            sn_conv(4 * c, 8 * c, 3, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * c, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) in [0, 1] -> (B, 1, H/8, W/8) logits
        return self.body(x * 2 - 1)


DISCRIMINATORS = {
    "unet": UNetDiscriminator,
    "patch": PatchDiscriminator,
}


def build_discriminator(kind: str, channels: int) -> nn.Module:
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {kind!r}; known: {sorted(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](channels=channels)
