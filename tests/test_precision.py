"""The one precision setting: what `auto` picks, and that the bf16 inference path keeps the
guarantees of the fp32 one (white stays 255, tiles equal the whole image, output close to fp32)."""

import numpy as np
import pytest
import torch

from prodray import precision
from prodray.config import load_config
from prodray.enhancer.inference import Enhancer
from prodray.metrics import psnr


@pytest.fixture
def flags(monkeypatch):
    def use(*names):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(names))
    return use


def test_auto_picks_bf16_only_on_cpus_that_have_it(flags):
    flags("avx2", "amx_bf16", "amx_tile")
    assert precision.resolve("auto", "cpu") == "bf16"
    flags("avx512f", "avx512_bf16")
    assert precision.resolve("auto", "cpu") == "bf16"
    flags("avx2", "avx512f")
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"  # asked for: emulated, but allowed
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("int4", "cpu")


def test_the_setting_is_a_validated_field_of_bulk_serve_and_training():
    from prodray.config import BulkConfig, ConfigError, EnhancerTrainConfig, ServeConfig
    assert BulkConfig(input="in", output="out").precision == "auto"
    assert ServeConfig().precision == "auto"
    with pytest.raises(ConfigError, match="run.precision"):
        load_config(EnhancerTrainConfig, None, ["data.sources=[x]", "run.precision=fp8"])


def catalog_photo(side=160, seed=0) -> np.ndarray:
    """A product on pure white: a shaded, textured block in the middle."""
    rng = np.random.default_rng(seed)
    image = np.full((side, side, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:side // 2, 0:side // 2]
    texture = rng.integers(-12, 12, (side // 2, side // 2, 3))
    block = np.stack([80 + xx, 60 + yy, 120 + (xx + yy) // 2], axis=2) + texture
    image[side // 4:side // 4 + side // 2, side // 4:side // 4 + side // 2] = np.clip(block, 0, 255)
    return image


@pytest.mark.parametrize("name", ["enhancer-x2", "enhancer-x4"])
def test_bf16_inference_keeps_white_tiles_and_fp32s_output(name):
    torch.set_num_threads(2)
    image = catalog_photo()
    fp32 = Enhancer.load(name, precision="fp32", channels_last=False).enhance(image).rgb
    bf16_whole = Enhancer.load(name, precision="bf16", tile=512).enhance(image).rgb
    bf16_tiled = Enhancer.load(name, precision="bf16", tile=48, pad=24).enhance(image).rgb
    scale = 2 if name.endswith("x2") else 4
    white_rows = image.shape[0] // 4 - 2  # pure white, and not next to the product
    assert (image[:white_rows] == 255).all() and (bf16_whole[:white_rows * scale] == 255).all()
    assert np.abs(bf16_tiled.astype(int) - bf16_whole.astype(int)).max() <= 1
    assert psnr(bf16_whole, fp32) > 45  # far below the models' own error against the truth


def test_bf16_training_step_runs_without_loss_scaling(tmp_path):
    from prodray.config import EnhancerTrainConfig
    from prodray.enhancer.training import PsnrTraining
    cfg = load_config(EnhancerTrainConfig, None, [f"data.sources=[{tmp_path}]", "data.patch_size=16",
                                                  "data.batch_size=2", "model.channels=8", "model.blocks=1",
                                                  "run.precision=bf16"])
    training = PsnrTraining(cfg, {}, "cpu")
    assert training.precision == "bf16" and not training.scalers["enhancer"].is_enabled()
    training.pool = [np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    before = [p.detach().clone() for p in training.model.parameters()]
    stats = training.train_step(*training.next_batch())
    assert torch.isfinite(stats["loss"]) and stats["loss"].dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, training.model.parameters()))
    fp32 = PsnrTraining(cfg.model_copy(update={"run": cfg.run.model_copy(update={"amp": False})}), {}, "cpu")
    assert fp32.precision == "fp32"
