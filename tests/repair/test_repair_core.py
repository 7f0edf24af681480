"""The repair family without Ray: masks, the push-pull fill, the network's exact pass-through
outside the mask, region planning at any image size, masks people send, the evaluation protocol,
and the Training contract (steps, exact resume, export that Repairer loads)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from prodray.config import ConfigError, RepairTrainConfig, load_config, load_train_config
from prodray.repair.evaluation import baselines, blur_fill, evaluate_repair, masked_scores, suite_mask
from prodray.repair.inference import Repairer, plan_regions
from prodray.repair.masks import MASK_KINDS, SUITE_KINDS, MaskError, draw_mask, mask_from_png, mask_from_rects
from prodray.repair.model import RepairNet, push_pull_fill
from prodray.repair.training import RepairTraining


def photo(height=120, width=160, seed=0) -> np.ndarray:
    """A smooth gradient with some texture: something the fills can get partly right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width + 20, yy * 200 // height + 30, (xx + yy) % 64 + 100], axis=2)
    return (base + rng.integers(0, 12, base.shape)).clip(0, 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_mask_kind_is_seeded_partial_and_differs_by_seed(kind):
    first = draw_mask(kind, 96, 128, np.random.default_rng(3))
    again = draw_mask(kind, 96, 128, np.random.default_rng(3))
    other = draw_mask(kind, 96, 128, np.random.default_rng(4))
    assert first.shape == (96, 128) and first.dtype == bool
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert 0 < first.sum() < 0.7 * first.size


def test_narrow_masks_are_thinner_than_thick_ones():
    from scipy import ndimage

    def width(kind):  # twice the mean distance to the border inside the mask ~ stroke width
        widths = []
        for seed in range(10):
            mask = draw_mask(kind, 256, 256, np.random.default_rng(seed))
            widths.append(2 * ndimage.distance_transform_edt(mask)[mask].mean())
        return np.mean(widths)
    assert width("narrow") * 2 < width("thick")


def test_the_suite_mask_is_a_function_of_kind_index_and_seed():
    assert np.array_equal(suite_mask("text", 2, 80, 90), suite_mask("text", 2, 80, 90))
    assert not np.array_equal(suite_mask("text", 2, 80, 90), suite_mask("text", 3, 80, 90))
    assert not np.array_equal(suite_mask("large", 2, 80, 90, seed=1), suite_mask("large", 2, 80, 90, seed=0))


def test_push_pull_keeps_known_pixels_and_fills_a_flat_image_flat():
    image = torch.rand(1, 3, 37, 53)
    known = (torch.rand(1, 1, 37, 53) > 0.4).float()
    fill = push_pull_fill(image, known)
    assert torch.equal(fill * known, image * known)
    flat = torch.full((1, 3, 40, 40), 0.3)
    hole = torch.ones(1, 1, 40, 40)
    hole[..., 10:30, 5:35] = 0
    assert torch.allclose(push_pull_fill(flat, hole), flat, atol=1e-5)


def test_the_network_returns_the_input_exactly_outside_the_mask():
    torch.manual_seed(0)
    net = RepairNet(channels=8, blocks=1)
    torch.nn.init.normal_(net.tail.weight, std=0.5)  # a non-trivial correction inside the hole
    image = torch.rand(2, 3, 32, 48)
    mask = torch.zeros(2, 1, 32, 48)
    mask[:, :, 8:20, 10:30] = 1
    out = net(image, mask)
    assert torch.equal(out * (1 - mask), image * (1 - mask))
    assert not torch.allclose(out * mask, image * mask)


def test_a_hole_at_the_border_of_an_image_padded_to_the_network_takes_nothing_from_the_padding():
    # 30 px is padded to 32 by mirroring: the mirrored hole (black here) must count as hole too.
    flat = np.full((30, 30, 3), 200, np.uint8)
    hole = np.zeros((30, 30), bool)
    hole[18:, 18:] = True
    damaged = np.where(hole[..., None], np.uint8(0), flat)
    untrained = Repairer(RepairNet(channels=8, blocks=1), {}, precision="fp32")  # = the push-pull fill
    assert np.abs(untrained.network(damaged, hole).astype(int) - 200).max() <= 1


def test_far_apart_regions_are_planned_apart_and_near_ones_together():
    mask = np.zeros((400, 900), bool)
    mask[50:60, 40:80] = True
    mask[300:320, 800:850] = True
    assert len(plan_regions(mask)) == 2
    mask[55:58, 85:90] = True  # 5 px from the first: the same damage
    assert len(plan_regions(mask)) == 2
    regions = plan_regions(mask)
    assert all(r.top <= 50 and r.bottom >= 60 for r in regions if r.left < 100)


@pytest.mark.parametrize("max_side", [512, 64])
def test_repair_of_a_large_image_changes_only_the_masked_pixels(max_side):
    image = photo(300, 700, seed=1)
    mask = np.zeros(image.shape[:2], bool)
    mask[20:60, 30:200] = True
    mask[250:290, 600:690] = True
    torch.manual_seed(0)
    repairer = Repairer(RepairNet(channels=8, blocks=1), {"model_id": "t"}, precision="fp32", max_side=max_side)
    damaged = np.where(mask[..., None], np.uint8(0), image)
    out = repairer.repair(damaged, mask)
    assert out.shape == image.shape and np.array_equal(out[~mask], image[~mask])
    assert out[mask].mean() > 40  # the hole was filled, not left black
    with pytest.raises(ValueError, match="does not match"):
        repairer.repair(image, mask[:-1])


def test_masks_people_send_png_and_rectangles():
    shape = (30, 40)
    white = np.zeros((30, 40, 3), np.uint8)
    white[5:10, 5:20] = 255
    assert mask_from_png(png(white), shape).sum() == 5 * 15
    with pytest.raises(MaskError) as refused:
        mask_from_png(png(white[:-1]), shape)
    assert refused.value.reason == "mask_size_mismatch"
    with pytest.raises(MaskError) as refused:
        mask_from_png(png(np.zeros((30, 40, 3), np.uint8)), shape)
    assert refused.value.reason == "empty_mask"
    assert mask_from_rects([[35, 25, 10, 10], [0, 0, 2, 3]], shape).sum() == 5 * 5 + 6  # clipped to the image
    for bad in ([], [[1, 2, 3]], [[1, 2, 0, 4]], [[1.5, 2, 3, 4]], "x", [[True, 1, 1, 1]]):
        with pytest.raises(MaskError) as refused:
            mask_from_rects(bad, shape)
        assert refused.value.reason == "bad_mask"


def test_masked_scores_count_only_the_hole_and_blur_fill_beats_black():
    original = photo()
    mask = suite_mask("thick", 0, *original.shape[:2])
    black = np.where(mask[..., None], np.uint8(0), original)
    assert masked_scores(original, original, mask)["psnr_masked"] == float("inf")
    filled = blur_fill(black, mask)
    assert np.array_equal(filled[~mask], original[~mask])
    filled_psnr, black_psnr = (masked_scores(x, original, mask)["psnr_masked"] for x in (filled, black))
    assert filled_psnr > black_psnr + 5


def test_evaluate_repair_gives_every_method_and_mask_kind(tmp_path):
    for i in range(2):
        (tmp_path / f"p{i}.png").write_bytes(png(photo(seed=i)))
    paths = sorted(tmp_path.glob("*.png"))
    result = evaluate_repair(paths, {"model": blur_fill, **baselines()})
    assert result["images"] == 2 and result["masks"] == list(SUITE_KINDS)
    for method in ("model", "telea", "ns", "blur"):
        for kind in SUITE_KINDS:
            assert set(result[method][kind]) == {"psnr_masked", "l1_masked", "ssim"}
            assert 10 < result[method][kind]["psnr_masked"] < 60
    assert result["model"] == result["blur"]
    json.dumps(result)

    def cheat(damaged, mask):  # touches pixels outside the hole: the protocol refuses to score it
        out = blur_fill(damaged, mask)
        out[0, 0] ^= 1
        return out
    with pytest.raises(AssertionError, match="outside the mask"):
        evaluate_repair(paths, {"model": cheat})


def repair_config(tmp_path, *extra) -> RepairTrainConfig:
    return load_config(RepairTrainConfig, None, [
        f"data.sources=[{tmp_path}]", "data.patch_size=32", "data.batch_size=2", "model.channels=8",
        "model.blocks=1", "loss.d_channels=8", "optim.warmup_images=0", f"run.storage_path={tmp_path}", *extra])


def test_the_repair_config_names_bad_fields():
    with pytest.raises(ConfigError, match="data.patch_size"):
        load_config(RepairTrainConfig, None, ["data.sources=[x]", "data.patch_size=36"])
    with pytest.raises(ConfigError, match="loss.perceptual_weight"):
        load_config(RepairTrainConfig, None, ["data.sources=[x]", "loss.perceptual_weight=1"])
    with pytest.raises(ConfigError, match="data.mask_kinds"):
        load_config(RepairTrainConfig, None, ["data.sources=[x]", "data.mask_kinds=[cracks]"])
    assert type(load_train_config("prodray/configs/repair.yaml")) is RepairTrainConfig


@pytest.mark.parametrize("adversarial", [0.01, 0.0])
def test_repair_training_steps_resume_exactly_and_export(tmp_path, adversarial):
    cfg = repair_config(tmp_path, f"loss.adversarial_weight={adversarial}")
    pool = [photo(64, 80, seed=i) for i in range(3)]
    first = RepairTraining(cfg, {}, "cpu")
    assert ("discriminator" in first.networks) == (adversarial > 0)
    first.pool = pool
    stats = [first.train_step(*first.next_batch()) for _ in range(3)]
    assert all(torch.isfinite(value) for s in stats for value in s.values())
    assert ("loss_d" in stats[0]) == (adversarial > 0)
    first.save(tmp_path)
    torch.manual_seed(9)
    second = RepairTraining(repair_config(tmp_path, f"loss.adversarial_weight={adversarial}", "run.seed=4"), {}, "cpu")
    second.pool = pool
    assert second.resume(tmp_path, log=lambda _: None) == first.digest()
    first.train_step(*first.next_batch())
    second.train_step(*second.next_batch())
    assert second.digest() == first.digest() and (second.step, second.images_seen) == (4, 8)

    model_id = first.export(str(tmp_path / "export"))
    repairer = Repairer.load(str(tmp_path / "export"), precision="fp32")
    assert repairer.model_id == model_id and model_id.startswith("repair-")
    image = photo(50, 70)
    mask = np.zeros((50, 70), bool)
    mask[10:20, 10:40] = True
    out = repairer.repair(image, mask)
    assert np.array_equal(out[~mask], image[~mask])


def test_the_local_runner_trains_validates_and_exports_the_repair_kind(tmp_path):
    from prodray.local.runner import train

    data, val = tmp_path / "data", tmp_path / "val"
    data.mkdir(), val.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(png(photo(64, 80, seed=i)))
    (val / "v.png").write_bytes(png(photo(64, 64, seed=7)))
    cfg = repair_config(tmp_path, f"data.val_folder={val}", "optim.total_images=8", "run.tick_images=4",
                        "run.name=r").resolved()
    result = train(cfg, torch.device("cpu"), log=lambda _: None)
    assert result["stopped"] == "total_images" and result["export"].startswith("repair-")
    lines = [json.loads(line) for line in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert [line["images_seen"] for line in lines] == [4, 8]
    assert all(np.isfinite(line["val_psnr_masked"]) and np.isfinite(line["val_blur_psnr_masked"]) for line in lines)
    assert len(list((tmp_path / "r" / "samples").glob("tick-*.png"))) == 2
    with pytest.raises(ValueError, match="not a repair model"):
        Repairer.load("enhancer-x2")


def test_repair_training_continues_from_an_exported_model(tmp_path):
    first = RepairTraining(repair_config(tmp_path), {}, "cpu")
    first.pool = [photo(64, 80, seed=i) for i in range(3)]
    first.train_step(*first.next_batch())
    first.export(str(tmp_path / "first"))
    cfg = repair_config(tmp_path, f"init_from={tmp_path / 'first'}").resolved()
    context = RepairTraining.prepare(cfg)
    assert context["init_model_id"] == Repairer.load(str(tmp_path / "first")).model_id
    torch.manual_seed(3)  # a fresh network would differ from the export
    second = RepairTraining(cfg, context, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(),
                                                  first.ema.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(second.ema.state_dict().values(),
                                                  first.ema.state_dict().values()))
    second.export(str(tmp_path / "second"))
    exported = json.loads((tmp_path / "second" / "config.json").read_text())
    assert exported["init_model_id"] == context["init_model_id"]
    with pytest.raises(ConfigError, match="model.channels"):  # a different network fails before any work
        RepairTraining.prepare(repair_config(tmp_path, f"init_from={tmp_path / 'first'}", "model.channels=16"))
    with pytest.raises(ConfigError, match="init_from"):
        repair_config(tmp_path, f"init_from={tmp_path / 'missing'}").resolved()
    assert repair_config(tmp_path, "init_from=repair").resolved().init_from == "repair"  # shipped name


def test_a_continuation_may_switch_the_decoder_upsampling_and_the_export_keeps_it(tmp_path):
    first = RepairTraining(repair_config(tmp_path), {}, "cpu")
    first.pool = [photo(64, 80, seed=i) for i in range(3)]
    first.train_step(*first.next_batch())
    first.export(str(tmp_path / "first"))
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config.pop("upsample") == "nearest"  # an export made before the field existed
    (tmp_path / "first" / "config.json").write_text(json.dumps(config))
    assert Repairer.load(str(tmp_path / "first")).model.upsample == "nearest"

    cfg = repair_config(tmp_path, f"init_from={tmp_path / 'first'}", "model.upsample=bilinear").resolved()
    second = RepairTraining(cfg, RepairTraining.prepare(cfg), "cpu")
    assert second.model.upsample == "bilinear"
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(),
                                                  first.ema.state_dict().values()))
    second.export(str(tmp_path / "second"))
    nearest, bilinear = Repairer.load(str(tmp_path / "first")), Repairer.load(str(tmp_path / "second"))
    assert bilinear.model.upsample == "bilinear"
    # The same weights decoded differently are another model: the id (and the bulk keys) tell them apart.
    weights = [(tmp_path / name / "repair.safetensors").read_bytes() for name in ("first", "second")]
    assert weights[0] == weights[1]
    assert nearest.model_id != bilinear.model_id
    torch.nn.init.normal_(nearest.model.tail.weight, std=0.5)  # a visible correction, the same in both
    bilinear.model.tail.weight.data.copy_(nearest.model.tail.weight)
    image, mask = photo(64, 64), np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    assert not np.array_equal(nearest.network(image, mask), bilinear.network(image, mask))
    with pytest.raises(ConfigError, match="model.upsample"):
        load_config(RepairTrainConfig, None, ["data.sources=[x]", "model.upsample=bicubic"])


def test_a_wider_mask_canvas_gives_larger_holes_per_crop(tmp_path):
    def hole_width(canvas):
        training = RepairTraining(repair_config(tmp_path, "data.patch_size=64", f"data.mask_canvas={canvas}",
                                                "data.mask_kinds=[thick]"), {}, "cpu")
        from scipy import ndimage
        masks = [training.draw_mask() for _ in range(30)]
        assert all(m.shape == (64, 64) and m.any() and not m.all() for m in masks)
        return np.mean([2 * ndimage.distance_transform_edt(m).max() for m in masks])
    assert hole_width("[3.0,3.0]") > 1.8 * hole_width("[1.0,1.0]")


def test_thick_holes_are_repaired_at_a_smaller_working_scale_and_only_inside_the_mask():
    torch.manual_seed(0)
    net = RepairNet(channels=8, blocks=1)
    torch.nn.init.normal_(net.tail.weight, std=0.5)
    image = photo(160, 200, seed=2)
    mask = np.zeros(image.shape[:2], bool)
    mask[40:100, 50:150] = True  # 60 px thick
    full = Repairer(net, {}, precision="fp32", max_hole_width=0)
    scaled = Repairer(net, {"max_hole_width": 20}, precision="fp32")
    assert full.working_scale(mask.shape, mask) == 1.0
    assert scaled.working_scale(mask.shape, mask) == pytest.approx(20 / 60, rel=0.05)
    thin = np.zeros_like(mask)
    thin[50:54, 20:180] = True
    assert scaled.working_scale(thin.shape, thin) == 1.0  # thin damage stays at full resolution
    damaged = np.where(mask[..., None], np.uint8(0), image)
    a, b = full.repair(damaged, mask), scaled.repair(damaged, mask)
    assert np.array_equal(b[~mask], image[~mask]) and not np.array_equal(a[mask], b[mask])
    assert b[mask].mean() > 40
