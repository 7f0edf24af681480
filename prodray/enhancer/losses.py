"""Perceptual losses of the enhancer's adversarial fine-tuning stage (the GAN losses are prodray.gan.losses).

Pure torch, no Ray, nothing downloaded at run time. The perceptual term is one of:
- `VGGPerceptualLoss`: L1 between VGG19 features (conv1_2, conv2_2, conv3_4, conv4_4, conv5_4,
  before ReLU, ImageNet-normalised input, weights 0.1/0.1/1/1/1 as in Real-ESRGAN), used only
  when the user gives a torchvision VGG19 weights file (`adversarial.vgg19_weights`);
- `EdgeLoss` (the offline default): a fixed, weight-free multi-scale loss, L1 between the
  Laplacian (detail) bands and the image gradients of output and target at 1, 1/2 and 1/4
  scale. It is *not* a learned perceptual metric; it rewards sharp, correctly placed edges and
  textures, which is what the L1 term alone averages away.
"""

import io

import torch
import torch.nn.functional as F
from torch import nn

from prodray.metrics import BT601_Y

# ---------------------------------------------------------------- perceptual: offline default

class EdgeLoss(nn.Module):
    """Multi-scale Laplacian-band + gradient L1 (no learned weights, nothing to download)."""

    def __init__(self, levels: int = 3):
        super().__init__()
        self.levels = levels
        g = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        kernel = torch.outer(g, g) / 256.0  # 5x5 binomial blur
        self.register_buffer("kernel", kernel.expand(3, 1, 5, 5).clone(), persistent=False)

    def _bands(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per level: detail band, horizontal gradient, vertical gradient."""
        out = []
        for level in range(self.levels):
            blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.kernel, groups=3)
            out += [x - blurred, x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]]
            if level + 1 < self.levels:
                if min(x.shape[-2:]) < 8:
                    break
                x = F.avg_pool2d(blurred, 2)
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pairs = zip(self._bands(prediction), self._bands(target))
        return torch.stack([F.l1_loss(p, t) for p, t in pairs]).mean()


# ---------------------------------------------------------------- perceptual: VGG19 (user weights)

VGG19_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}  # index in vgg19.features
VGG19_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def _read_state_dict(data: bytes, name: str) -> dict:
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors
        return load_safetensors(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class VGGPerceptualLoss(nn.Module):
    """L1 between frozen VGG19 features of output and target; weights come from a local file.

    `state_dict` is torchvision's `vgg19` state dict (keys `features.N.*`; the classifier keys,
    if present, are ignored) or just its `features` part (keys `N.*`)."""

    def __init__(self, state_dict: dict):
        super().__init__()
        from torchvision.models import vgg19  # only this path needs torchvision

        last = max(VGG19_LAYERS.values())
        with torch.device("meta"):  # shapes only: no random init of 20M weights about to be replaced
            self.features = vgg19(weights=None).features[:last + 1].eval()
        wanted = {k.removeprefix("features."): v.float() for k, v in state_dict.items()
                  if not k.startswith("classifier.")}
        wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) <= last}
        self.features.load_state_dict(wanted, strict=True, assign=True)
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.taps = {index: VGG19_WEIGHTS[name] for name, index in VGG19_LAYERS.items()}

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: never in training mode
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                taps.append(x)
        return taps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self._features(target)
        weights = list(self.taps.values())
        return sum(w * F.l1_loss(p, t) for w, p, t in zip(weights, self._features(prediction), target_features))


def build_perceptual(vgg19_weights: bytes | None = None, name: str = "") -> tuple[nn.Module, str]:
    """-> (loss module, one-line description). VGG19 when weight bytes are given, else EdgeLoss."""
    if vgg19_weights is not None:
        return VGGPerceptualLoss(_read_state_dict(vgg19_weights, name)), f"vgg19 features ({name})"
    return EdgeLoss(), "edge (multi-scale Laplacian band + gradient L1; no VGG weights given)"


# ---------------------------------------------------------------- pixel loss of the PSNR stage

def charbonnier(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((prediction - target) ** 2 + eps * eps).mean()


# metrics.rgb_to_y's weights for Y in [0, 1] units, without its offset
LUMA = tuple(weight / 255 for weight in BT601_Y)
PIXEL_LOSSES = {"charbonnier": charbonnier, "mse": F.mse_loss}


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) Y (offset-free: differences are what losses see)."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "charbonnier",
               luma_weight: float = 0.0) -> torch.Tensor:
    """`kind` on RGB plus `luma_weight` x `kind` on luma (config: PixelLossConfig)."""
    loss_fn = PIXEL_LOSSES[kind]
    loss = loss_fn(prediction, target)
    if luma_weight:
        loss = loss + luma_weight * loss_fn(luma(prediction), luma(target))
    return loss
