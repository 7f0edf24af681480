"""Image decoding/encoding: the only module in prodray that touches PIL.

Owns untrusted-input hardening (byte/pixel caps, format allow-list, truncation),
EXIF orientation, colour-mode normalisation and ICC/DPI carry-through. Everything
outside this module sees images as ``uint8 HWC RGB`` numpy arrays (+ optional alpha).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
MIN_DPI, MAX_DPI = 1.0, 65535.0  # what JPEG's JFIF density (uint16) can hold; PNG's pHYs holds more
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})

# EXIF orientations 5..8 involve a 90-degree turn, i.e. width/height swap.
_ORIENTATION_SWAPS_AXES = frozenset({5, 6, 7, 8})

_ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
_CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


class ImageRejected(ValueError):
    """Input bytes are not an image we are willing to decode.

    ``reason`` is a short machine-friendly code ("empty", "too_many_bytes",
    "unsupported_format", "too_many_pixels", "corrupt", "truncated",
    "unsupported_mode"); the exception message is for humans.
    """

    def __init__(self, reason: str, message: str | None = None):
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8, or None when the source had no alpha
    format: str  # PIL format name of the source, e.g. "JPEG"
    mode: str  # original PIL mode, e.g. "CMYK", "I;16"
    icc_profile: bytes | None  # only kept when it describes RGB data
    dpi: tuple | None
    jpeg_quality: int | None = None  # estimated IJG quality (1-100) of a JPEG source, else None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@contextlib.contextmanager
def _guarded_pil(max_pixels: int):
    """Apply our safety settings and translate any PIL failure into ImageRejected.

    PIL's decompression-bomb limit is process-wide: it is set for this decode and put back
    after, so one caller's small cap never becomes everyone's (a serve test once failed so)."""
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    # Global flag another library could have flipped; partial images must never pass.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        # PIL only *warns* between 1x and 2x MAX_IMAGE_PIXELS; we want a hard stop.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (ImageRejected, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected("too_many_pixels", str(e)[:200]) from e
        except Image.UnidentifiedImageError as e:
            # Indistinguishable from a format PIL has no plugin for (e.g. HEIC).
            raise ImageRejected("unsupported_format", "not a recognised image format") from e
        except OSError as e:
            reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
            raise ImageRejected(reason, str(e)[:200]) from e
        except Exception as e:  # noqa: BLE001 - any decoder failure means bad input
            raise ImageRejected("corrupt", str(e)[:200]) from e
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit


def _open_checked(data, max_bytes, max_pixels, allowed_formats) -> tuple[Image.Image, str]:
    """Open lazily (header only), enforce byte/format/pixel limits; return (image, format).

    Must be called inside ``_guarded_pil``.
    """
    if len(data) == 0:
        raise ImageRejected("empty", "image data is empty")
    if len(data) > max_bytes:
        raise ImageRejected("too_many_bytes", f"{len(data)} bytes exceeds limit of {max_bytes}")
    im = Image.open(io.BytesIO(data))
    fmt = im.format
    # Phone cameras often write MPO (multi-picture JPEG); the first frame is a plain JPEG.
    if fmt == "MPO":
        fmt = "JPEG"
    if fmt not in allowed_formats:
        raise ImageRejected("unsupported_format", f"format {im.format!r} is not allowed")
    width, height = im.size
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels", f"{width}x{height} exceeds limit of {max_pixels} pixels"
        )
    return im, fmt


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - broken EXIF must not reject a decodable image
        return 1


def _to_rgb_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise any PIL mode to (uint8 HxWx3 RGB, uint8 HxW alpha or None)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PIL may expose it as 32-bit "I"); PIL's own convert("L") clips
        # instead of scaling, so map 0..65535 -> 0..255 ourselves (rounded /257).
        grey = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        grey = ((grey + 128) // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Covers real alpha channels and palette/colour-key transparency (tRNS).
        arr = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])
    if mode == "RGB":
        return np.array(im, dtype=np.uint8), None
    if mode in ("L", "1"):
        grey = np.asarray(im.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2), None
    # CMYK, YCbCr, P without transparency, ...: let PIL do the colour conversion.
    try:
        rgb = im.convert("RGB")
    except ValueError as e:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode!r} to RGB") from e
    return np.array(rgb, dtype=np.uint8), None


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats=ALLOWED_FORMATS,
) -> DecodedImage:
    """Decode untrusted bytes into RGB (+alpha), upright per EXIF orientation.

    Raises ImageRejected (with ``reason``) for anything we won't or can't decode.
    """
    with _guarded_pil(max_pixels):
        im, fmt = _open_checked(data, max_bytes, max_pixels, allowed_formats)
        mode = im.mode
        icc = im.info.get("icc_profile") or None
        dpi = im.info.get("dpi")
        quality = estimate_jpeg_quality(getattr(im, "quantization", None)) if fmt == "JPEG" else None
        im.load()  # the actual (bounded) decode; truncation surfaces here
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - broken EXIF must not reject a decodable image
            pass
        rgb, alpha = _to_rgb_alpha(im)

    # Output is always RGB, so a GRAY/CMYK profile would mis-describe it: keep RGB ones only.
    # (ICC header bytes 16..20 hold the data colour space signature.)
    if icc is not None and icc[16:20] != b"RGB ":
        icc = None
    return DecodedImage(rgb=rgb, alpha=alpha, format=fmt, mode=mode, icc_profile=icc, dpi=plausible_dpi(dpi),
                        jpeg_quality=quality)


# The IJG (libjpeg) base luminance table, row-major (the order Pillow reports tables in).
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def estimate_jpeg_quality(tables) -> int | None:
    """IJG quality whose scaled base luminance table is nearest the image's table 0 (log error),
    or None without a table. Encoders with their own tables get the nearest IJG equivalent."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.asarray(tables[0], np.float64)
    best, best_error = None, float("inf")
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        candidate = np.clip(np.floor((_IJG_LUMINANCE * scale + 50) / 100), 1, 255)
        error = float(np.abs(np.log(candidate) - np.log(np.maximum(table, 1))).sum())
        if error < best_error:
            best, best_error = quality, error
    return best


def read_image_size(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats=ALLOWED_FORMATS,
) -> tuple[int, int]:
    """Return (width, height) from the header only, without decoding pixels.

    The size is post-EXIF-orientation, i.e. matches what decode_image returns.
    Raises ImageRejected like decode_image (except for errors only a full decode finds).
    """
    with _guarded_pil(max_pixels):
        im, _ = _open_checked(data, max_bytes, max_pixels, allowed_formats)
        width, height = im.size
        if _exif_orientation(im) in _ORIENTATION_SWAPS_AXES:
            width, height = height, width
    return int(width), int(height)


def plausible_dpi(dpi) -> tuple[float, float] | None:
    """A (x, y) resolution every writer can store (JPEG's JFIF field is 16-bit), or None: metadata
    outside it (a PNG may claim 2**32 pixels per metre) is dropped, never passed to a writer."""
    try:
        values = tuple(float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(MIN_DPI <= v <= MAX_DPI for v in values):
        return None
    return values


def _pil_format(fmt: str) -> str:
    try:
        return _ENCODE_FORMATS[fmt.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unsupported output format {fmt!r}; use png, jpeg or webp") from None


def encode_image(
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    fmt: str = "png",
    quality: int = 90,
    icc_profile: bytes | None = None,
    dpi: tuple | None = None,
) -> bytes:
    """Encode uint8 HxWx3 RGB (+ optional HxW alpha) to png/jpeg/webp bytes.

    JPEG has no alpha, so alpha is composited onto white there. EXIF is never written
    (orientation is already applied on decode, and it may carry GPS/personal data).
    """
    pil_fmt = _pil_format(fmt)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha must be uint8 {rgb.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")

    if alpha is not None and pil_fmt == "JPEG":
        # out = rgb*a + white*(1-a), in integer arithmetic with rounding.
        a = alpha.astype(np.uint32)[:, :, None]
        rgb = ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        alpha = None

    if alpha is not None:
        im = Image.fromarray(np.dstack([rgb, alpha]))  # -> mode RGBA
    else:
        im = Image.fromarray(np.ascontiguousarray(rgb))  # -> mode RGB

    params: dict = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    dpi = plausible_dpi(dpi)
    if dpi is not None:
        params["dpi"] = dpi  # written by PNG/JPEG; WebP has no DPI field
    if pil_fmt == "JPEG":
        params.update(quality=int(quality), optimize=False, subsampling="4:2:0")
    elif pil_fmt == "WEBP":
        params.update(quality=int(quality))

    buf = io.BytesIO()
    im.save(buf, format=pil_fmt, **params)
    return buf.getvalue()


def content_type(fmt: str) -> str:
    """MIME type for an output format ("png", "jpg", ...) or a decoded PIL format name."""
    key = _ENCODE_FORMATS.get(str(fmt).lower(), str(fmt).upper())
    try:
        return _CONTENT_TYPES[key]
    except KeyError:
        raise ValueError(f"no content type known for format {fmt!r}") from None
