"""Repair quality on held-out photos: a fixed, seeded suite of masks per image (narrow, thick,
large, text), scored for the model and side by side for OpenCV's two classical inpainting methods
(Telea, Navier-Stokes) and the push-pull blur fill: PSNR and L1 over the masked pixels, SSIM (on
Y) of the whole image. Owns the protocol and the baselines; the model comes in as a callable.
"""

import math
import zlib

import numpy as np
import torch

from prodray.io.codec import decode_image
from prodray.io.images import from_uint8_hwc, to_uint8_hwc
from prodray.metrics import rgb_to_y, ssim
from prodray.repair.masks import SUITE_KINDS, draw_mask
from prodray.repair.model import push_pull_fill


def suite_mask(kind: str, index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """The suite's mask of `kind` for the `index`-th image: the same on every machine and run."""
    rng = np.random.default_rng([seed, index, zlib.crc32(kind.encode())])
    return draw_mask(kind, height, width, rng)


def masked_scores(result: np.ndarray, original: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR (peak 255) and mean absolute error in [0, 1] over the masked pixels (all three channels);
    SSIM over the whole image's Y."""
    diff = result[mask].astype(np.float64) - original[mask].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    return {"psnr_masked": float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse),
            "l1_masked": float(np.mean(np.abs(diff))) / 255.0,
            "ssim": ssim(rgb_to_y(result), rgb_to_y(original))}


def blur_fill(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The push-pull fill alone (the network's starting point), as a baseline."""
    image = from_uint8_hwc(rgb)[None]
    known = torch.from_numpy((~mask).astype(np.float32))[None, None]
    out = to_uint8_hwc(push_pull_fill(image, known)[0])
    return np.where(mask[..., None], out, rgb)


def opencv_inpaint(flag_name: str, radius: int = 3):
    """cv2.inpaint with INPAINT_TELEA or INPAINT_NS (opencv-python-headless)."""
    import cv2

    flag = getattr(cv2, flag_name)

    def inpaint(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return cv2.inpaint(np.ascontiguousarray(rgb), mask.astype(np.uint8) * 255, radius, flag)
    return inpaint


def baselines() -> dict:
    return {"telea": opencv_inpaint("INPAINT_TELEA"), "ns": opencv_inpaint("INPAINT_NS"), "blur": blur_fill}


def evaluate_repair(paths, methods: dict, seed: int = 0, kinds=SUITE_KINDS, log=None) -> dict:
    """Mean scores per method and mask kind over the images at `paths`:
    {"images": N, "masks": [...], "<method>": {"<kind>": {"psnr_masked", "l1_masked", "ssim"}}}.
    PSNR is averaged per image (as in SR tables); an image whose mask is empty cannot occur."""
    sums = {method: {kind: {"psnr_masked": 0.0, "l1_masked": 0.0, "ssim": 0.0} for kind in kinds} for method in methods}
    for index, path in enumerate(paths):
        original = decode_image(path.read_bytes()).rgb
        height, width = original.shape[:2]
        for kind in kinds:
            mask = suite_mask(kind, index, height, width, seed)
            damaged = np.where(mask[..., None], np.uint8(0), original)  # the hole carries nothing
            for method, repair in methods.items():
                result = repair(damaged, mask)
                if not np.array_equal(result[~mask], original[~mask]):
                    raise AssertionError(f"{method} changed pixels outside the mask ({path.name}, {kind})")
                for key, value in masked_scores(result, original, mask).items():
                    sums[method][kind][key] += value
        if log:
            log(f"{index + 1}/{len(paths)} {path.name}")
    count = max(len(paths), 1)
    return {"images": len(paths), "masks": list(kinds), **{
        method: {kind: {key: round(value / count, 4) for key, value in scores.items()}
                 for kind, scores in per_kind.items()} for method, per_kind in sums.items()}}
