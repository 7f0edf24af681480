"""The recolouring core without Ray: colour names and hex, Lab round trips, the product mask on a
white background, and the classical Lab-shift baseline (target reached, shading kept, background
byte for byte)."""

import numpy as np
import pytest

from prodray.metrics import ciede2000, lab_to_srgb, srgb_to_lab
from prodray.recolour.baseline import lab_shift
from prodray.recolour.colours import REFERENCE_HEX, nearest_colour_name, parse_colour
from prodray.recolour.segmentation import product_mask


def shirt_on_white(colour=(40, 60, 160), size=96, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A shaded blob of `colour` with a white logo inside, on a JPEG-ish near-white background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (yy - size / 2) ** 2 / 0.3 + (xx - size / 2) ** 2 / 0.2 < (size / 2) ** 2 * 0.9
    shade = 0.75 + 0.25 * np.cos(xx / 6.0) + rng.uniform(-0.08, 0.08, (size, size))  # folds and weave
    image = np.where(inside[..., None], np.clip(np.array(colour) * shade[..., None], 0, 255), 255.0)
    image[~inside] -= rng.integers(0, 3, (int((~inside).sum()), 3))  # 253-255: what JPEG leaves
    logo = inside & (abs(yy - size / 2) < 4) & (abs(xx - size / 2) < 8)
    image[logo] = 255
    return image.astype(np.uint8), inside


def test_colour_names_and_hex_parse_and_bad_ones_are_refused():
    assert parse_colour("navy blue")[0] == "Navy Blue"
    name, rgb = parse_colour("#2E8B57")
    assert name == "#2e8b57" and rgb.tolist() == [46, 139, 87]
    for bad in ("teal-ish", "#12345", "#gg0000", ""):
        with pytest.raises(ValueError):
            parse_colour(bad)


def test_lab_round_trip_and_every_reference_is_its_own_nearest_name():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    assert np.abs(lab_to_srgb(srgb_to_lab(rgb)).astype(int) - rgb).max() <= 1
    for name, value in REFERENCE_HEX.items():
        assert nearest_colour_name(srgb_to_lab(parse_colour(value)[1][None])[0]) == name


def test_the_product_mask_keeps_white_prints_inside_and_drops_the_background():
    image, inside = shirt_on_white()
    mask = product_mask(image)
    assert (mask == inside).mean() > 0.99  # the logo is white but enclosed: product
    alpha = np.zeros(inside.shape, np.uint8)
    alpha[10:20, 10:30] = 255
    assert np.array_equal(product_mask(image, alpha), alpha >= 128)


@pytest.mark.parametrize("target", ["Red", "Green", "Yellow", "#2e8b57"])
@pytest.mark.parametrize("source", [(40, 60, 160), (30, 30, 32), (200, 170, 150)])
def test_the_baseline_reaches_the_target_keeps_shading_and_the_background(target, source):
    image, inside = shirt_on_white(source)
    mask = product_mask(image)
    _, goal = parse_colour(target)
    out = lab_shift(image, goal, mask)
    assert np.array_equal(out[~mask], image[~mask])  # background byte for byte
    mean = srgb_to_lab(out[mask]).mean(axis=0)
    assert float(ciede2000(mean, srgb_to_lab(goal[None])[0])) < 6
    # Shading kept: lightness across the folds moves with the source's.
    body = mask & ~(image == 255).all(axis=2)
    source_l, out_l = srgb_to_lab(image[body])[:, 0], srgb_to_lab(out[body])[:, 0]
    assert np.corrcoef(source_l, out_l)[0, 1] > 0.95


def test_the_evaluation_scores_methods_by_source_group_and_catches_a_bad_one(tmp_path):
    from prodray.recolour.evaluation import evaluate_recolour

    images = [("blue", shirt_on_white((70, 100, 230))[0], None),
              ("black", shirt_on_white((25, 25, 28), seed=1)[0], None)]

    def paint_everything(rgb, target, mask):  # reaches the colour but repaints the background too
        return np.broadcast_to(target, rgb.shape).copy()

    result = evaluate_recolour(images, {"baseline": lab_shift, "paint": paint_everything}, product_mask,
                               colours=("Red", "Green", "Yellow"))
    assert result["images"] == 2 and result["colours"] == ["Red", "Green", "Yellow"]
    baseline, paint = result["baseline"], result["paint"]
    assert baseline["named_colour_acc"] == 1.0 and baseline["de00"] < 6 and baseline["background_kept"] == 1.0
    assert baseline["detail_ssim"] > 0.7  # the weave survives (its contrast changes with lightness)
    assert paint["named_colour_acc"] == 1.0 and paint["de00"] < 1  # on colour alone it looks perfect...
    assert paint["background_kept"] == 0.0 and paint["detail_ssim"] < 0.3  # ...the other figures catch it
    assert set(baseline["by_source"]) == {"chromatic", "dark"}
    assert baseline["by_source"]["dark"]["n"] == 3


def test_eval_recolour_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from prodray.cli import main
    for seed, colour in enumerate([(40, 60, 160), (200, 40, 40)]):
        Image.fromarray(shirt_on_white(colour, seed=seed)[0]).save(tmp_path / f"{seed}.png")
    main(["eval", "recolour", "--data", str(tmp_path), "--model", "baseline", "--colours", "Red,#2e8b57", "--json"])
    import json
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and result["colours"] == ["Red", "#2e8b57"]
    assert result["baseline"]["background_kept"] == 1.0
