"""The learned recolouring model without Ray: the torch colour space agrees with the evaluation's
numpy one, an untrained network is exactly the Lab-shift baseline, the differentiable detail SSIM
tells kept detail from flattened detail, training steps lower the loss, and the one-process runner
trains, validates and exports the kind."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_recolour_core import shirt_on_white

from prodray.config import ConfigError, load_train_config
from prodray.metrics import lab_to_srgb, srgb_to_lab
from prodray.recolour import colour_space, losses
from prodray.recolour.baseline import lab_shift
from prodray.recolour.colours import parse_colour
from prodray.recolour.evaluation import SUITE_COLOURS, score_one
from prodray.recolour.inference import BaselineRecolourer, Recolourer, load_recolourer
from prodray.recolour.model import RecolourNet
from prodray.recolour.training import RecolourTraining

SMALL = ["model.channels=8", "model.grid_depth=4", "model.grid_size=8", "model.input_size=32"]


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255


def test_the_torch_colour_space_is_the_evaluations():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    lab = colour_space.srgb_to_lab(as_tensor(rgb))[0].permute(1, 2, 0).numpy()
    assert np.abs(lab - srgb_to_lab(rgb)).max() < 1e-9
    far = lab * np.array([1.3, 2.0, 2.0])  # partly out of gamut: clipped the same way
    back = colour_space.linear_to_srgb(colour_space.lab_to_linear(torch.from_numpy(far).permute(2, 0, 1)[None]))
    assert np.abs(np.round(back[0].permute(1, 2, 0).numpy() * 255) - lab_to_srgb(far)).max() <= 1


@pytest.mark.parametrize("target", ["Red", "White", "Black", "#2e8b57"])
def test_an_untrained_network_is_exactly_the_baseline(target):
    rgb, inside = shirt_on_white()
    recolourer = Recolourer(RecolourNet(channels=8, grid_depth=4, grid_size=8, input_size=32), {})
    colour = parse_colour(target)[1]
    out = recolourer.recolour(rgb, colour, inside)
    assert np.abs(out.astype(int) - lab_shift(rgb, colour, inside)).max() <= 1
    assert np.array_equal(out[~inside], rgb[~inside])


def test_a_trained_grid_changes_the_product_only():
    rgb, inside = shirt_on_white()
    net = RecolourNet(channels=8, grid_depth=4, grid_size=8, input_size=32)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    out = Recolourer(net, {}).recolour(rgb, parse_colour("Red")[1], inside)
    assert np.array_equal(out[~inside], rgb[~inside])
    assert np.abs(out.astype(int) - lab_shift(rgb, parse_colour("Red")[1], inside)).max() > 10


def test_detail_ssim_tells_kept_detail_from_flattened_detail():
    rgb, inside = shirt_on_white()
    mask = torch.from_numpy(inside)[None, None].double()
    kept = lab_shift(rgb, parse_colour("Red")[1], inside)
    flat = rgb.copy()
    flat[inside] = np.round(rgb[inside].mean(axis=0)).astype(np.uint8)
    red = parse_colour("Red")[1]
    score, scored = {}, {}
    for name, image in {"same": rgb, "kept": kept, "flat": flat}.items():
        score[name] = float(losses.detail_ssim(as_tensor(rgb), as_tensor(image), mask))
        scored[name] = score_one(rgb, image, inside, "Red", red)["detail_ssim"]
    assert score["same"] == pytest.approx(1.0, abs=1e-6)
    # the silhouette is in both, but it is not detail: flattening the product loses nearly everything
    assert score["kept"] > 0.9 > 0.4 > score["flat"], score
    assert score == pytest.approx(scored, abs=0.03)  # the loss is the evaluation's score


def recolour_config(tmp_path, *overrides):
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for seed, colour in enumerate([(40, 60, 160), (200, 40, 40), (30, 30, 30)]):
            buffer = io.BytesIO()
            Image.fromarray(shirt_on_white(colour, size=96, seed=seed)[0]).save(buffer, format="PNG")
            (data / f"{seed}.png").write_bytes(buffer.getvalue())
    return load_train_config("prodray/configs/recolour.yaml", [
        f"data.sources=[{data}]", f"run.storage_path={tmp_path}", "data.patch_size=64", "data.batch_size=4",
        "data.hr_scales=[1.0]", *SMALL, *overrides])


def test_training_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    cfg = recolour_config(tmp_path, "optim.lr=0.01", "optim.warmup_images=0", "loss.adversarial_weight=0").resolved()
    training = RecolourTraining(cfg, {}, torch.device("cpu"))
    training.load_pool([{"bytes": [(tmp_path / "data" / f"{i}.png").read_bytes() for i in range(3)]}],
                       log=lambda _: None)
    batch = training.next_batch()
    first = float(training.train_step(*batch)["loss_g"])
    for _ in range(30):
        last = float(training.train_step(*batch)["loss_g"])
    assert last < 0.9 * first, (first, last)


def test_the_local_runner_trains_validates_and_exports_the_recolour_kind(tmp_path):
    from prodray.local.runner import train

    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(shirt_on_white((200, 40, 40), size=64, seed=5)[0]).save(val / "v.png")
    cfg = recolour_config(tmp_path, f"data.val_folder={val}", "optim.total_images=8", "run.tick_images=4",
                          "run.name=c").resolved()
    result = train(cfg, torch.device("cpu"), log=lambda _: None)
    assert result["stopped"] == "total_images" and result["export"].startswith("recolour-")
    lines = [json.loads(line) for line in (tmp_path / "c" / "stats.jsonl").read_text().splitlines()]
    assert [line["images_seen"] for line in lines] == [4, 8]
    assert all(0 <= line["val_named_colour_acc"] <= 1 and line["val_background_kept"] == 1.0 for line in lines)
    assert len(list((tmp_path / "c" / "samples").glob("tick-*.png"))) == 2
    recolourer = load_recolourer(str(tmp_path / "c" / "export"))
    assert recolourer.model_id == result["export"]
    rgb, inside = shirt_on_white()
    assert np.array_equal(recolourer.recolour(rgb, parse_colour("Navy Blue")[1], inside)[~inside], rgb[~inside])
    assert isinstance(load_recolourer("baseline"), BaselineRecolourer)


def test_a_bad_recolour_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="model.input_size"):
        recolour_config(tmp_path, "model.input_size=48", "model.grid_size=16").check()
    with pytest.raises(ConfigError, match="data.named_share"):
        recolour_config(tmp_path, "data.named_share=2")


@pytest.mark.parametrize("source", [(40, 60, 160), (235, 235, 230), (25, 25, 28)])  # blue, white, black
def test_the_shipped_model_reaches_every_suite_colour_and_keeps_the_background(source):
    recolourer = load_recolourer("recolour")
    config = json.loads(Path("prodray/weights/recolour/config.json").read_text())
    assert recolourer.model_id == config["model_id"] and config["kind"] == "recolour"
    rgb, inside = shirt_on_white(source, size=80)
    scores = {}
    for colour in SUITE_COLOURS:
        name, target = parse_colour(colour)
        out = recolourer.recolour(rgb, target, inside)
        assert np.array_equal(out[~inside], rgb[~inside])
        scores[colour] = score_one(rgb, out, inside, name, target)
    # This shirt's folds are deeper than a catalog photo's: from black, Yellow comes out nearest Gold
    # (MODEL_CARD.md, limits); every result stays within the 10 dE00 of the target.
    assert sum(score["named_colour_acc"] for score in scores.values()) >= 9, scores
    assert max(score["de00"] for score in scores.values()) <= 10, scores
    # a flattened product scores about 0.2 (test above); the deep folds clip in White
    detail = [score["detail_ssim"] for score in scores.values()]
    assert min(detail) > 0.3 and np.mean(detail) > 0.7, scores
