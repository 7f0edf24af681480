"""Repair training through Ray Train on a real local Ray: the same worker loop as every family,
2-worker DDP on CPU (gloo) with the generator and the discriminator each wrapped, checkpoints,
exact resume on resubmission, export that the Repairer loads."""

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_checkpoints  # noqa: E402

from prodray.cluster.trainer import build_trainer  # noqa: E402
from prodray.config import RepairTrainConfig, load_config  # noqa: E402
from prodray.repair.inference import Repairer  # noqa: E402
from prodray.repair.training import RepairTraining  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def tiny_config(images, storage, total):
    return load_config(RepairTrainConfig, None, [
        f"data.sources=[{images}]", "data.patch_size=32", "data.batch_size=2", "data.patches_per_image=2",
        f"data.val_folder={images}", "data.val_max_images=1", "model.channels=8", "model.blocks=1",
        "loss.d_channels=8", f"optim.total_images={total}", "optim.warmup_images=4", f"run.storage_path={storage}",
        "run.name=repair", "run.num_workers=2", "run.cpus_per_worker=0.5", "run.tick_images=8",
        "run.threads_per_worker=1"]).resolved()


def stats(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_ddp_repair_run_checkpoints_resumes_exactly_and_exports(local_ray, images, tmp_path):
    cfg = tiny_config(images, tmp_path, 16)
    result = build_trainer(cfg).fit()
    assert result.error is None and result.metrics["images_seen"] == 16
    run = tmp_path / "repair"
    first = stats(run)
    assert [s["images_seen"] for s in first] == [8, 16] and [s["step"] for s in first] == [2, 4]  # 2 workers x 2
    assert all(np.isfinite(s["loss_hole"]) and np.isfinite(s["loss_d"]) and np.isfinite(s["val_psnr_masked"])
               for s in first)
    assert len(list((run / "samples").glob("tick-*.png"))) == 2
    checkpoint = run_checkpoints(run)[-1]
    assert {"model.safetensors", "ema.safetensors", "discriminator.safetensors", "state.pt"} <= \
        {p.name for p in checkpoint.iterdir()}
    stored = RepairTraining(cfg, {}, "cpu").resume(checkpoint, log=lambda _: None)

    result = build_trainer(tiny_config(images, tmp_path, 32)).fit()
    assert result.error is None
    history = stats(run)
    assert [s["images_seen"] for s in history] == [8, 16, 24, 32] and [s["step"] for s in history] == [2, 4, 6, 8]
    assert history[2]["resumed_state"] == stored

    repairer = Repairer.load(str(run / "export"), precision="fp32")
    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["kind"] == "repair" and exported["images_seen"] == 32 and repairer.model_id == exported["model_id"]
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = repairer.repair(image, mask)
    assert np.array_equal(out[~mask], image[~mask])
