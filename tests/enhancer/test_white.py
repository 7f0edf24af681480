"""The white guard: pure-white areas come out 255 after JPEG and noise touched them; grey, pastel
and white-ish product surfaces do not."""

import numpy as np
import pytest

from prodray.enhancer.evaluation import STANDARD_SUITE
from prodray.enhancer.white import exact_white, keep_white, white_regions
from prodray.io.images import imresize_uint8


def pack_shot(size: int = 256, seed: int = 0) -> np.ndarray:
    """A round coloured product on pure white, with a near-white (250) label in a dark frame."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    product = np.hypot(yy - size / 2, xx - size / 2) < size * 0.3
    colours = np.stack([200 - 0.3 * yy, 120 + 40 * np.sin(xx / 7.0), 90 + 0.2 * xx], 2)
    image[product] = (colours + rng.normal(0, 4, colours.shape))[product].clip(0, 254)
    label = (abs(yy - size / 2) < 20) & (abs(xx - size / 2) < 30)
    frame = (abs(yy - size / 2) < 22) & (abs(xx - size / 2) < 32) & ~label
    image[frame], image[label] = 60, 250
    return image


@pytest.mark.parametrize("damage", ["clean", "jpeg30", "jpeg50", "jpeg75", "noise5", "noise10", "chain"])
def test_white_background_is_found_through_each_damage(damage):
    lr = imresize_uint8(pack_shot(), 0.5)
    white = np.all(lr == 255, axis=2)
    damaged, _ = STANDARD_SUITE[damage](lr, np.random.default_rng(0))
    found = exact_white(damaged) | white_regions(damaged)
    assert found[white].mean() >= 0.95, damage
    label = np.zeros(white.shape, bool)
    label[128 // 2 - 8:128 // 2 + 8, 128 // 2 - 13:128 // 2 + 13] = True
    assert not found[label].any(), damage  # the 250 label inside the product stays the model's


def test_a_twice_saved_white_backdrop_that_averages_below_252_is_still_white():
    """What blur, noise and two JPEG saves leave of a supplier's (already JPEG) white backdrop: a
    border-touching area averaging about 251.6 with few pixels still clipping at 255 (measured on
    real 60x80 pack shots under the suite's chain). It is the background, not a grey surface."""
    rng = np.random.default_rng(0)
    image = (255 - np.abs(rng.normal(0, 4.2, (64, 64, 3)))).round().astype(np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    product = np.hypot(yy - 32, xx - 32) < 14
    image[product] = (90, 60, 40)
    background = ~product & (np.hypot(yy - 32, xx - 32) > 17)
    assert 251 <= image[background].mean() < 252 and (np.median(image, axis=2)[background] == 255).mean() < 0.3
    assert white_regions(image)[background].mean() >= 0.95
    assert not white_regions(image)[product].any()


def test_exact_rule_alone_misses_what_jpeg_and_noise_did():
    """Why the tolerant rule exists: without it most of a damaged white background is left to the model."""
    lr = imresize_uint8(pack_shot(), 0.5)
    white = np.all(lr == 255, axis=2)
    for damage in ("jpeg50", "noise5", "chain"):
        assert exact_white(STANDARD_SUITE[damage](lr, np.random.default_rng(0))[0])[white].mean() < 0.8, damage


@pytest.mark.parametrize("level", [240, 245, 250])
def test_grey_and_pastel_surfaces_are_not_whitened(level):
    rng = np.random.default_rng(level)
    grey = np.full((64, 64, 3), level, np.uint8)
    assert not white_regions(grey).any()
    assert not white_regions(STANDARD_SUITE["noise5"](grey, rng)[0]).any()
    pastel = np.full((64, 64, 3), 255, np.uint8)
    pastel[..., 1:] = level - 10
    assert not white_regions(pastel).any()
    assert not white_regions(STANDARD_SUITE["jpeg50"](pastel, rng)[0]).any()


def test_keep_white_forces_the_found_area_at_the_output_scale():
    lr, _ = STANDARD_SUITE["jpeg50"](imresize_uint8(pack_shot(128), 0.5), None)
    out = np.full((128, 128, 3), 200, np.uint8)
    forced = keep_white(lr, out, 2)
    mask = (exact_white(lr) | white_regions(lr)).repeat(2, axis=0).repeat(2, axis=1)
    assert (forced[mask] == 255).all() and (forced[~mask] == 200).all()
    untouched = keep_white(lr, out, 2, tolerant=False)
    assert (untouched == 255).all(axis=2).sum() < (forced == 255).all(axis=2).sum()
