"""Recolour photos with an exported recolouring model: uint8 in, uint8 out, the product's pixels
moved to the target colour and every other pixel returned byte for byte.
"""

import numpy as np
import torch

from prodray.io.artifacts import load_export
from prodray.metrics import srgb_to_lab
from prodray.recolour.baseline import lab_shift
from prodray.recolour.model import build_recolourer, transform

BASELINE = "baseline"  # the reference that names the classical Lab shift instead of a trained model


class Recolourer:
    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.model_id = config.get("model_id", "unknown")
        self.precision = "fp32"  # a small network whose output decides colours: not worth bf16

    @classmethod
    def load(cls, reference: str = "recolour", device: str = "cpu") -> "Recolourer":
        """`reference`: a shipped name, an export folder or an s3:// export prefix."""
        model, config = load_export(reference, build_recolourer)
        return cls(model, config, device=device)

    @torch.inference_mode()
    def recolour(self, rgb: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8, (3,) uint8 target sRGB, (H, W) bool product mask -> (H, W, 3) uint8."""
        if not mask.any():
            return rgb.copy()
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255).to(self.device)
        product = torch.from_numpy(mask)[None, None].float().to(self.device)
        target_lab = torch.from_numpy(srgb_to_lab(np.asarray(target, np.uint8).reshape(1, 3))).float().to(self.device)
        recoloured, _ = transform(self.model, image, product, target_lab)
        result = recoloured[0].permute(1, 2, 0).mul_(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        result[~mask] = rgb[~mask]
        return result


class BaselineRecolourer:
    """The classical Lab shift (baseline.py) behind Recolourer's interface."""

    model_id, precision = "baseline-labshift", "fp64"

    def recolour(self, rgb: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return lab_shift(rgb, np.asarray(target, np.uint8), mask)


def load_recolourer(reference: str = "recolour", device: str = "cpu"):
    """A trained model (shipped name, export folder or s3:// prefix), or `baseline`."""
    return BaselineRecolourer() if reference == BASELINE else Recolourer.load(reference, device=device)
