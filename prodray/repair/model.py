"""The repair network: a mask-conditioned inpainter. A parameter-free push-pull fill gives a smooth
first guess inside the hole; a small U-Net whose bottleneck mixes local convolutions with fast
Fourier convolutions (LaMa's image-wide receptive field) predicts the correction. Pixels outside
the mask are returned exactly as they were. Owns the network only; masks, losses and cropping
live elsewhere.
"""

import torch
import torch.nn.functional as F
from torch import nn


def push_pull_fill(image: torch.Tensor, known: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Fill unknown pixels from a pyramid of normalised averages (push-pull / normalised convolution).

    image (B, C, H, W), known (B, 1, H, W) in {0, 1} -> (B, C, H, W): known pixels unchanged, the
    rest a smooth interpolation of their surroundings at the scale the hole needs."""
    levels = [(image * known, known)]
    while min(levels[-1][0].shape[-2:]) > 1:
        values, weights = levels[-1]
        pooled_values = F.avg_pool2d(values, 2, ceil_mode=True)
        pooled_weights = F.avg_pool2d(weights, 2, ceil_mode=True)
        normalised = pooled_values / pooled_weights.clamp_min(eps)
        weight = (pooled_weights * 4).clamp(max=1.0)  # one known pixel of four is enough to trust a cell
        levels.append((normalised * weight, weight))
    values, weights = levels[-1]
    fill = values / weights.clamp_min(eps)
    for values, weights in reversed(levels[:-1]):
        up = F.interpolate(fill, size=values.shape[-2:], mode="bilinear", align_corners=False)
        fill = values + (1 - weights) * up  # values are premultiplied by their weight
    return fill


class SpectralTransform(nn.Module):
    """The global branch of a fast Fourier convolution: 1x1 conv on the real/imaginary spectrum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")  # FFTs run in float32 under autocast
        stacked = torch.cat([spectrum.real, spectrum.imag], dim=1)
        stacked = F.relu(self.conv(stacked))
        real, imag = stacked.float().chunk(2, dim=1)
        return torch.fft.irfft2(torch.complex(real, imag), s=(height, width), norm="ortho").to(x.dtype)


class FourierBlock(nn.Module):
    """Residual block: half the channels through a 3x3 conv (local), half through the spectrum
    (global), then a 1x1 mix."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.local = nn.Conv2d(channels, half, 3, padding=1)
        self.reduce = nn.Conv2d(channels, channels - half, 1)
        self.spectral = SpectralTransform(channels - half)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.gelu(self.local(x))
        global_ = self.spectral(F.gelu(self.reduce(x)))
        return x + self.mix(torch.cat([local, global_.to(local.dtype)], dim=1))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GELU())


class RepairNet(nn.Module):
    """U-Net (3 stride-2 stages) over [push-pull fill, mask], Fourier blocks at 1/8 resolution,
    output = fill + correction inside the mask, the input outside it. `upsample` is how the decoder
    brings coarse features up ("nearest" leaves an 8 px block pattern on large holes that training
    must learn away; "bilinear" does not); it has no weights, so either loads the same export."""

    downsampling = 8  # inputs are padded to a multiple of this

    def __init__(self, channels: int = 32, blocks: int = 4, upsample: str = "nearest"):
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"unknown upsampling {upsample!r}; known: {list(UPSAMPLING)}")
        self.upsample = upsample
        c = channels
        self.head = _conv(4, c)
        self.down1, self.down2, self.down3 = _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2), _conv(4 * c, 4 * c, 2)
        self.body = nn.Sequential(*[FourierBlock(4 * c) for _ in range(blocks)])
        self.up3, self.up2, self.up1 = _conv(8 * c, 4 * c), _conv(6 * c, 2 * c), _conv(3 * c, c)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the push-pull fill
        nn.init.zeros_(self.tail.bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # image (B, 3, H, W) in [0, 1], mask (B, 1, H, W) in {0, 1} (1 = repair); H, W multiples of 8
        known = 1 - mask
        fill = push_pull_fill(image.float(), known.float()).to(image.dtype)
        x0 = self.head(torch.cat([fill - 0.5, mask], dim=1))
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.body(self.down3(x2))
        y = self.up3(torch.cat([self._up(x3, x2), x2], dim=1))
        y = self.up2(torch.cat([self._up(y, x1), x1], dim=1))
        y = self.up1(torch.cat([self._up(y, x0), x0], dim=1))
        filled = fill + self.tail(y).to(fill.dtype)
        return image * known + filled * mask

    def flops_per_pixel(self) -> int:
        """Multiply-adds x 2 per input pixel of the convolutions (FFTs left out)."""
        total = 0.0
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                stride = 1
                for stage, factor in (("down1", 4), ("down2", 16), ("down3", 64), ("body", 64), ("up3", 16),
                                      ("up2", 4)):
                    if name.startswith(stage):
                        stride = factor
                total += 2 * module.in_channels * module.out_channels * module.kernel_size[0] ** 2 / stride
        return int(total)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], **UPSAMPLING[self.upsample])


UPSAMPLING = {"nearest": {"mode": "nearest"}, "bilinear": {"mode": "bilinear", "align_corners": False}}
ARCHS = {"fourier-unet": RepairNet}


def build_repairer(config: dict) -> nn.Module:
    """The network a repair config (or an export's config.json) describes."""
    arch = config.get("arch", "fourier-unet")
    if arch not in ARCHS:
        raise ValueError(f"unknown repair architecture {arch!r}; known: {sorted(ARCHS)}")
    # Exports made before `upsample` existed used nearest.
    return ARCHS[arch](channels=config["channels"], blocks=config["blocks"],
                       upsample=config.get("upsample", "nearest"))
