"""Catalog image kinds through the bulk job (CMYK JPEG, 16-bit PNG, greyscale, ICC + EXIF
orientation) and the optional marketplace constraints (minimum longest side, pad to square on
pure white, maximum output bytes): pure functions first, then end to end on real Ray + S3."""

import functools
import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from prodray.catalog.manifest import output_key, read_manifest
from prodray.catalog.marketplace import ConstraintFailed, encode_for_marketplace
from prodray.config import BulkConfig
from prodray.io import storage
from prodray.io.images import pad_to_square

OPTIONS = BulkConfig(input="s3://b/in", output="s3://b/out")


def noisy(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def srgb_icc() -> bytes:
    # Cached: the profile's header holds its creation time, so two calls differ.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ---------------------------------------------------------------- constraints, no Ray

def test_pad_to_square_centres_on_pure_white_and_keeps_alpha_opaque_there():
    rgb = np.zeros((10, 4, 3), np.uint8)
    alpha = np.full((10, 4), 7, np.uint8)
    square, padded = pad_to_square(rgb, alpha)
    assert square.shape == (10, 10, 3) and padded.shape == (10, 10)
    assert (square[:, 3:7] == 0).all() and (square[:, :3] == 255).all() and (square[:, 7:] == 255).all()
    assert (padded[:, 3:7] == 7).all() and (padded[:, :3] == 255).all()
    wide, _ = pad_to_square(np.zeros((3, 8, 3), np.uint8), None)
    assert wide.shape == (8, 8, 3) and (wide[:2] == 255).all() and (wide[2:5] == 0).all() and (wide[5:] == 255).all()


def test_min_longest_side_rejects_small_outputs():
    options = BulkConfig(input="s3://b/in", output="s3://b/out", min_longest_side=100)
    with pytest.raises(ConstraintFailed, match="too_small"):
        encode_for_marketplace(noisy(60, 99), None, options)
    data, note, shape = encode_for_marketplace(noisy(60, 100), None, options)
    assert shape == (60, 100) and note == "" and Image.open(io.BytesIO(data)).size == (100, 60)


def test_max_output_bytes_lowers_jpeg_quality_until_it_fits_and_rejects_png():
    image = noisy(128, 128)
    from prodray.io.codec import encode_image
    at_90, at_60 = len(encode_image(image, fmt="jpeg", quality=90)), len(encode_image(image, fmt="jpeg", quality=60))
    assert at_60 < at_90
    options = BulkConfig(input="s3://b/in", output="s3://b/out", format="jpeg", quality=90, max_output_bytes=at_60)
    data, note, _ = encode_for_marketplace(image, None, options)
    assert len(data) <= at_60 and "quality lowered to 60" in note
    with pytest.raises(ConstraintFailed, match="too_many_output_bytes"):
        encode_for_marketplace(image, None, BulkConfig(input="s3://b/in", output="s3://b/out", format="png",
                                                       max_output_bytes=1000))


def test_constraints_are_part_of_the_output_key_only_when_set():
    plain = output_key("a/b.png", "m", OPTIONS)
    assert plain == "m/x2-png-q90/a/b.png"  # unchanged for jobs without constraints
    constrained = BulkConfig(input="s3://b/in", output="s3://b/out", min_longest_side=1000, pad_square=True,
                             max_output_bytes=500_000)
    assert output_key("a/b.png", "m", constrained) == "m/x2-png-q90-min1000-square-max500000b/a/b.png"
    ensembled = BulkConfig(input="s3://b/in", output="s3://b/out", self_ensemble=True)
    assert output_key("a/b.png", "m", ensembled) == "m/x2-png-q90-ens8/a/b.png"  # other bytes, other key


def test_inputs_that_differ_only_in_extension_get_different_results():
    """a.jpg, a.webp and a.png in one folder are three products' photos, not one."""
    keys = ["a.jpg", "a.webp", "a.png", "a.tif", "a.JPG"]  # (the listing takes image suffixes only)
    results = [output_key(key, "m", OPTIONS) for key in keys]
    assert len(set(results)) == len(keys), results
    assert results[:3] == ["m/x2-png-q90/a.jpg.png", "m/x2-png-q90/a.webp.png", "m/x2-png-q90/a.png"]
    as_jpeg = BulkConfig(input="s3://b/in", output="s3://b/out", format="jpeg")
    assert output_key("p/a.jpeg", "m", as_jpeg) == "m/x2-jpeg-q90/p/a.jpg"
    assert output_key("p/a.png", "m", as_jpeg) == "m/x2-jpeg-q90/p/a.png.jpg"
    with pytest.raises(ValueError, match="min_longest_side"):
        BulkConfig(input="s3://b/in", output="s3://b/out", min_longest_side=0)


# ---------------------------------------------------------------- end to end

def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def catalog_kinds() -> dict:
    cmyk = Image.new("CMYK", (32, 32), (200, 30, 0, 10))
    grey16 = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (24, 1))
    stored = np.zeros((24, 40, 3), np.uint8)  # stored 40 wide x 24 high: left half red, right half blue
    stored[:, :20] = (220, 20, 20)
    stored[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: stored left -> displayed top
    return {
        "cmyk.jpg": (_save(cmyk, "JPEG", quality=95), cmyk.convert("RGB").getpixel((0, 0))),
        "grey16.png": (_save(Image.fromarray(grey16), "PNG"), None),
        "grey.jpg": (_save(Image.fromarray(np.full((20, 20), 90, np.uint8), "L"), "JPEG", quality=95), None),
        "oriented.jpg": (_save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes(),
                               icc_profile=srgb_icc()), None),
    }


@pytest.mark.slow
def test_catalog_image_kinds_and_constraints_end_to_end(bucket, s3_env):
    ray = pytest.importorskip("ray")
    from prodray.cluster.bulk import run_bulk
    from prodray.enhancer.model import build_model
    from prodray.io.artifacts import export_model

    # An untrained rpsnet is exactly bilinear upscaling (its residual branch starts at zero),
    # so colours and layout can be checked on the output.
    model_uri = f"s3://{bucket}/model"
    export_model(model_uri, "enhancer", build_model("rpsnet", scale=2, channels=8, blocks=1),
                 {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"})
    source = f"s3://{bucket}/catalog"
    kinds = catalog_kinds()
    for key, (data, _) in kinds.items():
        storage.put_bytes(f"{source}/{key}", data)

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        output = f"s3://{bucket}/enhanced"
        options = BulkConfig(input=source, output=output, model=model_uri, scale=2, actor_cpus=0.5,
                             progress_every_s=1e9)
        assert run_bulk(options)["counts"] == {"ok": 4}
        constrained_out = f"s3://{bucket}/marketplace"
        constrained = BulkConfig(input=source, output=constrained_out, model=model_uri, scale=2, format="jpeg",
                                 quality=90, actor_cpus=0.5, progress_every_s=1e9, min_longest_side=60,
                                 pad_square=True, max_output_bytes=200_000)
        assert run_bulk(constrained)["counts"] == {"ok": 3, "rejected": 1}
    finally:
        ray.shutdown()

    def rows(prefix):
        storage._s3fs().invalidate_cache()
        return {r["input_key"]: r for r in read_manifest(prefix)}

    def opened(prefix, row):
        return Image.open(io.BytesIO(storage.get_bytes(f"{prefix}/{row['output_key']}")))

    plain = rows(output)
    # CMYK: RGB out, the colour PIL's CMYK->RGB conversion gives (flat image: upscaling keeps it).
    cmyk = opened(output, plain["cmyk.jpg"])
    assert cmyk.mode == "RGB" and cmyk.size == (64, 64)
    assert np.abs(np.asarray(cmyk).astype(int) - np.array(kinds["cmyk.jpg"][1])).max() <= 3
    assert "icc_profile" not in cmyk.info  # a CMYK profile would mis-describe RGB output
    # 16-bit grey: scaled to 8 bits (not clipped), grey RGB out.
    grey16 = np.asarray(opened(output, plain["grey16.png"]))
    assert grey16.shape == (48, 96, 3) and (grey16[..., 0] == grey16[..., 1]).all()
    assert grey16[:, 0, 0].max() <= 2 and grey16[:, -1, 0].min() >= 253
    grey = opened(output, plain["grey.jpg"])
    assert grey.mode == "RGB" and grey.size == (40, 40)
    assert np.abs(np.asarray(grey).astype(int) - 90).max() <= 2
    # ICC carried; EXIF orientation applied (stored 40x24 -> upright 24x40 -> x2), red on top.
    oriented = opened(output, plain["oriented.jpg"])
    assert oriented.size == (48, 80) and oriented.info.get("icc_profile") == srgb_icc()
    assert "exif" not in oriented.info or oriented.getexif().get(0x0112, 1) == 1
    pixels = np.asarray(oriented.convert("RGB")).astype(int)
    assert pixels[10, 24, 0] > 180 and pixels[10, 24, 2] < 60  # top: red
    assert pixels[70, 24, 2] > 180 and pixels[70, 24, 0] < 60  # bottom: blue

    market = rows(constrained_out)
    assert market["grey.jpg"]["status"] == "rejected" and "too_small" in market["grey.jpg"]["reason"]
    assert market["grey.jpg"]["output_key"] == ""
    for key in ("cmyk.jpg", "grey16.png", "oriented.jpg"):
        row = market[key]
        assert row["status"] == "ok" and row["output_key"].endswith(".jpg") and "-min60-square-" in row["output_key"]
        image = opened(constrained_out, row)
        side = max(plain[key]["width_out"], plain[key]["height_out"])
        assert image.format == "JPEG" and image.size == (side, side) == (row["width_out"], row["height_out"])
    padded = np.asarray(opened(constrained_out, market["oriented.jpg"]).convert("RGB")).astype(int)
    assert padded.shape == (80, 80, 3)
    assert (padded[:, :10] >= 250).all() and (padded[:, -10:] >= 250).all()  # white bands left and right
    assert padded[10, 40, 0] > 180  # the product, centred
    assert opened(constrained_out, market["oriented.jpg"]).info.get("icc_profile") == srgb_icc()
