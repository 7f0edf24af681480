"""Seeded damage masks for repair: thin scratches, thick strokes, blobs, sticker rectangles and
rendered text / watermarks, each drawn from an explicit `np.random.Generator`. A mask is a
(H, W) bool array, True = the pixel to repair. Owns mask drawing only; no images, no torch.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prodray.io.codec import decode_image

# What training draws from (a random mix per mask) and what the evaluation suite scores one by one.
TRAIN_KINDS = ("narrow", "thick", "blobs", "rect", "text")
SUITE_KINDS = ("narrow", "thick", "large", "text")
_WORDS = ("SALE", "SAMPLE", "50% OFF", "© SHOP", "NEW", "PROOF", "DEMO", "$19.99", "BRAND", "COPY")


def _canvas(height: int, width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("L", (width, height), 0)
    return image, ImageDraw.Draw(image)


def _strokes(draw, height, width, rng, count, width_range, vertices=(4, 10)) -> None:
    """Random polylines (free-form strokes as in DeepFill v2), joints rounded."""
    side = min(height, width)
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        line_width = max(1, int(rng.uniform(*width_range) * side))
        points = [(x, y)]
        for _ in range(int(rng.integers(*vertices))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.05, 0.3) * side
            x = float(np.clip(x + length * np.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * np.sin(angle), 0, height - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=line_width, joint="curve")
        radius = line_width / 2
        for px, py in points:
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=255)


def _narrow(draw, height, width, rng) -> None:
    """Scratches and hairline cracks: 1-3 % of the side wide."""
    _strokes(draw, height, width, rng, int(rng.integers(2, 6)), (0.008, 0.03))


def _thick(draw, height, width, rng) -> None:
    """Brush strokes 4-10 % of the side wide."""
    _strokes(draw, height, width, rng, int(rng.integers(1, 4)), (0.04, 0.10), vertices=(2, 6))


def _blobs(draw, height, width, rng) -> None:
    """Stains: a few overlapping ellipses."""
    side = min(height, width)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    for _ in range(int(rng.integers(2, 6))):
        rx, ry = rng.uniform(0.04, 0.14) * side, rng.uniform(0.04, 0.14) * side
        x, y = cx + rng.normal(0, 0.06) * side, cy + rng.normal(0, 0.06) * side
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)


def _rect(draw, height, width, rng) -> None:
    """A price sticker or label: one rectangle 10-35 % of the side."""
    side = min(height, width)
    w, h = rng.uniform(0.10, 0.35) * side, rng.uniform(0.08, 0.25) * side
    x, y = rng.uniform(0, max(1.0, width - w)), rng.uniform(0, max(1.0, height - h))
    draw.rectangle((x, y, x + w, y + h), fill=255)


def _large(draw, height, width, rng) -> None:
    """LaMa-style large masks: a wide stroke plus a box, together 15-35 % of the image."""
    _strokes(draw, height, width, rng, int(rng.integers(1, 3)), (0.10, 0.18), vertices=(2, 4))
    _rect(draw, height, width, rng)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _text(draw, height, width, rng) -> None:
    """Overlaid words: a watermark across the image or captions, strokes a few pixels wide."""
    side = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        size = max(8, int(rng.uniform(0.06, 0.16) * side))
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        x, y = rng.uniform(0, 0.6) * width, rng.uniform(0, 0.85) * height
        draw.text((x, y), word, fill=255, font=_font(size), stroke_width=max(1, size // 14), stroke_fill=255)


_DRAW = {"narrow": _narrow, "thick": _thick, "blobs": _blobs, "rect": _rect, "large": _large, "text": _text}
MASK_KINDS = tuple(_DRAW)


def draw_mask(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One mask of `kind` (see MASK_KINDS); never empty, never the whole image."""
    if kind not in _DRAW:
        raise ValueError(f"unknown mask kind {kind!r}; known: {list(MASK_KINDS)}")
    for _ in range(8):
        image, draw = _canvas(height, width)
        _DRAW[kind](draw, height, width, rng)
        mask = np.asarray(image) > 127
        if 0 < mask.sum() < 0.7 * mask.size:
            return mask
    mask = np.zeros((height, width), bool)  # a fallback that always holds: a centred square
    mask[height // 3: 2 * height // 3 + 1, width // 3: 2 * width // 3 + 1] = True
    return mask


def training_mask(height: int, width: int, rng: np.random.Generator, kinds=TRAIN_KINDS) -> np.ndarray:
    """A random mix for training: one to three kinds drawn together."""
    picked = rng.choice(len(kinds), size=int(rng.integers(1, 4)), replace=True)
    mask = np.zeros((height, width), bool)
    for index in picked:
        mask |= draw_mask(kinds[int(index)], height, width, rng)
    if mask.all():
        mask[: height // 2] = False
    return mask


# ---------------------------------------------------------------- masks people send

class MaskError(ValueError):
    """A mask that cannot be used; `reason` is the refusal's machine-readable name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _checked(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        raise MaskError("empty_mask", "the mask marks no pixel to repair (white = repair)")
    return mask


def _decoded_mask(data: bytes, max_bytes: int | None) -> np.ndarray:
    """A mask image (any decodable format): white, or opaque where it has alpha, marks the pixels
    to repair. -> (H, W) bool, at the mask's own size, not checked."""
    kwargs = {"max_bytes": max_bytes} if max_bytes else {}
    decoded = decode_image(data, **kwargs)
    mask = decoded.rgb.mean(axis=2) >= 128
    if decoded.alpha is not None:
        mask &= decoded.alpha >= 128
    return mask


def read_mask(data: bytes, max_bytes: int | None = None) -> np.ndarray:
    """A mask image at its own size -> (H, W) bool; an empty mask is refused."""
    return _checked(_decoded_mask(data, max_bytes))


def mask_from_png(data: bytes, shape: tuple[int, int], max_bytes: int | None = None) -> np.ndarray:
    """A mask image the image's size -> (H, W) bool; another size, then an empty mask, is refused."""
    mask = _decoded_mask(data, max_bytes)
    height, width = mask.shape
    if (height, width) != tuple(shape):
        raise MaskError("mask_size_mismatch", f"the mask is {width}x{height}, the image {shape[1]}x{shape[0]}")
    return _checked(mask)


def mask_resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """One mask for images of every size: (h, w) bool -> (H, W) bool, nearest neighbour (pixel
    centres), so a mask drawn for one photo covers the same parts of another's frame."""
    height, width = shape
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    return _checked(mask[rows[:, None], cols[None, :]])


def mask_from_rects(rects, shape: tuple[int, int]) -> np.ndarray:
    """[[x, y, width, height], ...] in pixels -> (H, W) bool; rectangles are clipped to the image."""
    if not isinstance(rects, list) or not rects:
        raise MaskError("bad_mask", "mask rectangles must be a non-empty JSON list of [x, y, width, height]")
    height, width = shape
    mask = np.zeros((height, width), bool)
    for rect in rects:
        if (not isinstance(rect, list) or len(rect) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in rect) or rect[2] < 1 or rect[3] < 1):
            raise MaskError("bad_mask", f"each rectangle is [x, y, width, height] in whole pixels, got {rect!r}")
        x, y, w, h = rect
        mask[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = True
    return _checked(mask)
