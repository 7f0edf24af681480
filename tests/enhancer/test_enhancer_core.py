"""The enhancer's functional core: model shapes, degradations, SR protocol, tiling, export."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prodray.enhancer.degradations import DegradationRanges, degrade
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.model import build_model
from prodray.enhancer.white import keep_white
from prodray.io.artifacts import export_model
from prodray.io.images import imresize, imresize_uint8
from prodray.metrics import psnr, psnr_ssim_y, rgb_to_y, ssim
from prodray.training import count_parameters

SMALL = {"arch": "rpsnet", "channels": 8, "blocks": 1, "kind": "enhancer"}


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_model_output_shape_any_size(scale):
    model = build_model("rpsnet", scale=scale, channels=8, blocks=1)
    out = model(torch.rand(2, 3, 17, 23))
    assert out.shape == (2, 3, 17 * scale, 23 * scale)


def test_unknown_arch_names_known_ones():
    with pytest.raises(ValueError, match="rpsnet"):
        build_model("nope")


def test_fresh_model_is_bilinear_upscaling():
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    x = torch.rand(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_parameter_count_and_flops():
    model = build_model("rpsnet", scale=2, channels=48, blocks=8)
    assert count_parameters(model) == 359_868
    # 3x3 convs only: head 3->48, 17 x 48->48, upsample 48->12.
    assert model.flops_per_input_pixel() == 2 * 9 * (3 * 48 + 17 * 48 * 48 + 48 * 12)


def test_imresize_matches_hand_computed_matlab_values():
    # MATLAB: imresize([0 0 255 255], 0.5, 'bicubic') on a 1x4 row -> antialiased kernel of width 8.
    row = torch.tensor([[[[0.0, 0.0, 255.0, 255.0]]]], dtype=torch.float64)
    out = imresize(row, 0.5)
    assert out.shape == (1, 1, 1, 2)
    # Symmetric output for a symmetric step, and values inside the range (antialiasing, no ringing
    # beyond what the kernel allows).
    assert out[0, 0, 0, 0] + out[0, 0, 0, 1] == pytest.approx(255.0)
    assert 0 < out[0, 0, 0, 0] < 64
    # Upscaling a constant gives the constant; downscale of a constant too.
    const = torch.full((1, 3, 10, 12), 7.0, dtype=torch.float64)
    assert torch.allclose(imresize(const, 2), torch.full((1, 3, 20, 24), 7.0, dtype=torch.float64))
    assert torch.allclose(imresize(const, 0.5), torch.full((1, 3, 5, 6), 7.0, dtype=torch.float64))


def test_imresize_upscale_weights_are_keys_cubic():
    # x2 upscaling: the first output pixel sits at input coordinate 0.75 -> weights of the
    # Keys cubic (a = -0.5) at distances 1.75, 0.75, 0.25, 1.25 with the border mirrored.
    row = torch.tensor([[[[10.0, 20.0, 40.0, 80.0]]]], dtype=torch.float64)
    out = imresize(row, 2)[0, 0, 0]

    def keys(d):
        d = abs(d)
        return (1.5 * d**3 - 2.5 * d**2 + 1) if d <= 1 else (-0.5 * d**3 + 2.5 * d**2 - 4 * d + 2) if d < 2 else 0.0

    # Taps at 1-based input positions -1, 0, 1, 2; MATLAB mirrors -1 -> 2 and 0 -> 1, so the
    # values are 20, 10, 10, 20.
    weights = [keys(0.75 - p) for p in (-1, 0, 1, 2)]
    expected = sum(w * v for w, v in zip(weights, (20, 10, 10, 20))) / sum(weights)
    assert float(out[0]) == pytest.approx(expected, abs=1e-9)


def test_y_psnr_ssim_against_hand_computation():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255
    assert rgb_to_y(image)[0, 0] == pytest.approx(16 + 65.481)
    a = np.full((20, 20), 100.0)
    b = a + 5.0
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 25))
    assert ssim(a, a) == pytest.approx(1.0)
    # Constant images: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 105 + c1) / (100**2 + 105**2 + c1))
    # Shave: a difference only in the border does not count.
    ref = np.full((16, 16, 3), 80, np.uint8)
    out = ref.copy()
    out[:2] = 0
    assert psnr_ssim_y(out, ref, shave=2)[0] == float("inf")


def test_degradations_are_deterministic_under_a_seed():
    hr = torch.rand(3, 3, 32, 32)
    ranges = DegradationRanges(blur_prob=1.0, noise_prob=1.0, poisson_prob=0.5, jpeg_prob=1.0, second_stage_prob=0.5)
    a = degrade(hr, 2, ranges, torch.Generator().manual_seed(7))
    b = degrade(hr, 2, ranges, torch.Generator().manual_seed(7))
    c = degrade(hr, 2, ranges, torch.Generator().manual_seed(8))
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_blind_chain_keeps_the_target_size_and_its_seed():
    """Generalised-Gaussian kernels, a random intermediate size, a JPEG before the second stage."""
    hr = torch.rand(4, 3, 48, 48)
    ranges = DegradationRanges(blur_prob=1.0, kernel_beta=(0.5, 4.0), resize_prob=1.0, resize_range=(0.5, 1.5),
                               noise_prob=1.0, first_jpeg_prob=1.0, second_stage_prob=1.0, jpeg_prob=1.0,
                               jpeg_quality=(30, 60))
    for scale in (1, 2, 4):
        a = degrade(hr, scale, ranges, torch.Generator().manual_seed(1))
        assert a.shape == (4, 3, 48 // scale, 48 // scale)
        assert torch.equal(a, degrade(hr, scale, ranges, torch.Generator().manual_seed(1)))
    plain = DegradationRanges(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0, jpeg_quality=(30, 60))
    assert not torch.equal(degrade(hr, 2, ranges, torch.Generator().manual_seed(1)),
                           degrade(hr, 2, plain, torch.Generator().manual_seed(1)))


def test_bicubic_only_degradation_is_the_benchmark_one():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    lr = degrade(torch.from_numpy(hr).permute(2, 0, 1)[None].double() / 255, 2, DegradationRanges(),
                 torch.Generator().manual_seed(0))
    expected = imresize_uint8(hr, 0.5)
    got = (lr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


class _ListShard:
    """The one method of a Ray Data shard that load_pool uses, over in-memory encoded images."""

    def __init__(self, encoded: list[bytes]):
        self.encoded = encoded

    def iter_batches(self, batch_size, batch_format):
        yield {"bytes": np.array(self.encoded, dtype=object)}


def test_training_pool_holds_each_image_at_every_hr_scale_that_fits_the_patch():
    from prodray.enhancer.data import load_pool
    from prodray.io.codec import encode_image
    rng = np.random.default_rng(0)
    large, small = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((300, 200, 3), (100, 80, 3)))
    shard = _ListShard([encode_image(large), encode_image(small), b"not an image"])
    pool = load_pool(shard.iter_batches(32, "numpy"), 64, lambda message: None, hr_scales=(1.0, 0.5))
    # small at 0.5 (50x40) is under the 64 px patch, and the junk bytes are skipped
    assert [p.shape for p in pool] == [(300, 200, 3), (150, 100, 3), (100, 80, 3)]
    assert np.array_equal(pool[0], large) and np.array_equal(pool[1], imresize_uint8(large, 0.5))


def _trained_like_model(scale=2, unshuffle=1):
    torch.manual_seed(0)
    model = build_model("rpsnet", scale=scale, channels=8, blocks=2, unshuffle=unshuffle)
    for parameter in model.parameters():  # non-trivial weights: the zero-initialised tail too
        torch.nn.init.normal_(parameter, std=0.05)
    return model


def _whole_and_tiled(model, config, height: int, width: int, pad: int):
    """A smooth image through the model whole and in 48 px tiles with `pad` context."""
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(yy + xx) * 0.7, 128 + 60 * np.sin(xx / 20), 200 - yy * 0.5],
                      axis=2).clip(0, 255).astype(np.uint8)
    whole = Enhancer(model, config, tile=512).enhance(smooth).rgb
    return whole, Enhancer(model, config, tile=48, pad=pad).enhance(smooth).rgb


def test_tiled_output_equals_whole_image_output():
    whole, tiled = _whole_and_tiled(_trained_like_model(), {**SMALL, "scale": 2, "blocks": 2}, 150, 170, pad=24)
    assert whole.shape == tiled.shape == (300, 340, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_a_folded_same_size_model_starts_as_the_identity_and_tiles_like_the_whole_image():
    """unshuffle 2: the body sees 2x2-folded pixels, so its view (and the tiles' context) is twice as
    wide in image pixels, and odd sizes are padded to the fold and cropped back."""
    untrained = build_model("rpsnet", scale=1, channels=8, blocks=2, unshuffle=2)
    image = torch.rand(1, 3, 37, 41)
    assert torch.equal(untrained(image), image)
    config = {**SMALL, "scale": 1, "blocks": 2, "unshuffle": 2}
    whole, tiled = _whole_and_tiled(_trained_like_model(scale=1, unshuffle=2), config, 151, 171, pad=7)
    assert whole.shape == tiled.shape == (151, 171, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_self_ensemble_is_exactly_flip_and_turn_equivariant():
    # The mean over the 8 flips/turns, each mapped back, commutes with every flip/turn of the
    # input; the plain network does not (a wrong inverse mapping would break the first assert).
    config = {**SMALL, "scale": 2, "blocks": 2}
    plain, ensemble = (Enhancer(_trained_like_model(), config),
                       Enhancer(_trained_like_model(), config, self_ensemble=True))
    x = torch.rand(2, 3, 12, 17, generator=torch.Generator().manual_seed(0))
    for turn in (lambda t: t.flip(3), lambda t: t.rot90(1, (2, 3)), lambda t: t.rot90(3, (2, 3)).flip(2)):
        assert torch.allclose(ensemble.forward(turn(x)), turn(ensemble.forward(x)), atol=1e-5)
    assert not torch.allclose(plain.forward(x.flip(3)), plain.forward(x).flip(3), atol=1e-3)
    assert ensemble.forward(x).shape == plain.forward(x).shape == (2, 3, 24, 34)


def test_pure_white_background_stays_white():
    model = _trained_like_model()
    image = np.full((40, 40, 3), 255, np.uint8)
    image[15:25, 15:25] = (200, 30, 30)
    out = Enhancer(model, {**SMALL, "scale": 2, "blocks": 2}).enhance(image).rgb
    assert (out[:20, :20] == 255).all()  # far from the product: exactly white
    assert not (out[36:44, 36:44] == 255).all()  # the product itself is not painted white
    assert keep_white(np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), 2).max() == 0


def test_alpha_is_upscaled_separately():
    model = _trained_like_model()
    alpha = np.zeros((10, 12), np.uint8)
    alpha[:, 6:] = 255
    result = Enhancer(model, {**SMALL, "scale": 2, "blocks": 2}).enhance(np.zeros((10, 12, 3), np.uint8), alpha=alpha)
    assert result.alpha.shape == (20, 24)
    assert result.alpha[:, :10].max() < 20 and result.alpha[:, 14:].min() > 235


def test_export_loads_in_a_fresh_process_with_the_same_output(tmp_path):
    model = _trained_like_model()
    model_id = export_model(str(tmp_path / "export"), "enhancer", model, {**SMALL, "scale": 2, "blocks": 2})
    assert (tmp_path / "export" / "enhancer.safetensors").is_file()
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_id"] == model_id
    image = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "in.npy", image)
    here = Enhancer(model, {**SMALL, "scale": 2, "blocks": 2}).enhance(image).rgb
    code = ("import numpy as np; from prodray.enhancer.inference import Enhancer; "
            f"e = Enhancer.load({str(tmp_path / 'export')!r}); "
            f"np.save({str(tmp_path / 'out.npy')!r}, e.enhance(np.load({str(tmp_path / 'in.npy')!r})).rgb); "
            "print(e.model_id)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == model_id
    assert np.array_equal(np.load(tmp_path / "out.npy"), here)
