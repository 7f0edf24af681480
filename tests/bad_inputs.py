"""The bad-input corpus: real encoded files of every kind a catalog or an upload can bring, each
with the outcome the decoder must give ("ok", or the refusal reason). The bulk job and the endpoint
run the whole corpus (tests/cluster/test_bad_input_corpus.py, tests/cluster/test_serve.py); README
lists the outcomes."""

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms


@dataclass(frozen=True)
class Case:
    name: str  # also the file name in the bulk catalog
    data: bytes
    outcome: str  # "ok" or the ImageRejected reason


def _rgb(width=24, height=16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=2)
    return (base + rng.integers(0, 8, base.shape)).clip(0, 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_raw(width: int, height: int, idat: bytes, extra: bytes = b"", colour_type: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _icc_for(colour_space: bytes) -> bytes:
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[16:20] = colour_space
    return bytes(icc)


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return _save(Image.fromarray(_rgb(24, 16)), "JPEG", exif=exif.tobytes())


def _frames(count=3, size=(16, 16)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i, 100, 200 - 40 * i)) for i in range(count)]


def _decompression_bomb() -> bytes:
    """A 30000 x 30000 grey PNG of zeros: a few kB on disk, 900 MP decoded."""
    row = b"\x00" + b"\x00" * 30000
    idat = zlib.compress(row * 30000, 9)
    return _png_raw(30000, 30000, idat, colour_type=0)


def _ftyp(brand: bytes) -> bytes:
    """The start of an ISO-BMFF file (HEIC / AVIF): an ftyp box and an empty meta box."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1"
    return ftyp + struct.pack(">I", 8) + b"meta"


def corpus(max_bytes: int) -> list[Case]:
    """Every case; `max_bytes` is the byte limit of the job or endpoint under test."""
    rgb = _rgb()
    png, jpeg = _save(Image.fromarray(rgb), "PNG"), _save(Image.fromarray(rgb), "JPEG", quality=90)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    grey = Image.fromarray(rgb[..., 0], "L")
    cases = [
        Case("empty.png", b"", "empty"),
        Case("random-bytes.jpg", np.random.default_rng(1).bytes(4096), "unsupported_format"),
        Case("text.png", b"this is not an image\n" * 20, "unsupported_format"),
        Case("truncated.png", png[: len(png) // 2], "truncated"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated"),
        Case("header-only-huge.png", _png_raw(50_000, 50_000, zlib.compress(b"")), "too_many_pixels"),
        Case("decompression-bomb.png", _decompression_bomb(), "too_many_pixels"),
        Case("oversized.bmp", b"BM" + b"\x00" * (max_bytes + 10), "too_many_bytes"),
        Case("bad-crc.png", png[:-20] + b"\x00\x00\x00\x00" + png[-16:], "corrupt"),
        Case("static.gif", _save(Image.new("P", (8, 8)), "GIF"), "unsupported_format"),
        Case("animated.gif", _save(_frames()[0].convert("P"), "GIF", save_all=True,
                                   append_images=[f.convert("P") for f in _frames()[1:]]), "unsupported_format"),
        Case("animated.png", _save(_frames()[0], "PNG", save_all=True, append_images=_frames()[1:]), "ok"),
        Case("animated.webp", _save(_frames()[0], "WEBP", save_all=True, append_images=_frames()[1:]), "ok"),
        Case("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" '
                           b'height="10" fill="red"/></svg>', "unsupported_format"),
        Case("photo.heic", _ftyp(b"heic"), "unsupported_format"),
        Case("photo.avif", _ftyp(b"avif"), "unsupported_format"),
        Case("stereo.mpo", _save(Image.fromarray(rgb), "MPO", save_all=True,
                                 append_images=[Image.fromarray(rgb[::-1])]), "ok"),
        Case("icon.ico", _save(Image.fromarray(rgb), "ICO"), "unsupported_format"),
        Case("png-named.jpg", png, "ok"),
        Case("jpeg-named.png", jpeg, "ok"),
        Case("trailing-garbage.jpg", jpeg + b"\x00garbage" * 100, "ok"),
        Case("broken-exif.jpg", _save(Image.fromarray(rgb), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage"), "ok"),
        *[Case(f"exif-orientation-{v}.jpg", _exif_orientation(v), "ok") for v in range(1, 9)],
        Case("cmyk-icc.jpg", _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG",
                                   icc_profile=_icc_for(b"CMYK")), "ok"),
        Case("grey-icc.png", _save(grey, "PNG", icc_profile=_icc_for(b"GRAY")), "ok"),
        Case("grey.jpg", _save(grey, "JPEG"), "ok"),
        Case("grey-alpha.png", _save(Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA"), "PNG"), "ok"),
        Case("lab.tif", _save(Image.fromarray(rgb).convert("LAB"), "TIFF"), "ok"),
        Case("float.tif", _save(Image.fromarray(rgb[..., 0].astype(np.float32) / 255), "TIFF"), "ok"),
        Case("one-bit.png", _save(grey.convert("1"), "PNG"), "ok"),
        Case("palette.png", _save(Image.fromarray(rgb).convert("P"), "PNG"), "ok"),
        Case("palette-transparent.png", _save(Image.fromarray(rgb).convert("P"), "PNG", transparency=0), "ok"),
        Case("sixteen-bit.png", _save(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"), "ok"),
        Case("rgba.webp", _save(Image.fromarray(rgba), "WEBP", lossless=True), "ok"),
        Case("progressive.jpg", _save(Image.fromarray(rgb), "JPEG", progressive=True), "ok"),
        Case("rgb.bmp", _save(Image.fromarray(rgb), "BMP"), "ok"),
        Case("rgb.tif", _save(Image.fromarray(rgb), "TIFF"), "ok"),
        Case("dpi-huge.png", _png_raw(8, 8, zlib.compress((b"\x00" + b"\x80" * 24) * 8),
                                      extra=_chunk(b"pHYs", struct.pack(">IIB", 0xFFFFFFFF, 0xFFFFFFFF, 1))), "ok"),
        Case("dpi-zero.jpg", _save(Image.fromarray(rgb), "JPEG", dpi=(0, 0)), "ok"),
        Case("one-pixel.png", _save(Image.fromarray(rgb[:1, :1]), "PNG"), "ok"),
        Case("one-by-n.png", _save(Image.fromarray(_rgb(300, 1)), "PNG"), "ok"),
        Case("n-by-one.png", _save(Image.fromarray(_rgb(1, 300)), "PNG"), "ok"),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names are file names: unique"
    return cases
