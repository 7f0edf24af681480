"""Repair with an exported model on images of any size: each group of nearby damaged regions is
cut out with context around its bounding box, repaired at a bounded resolution, and only its
masked pixels are pasted back at full resolution; everything outside the mask is returned
byte for byte. Owns region planning and the uint8 <-> network round trip, not the network.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from prodray.io.artifacts import load_export
from prodray.io.images import from_uint8_hwc, imresize_uint8, to_uint8_hwc
from prodray.precision import autocast
from prodray.precision import resolve as resolve_precision
from prodray.repair.model import build_repairer, push_pull_fill


@dataclass(frozen=True)
class Region:
    top: int
    left: int
    bottom: int
    right: int


def plan_regions(mask: np.ndarray, context: float = 0.5, min_context: int = 32, merge: int = 16) -> list[Region]:
    """Crops to repair separately: connected damage (regions closer than `merge` px count as one)
    with `context` x their size (at least `min_context` px) of surroundings; overlapping crops merge."""
    height, width = mask.shape
    labels, count = ndimage.label(ndimage.binary_dilation(mask, iterations=merge) if merge else mask)
    boxes = []
    for found in ndimage.find_objects(labels)[:count]:
        rows, cols = found
        pad_y = max(min_context, int(context * (rows.stop - rows.start)))
        pad_x = max(min_context, int(context * (cols.stop - cols.start)))
        boxes.append([max(0, rows.start - pad_y), max(0, cols.start - pad_x),
                      min(height, rows.stop + pad_y), min(width, cols.stop + pad_x)])
    merged = True
    while merged:  # context boxes of different regions may overlap: repair those together
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [Region(*box) for box in boxes]


class Repairer:
    """A repair network ready for inference on uint8 images and bool masks (True = repair)."""

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu", precision: str = "auto",
                 max_side: int = 512, max_hole_width: float | None = None):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.config = config
        self.model_id = config.get("model_id", "unknown")
        self.max_side = max_side
        # None: the export's own (what its training masks were); 0: always full resolution.
        self.max_hole_width = config.get("max_hole_width", 0) if max_hole_width is None else max_hole_width

    @classmethod
    def load(cls, reference: str, **kwargs) -> "Repairer":
        def build(config: dict) -> torch.nn.Module:
            if config.get("kind") != "repair":
                raise ValueError(f"model {reference!r} is a {config.get('kind')!r} model, not a repair model")
            return build_repairer(config)
        return cls(*load_export(reference, build), **kwargs)

    @torch.no_grad()
    def network(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The network on one whole (H, W, 3) uint8 image, padded to a multiple of 8 by reflection."""
        height, width = mask.shape
        multiple = self.model.downsampling
        pad_y, pad_x = -height % multiple, -width % multiple
        image = from_uint8_hwc(rgb)[None]
        hole = torch.from_numpy(mask.astype(np.float32))[None, None]
        if pad_y or pad_x:
            mode = "reflect" if min(height, width) > max(pad_y, pad_x) else "replicate"
            # The hole is padded like the image: a mirrored hole pixel is no known pixel.
            image = F.pad(image, (0, pad_x, 0, pad_y), mode=mode)
            hole = F.pad(hole, (0, pad_x, 0, pad_y), mode=mode)
        image = image.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            out = self.model(image, hole.to(self.device)).float()
        return to_uint8_hwc(out[0, :, :height, :width])

    def repair(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 and (H, W) bool -> (H, W, 3) uint8, equal to `rgb` wherever mask is False."""
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} does not match the image "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        result = rgb.copy()
        for region in plan_regions(mask):
            crop = rgb[region.top:region.bottom, region.left:region.right]
            hole = mask[region.top:region.bottom, region.left:region.right]
            target = result[region.top:region.bottom, region.left:region.right]
            target[hole] = self.fill_region(crop, hole)[hole]
        return result

    def working_scale(self, crop_shape: tuple[int, int], hole: np.ndarray) -> float:
        """The scale at which the network sees this region: at most `max_side` px, and holes no
        thicker than `max_hole_width` px (what training masks were), so it works where it learned."""
        scale = min(1.0, self.max_side / max(crop_shape))
        if self.max_hole_width:
            width = 2 * float(ndimage.distance_transform_edt(hole).max())
            scale = min(scale, self.max_hole_width / max(width, 1.0))
        return scale

    def fill_region(self, crop: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """One region's repair. Below full scale the network's correction of the push-pull fill is
        computed on a smaller copy and added, upsampled, to the full-resolution push-pull fill, so
        the hole's border keeps full-resolution detail."""
        scale = self.working_scale(crop.shape[:2], hole)
        if scale >= 1.0:
            return self.network(crop, hole)
        small = imresize_uint8(crop, scale)
        small_hole = imresize_uint8(hole.astype(np.uint8) * 255, scale) > 0
        correction = (from_uint8_hwc(self.network(small, small_hole))
                      - _push_pull_uint8(from_uint8_hwc(small), small_hole))
        correction = F.interpolate(correction[None], size=crop.shape[:2], mode="bicubic", align_corners=False)[0]
        return to_uint8_hwc(_push_pull_uint8(from_uint8_hwc(crop), hole) + correction)


def _push_pull_uint8(image: torch.Tensor, hole: np.ndarray) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the push-pull fill, rounded to 8 bits as the network's output is."""
    known = torch.from_numpy((~hole).astype(np.float32))[None, None]
    return (push_pull_fill(image[None], known)[0].clamp(0, 1) * 255).round() / 255
