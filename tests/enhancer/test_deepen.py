"""A continuation may grow the enhancer deeper (model.blocks above its init's): new blocks start
as the identity, so training resumes from the same function, and the deeper restoration model still
runs at any strength against its shallower clean partner."""

import numpy as np
import pytest
import torch
from enhancer_networks import CONFIG, nudge, random_enhancer

from prodray.config import ConfigError, EnhancerTrainConfig, load_config
from prodray.enhancer.inference import Enhancer
from prodray.enhancer.model import build_enhancer, deepen
from prodray.enhancer.training import PsnrTraining
from prodray.io.artifacts import export_model, load_export
from prodray.training import read_init_model


def image(seed: int = 0, side: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_a_deepened_network_computes_the_same_function_and_its_new_blocks_learn():
    small = random_enhancer(0)
    grown = deepen(small, 3)
    assert len(grown.body) == 3
    batch = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(grown(batch), small(batch))
    grown.train()
    grown(batch).square().mean().backward()
    for block in grown.body[1:]:
        assert block.conv2.weight.grad.abs().sum() > 0  # identity at the start, not stuck there
    with pytest.raises(ValueError, match="cannot be deepened"):
        deepen(grown, 2)


def test_a_psnr_continuation_may_grow_blocks_but_not_shrink_them(tmp_path):
    export = str(tmp_path / "clean")
    export_model(export, "enhancer", random_enhancer(0, blocks=2), {**CONFIG, "blocks": 2, "model_id": "clean-test"})
    base = [f"data.sources=[{tmp_path}]", "data.patch_size=16", "data.batch_size=2", "model.channels=8",
            f"init_from={export}"]
    deeper = load_config(EnhancerTrainConfig, None, [*base, "model.blocks=4"])
    assert read_init_model(export, "init_from", deeper.model, growable=("blocks",))["blocks"] == 2
    with pytest.raises(ConfigError, match="model.blocks.*may only grow"):
        read_init_model(export, "init_from", load_config(EnhancerTrainConfig, None, [*base, "model.blocks=1"]).model,
                        growable=("blocks",))
    with pytest.raises(ConfigError, match="model.blocks"):  # other callers (the adversarial stage) do not grow
        read_init_model(export, "init_from", deeper.model)
    training = PsnrTraining(deeper, PsnrTraining.prepare(deeper), "cpu")
    assert len(training.model.body) == 4
    lr = torch.rand(1, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(training.model(lr), random_enhancer(0, blocks=2)(lr), atol=1e-6)


def test_a_deeper_restoration_model_runs_at_any_strength_against_its_shallower_clean_partner(tmp_path):
    clean = random_enhancer(0)
    clean_export = str(tmp_path / "clean")
    export_model(clean_export, "enhancer", clean, {**CONFIG, "model_id": "clean-test"})
    restore = deepen(clean, 3)
    nudge(restore)  # "trained": every weight moved, the new blocks too
    restore_export = str(tmp_path / "restore")
    export_model(restore_export, "enhancer", restore, {**CONFIG, "blocks": 3, "model_id": "restore-test",
                                                       "init_model_id": "clean-test"})
    enhancer = Enhancer.load(restore_export, clean=clean_export, precision="fp32")
    picture = image()
    at = {s: enhancer.enhance_many([picture], [s])[0] for s in (0.0, 0.5, 1.0)}
    assert np.array_equal(at[0.0], Enhancer(clean, CONFIG, precision="fp32").enhance_many([picture])[0])
    full = Enhancer(restore, {**CONFIG, "blocks": 3}, precision="fp32").enhance_many([picture])[0]
    assert np.array_equal(at[1.0], full)
    assert not np.array_equal(at[0.5], at[0.0]) and not np.array_equal(at[0.5], at[1.0])


def test_a_continued_restoration_model_keeps_the_clean_partner_of_the_model_it_continued(tmp_path):
    # the shipped restore-x2 grown and continued: its partner for strength is still enhancer-x2,
    # not the restoration model it was trained from
    shipped = {name: load_export(name, build_enhancer) for name in ("restore-x2", "enhancer-x2")}
    channels, blocks = shipped["restore-x2"][1]["channels"], shipped["restore-x2"][1]["blocks"] + 1
    cfg = load_config(EnhancerTrainConfig, None, [f"data.sources=[{tmp_path}]", "init_from=restore-x2",
                                                  f"model.channels={channels}", f"model.blocks={blocks}"])
    context = PsnrTraining.prepare(cfg)
    assert context["init_model_id"] == shipped["restore-x2"][1]["model_id"]
    assert context["clean_model_id"] == shipped["enhancer-x2"][1]["model_id"]
    continued = deepen(shipped["restore-x2"][0], blocks)
    nudge(continued, 0.01)
    export = str(tmp_path / "continued")
    config = {**shipped["restore-x2"][1], "blocks": blocks, **context, "model_id": "continued-test"}
    export_model(export, "enhancer", continued, config)
    enhancer = Enhancer.load(export, precision="fp32")
    picture = image()
    clean = Enhancer(shipped["enhancer-x2"][0], shipped["enhancer-x2"][1], precision="fp32")
    assert np.array_equal(enhancer.enhance_many([picture], [0.0])[0], clean.enhance_many([picture])[0])
