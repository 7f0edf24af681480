"""The adversarial fine-tuning stage through Ray Train on a real local Ray: 2-worker DDP on CPU
(gloo), a few steps from an exported PSNR model, a checkpoint with the discriminator, and an
export under its own name that the existing Enhancer loads unchanged; a resubmission resumes."""

import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_checkpoints  # noqa: E402

from prodray.cluster.trainer import build_trainer  # noqa: E402
from prodray.config import AdversarialTrainConfig, load_config  # noqa: E402
from prodray.enhancer.inference import Enhancer  # noqa: E402
from prodray.enhancer.model import build_enhancer  # noqa: E402
from prodray.io import artifacts as ckpt_io  # noqa: E402

MODEL = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def psnr_export(tmp_path_factory):
    """A stage-1 export to start from (an untrained tiny net is enough to test the wiring)."""
    folder = tmp_path_factory.mktemp("psnr") / "export"
    model_id = ckpt_io.export_model(str(folder), "enhancer", build_enhancer(MODEL), {**MODEL, "kind": "enhancer"})
    return folder, model_id


def test_adversarial_stage_trains_with_ddp_exports_its_own_model_and_resumes(local_ray, images, psnr_export, tmp_path):
    init_folder, init_id = psnr_export
    make_config = lambda total: load_config(AdversarialTrainConfig, None, [  # noqa: E731
        f"data.sources=[{images}]", "data.patch_size=24", "data.batch_size=4", "data.patches_per_image=2",
        f"data.val_folder={images}", "data.val_max_images=1",
        *(f"model.{k}={v}" for k, v in MODEL.items()),
        "optim.lr=1e-4", f"optim.total_images={total}", "optim.warmup_images=0",
        f"run.storage_path={tmp_path}", "run.name=gan", "run.num_workers=2", "run.cpus_per_worker=0.5",
        "run.tick_images=8", "run.threads_per_worker=1",
        f"adversarial.init_from={init_folder}", "adversarial.discriminator=unet",
        "adversarial.d_channels=8"]).resolved()
    result = build_trainer(make_config(16)).fit()
    assert result.error is None
    assert result.metrics["images_seen"] == 16 and result.metrics["step"] == 2  # 2 workers x 4 images per step

    run = tmp_path / "gan"
    history = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["images_seen"] for s in history] == [8, 16]
    for key in ("loss_g", "loss_pixel", "loss_perceptual", "loss_adversarial", "loss_d", "d_real", "d_fake",
                "val_psnr_y"):
        assert np.isfinite(history[-1][key]), key
    checkpoints = run_checkpoints(run)
    assert checkpoints and (checkpoints[-1] / "discriminator.safetensors").is_file()

    export = run / "export"
    exported = json.loads((export / "config.json").read_text())
    assert (export / "enhancer-gan.safetensors").is_file() and exported["stage"] == "adversarial"
    assert exported["init_model_id"] == init_id and exported["perceptual"].startswith("edge")
    enhancer = Enhancer.load(str(export))
    assert enhancer.model_id.startswith("enhancer-gan-") and enhancer.model_id != init_id
    assert enhancer.scale == 2
    assert enhancer.enhance(np.zeros((10, 12, 3), np.uint8)).rgb.shape == (20, 24, 3)
    assert os.path.getsize(export / "enhancer-gan.safetensors") == os.path.getsize(init_folder / "enhancer.safetensors")

    # Resubmission with a longer schedule resumes (enhancer, EMA, discriminator, both optimizers):
    # the step count goes on and the export is replaced by the longer-trained one.
    result = build_trainer(make_config(24)).fit()
    assert result.error is None and result.metrics["step"] == 3 and result.metrics["images_seen"] == 24
    history = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["images_seen"] for s in history] == [8, 16, 24] and history[-1]["step"] == 3
    resumed = json.loads((export / "config.json").read_text())
    assert resumed["images_seen"] == 24 and resumed["model_id"] != exported["model_id"]
