"""The GAN's pure-torch training core (GanTraining) and the one-process runner (local/runner.py),
which a GPU machine without Ray uses: steps, exact resume, the run folder, the time budget."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prodray.catalog.ingest import FASHION_MNIST_DIR
from prodray.config import ConfigError, GanTrainConfig, load_config
from prodray.gan.data import prepare_fashion_mnist
from prodray.gan.inference import ProductGenerator
from prodray.gan.training import GanTraining, pool_to_device, sample_batch
from prodray.local import runner as gan_local
from prodray.training import TickStats

GAN_CONFIG = str(Path(__file__).resolve().parents[2] / "prodray" / "configs" / "gan_fashion_mnist.yaml")
VOCAB = {"category": ["a", "b", "c"]}
MCONFIG = {"vocab": VOCAB, "resolution": 8, "z_dim": 16, "embed_dim": 8, "g_channels": 32, "d_channels": 8,
           "d_mbstd_group": 4}


def core_config(*extra) -> GanTrainConfig:
    return load_config(GanTrainConfig, None, ["data.prepared=unused", "data.batch_size=8", "optim.r1_interval=2",
                                              "optim.mode_seeking=0.2", "optim.total_images=1000", *extra])


def pool(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), {"category": rng.integers(0, 3, n)}


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_train_step_moves_every_network_and_counts_images():
    cfg = core_config()
    training = GanTraining(cfg, MCONFIG, torch.device("cpu"))
    before = {name: flat(net).clone() for name, net in training.networks.items()}
    stats, data = TickStats(), pool()
    for _ in range(3):
        stats.add(training.train_step(*sample_batch(data, 8, training.rng, "cpu"), world=2))
    assert training.step == 3 and training.images_seen == 3 * 8 * 2  # a step counts every rank's images
    for name, net in training.networks.items():
        assert not torch.equal(before[name], flat(net)), name
    means = stats.means()
    assert set(means) == {"loss_d", "loss_g", "real_score", "fake_score", "r1"}  # r1 ran at steps 0 and 2
    assert all(np.isfinite(v) for v in means.values())


def coloured_pool(n=48, seed=0):
    """Images whose colour is their category (red, green, blue) plus noise: a classifier can learn it."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 3, n)
    images = rng.integers(0, 60, (n, 8, 8, 3)).astype(np.uint8)
    images[np.arange(n), :, :, category] += 180
    return images, {"category": category}


def test_auxiliary_classifier_learns_the_attributes_of_real_images_and_steers_g():
    torch.manual_seed(0)
    training = GanTraining(core_config("optim.class_weight=1.0", "optim.mode_seeking=0"), MCONFIG, torch.device("cpu"))
    classifiers = flat(training.discriminator.classifiers).clone()
    data = coloured_pool()
    steps = [training.train_step(*sample_batch(data, 8, training.rng, "cpu")) for _ in range(40)]
    assert not torch.equal(classifiers, flat(training.discriminator.classifiers))
    assert "classifiers.category.weight" in training.discriminator.state_dict()  # checkpoints carry the head

    def mean(name, part):
        return float(np.mean([float(s[name]) for s in part]))
    # D's classifier starts near chance (log 3 = 1.10) and learns the colour of real images ...
    assert float(steps[0]["class_d"]) > 0.9 and mean("class_d", steps[-5:]) < 0.5
    # ... and G's images come to be read as the asked category more often
    assert mean("class_g", steps[-5:]) < mean("class_g", steps[:5])


def test_learning_rate_follows_the_decay_schedule():
    training = GanTraining(core_config("optim.lr_decay_from_images=500", "optim.lr_g=1e-4", "optim.lr_d=4e-4"),
                           MCONFIG, torch.device("cpu"))
    training.images_seen = 750  # halfway down the decay
    training.set_learning_rates()
    assert training.optimizers["g"].param_groups[0]["lr"] == pytest.approx(5e-5)
    assert training.optimizers["d"].param_groups[0]["lr"] == pytest.approx(2e-4)


def test_resume_continues_exactly_like_the_uninterrupted_run(tmp_path):
    """Save after 3 steps, restore into a fresh GanTraining, step both: every tensor and the next
    batch drawn must match (networks, Adam moments, random streams, counters)."""
    data = pool()
    first = GanTraining(core_config(), MCONFIG, torch.device("cpu"))
    for _ in range(3):
        first.train_step(*sample_batch(data, 8, first.rng, "cpu"))
    first.save(tmp_path)
    torch.manual_seed(123)  # a different init, so equality below comes from the checkpoint
    second = GanTraining(core_config("run.seed=9"), MCONFIG, torch.device("cpu"))
    assert second.digest() != first.digest()
    assert second.resume(tmp_path, log=lambda _: None) == first.digest()
    assert (second.step, second.images_seen) == (3, 24)
    for training in (first, second):
        training.train_step(*sample_batch(data, 8, training.rng, "cpu"))
    assert second.digest() == first.digest()


def test_sample_batch_takes_a_pool_on_the_device_or_in_numpy():
    images, labels = pool()
    as_tensors = pool_to_device((images, labels), "cpu")
    assert isinstance(as_tensors[0], torch.Tensor) and as_tensors[0].dtype == torch.uint8
    a = sample_batch((images, labels), 5, np.random.default_rng(1), "cpu")
    b = sample_batch(as_tensors, 5, np.random.default_rng(1), "cpu")
    assert a[0].shape == (5, 3, 8, 8) and a[0].min() >= -1 and a[0].max() <= 1
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["category"], b[1]["category"])


# ---------------------------------------------------------------- the one-process runner

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmnist")
    prepare_fashion_mnist(str(out), limit=120, echo=lambda *_: None)
    return out


def local_args(prepared, storage, total):
    return ["--config", GAN_CONFIG, "--device", "cpu",
            f"data.prepared={prepared}", "data.batch_size=8", "model.z_dim=16", "model.embed_dim=8",
            "model.g_channels=32", "model.d_channels=8", f"optim.total_images={total}",
            f"run.storage_path={storage}", "run.name=local", "run.tick_images=32", "run.threads_per_worker=1"]


@needs_fmnist
def test_local_run_writes_the_run_folder_resumes_and_exports(prepared, tmp_path, capsys):
    run = tmp_path / "local"
    assert gan_local.main(local_args(prepared, tmp_path, 64)) == 0
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["images_seen"] for line in lines] == [32, 64]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["tick-000001.png", "tick-000002.png"]
    assert json.loads((run / "config.json").read_text())["optim"]["total_images"] == 64
    first_export = json.loads((run / "export" / "config.json").read_text())
    assert first_export["images_seen"] == 64 and first_export["kind"] == "generator"

    # Resubmitted with a higher total: resumes from checkpoint/ and goes on from 64 images.
    assert gan_local.main(local_args(prepared, tmp_path, 96)) == 0
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["images_seen"] for line in lines] == [32, 64, 96]
    assert "resumed_state" in lines[2] and "resumed_state" not in lines[1]
    assert "resumed from checkpoint/ at step 8, 64 images seen" in capsys.readouterr().out
    generator = ProductGenerator.load(str(run / "export"))
    assert generator.config["images_seen"] == 96
    images = generator.generate_indices({"category": np.array([0, 9])}, seed=0)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


@needs_fmnist
def test_time_budget_stops_checkpoints_and_exports(prepared, tmp_path):
    cfg = load_config(GanTrainConfig, None, local_args(prepared, tmp_path, 10_000)[4:]).resolved()
    result = gan_local.train(cfg, torch.device("cpu"), minutes=1e-6, log=lambda _: None)
    assert result["stopped"] == "minutes" and result["images_seen"] == 8  # the first step is over the budget
    assert (tmp_path / "local" / "checkpoint" / "state.pt").is_file()
    assert json.loads((tmp_path / "local" / "export" / "config.json").read_text())["model_id"] == result["export"]


def test_resume_falls_back_to_the_state_left_by_a_crash_during_the_swap(tmp_path):
    assert gan_local.latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.old").mkdir()  # killed between moving the old state aside and the new in
    assert gan_local.latest_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    (tmp_path / "checkpoint").mkdir()  # killed after the swap, before the old one was removed
    assert gan_local.latest_checkpoint(tmp_path) == tmp_path / "checkpoint"


def test_schedule_fitted_to_the_time_left():
    cfg = core_config("optim.lr_decay_from_images=500")
    fitted = gan_local.fit_schedule(cfg, images_seen=1000, images_per_s=100.0, seconds_left=60, decay_last=0.25)
    assert fitted.optim.total_images == 1000 + int(0.95 * 100 * 60)  # 5 % left for the ticks
    assert fitted.optim.lr_decay_from_images == int(fitted.optim.total_images * 0.75)
    assert fitted.optim.lr_g == cfg.optim.lr_g and cfg.optim.total_images == 1000  # the rest kept, input untouched
    assert gan_local.fit_schedule(cfg, 0, 10.0, 10, decay_last=0).optim.lr_decay_from_images is None
    # refitted after the decay began: total follows the rate, the decay keeps its start
    refit = gan_local.fit_schedule(fitted, images_seen=6000, images_per_s=50.0, seconds_left=10, decay_last=0.25,
                                   decay_began_at=fitted.optim.lr_decay_from_images)
    assert refit.optim.total_images == 6000 + int(0.95 * 50 * 10)
    assert refit.optim.lr_decay_from_images == fitted.optim.lr_decay_from_images


@needs_fmnist
def test_fitted_run_records_the_fitted_schedule(prepared, tmp_path, capsys):
    args = local_args(prepared, tmp_path, 1_000_000)
    assert gan_local.main([*args[:4], "--minutes", "0.05", "--decay-last", "0.5", *args[4:]]) == 0
    saved = json.loads((tmp_path / "local" / "config.json").read_text())["optim"]
    # refitted every tick; the decay's start was set while the lr was still constant
    assert saved["total_images"] < 1_000_000 and 0 < saved["lr_decay_from_images"] < saved["total_images"]
    assert "schedule fitted to the time left: optim.total_images=" in capsys.readouterr().out


def test_bad_config_fails_naming_the_field(tmp_path, capsys):
    assert gan_local.main(["--config", GAN_CONFIG, "optim.total_images=0",
                           f"data.prepared={tmp_path}"]) == 2
    assert "optim.total_images" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a fitted schedule needs a time budget
        gan_local.main(["--config", GAN_CONFIG, "--decay-last", "0.3", f"data.prepared={tmp_path}"])
    with pytest.raises(ConfigError, match="run.storage_path"):
        gan_local.train(load_config(GanTrainConfig, None, ["data.prepared=x", "run.storage_path=s3://b/runs"]),
                        torch.device("cpu"))
