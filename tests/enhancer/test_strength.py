"""Restoration strength: weight interpolation towards the clean partner, and `auto` from the JPEG
quality, the block edges and the noise in the pixels."""

import numpy as np
import pytest
import torch
from enhancer_networks import CONFIG, random_enhancer

from prodray.config import parse_strength
from prodray.enhancer.evaluation import gaussian_blur
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.strength import (
    FULL_AT_BLOCKS,
    NONE_BELOW_BLOCKS,
    auto_strength,
    block_edges,
    choose_strength,
    estimate_noise,
)
from prodray.io.artifacts import export_model
from prodray.io.codec import decode_image, encode_image


def smooth_image(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([60 + 2 * yy, 100 + xx, 180 - yy], axis=2).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (None, None), ("0", 0.0), (0.5, 0.5), ("1", 1.0)])
def test_strength_values(value, expected):
    assert parse_strength(value) == expected


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "strong", ""])
def test_bad_strength_is_refused_with_the_reason(value):
    with pytest.raises(ValueError, match="strength"):
        parse_strength(value)


def test_strength_interpolates_between_the_clean_and_the_restoration_model():
    clean, restore = random_enhancer(0), random_enhancer(1)
    image = smooth_image(24)
    enhancer = Enhancer(restore, {**CONFIG, "model_id": "restore-test"}, clean_model=clean, precision="fp32")
    plain_clean = Enhancer(random_enhancer(0), CONFIG, precision="fp32").enhance_many([image])[0]
    plain_restore = Enhancer(random_enhancer(1), CONFIG, precision="fp32").enhance_many([image])[0]
    at = {s: enhancer.enhance_many([image], [s])[0] for s in (0.0, 0.5, 1.0)}
    assert np.array_equal(at[0.0], plain_clean)
    assert np.array_equal(at[1.0], plain_restore)
    assert not np.array_equal(at[0.5], at[0.0]) and not np.array_equal(at[0.5], at[1.0])
    # The half-way weights are the mean of the two sets.
    half = enhancer.strengths.at(0.5).state_dict()
    for name, value in clean.state_dict().items():
        assert torch.allclose(half[name], (value + restore.state_dict()[name]) / 2, atol=1e-6), name
    # Mixed strengths in one call give what each image gets on its own.
    mixed = enhancer.enhance_many([image, image, image], [0.0, 1.0, 0.5])
    assert [np.array_equal(m, at[s]) for m, s in zip(mixed, (0.0, 1.0, 0.5))] == [True, True, True]


def test_strength_on_a_model_without_a_clean_partner_is_refused():
    with pytest.raises(ValueError, match="restoration"):
        Enhancer(random_enhancer(0), CONFIG, strength=0.5)
    assert Enhancer(random_enhancer(0), CONFIG).strength_for(smooth_image()) is None


def test_a_restoration_export_finds_its_shipped_clean_partner(tmp_path):
    """An export trained from enhancer-x2 (init_model_id) runs at strength 0 as enhancer-x2 does."""
    shipped = Enhancer.load("enhancer-x2", precision="fp32")
    export = str(tmp_path / "restore")
    export_model(export, "enhancer", shipped.model, {**shipped.config, "model_id": "restore-copy",
                                                     "init_model_id": shipped.model_id})
    restore = Enhancer.load(export, precision="fp32", strength=0.0)
    assert restore.restores and restore.strength_for(smooth_image()) == 0.0
    image = smooth_image(32)
    assert np.array_equal(restore.enhance(image).rgb, shipped.enhance(image).rgb)


def test_a_same_size_restoration_model_at_strength_0_returns_the_input(tmp_path):
    """A scale-1 model's partner is itself with the last layer zeroed: strength s adds s x its detail."""
    model = random_enhancer(2, scale=1, unshuffle=2)
    export = str(tmp_path / "restore-same-size")
    export_model(export, "enhancer", model, {**CONFIG, "scale": 1, "unshuffle": 2, "model_id": "restore-x1-test"})
    image = textured_image(48)
    restore = Enhancer.load(export, precision="fp32")
    at = {s: restore.enhance_many([image], [s])[0].astype(float) for s in (0.0, 0.5, 1.0)}
    assert restore.restores and np.array_equal(at[0.0], image)
    assert np.abs(at[1.0] - image).mean() > 2
    unclipped = (at[1.0] > 0) & (at[1.0] < 255)
    assert unclipped.mean() > 0.9 and np.abs(at[0.5] - (image + at[1.0]) / 2)[unclipped].max() <= 1


@pytest.mark.parametrize("sigma", [3.0, 6.0, 12.0])
def test_noise_estimate_reads_the_added_noise(sigma):
    rng = np.random.default_rng(int(sigma))
    noisy = (smooth_image(128) + rng.normal(0, sigma, (128, 128, 3))).round().clip(0, 255).astype(np.uint8)
    assert estimate_noise(smooth_image(128)) < 1.0
    assert 0.6 * sigma <= estimate_noise(noisy) <= 1.4 * sigma


def textured_image(size: int = 192) -> np.ndarray:
    """A product-like surface: the smooth gradient under blurred seeded grain (at the size of the
    calibration's inputs: the block measure takes a median over each phase's columns)."""
    grain = np.random.default_rng(0).normal(0, 40, (size, size, 3))
    return gaussian_blur((smooth_image(size) + grain).clip(0, 255).astype(np.uint8), 1.5)


def saved_as_jpeg(image: np.ndarray, *qualities: int) -> tuple[np.ndarray, int]:
    for quality in qualities:
        decoded = decode_image(encode_image(image, fmt="jpeg", quality=quality))
        image = decoded.rgb
    return image, decoded.jpeg_quality


def test_auto_strength_follows_the_jpeg_quality_and_the_noise():
    assert [choose_strength(q, noise=0.0, blocks=0.0) for q in (30, 60, 75, 90, 95, 100)] == [1, 1, 0.75, 0.5, 0.25, 0]
    image = textured_image()
    assert auto_strength(image, None) == 0.0
    assert auto_strength(*saved_as_jpeg(image, 30)) == 1.0
    noisy = (image + np.random.default_rng(0).normal(0, 10, image.shape)).round().clip(0, 255).astype(np.uint8)
    assert auto_strength(noisy, None) == 1.0
    assert choose_strength(90, noise=3.0, blocks=0.0) > choose_strength(90, noise=0.0, blocks=0.0)


def test_block_edges_reveal_a_coarse_save_that_a_fine_one_hides():
    image = textured_image()
    assert block_edges(image) < NONE_BELOW_BLOCKS
    fine, quality = saved_as_jpeg(image, 95)
    twice, quality_twice = saved_as_jpeg(image, 40, 95)
    assert quality == quality_twice == 95
    assert block_edges(twice) >= FULL_AT_BLOCKS and block_edges(twice) > 3 * block_edges(fine)
    assert auto_strength(twice, quality_twice) == 1.0


def test_a_product_outline_on_the_block_grid_is_not_read_as_jpeg_blocks():
    """A box shot straight on: long vertical and horizontal edges, all on one phase of the grid."""
    shot = np.full((192, 192, 3), 255, np.uint8)
    shot[31:159, 23:167] = textured_image()[31:159, 23:167]
    assert block_edges(shot) < NONE_BELOW_BLOCKS
    assert auto_strength(shot, None) == 0.0
