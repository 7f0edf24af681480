"""The recolouring network: a small CNN looks at the photo at low resolution (with the product's
mask, the target colour and the product's mean colour) and predicts a bilateral grid of colour
transforms (HDRNet's idea): for each cell of a coarse spatial grid and each lightness level, five
coefficients. The grid is sliced per pixel at full resolution by the pixel's position and its own
lightness, and the transform is applied to that pixel's CIELAB value:

    L' = target_L  + dL  + gain_L  * (L  - mean_L)
    ab' = target_ab + dab + gain_ab * (ab - mean_ab)

so every pixel keeps its own deviation from the product's mean (shading, folds, prints), scaled
and shifted where the network sees it should be (highlights that would clip in white, shadows that
would crush in black). The last layer starts at zero: an untrained network is exactly the classical
Lab shift (baseline.py). Owns the network and the transform; masks and losses live elsewhere.
"""

import torch
import torch.nn.functional as F
from torch import nn

from prodray.recolour import colour_space

COEFFICIENTS = 5  # dL, da, db, log gain_L, log gain_ab
DELTA_SCALE = 10.0  # CIELAB units per unit of network output
LAB_SCALE = torch.tensor([100.0, 110.0, 110.0])  # CIELAB to about [-1, 1] for the network's input


class RecolourNet(nn.Module):
    def __init__(self, channels: int = 32, grid_depth: int = 8, grid_size: int = 16, input_size: int = 64):
        super().__init__()
        if input_size % grid_size or input_size // grid_size not in (1, 2, 4, 8):
            raise ValueError(f"input_size {input_size} must be grid_size {grid_size} times 1, 2, 4 or 8")
        self.grid_depth, self.grid_size, self.input_size = grid_depth, grid_size, input_size
        layers, width = [nn.Conv2d(10, channels, 3, padding=1), nn.ReLU(inplace=True)], channels
        for _ in range((input_size // grid_size).bit_length() - 1):  # stride-2 steps down to the grid
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            width *= 2
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.local = nn.Sequential(*layers)
        self.global_context = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(width, COEFFICIENTS * grid_depth, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def flops_per_image(self) -> int:
        flops, size = 0, self.input_size
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                size //= layer.stride[0]
                flops += 2 * layer.in_channels * layer.out_channels * layer.kernel_size[0] ** 2 * size * size
        return flops

    def forward(self, lab: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Full-resolution lab (B, 3, H, W), mask (B, 1, H, W), target and mean (B, 3) CIELAB ->
        the bilateral grid (B, 5, depth, grid, grid)."""
        scale = LAB_SCALE.to(lab.device, lab.dtype)
        size = (self.input_size, self.input_size)
        small = torch.cat([F.interpolate(lab / scale.view(1, 3, 1, 1), size=size, mode="area"),
                           F.interpolate(mask, size=size, mode="area"),
                           (target / scale)[..., None, None].expand(-1, -1, *size),
                           (mean / scale)[..., None, None].expand(-1, -1, *size)], dim=1)
        features = self.local(small)
        features = features + self.global_context(features.mean(dim=(2, 3)))[..., None, None]
        grid = self.head(features)
        batch = grid.shape[0]
        return grid.view(batch, COEFFICIENTS, self.grid_depth, self.grid_size, self.grid_size)


def slice_grid(grid: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """Grid (B, C, D, G, G), lightness (B, 1, H, W) in CIELAB L -> per-pixel coefficients (B, C, H, W),
    trilinear in (x, y, L)."""
    batch, _, height, width = lightness.shape
    ys = torch.linspace(-1, 1, height, device=grid.device, dtype=grid.dtype)
    xs = torch.linspace(-1, 1, width, device=grid.device, dtype=grid.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    z = (lightness[:, 0].to(grid.dtype) / 50 - 1).clamp(-1, 1)
    coords = torch.stack([x.expand(batch, -1, -1), y.expand(batch, -1, -1), z], dim=-1)[:, None]
    return F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0]


def masked_mean(lab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W), (B, 1, H, W) -> (B, 3): the mean over the mask (the whole image if it is empty)."""
    weight = mask.sum(dim=(2, 3)).clamp_min(1e-6)
    return (lab * mask).sum(dim=(2, 3)) / weight


def transform(net: RecolourNet, rgb: torch.Tensor, mask: torch.Tensor, target_lab: torch.Tensor):
    """sRGB (B, 3, H, W) in [0, 1], mask (B, 1, H, W) in {0, 1}, target (B, 3) CIELAB ->
    (recoloured sRGB in [0, 1] with the background unchanged, its linear RGB before gamut clipping).
    The network runs in float32: its grid decides colours, and it is a small share of the work."""
    lab = colour_space.srgb_to_lab(rgb.float())
    mean = masked_mean(lab, mask)
    coefficients = slice_grid(net(lab, mask, target_lab, mean), lab[:, :1])
    delta, log_gain_l, log_gain_ab = coefficients[:, :3] * DELTA_SCALE, coefficients[:, 3:4], coefficients[:, 4:5]
    deviation = lab - mean[..., None, None]
    out = torch.cat([target_lab[:, :1, None, None] + delta[:, :1] + log_gain_l.exp() * deviation[:, :1],
                     target_lab[:, 1:, None, None] + delta[:, 1:] + log_gain_ab.exp() * deviation[:, 1:]], dim=1)
    out = torch.cat([out[:, :1].clamp(0, 100), out[:, 1:]], dim=1)
    linear = colour_space.lab_to_linear(out)
    recoloured = colour_space.linear_to_srgb(linear)
    return rgb * (1 - mask) + recoloured * mask, linear


def build_recolourer(config: dict) -> RecolourNet:
    return RecolourNet(channels=config["channels"], grid_depth=config["grid_depth"],
                       grid_size=config["grid_size"], input_size=config["input_size"])
