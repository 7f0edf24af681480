"""Tests for prodray.io.codec. All images are synthesised in-test (no files, no network)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from prodray.io.codec import (
    DecodedImage,
    ImageRejected,
    content_type,
    decode_image,
    encode_image,
    read_image_size,
)


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _gradient(h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=2).astype(
        np.uint8
    )


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageRejected) as ei:
        decode_image(data, **kw)
    assert isinstance(ei.value, ValueError)
    return ei.value.reason


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("fmt,tol", [("png", 0), ("jpeg", 12), ("jpg", 12), ("webp", 16)])
def test_encode_decode_round_trip(fmt, tol):
    rgb = _gradient()
    dec = decode_image(encode_image(rgb, fmt=fmt, quality=95))
    assert isinstance(dec, DecodedImage)
    assert dec.rgb.dtype == np.uint8 and dec.rgb.shape == rgb.shape
    assert (dec.width, dec.height) == (64, 48)
    assert dec.alpha is None
    assert dec.format == {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
    diff = np.abs(dec.rgb.astype(int) - rgb.astype(int))
    assert diff.mean() <= tol / 3 and diff.max() <= tol * 4


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_decode_other_allowed_formats(fmt):
    rgb = _gradient()
    dec = decode_image(_save(Image.fromarray(rgb), fmt))
    assert dec.format == fmt
    np.testing.assert_array_equal(dec.rgb, rgb)


def test_encode_rejects_unknown_format_and_bad_input():
    with pytest.raises(ValueError):
        encode_image(_gradient(), fmt="gif")
    with pytest.raises(ValueError):
        encode_image(_gradient().astype(np.float32))
    with pytest.raises(ValueError):
        encode_image(_gradient(), alpha=np.zeros((3, 3), np.uint8))


def test_encode_format_is_case_insensitive():
    assert encode_image(_gradient(), fmt="JPG")[:2] == b"\xff\xd8"
    assert encode_image(_gradient(), fmt="PNG")[:8] == b"\x89PNG\r\n\x1a\n"


def test_content_type():
    assert content_type("png") == "image/png"
    assert content_type("jpg") == "image/jpeg"
    assert content_type("JPEG") == "image/jpeg"
    assert content_type("webp") == "image/webp"
    with pytest.raises(ValueError):
        content_type("gif")


# --- mode conversion -------------------------------------------------------------


def test_grey_l_replicated_to_rgb():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    dec = decode_image(_save(Image.fromarray(grey), "PNG"))
    assert dec.mode == "L"
    assert dec.rgb.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(dec.rgb[:, :, c], grey)


def test_bilevel_1_to_rgb():
    im = Image.new("1", (8, 4), 0)
    im.putpixel((0, 0), 1)
    dec = decode_image(_save(im, "PNG"))
    assert dec.rgb[0, 0].tolist() == [255, 255, 255]
    assert dec.rgb[1, 1].tolist() == [0, 0, 0]


def test_16bit_png_scaled_to_8bit():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    im = Image.frombytes("I;16", (4, 1), values.astype("<u2").tobytes())
    dec = decode_image(_save(im, "PNG"))
    assert dec.mode in ("I;16", "I")  # PIL version dependent
    assert dec.rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (dec.rgb[0, :, 0] == dec.rgb[0, :, 2]).all()


def _icc_for(colour_space: bytes) -> bytes:
    """A real ICC profile (sRGB's) whose header declares another data colour space (bytes 16-20):
    what a CMYK or grey file carries, as far as the decoder's check is concerned."""
    icc = bytearray(_srgb_icc())
    icc[16:20] = colour_space
    return bytes(icc)


def test_cmyk_jpeg_decodes_to_rgb_and_drops_cmyk_icc():
    # Pure red in CMYK is (0, 255, 255, 0).
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    data = _save(im, "JPEG", quality=95, icc_profile=_icc_for(b"CMYK"))
    assert Image.open(io.BytesIO(data)).info["icc_profile"][16:20] == b"CMYK"  # the input carries it
    dec = decode_image(data)
    assert dec.mode == "CMYK"
    assert dec.icc_profile is None  # it would mis-describe the RGB output
    assert np.abs(dec.rgb.astype(int) - [255, 0, 0]).max() <= 10


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grey_image_drops_its_grey_icc_and_keeps_an_rgb_one(fmt):
    grey = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)), "L")
    data = _save(grey, fmt, icc_profile=_icc_for(b"GRAY"))
    assert Image.open(io.BytesIO(data)).info["icc_profile"][16:20] == b"GRAY"
    dec = decode_image(data)
    assert dec.mode == "L" and dec.rgb.shape == (16, 16, 3) and dec.icc_profile is None
    rgb = decode_image(_save(Image.fromarray(_gradient()), fmt, icc_profile=_srgb_icc()))
    assert rgb.icc_profile == _srgb_icc()


def test_rgba_keeps_alpha():
    rgb = _gradient(16, 16)
    alpha = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    dec = decode_image(_save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"))
    np.testing.assert_array_equal(dec.rgb, rgb)
    np.testing.assert_array_equal(dec.alpha, alpha)
    # And encoding keeps it for PNG.
    again = decode_image(encode_image(dec.rgb, alpha=dec.alpha, fmt="png"))
    np.testing.assert_array_equal(again.alpha, alpha)


def test_palette_with_transparency_gives_alpha():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.putpixel((1, 1), 1)
    dec = decode_image(_save(im, "PNG", transparency=0))
    assert dec.alpha is not None
    assert dec.alpha[0, 0] == 0 and dec.alpha[1, 1] == 255
    assert dec.rgb[1, 1].tolist() == [0, 255, 0]


def test_jpeg_encode_composites_alpha_on_white():
    rgb = np.zeros((8, 8, 3), np.uint8)  # black
    alpha = np.zeros((8, 8), np.uint8)  # fully transparent
    dec = decode_image(encode_image(rgb, alpha=alpha, fmt="jpeg"))
    assert dec.alpha is None
    assert dec.rgb.min() >= 250  # white background shows through


# --- metadata --------------------------------------------------------------------


def test_exif_orientation_applied():
    rgb = _gradient(20, 40)  # landscape 40x20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _save(Image.fromarray(rgb), "JPEG", exif=exif.tobytes())
    dec = decode_image(data)
    assert dec.rgb.shape == (40, 20, 3)
    assert read_image_size(data) == (20, 40)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_icc_profile_preserved(fmt):
    icc = _srgb_icc()
    dec = decode_image(encode_image(_gradient(), fmt=fmt, icc_profile=icc))
    assert dec.icc_profile == icc
    dec2 = decode_image(encode_image(dec.rgb, fmt=fmt, icc_profile=dec.icc_profile))
    assert dec2.icc_profile == icc


def test_no_icc_profile_is_none():
    assert decode_image(encode_image(_gradient(), fmt="png")).icc_profile is None


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_dpi_preserved(fmt):
    dec = decode_image(encode_image(_gradient(), fmt=fmt, dpi=(300, 300)))
    assert dec.dpi == pytest.approx((300, 300), abs=0.1)
    dec2 = decode_image(encode_image(dec.rgb, fmt=fmt, dpi=dec.dpi))
    assert dec2.dpi == pytest.approx((300, 300), abs=0.1)


# --- rejections ------------------------------------------------------------------


def test_reject_empty():
    assert _reason(b"") == "empty"


def test_reject_random_bytes():
    rng = np.random.default_rng(0)
    assert _reason(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()) == "unsupported_format"


def test_reject_truncated_jpeg():
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # incompressible
    data = encode_image(noisy, fmt="jpeg")
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_reject_truncated_png():
    rng = np.random.default_rng(2)
    data = encode_image(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), fmt="png")
    assert _reason(data[: len(data) // 2]) in ("truncated", "corrupt")


def test_reject_gif():
    data = _save(Image.new("P", (8, 8)), "GIF")
    assert _reason(data) == "unsupported_format"
    with pytest.raises(ImageRejected) as ei:
        read_image_size(data)
    assert ei.value.reason == "unsupported_format"


def test_reject_format_outside_custom_allow_list():
    assert _reason(encode_image(_gradient(), fmt="png"), allowed_formats={"JPEG"}) == (
        "unsupported_format"
    )


def test_reject_too_many_bytes():
    data = encode_image(_gradient(), fmt="png")
    assert _reason(data, max_bytes=len(data) - 1) == "too_many_bytes"
    assert decode_image(data, max_bytes=len(data)).width == 64


def test_reject_decompression_bomb_without_decoding():
    bomb = _save(Image.new("1", (10_000, 10_000)), "PNG")
    assert len(bomb) < 100_000  # small on the wire, 100 MP when decoded
    assert _reason(bomb, max_pixels=1_000_000) == "too_many_pixels"
    with pytest.raises(ImageRejected) as ei:
        read_image_size(bomb, max_pixels=1_000_000)
    assert ei.value.reason == "too_many_pixels"


def test_pixel_limit_is_inclusive():
    data = encode_image(_gradient(10, 10), fmt="png")
    assert decode_image(data, max_pixels=100).width == 10
    assert _reason(data, max_pixels=99) == "too_many_pixels"


def test_pixel_limit_does_not_leak_into_the_process():
    before = Image.MAX_IMAGE_PIXELS
    data = encode_image(_gradient(10, 10), fmt="png")
    decode_image(data, max_pixels=100)
    assert _reason(data, max_pixels=99) == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global limit is put back, on success and on rejection


def test_read_image_size_header_only():
    assert read_image_size(encode_image(_gradient(30, 70), fmt="webp")) == (70, 30)
    with pytest.raises(ImageRejected) as ei:
        read_image_size(b"")
    assert ei.value.reason == "empty"


def _png_with_phys(pixels_per_metre: int) -> bytes:
    """A valid 8x8 RGB PNG whose pHYs chunk claims `pixels_per_metre` on both axes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + b"\x80" * 24 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"pHYs", struct.pack(">IIB", pixels_per_metre, pixels_per_metre, 1))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_out_of_range_dpi_is_dropped_not_passed_to_the_writer(fmt):
    decoded = decode_image(_png_with_phys(0xFFFFFFFF))  # ~1.1e8 dpi: no JPEG can hold it, x2 overflows PNG
    assert decoded.dpi is None
    scaled = (2.2e8, 2.2e8)  # what the endpoint would write for a x2 result of such an input
    assert decode_image(encode_image(decoded.rgb, fmt=fmt, dpi=scaled)).rgb.shape == (8, 8, 3)
    kept = decode_image(_png_with_phys(11811))  # 300 dpi survives the round trip
    assert kept.dpi == pytest.approx((300, 300), abs=0.01)
    if fmt != "webp":  # WebP has no resolution field
        written = encode_image(kept.rgb, fmt=fmt, dpi=(600.0, 600.0))
        assert decode_image(written).dpi == pytest.approx((600, 600), abs=0.1)
