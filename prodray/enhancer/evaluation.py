"""Evaluation protocols: standard SR benchmark (Set5/Set14 style) and degraded catalog photos.

Pure functions over uint8 images and an `upscale(rgb_uint8, scale) -> rgb_uint8` callable, so
they run the same for the shipped model, an exported one, or a baseline.
"""

import inspect
import math
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from prodray.enhancer.degradations import DegradationRanges, degrade
from prodray.io.codec import decode_image, encode_image
from prodray.io.images import IMAGE_SUFFIXES, from_uint8_hwc, imresize_uint8, to_uint8_hwc
from prodray.metrics import mean_ciede2000, psnr_ssim_y

GREY_MODES = {"L", "1", "I", "I;16", "I;16B", "I;16L"}


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return paths


def load_benchmark_image(path: Path) -> np.ndarray:
    """uint8 HWC RGB, or HW for single-channel files (which the protocol scores as their own Y)."""
    decoded = decode_image(path.read_bytes())
    return decoded.rgb[..., 0].copy() if decoded.mode in GREY_MODES else decoded.rgb


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    return imresize_uint8(lr, scale)


def _upscale_any(upscale, lr: np.ndarray, scale: int) -> np.ndarray:
    """Run an RGB upscaler on grey input by replicating the channel and reading one back."""
    if lr.ndim == 2:
        return upscale(np.repeat(lr[..., None], 3, axis=2), scale).mean(axis=2).round().astype(np.uint8)
    return upscale(lr, scale)


def score_sr(named_images, scale: int, upscalers: dict) -> dict:
    """Standard protocol on in-memory HR images [(name, uint8 image)]: crop HR to a multiple of
    scale, bicubic-downscale (MATLAB), upscale, score Y with `scale` pixels shaved.
    Returns {name: {"psnr_y", "ssim_y"}, "images": N, "per_image": [...], ...}."""
    totals = {name: [0.0, 0.0] for name in upscalers}
    per_image = []
    for image_name, hr in named_images:
        height, width = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        hr = hr[:height, :width]
        lr = imresize_uint8(hr, 1.0 / scale) if scale > 1 else hr
        row = {"image": image_name}
        for name, upscale in upscalers.items():
            out = _upscale_any(upscale, lr, scale)
            p, s = psnr_ssim_y(out, hr, shave=scale)
            totals[name][0] += p
            totals[name][1] += s
            row[name] = {"psnr_y": round(p, 4), "ssim_y": round(s, 5)}
        per_image.append(row)
    count = len(per_image)
    result = {"scale": scale, "images": count}
    for name, (p, s) in totals.items():
        result[name] = {"psnr_y": round(p / count, 4), "ssim_y": round(s / count, 5)}
    result["per_image"] = per_image
    return result


def evaluate_sr(folder, scale: int, upscalers: dict) -> dict:
    """The standard protocol (score_sr) over every image file in a folder."""
    return score_sr(((p.name, load_benchmark_image(p)) for p in list_images(folder)), scale, upscalers)


CATALOG_RANGES = DegradationRanges(noise_prob=1.0, noise_sigma=(3.0, 3.0), jpeg_prob=1.0, jpeg_quality=(75, 75))


def unsharp_mask(image: np.ndarray, amount: float = 0.6, sigma: float = 1.0) -> np.ndarray:
    """The usual photo-editor sharpening, as a baseline: x + amount * (x - blur(x))."""
    from prodray.enhancer.degradations import gaussian_kernels
    x = from_uint8_hwc(image)[None]
    s = torch.tensor([sigma])
    k = gaussian_kernels(s, s, torch.zeros(1), size=7)[0]
    padded = torch.nn.functional.pad(x, [3] * 4, mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, k[None, None].repeat(3, 1, 1, 1), groups=3)
    return to_uint8_hwc((x + amount * (x - blurred))[0])


def nlmeans_denoise(image: np.ndarray) -> np.ndarray:
    """The classical same-size baseline: OpenCV's non-local means for colour images, at its default
    strengths (h = hColor = 3), so that no setting is tuned on the photos it is scored on."""
    import cv2
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image))


def evaluate_catalog(folder, scale: int, upscalers: dict, seed: int = 0, limit: int = 50) -> dict:
    """Degrade real product photos at fixed seeds (downscale + noise + JPEG q75) and score
    PSNR/SSIM (Y) and mean CIEDE2000 against the original, for each upscaler."""
    paths = list_images(folder)[:limit]
    sums = {name: np.zeros(3) for name in upscalers}
    for index, path in enumerate(paths):
        hr = decode_image(path.read_bytes()).rgb
        height, width = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        hr = hr[:height, :width]
        generator = torch.Generator().manual_seed(seed + index)
        lr = to_uint8_hwc(degrade(from_uint8_hwc(hr)[None].double(), scale, CATALOG_RANGES, generator)[0])
        for name, upscale in upscalers.items():
            out = upscale(lr, scale)
            p, s = psnr_ssim_y(out, hr, shave=scale)
            sums[name] += (p, s, mean_ciede2000(out, hr))
    result = {"scale": scale, "images": len(paths), "seed": seed}
    for name, (p, s, de) in sums.items():
        result[name] = {"psnr_y": round(p / len(paths), 4), "ssim_y": round(s / len(paths), 5),
                        "ciede2000": round(de / len(paths), 4)}
    return result


# ---------------------------------------------------------------- the catalog damage suite

# A damage: (uint8 image, rng) -> (damaged image, JPEG quality its file would carry, or None).

def jpeg_damage(quality: int):
    def damage(image: np.ndarray, rng: np.random.Generator):
        decoded = decode_image(encode_image(image, fmt="jpeg", quality=quality))
        return decoded.rgb, decoded.jpeg_quality
    return damage


def noise_damage(sigma: float):
    def damage(image: np.ndarray, rng: np.random.Generator):
        noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
        return noisy.round().clip(0, 255).astype(np.uint8), None
    return damage


def blur_damage(sigma: float):
    def damage(image: np.ndarray, rng: np.random.Generator):
        return gaussian_blur(image, sigma), None
    return damage


def chain_damages(*damages):
    def damage(image: np.ndarray, rng: np.random.Generator):
        quality = None
        for step in damages:
            image, quality = step(image, rng)
        return image, quality
    return damage


# Damages applied to the image as the catalog receives it (after the bicubic downscale by the
# scale): sigma of noise in grey levels, of blur in input pixels. `chain` is a supplier's worst
# day: slight blur, sensor noise, saved as JPEG twice.
STANDARD_SUITE = {
    "clean": chain_damages(),
    "jpeg30": jpeg_damage(30),
    "jpeg50": jpeg_damage(50),
    "jpeg75": jpeg_damage(75),
    "noise5": noise_damage(5.0),
    "noise10": noise_damage(10.0),
    "blur1.0": blur_damage(1.0),
    "blur1.5": blur_damage(1.5),
    "chain": chain_damages(blur_damage(0.8), noise_damage(4.0), jpeg_damage(60), jpeg_damage(85)),
}
SUITES = {"standard": STANDARD_SUITE}


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 HWC -> the same blurred with an isotropic Gaussian (reflect padding), rounded."""
    from prodray.enhancer.degradations import gaussian_kernels
    radius = max(1, int(math.ceil(3 * sigma)))
    s = torch.tensor([sigma])
    kernel = gaussian_kernels(s, s, torch.zeros(1), size=2 * radius + 1)[0].double()
    x = from_uint8_hwc(image)[None].double()
    padded = torch.nn.functional.pad(x, [radius] * 4, mode="reflect")
    return to_uint8_hwc(torch.nn.functional.conv2d(padded, kernel[None, None].repeat(3, 1, 1, 1), groups=3)[0])


# An original pixel whose darkest channel is below this is product, not a JPEG-disturbed background:
# "false white" counts every non-255 original pixel made 255, "product whitened" only these.
PRODUCT_DARKEST = 235
# "white kept (interior)" counts only the white pixels this far (chessboard) from any non-white
# original pixel: at an outline, x2 / x4 input pixels mix product and white, and on thumbnails such
# outline pixels are a large share of the background.
INTERIOR_DISTANCE = 3


class _Tally:
    """Running sums of one (damage, method) cell: per-image means, pooled white-pixel counts."""

    def __init__(self):
        self.sums = np.zeros(3)
        self.images = 0
        self.psnr_min = math.inf  # the worst image: a mean is infinite once one image is unchanged
        self.white = self.white_kept = self.other = self.false_white = self.product = self.product_whitened = 0
        self.interior = self.interior_kept = 0

    def add(self, out: np.ndarray, hr: np.ndarray, shave: int) -> None:
        p, s = psnr_ssim_y(out, hr, shave=shave)
        self.sums += (p, s, mean_ciede2000(out, hr))
        self.images += 1
        self.psnr_min = min(self.psnr_min, p)
        was_white, is_white = np.all(hr == 255, axis=2), np.all(out == 255, axis=2)
        self.white += int(was_white.sum())
        self.white_kept += int((was_white & is_white).sum())
        self.other += int((~was_white).sum())
        self.false_white += int((~was_white & is_white).sum())
        size = 2 * INTERIOR_DISTANCE - 1
        interior = ndimage.binary_erosion(was_white, np.ones((size, size), bool), border_value=1)
        self.interior += int(interior.sum())
        self.interior_kept += int((interior & is_white).sum())
        product = hr.min(axis=2) < PRODUCT_DARKEST
        self.product += int(product.sum())
        self.product_whitened += int((product & is_white).sum())

    def result(self) -> dict:
        p, s, de = self.sums / max(1, self.images)
        return {"psnr_y": round(p, 4), "psnr_y_min": round(self.psnr_min, 4), "ssim_y": round(s, 5),
                "de00": round(de, 4),
                "white_kept": round(self.white_kept / self.white, 5) if self.white else None,
                "white_kept_interior": round(self.interior_kept / self.interior, 5) if self.interior else None,
                "false_white": round(self.false_white / self.other, 6) if self.other else None,
                "product_whitened": round(self.product_whitened / self.product, 6) if self.product else None}


def _accepts_quality(upscale) -> bool:
    try:
        return "jpeg_quality" in inspect.signature(upscale).parameters
    except (TypeError, ValueError):
        return False


def reference_image(original: np.ndarray, downscale: int, scale: int) -> np.ndarray:
    """The image a method is scored against: the original, first downscaled by `downscale` (MATLAB
    bicubic) when its own compression must not count as truth, cropped to a multiple of `scale`."""
    if downscale > 1:
        original = original[:original.shape[0] - original.shape[0] % downscale,
                            :original.shape[1] - original.shape[1] % downscale]
        original = imresize_uint8(original, 1.0 / downscale)
    return original[:original.shape[0] - original.shape[0] % scale, :original.shape[1] - original.shape[1] % scale]


def default_reference_downscale(scale: int) -> int:
    """Same-size restoration is scored against the original halved: photos arrive as JPEGs, and a
    model that removes the original's own 8x8 blocking must not be scored as damaging it. Upscalers
    see a downscaled input, which has no such grid, so the original itself is their reference."""
    return 2 if scale == 1 else 1


def evaluate_suite(folder, scale: int, upscalers: dict, suite: str = "standard", seed: int = 0,
                   limit: int = 50, log=None, only: list[str] | None = None, skip: int = 0,
                   reference_downscale: int = 1) -> dict:
    """Every image of `folder` (made a reference by `reference_image`), downscaled by `scale` (MATLAB
    bicubic), then damaged each way of the suite (seeded per image and damage; `only` some of them),
    restored by each upscaler and scored against the reference: PSNR-Y / SSIM-Y (`scale` pixels
    shaved), mean CIEDE2000, and the pure-white pixels kept / made. An upscaler with a `jpeg_quality`
    parameter is told the damaged file's quality. `skip` leaves out the first images (each image
    keeps its seeds)."""
    numbers = {name: number for number, name in enumerate(SUITES[suite])}  # seeds stay per damage under `only`
    damages = {name: SUITES[suite][name] for name in (only or SUITES[suite])}
    informed = {name for name, upscale in upscalers.items() if _accepts_quality(upscale)}
    paths = list_images(folder)[skip:skip + limit]
    tallies = {damage: {name: _Tally() for name in upscalers} for damage in damages}
    for index, path in enumerate(paths, start=skip):
        hr = reference_image(decode_image(path.read_bytes()).rgb, reference_downscale, scale)
        clean = imresize_uint8(hr, 1.0 / scale) if scale > 1 else hr
        for damage, apply in damages.items():
            lr, quality = apply(clean, np.random.default_rng([seed, index, numbers[damage]]))
            for name, upscale in upscalers.items():
                out = upscale(lr, scale, jpeg_quality=quality) if name in informed else upscale(lr, scale)
                tallies[damage][name].add(out, hr, shave=scale)
        if log:
            log(f"{index + 1 - skip}/{len(paths)} images scored")
    return {"images": len(paths), "scale": scale, "suite_name": suite, "seed": seed, "skip": skip,
            "reference_downscale": reference_downscale,
            "suite": {damage: {name: t.result() for name, t in row.items()} for damage, row in tallies.items()}}
