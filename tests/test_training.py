"""The training contract (prodray/training.py): full-state save/resume for any Training, checkpoints
written before the shared layout, tick bookkeeping."""

import numpy as np
import pytest
import torch

from prodray.config import (
    AdversarialTrainConfig,
    ConfigError,
    EnhancerTrainConfig,
    load_config,
    load_train_config,
    train_config_from_tree,
)
from prodray.enhancer.model import build_enhancer
from prodray.enhancer.training import AdversarialTraining, PsnrTraining
from prodray.io import artifacts
from prodray.training import Ticks, Training, make_ema, rng_state

MODEL = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1}


def psnr_config(tmp_path, *extra) -> EnhancerTrainConfig:
    return load_config(EnhancerTrainConfig, None, [f"data.sources=[{tmp_path}]", "data.patch_size=16",
                                                   "data.batch_size=2", "model.channels=8", "model.blocks=1", *extra])


def random_pool(n=4, side=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def stepped(training: Training, steps: int) -> Training:
    for _ in range(steps):
        training.train_step(*training.next_batch())
    return training


def test_any_training_resumes_exactly_where_it_saved(tmp_path):
    cfg = psnr_config(tmp_path)
    first = PsnrTraining(cfg, {}, "cpu")
    first.pool = random_pool()
    stepped(first, 3).save(tmp_path)
    torch.manual_seed(5)  # another init, so equality below comes from the checkpoint
    second = PsnrTraining(psnr_config(tmp_path, "run.seed=7"), {}, "cpu")
    second.pool = random_pool()
    assert second.digest() != first.digest()
    assert second.resume(tmp_path, log=lambda _: None) == first.digest()
    assert (second.step, second.images_seen) == (3, 6)
    stepped(first, 1), stepped(second, 1)  # same random streams: the same next batch and step
    assert second.digest() == first.digest()


def old_psnr_checkpoint(folder, model, ema, optimizer, scaler, step, images_seen, generator, rng):
    """The PSNR stage's checkpoint layout before every family shared one (its own key names)."""
    (folder / "model.safetensors").write_bytes(artifacts.weights_bytes(model))
    (folder / "ema.safetensors").write_bytes(artifacts.weights_bytes(ema))
    state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
             "images_seen": images_seen, "rng": [rng_state(generator, rng)], "world": 1}
    (folder / "state.pt").write_bytes(artifacts.state_bytes(state))


def test_a_checkpoint_written_before_the_shared_layout_resumes(tmp_path):
    torch.manual_seed(0)
    model = build_enhancer(MODEL)
    ema = make_ema(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    optimizer.step()  # real Adam moments to restore
    generator, rng = torch.Generator().manual_seed(3), np.random.default_rng(3)
    old_psnr_checkpoint(tmp_path, model, ema, optimizer, torch.amp.GradScaler("cuda", enabled=False), 11, 176,
                        generator, rng)

    training = PsnrTraining(psnr_config(tmp_path), {}, "cpu")
    training.resume(tmp_path, log=lambda _: None)
    assert (training.step, training.images_seen) == (11, 176)
    for a, b in zip(model.state_dict().values(), training.model.state_dict().values()):
        assert torch.equal(a, b)
    moments = training.optimizers["enhancer"].state_dict()["state"]
    assert moments and all(torch.equal(moments[k]["exp_avg"], v["exp_avg"])
                           for k, v in optimizer.state_dict()["state"].items())
    assert training.torch_rng.get_state().equal(generator.get_state())


def test_the_adversarial_stage_has_its_own_kind_and_old_configs_still_load(tmp_path):
    base = [f"data.sources=[{tmp_path}]", "adversarial.init_from=enhancer-x2"]
    assert isinstance(load_train_config(None, ["kind=enhancer-adversarial", *base]), AdversarialTrainConfig)
    assert isinstance(load_train_config(None, ["kind=enhancer", *base]), AdversarialTrainConfig)  # the old form
    assert type(load_train_config(None, ["kind=enhancer", base[0]])) is EnhancerTrainConfig
    with pytest.raises(ConfigError, match="config field kind"):
        load_train_config(None, base)
    # a run folder's config.json from before the split names the section even when it is empty
    assert type(train_config_from_tree({"kind": "enhancer", "data": {"sources": ["x"]}, "adversarial": None})) \
        is EnhancerTrainConfig
    with pytest.raises(ConfigError, match="init_from"):  # the stage starts from adversarial.init_from only
        load_train_config(None, ["kind=enhancer-adversarial", *base, "init_from=enhancer-x2"])
    cfg = load_train_config(None, ["kind=enhancer-adversarial", *base, "model.channels=48", "model.blocks=8",
                                   "data.patch_size=16", "data.batch_size=2"])
    training = AdversarialTraining(cfg, AdversarialTraining.prepare(cfg), "cpu")
    training.pool = random_pool()
    before = artifacts.weights_bytes(training.discriminator)
    stats = stepped(training, 1).train_step(*training.next_batch())
    assert {"loss_g", "loss_d", "d_real", "d_fake"} <= set(stats) and training.images_seen == 4
    assert artifacts.weights_bytes(training.discriminator) != before


class Counting(Training):
    def __init__(self):
        super().__init__(psnr_config("unused"), {}, "cpu")

    def learning_rates(self):
        return {"lr": 0.5}


def test_ticks_end_on_image_counts_and_average_the_step_scalars():
    training, ticks = Counting(), Ticks(tick_images=10, images_seen=0)
    for images, loss in ((4, 1.0), (4, 2.0), (4, 6.0)):
        training.images_seen += images
        ticks.add({"loss": torch.tensor(loss)}, images)
        if training.images_seen < 12:
            assert not ticks.due(training.images_seen)
    assert ticks.due(training.images_seen) and ticks.index(training.images_seen) == 1
    metrics = ticks.close(training)
    assert metrics["loss"] == pytest.approx(3.0) and metrics["images_seen"] == 12 and metrics["lr"] == 0.5
    assert ticks.next == 20 and ticks.images == 0  # the next tick starts from what was seen
    ticks.add({"r1": torch.tensor(4.0)}, 4)
    assert ticks.close(training)["r1"] == 4.0 and "loss" not in ticks.close(training)


class _Payload:
    """Unpickling this calls open(marker, "w"): proof that pickle ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import io
    import pickle

    cfg = psnr_config(tmp_path)
    honest = PsnrTraining(cfg, {}, "cpu")
    honest.save(tmp_path)
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"step": 1, "images_seen": 2, "evil": _Payload(marker)}, buffer)
    (tmp_path / "state.pt").write_bytes(buffer.getvalue())

    with pytest.raises(pickle.UnpicklingError):
        PsnrTraining(cfg, {}, "cpu").resume(tmp_path, log=lambda _: None)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert marker.exists()
