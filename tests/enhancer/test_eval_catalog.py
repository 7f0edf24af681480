"""`prodray eval catalog`: the JSON it prints, its determinism, and pure white staying 255."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prodray.cli import _upscalers
from prodray.enhancer.evaluation import evaluate_catalog

REPO = Path(__file__).resolve().parents[2]
METHODS = ("model", "bicubic", "bicubic+unsharp")


def product_photo(size: int = 96, seed: int = 0) -> np.ndarray:
    """A catalog-style photo: pure white background, a textured coloured product in the middle."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:size // 2, 0:size // 2]
    product = np.stack([120 + 60 * np.sin(xx / 3.0), 60 + 2 * yy, 180 - 2 * xx], axis=2)
    product += rng.normal(0, 6, product.shape)
    image[size // 4:size // 4 + size // 2, size // 4:size // 4 + size // 2] = product.clip(0, 254).astype(np.uint8)
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog")
    for i in range(2):
        Image.fromarray(product_photo(seed=i)).save(folder / f"product{i}.png")
    return folder


def test_eval_catalog_json_keys_and_determinism(photos, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "catalog", "--data", str(photos),
                                "--scale", "2", "--json", "--limit", "2"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout)
    assert set(result) == {"scale", "images", "seed", "model_id", *METHODS}
    assert result["scale"] == 2 and result["images"] == 2 and result["seed"] == 0
    shipped = json.loads((REPO / "prodray/weights/enhancer-x2/config.json").read_text())
    assert result["model_id"] == shipped["model_id"]
    for method in METHODS:
        scores = result[method]
        assert set(scores) == {"psnr_y", "ssim_y", "ciede2000"}, method
        assert all(math.isfinite(v) for v in scores.values()), method
        assert scores["psnr_y"] > 15 and 0 < scores["ssim_y"] <= 1 and scores["ciede2000"] >= 0, method

    # Fixed seeds: the same figures again, in-process through the same upscalers.
    _, upscalers = _upscalers(None, 2, "cpu")
    again = evaluate_catalog(photos, 2, upscalers, seed=0, limit=2)
    assert {m: again[m] for m in METHODS} == {m: result[m] for m in METHODS}


@pytest.mark.parametrize("scale", [2, 4])
def test_pure_white_background_stays_255(scale):
    """The model upscaler that `eval catalog` scores keeps a 255 background exactly 255."""
    _, upscalers = _upscalers(None, scale, "cpu")
    lr = product_photo(48)
    out = upscalers["model"](lr, scale)
    assert out.shape == (48 * scale, 48 * scale, 3)
    # LR rows/columns 0..10 are white with white neighbours (the product starts at 12).
    border = 11 * scale
    background = np.concatenate([out[:border].reshape(-1, 3), out[-border:].reshape(-1, 3),
                                 out[:, :border].reshape(-1, 3), out[:, -border:].reshape(-1, 3)])
    assert background.min() == 255
    assert upscalers["model"](np.full((20, 30, 3), 255, np.uint8), scale).min() == 255
    # The product itself is not whitened.
    centre = out[24 * scale - 4:24 * scale + 4, 24 * scale - 4:24 * scale + 4]
    assert centre.max() < 255


SUITE_DAMAGES = ("clean", "jpeg30", "jpeg50", "jpeg75", "noise5", "noise10", "blur1.0", "blur1.5", "chain")
SUITE_METRICS = {"psnr_y", "psnr_y_min", "ssim_y", "de00", "white_kept", "white_kept_interior", "false_white",
                  "product_whitened"}


def test_eval_catalog_suite_json_has_every_damage_method_and_metric(photos, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "catalog", "--data", str(photos),
                                "--scale", "2", "--suite", "standard", "--compare", "enhancer-x2", "--json",
                                "--limit", "1"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout)
    assert result["images"] == 1 and result["scale"] == 2
    assert tuple(result["suite"]) == SUITE_DAMAGES
    for damage, methods in result["suite"].items():
        assert set(methods) == {"model", "bicubic", "unsharp", "compare"}, damage
        for method, scores in methods.items():
            assert set(scores) == SUITE_METRICS, (damage, method)
            assert 0 <= scores["white_kept"] <= 1 and 0 <= scores["false_white"] <= 1, (damage, method)
        # The white guard holds through every damage; bicubic has none.
        assert methods["model"]["white_kept"] >= 0.85 and methods["model"]["false_white"] <= 0.01, damage
        assert methods["model"]["product_whitened"] == 0, damage
    assert result["suite"]["jpeg50"]["bicubic"]["white_kept"] < 0.5
    # `compare` is the same shipped model here: the same figures as `model`.
    assert all(m["compare"] == m["model"] for m in result["suite"].values())
    # The damages differ: JPEG q30 hurts bicubic more than q75, noise 10 more than noise 5.
    suite = result["suite"]
    bicubic = {damage: suite[damage]["bicubic"]["psnr_y"] for damage in suite}
    assert bicubic["jpeg30"] < bicubic["jpeg75"] < bicubic["clean"]
    assert bicubic["noise10"] < bicubic["noise5"]


def test_eval_suite_is_seeded(photos):
    from prodray.enhancer.evaluation import bicubic_upscale, evaluate_suite
    upscalers = {"bicubic": bicubic_upscale}
    first = evaluate_suite(photos, 2, upscalers, limit=2, seed=3)
    assert evaluate_suite(photos, 2, upscalers, limit=2, seed=3) == first
    other = evaluate_suite(photos, 2, upscalers, limit=2, seed=4)
    assert other["suite"]["noise5"] != first["suite"]["noise5"]
    assert other["suite"]["jpeg50"] == first["suite"]["jpeg50"]  # no randomness in a JPEG round-trip


def test_eval_suite_tells_quality_aware_upscalers_the_file_quality(photos):
    """What `--strength auto` reads: the JPEG quality of the damaged file (the last save), else None."""
    from prodray.enhancer.evaluation import bicubic_upscale, evaluate_suite
    seen = {}

    def informed(lr, scale, jpeg_quality=None):
        seen.setdefault(jpeg_quality, 0)
        seen[jpeg_quality] += 1
        return bicubic_upscale(lr, scale)
    evaluate_suite(photos, 2, {"informed": informed}, limit=1)
    assert seen == {None: 5, 30: 1, 50: 1, 75: 1, 85: 1}


def test_eval_suite_skip_scores_the_later_images_with_their_own_seeds(photos):
    from prodray.enhancer.evaluation import bicubic_upscale, evaluate_suite
    upscalers, only = {"bicubic": bicubic_upscale}, ["noise5"]
    both = evaluate_suite(photos, 2, upscalers, limit=2, only=only)["suite"]["noise5"]["bicubic"]["psnr_y"]
    first = evaluate_suite(photos, 2, upscalers, limit=1, only=only)["suite"]["noise5"]["bicubic"]["psnr_y"]
    second = evaluate_suite(photos, 2, upscalers, limit=1, skip=1, only=only)
    assert second["images"] == 1 and second["suite"]["noise5"]["bicubic"]["psnr_y"] != first
    assert abs((first + second["suite"]["noise5"]["bicubic"]["psnr_y"]) / 2 - both) < 1e-3


def test_eval_suite_reports_the_worst_image(photos):
    """psnr_y_min is the lowest image's PSNR-Y: finite where the mean is not (an unchanged image)."""
    from prodray.enhancer.evaluation import bicubic_upscale, evaluate_suite
    only = ["noise5"]
    scores = [evaluate_suite(photos, 2, {"bicubic": bicubic_upscale}, limit=1, skip=i, only=only)
              ["suite"]["noise5"]["bicubic"]["psnr_y"] for i in range(2)]
    both = evaluate_suite(photos, 2, {"bicubic": bicubic_upscale}, limit=2, only=only)["suite"]["noise5"]["bicubic"]
    assert scores[0] != scores[1] and abs(both["psnr_y_min"] - min(scores)) < 1e-3


    calls = []

    def first_untouched(image, scale):  # the first photo comes back as it went in, the second brightened
        calls.append(1)
        return image if len(calls) == 1 else np.clip(image.astype(np.int16) + 2, 0, 255).astype(np.uint8)
    clean = evaluate_suite(photos, 1, {"edit": first_untouched}, limit=2, only=["clean"])["suite"]["clean"]["edit"]
    assert math.isinf(clean["psnr_y"]) and 35 < clean["psnr_y_min"] < 50


def test_white_kept_interior_leaves_out_only_the_white_next_to_the_product():
    """A result that loses the white ring around the product keeps every interior white pixel; one
    that loses a pixel far from the product does not."""
    from prodray.enhancer.evaluation import _Tally
    original = np.full((20, 20, 3), 255, np.uint8)
    original[8:12, 8:12] = 40  # the product
    ring = original.copy()
    ring[6:14, 6:14][original[6:14, 6:14].min(axis=2) == 255] = 250  # white within 2 px of it lost
    far = original.copy()
    far[1, 1] = 250
    results = {}
    for name, out in {"ring": ring, "far": far}.items():
        tally = _Tally()
        tally.add(out, original, shave=0)
        results[name] = tally.result()
    assert results["ring"]["white_kept"] < 0.9 and results["ring"]["white_kept_interior"] == 1.0
    interior = 20 * 20 - 8 * 8  # white at chessboard distance 3 or more from the product
    assert results["far"]["white_kept_interior"] == round(1 - 1 / interior, 5)


def test_same_size_suite_does_not_take_the_originals_own_jpeg_as_truth(tmp_path):
    """A q75 JPEG original saved again at q75 is nearly itself: scored against that original, doing
    nothing looks perfect and removing its blocking looks like damage. Against the original halved,
    the second save is real damage and the identity is scored as such."""
    import io

    from prodray.enhancer.evaluation import default_reference_downscale, evaluate_suite, reference_image
    buffer = io.BytesIO()
    Image.fromarray(product_photo(size=128, seed=5)).save(buffer, format="JPEG", quality=75)
    (tmp_path / "supplier.jpg").write_bytes(buffer.getvalue())
    identity = {"input": lambda lr, scale: lr}

    def jpeg75(downscale):
        result = evaluate_suite(tmp_path, 1, identity, limit=1, only=["jpeg75"], reference_downscale=downscale)
        assert result["reference_downscale"] == downscale
        return result["suite"]["jpeg75"]["input"]["psnr_y"]
    assert jpeg75(1) > jpeg75(2) + 8
    assert default_reference_downscale(1) == 2 and default_reference_downscale(2) == 1
    original = np.asarray(Image.open(tmp_path / "supplier.jpg").convert("RGB"))
    assert reference_image(original[:127, :125], 2, 1).shape == (63, 62, 3)
    assert reference_image(original[:127, :125], 1, 4).shape == (124, 124, 3)


@pytest.mark.parametrize("flag,value", [("--reference-downscale", "0"), ("--skip", "-1"), ("--skip", "x")])
def test_eval_catalog_rejects_bad_counts_before_any_work(photos, flag, value):
    completed = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "catalog", "--data", str(photos),
                                "--suite", "standard", flag, value], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and flag in completed.stderr, completed.stderr[-1000:]


def test_nlmeans_baseline_removes_noise_from_a_photo():
    """The same-size suite's classical baseline does what it is there for: less noise, not more."""
    from prodray.enhancer.evaluation import nlmeans_denoise
    from prodray.metrics import psnr_ssim_y
    photo = product_photo(size=128, seed=2)
    noisy = (photo + np.random.default_rng(0).normal(0, 10, photo.shape)).round().clip(0, 255).astype(np.uint8)
    assert psnr_ssim_y(nlmeans_denoise(noisy), photo, shave=1)[0] > psnr_ssim_y(noisy, photo, shave=1)[0] + 1


def test_eval_catalog_at_scale_1_scores_against_the_halved_original_beside_nlmeans(photos, tmp_path):
    from prodray.enhancer.model import build_enhancer
    from prodray.io.artifacts import export_model
    config = {"arch": "rpsnet", "scale": 1, "channels": 8, "blocks": 1, "unshuffle": 2}
    export = str(tmp_path / "same-size")
    export_model(export, "enhancer", build_enhancer(config), {**config, "model_id": "same-size-test"})
    completed = subprocess.run([sys.executable, "-m", "prodray.cli", "eval", "catalog", "--data", str(photos),
                                "--scale", "1", "--suite", "standard", "--model", export, "--strength", "1",
                                "--limit", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout)
    assert result["reference_downscale"] == 2 and result["scale"] == 1
    noise10 = result["suite"]["noise10"]
    assert set(noise10) == {"model", "bicubic", "unsharp", "nlmeans"}
    assert noise10["nlmeans"]["psnr_y"] > noise10["bicubic"]["psnr_y"]
