"""Recolour training through Ray Train on a real local Ray: the same worker loop as every family,
2-worker DDP on CPU (gloo) with the network and the discriminator each wrapped, checkpoints, exact
resume on resubmission, export that the Recolourer loads."""

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_checkpoints  # noqa: E402

from prodray.cluster.trainer import build_trainer  # noqa: E402
from prodray.config import RecolourTrainConfig, load_config  # noqa: E402
from prodray.recolour.colours import parse_colour  # noqa: E402
from prodray.recolour.inference import Recolourer  # noqa: E402
from prodray.recolour.training import RecolourTraining  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def tiny_config(images, storage, total):
    return load_config(RecolourTrainConfig, None, [
        f"data.sources=[{images}]", "data.patch_size=32", "data.batch_size=2", "data.patches_per_image=2",
        f"data.val_folder={images}", "data.val_max_images=1", "model.channels=8", "model.grid_depth=4",
        "model.grid_size=8", "model.input_size=16", "loss.d_channels=8", "loss.d_input_size=32",
        f"optim.total_images={total}", "optim.warmup_images=4", f"run.storage_path={storage}", "run.name=recolour",
        "run.num_workers=2", "run.cpus_per_worker=0.5", "run.tick_images=8", "run.threads_per_worker=1"]).resolved()


def stats(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_ddp_recolour_run_checkpoints_resumes_exactly_and_exports(local_ray, images, tmp_path):
    cfg = tiny_config(images, tmp_path, 16)
    result = build_trainer(cfg).fit()
    assert result.error is None and result.metrics["images_seen"] == 16
    run = tmp_path / "recolour"
    first = stats(run)
    assert [s["images_seen"] for s in first] == [8, 16] and [s["step"] for s in first] == [2, 4]  # 2 workers x 2
    assert all(np.isfinite(s["detail_ssim"]) and np.isfinite(s["loss_d"]) and "val_de00" in s for s in first)
    checkpoint = run_checkpoints(run)[-1]
    assert {"model.safetensors", "ema.safetensors", "discriminator.safetensors", "state.pt"} <= \
        {p.name for p in checkpoint.iterdir()}
    stored = RecolourTraining(cfg, {}, "cpu").resume(checkpoint, log=lambda _: None)

    result = build_trainer(tiny_config(images, tmp_path, 24)).fit()
    assert result.error is None
    history = stats(run)
    assert [s["images_seen"] for s in history] == [8, 16, 24] and history[2]["resumed_state"] == stored

    recolourer = Recolourer.load(str(run / "export"))
    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["kind"] == "recolour" and exported["images_seen"] == 24
    assert recolourer.model_id == exported["model_id"]
    image = np.full((40, 40, 3), 255, np.uint8)
    image[10:30, 10:30] = (40, 60, 160)
    product = (image != 255).any(axis=2)
    out = recolourer.recolour(image, parse_colour("Red")[1], product)
    assert np.array_equal(out[~product], image[~product]) and out[product][:, 0].mean() > 120
