"""The shipped upscaling restoration models (restore-x2, restore-x4) on a real photo they never
trained on (scikit-image's coffee, CC0): on a JPEG-damaged low-resolution copy they beat both
bicubic and their clean partner, and strength 0 gives the clean partner's result."""

from functools import cache

import numpy as np
import pytest

from prodray.enhancer.inference import Enhancer
from prodray.io.codec import decode_image, encode_image
from prodray.io.images import imresize_uint8
from prodray.metrics import psnr_ssim_y

skimage_data = pytest.importorskip("skimage.data")

PAIRS = [("restore-x2", "enhancer-x2", 2), ("restore-x4", "enhancer-x4", 4)]


@cache
def shipped(name: str) -> Enhancer:
    """Each shipped model loaded once for the module's tests."""
    return Enhancer.load(name, precision="fp32")


@pytest.fixture(scope="module")
def photo():
    return np.ascontiguousarray(imresize_uint8(skimage_data.coffee(), 0.5))  # halved: no sensor noise or grid


@pytest.mark.parametrize("restore, clean, scale", PAIRS)
def test_restore_model_beats_bicubic_and_its_clean_partner_on_a_jpeg(photo, restore, clean, scale):
    height, width = (side - side % scale for side in photo.shape[:2])
    truth = photo[:height, :width]
    damaged = decode_image(encode_image(imresize_uint8(truth, 1 / scale), fmt="jpeg", quality=50)).rgb
    restorer = shipped(restore)
    assert restorer.restores and restorer.config["scale"] == scale
    restored = restorer.enhance_many([damaged], [1.0])[0]  # full restoration
    clean_result = shipped(clean).enhance_many([damaged])[0]
    bicubic = imresize_uint8(damaged, scale)
    scores = {name: psnr_ssim_y(image, truth, shave=scale)[0]
              for name, image in (("restore", restored), ("clean", clean_result), ("bicubic", bicubic))}
    assert scores["restore"] > scores["clean"] + 0.5, scores
    assert scores["restore"] > scores["bicubic"] + 0.3, scores


@pytest.mark.parametrize("restore, clean, scale", PAIRS)
def test_restore_model_at_strength_zero_is_its_clean_partner(photo, restore, clean, scale):
    image = photo[:96, :128]
    at_zero = shipped(restore).enhance_many([image], [0.0])[0]
    clean_result = shipped(clean).enhance_many([image])[0]
    assert np.abs(at_zero.astype(int) - clean_result.astype(int)).max() <= 1


def test_same_size_restore_model_cleans_a_jpeg_and_leaves_a_clean_photo_nearly_alone(photo):
    """restore-x1: on the halved photo saved at JPEG q50 it gains over the damaged input; on the
    clean photo (a PNG: no tables) `auto` changes it invisibly at most; at strength 0 it is the input."""
    restorer = shipped("restore-x1")
    assert restorer.restores and restorer.config["scale"] == 1
    damaged = decode_image(encode_image(photo, fmt="jpeg", quality=50)).rgb
    restored = restorer.enhance_many([damaged], [restorer.strength_for(damaged, 50, requested="auto")])[0]
    gain = psnr_ssim_y(restored, photo, shave=1)[0] - psnr_ssim_y(damaged, photo, shave=1)[0]
    assert gain > 0.5, gain
    clean = restorer.enhance_many([photo], [restorer.strength_for(photo, None, requested="auto")])[0]
    assert psnr_ssim_y(clean, photo, shave=1)[0] >= 45
    assert np.array_equal(restorer.enhance_many([photo[:96, :128]], [0.0])[0], photo[:96, :128])
