"""The PSNR stage's pixel loss (enhancer/losses.py pixel_loss, config section `loss`)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prodray.config import AdversarialTrainConfig, ConfigError, EnhancerTrainConfig, load_config
from prodray.enhancer.losses import LUMA, PIXEL_LOSSES, charbonnier, luma, pixel_loss
from prodray.enhancer.training import PsnrTraining
from prodray.metrics import rgb_to_y


def test_luma_is_the_metrics_y_without_its_offset():
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
    y = luma(tensor)[0, 0].numpy() * 255 + 16
    assert np.allclose(y, rgb_to_y(rgb), atol=1e-9)


def test_a_colour_only_error_adds_nothing_to_the_luma_term_and_a_luma_error_adds_it():
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # a direction with zero luma: orthogonal to the BT.601 weights
    weights = torch.tensor(LUMA, dtype=torch.float64)
    chroma = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    chroma = chroma - weights * (chroma @ weights) / (weights @ weights)
    colour_off = target + 0.05 * chroma.view(1, 3, 1, 1)
    for kind in ("charbonnier", "mse"):
        plain = pixel_loss(colour_off, target, kind)
        assert plain > 0
        no_error = PIXEL_LOSSES[kind](luma(target), luma(target))  # charbonnier's floor is its eps
        weighted = pixel_loss(colour_off, target, kind, luma_weight=5.0)
        assert weighted == pytest.approx(float(plain + 5.0 * no_error), rel=1e-9)
    grey_off = target + 0.05  # the same shift on R, G and B: luma moves by 0.05 x sum(LUMA)
    mse = F.mse_loss(grey_off, target)
    expected = mse + 2.0 * (0.05 * sum(LUMA)) ** 2
    assert pixel_loss(grey_off, target, "mse", luma_weight=2.0) == pytest.approx(float(expected), rel=1e-9)


def test_the_default_is_plain_charbonnier_and_mse_is_torchs():
    a, b = torch.rand(2, 1, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    assert pixel_loss(a, b) == charbonnier(a, b)
    assert pixel_loss(a, b, "mse") == F.mse_loss(a, b)


BASE = ["data.sources=[.]"]


@pytest.mark.parametrize("override, field", [("loss.kind=l3", r"loss\.kind"),
                                             ("loss.luma_weight=-1", r"loss\.luma_weight")])
def test_a_bad_loss_section_is_named(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(EnhancerTrainConfig, overrides=[*BASE, override])


def test_the_adversarial_stage_refuses_the_psnr_stages_loss_section():
    overrides = [*BASE, "adversarial.init_from=enhancer-x2", "loss.kind=mse"]
    with pytest.raises(ConfigError, match="loss"):
        load_config(AdversarialTrainConfig, overrides=overrides)


@pytest.mark.parametrize("kind, luma_weight", [("mse", 0.0), ("charbonnier", 3.0)])
def test_a_training_step_reports_the_configured_loss(tmp_path, kind, luma_weight):
    cfg = load_config(EnhancerTrainConfig, None, [
        f"data.sources=[{tmp_path}]", "data.patch_size=16", "data.batch_size=2", "model.channels=8",
        "model.blocks=1", f"loss.kind={kind}", f"loss.luma_weight={luma_weight}", "run.amp=false"])
    training = PsnrTraining(cfg, {}, "cpu")
    training.pool = [np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    lr_batch, hr_batch = training.next_batch()
    with torch.no_grad():
        expected = pixel_loss(training.model(lr_batch), hr_batch, kind, luma_weight)
    assert float(training.train_step(lr_batch, hr_batch)["loss"]) == pytest.approx(float(expected), rel=1e-5)
