"""Repair and recolour training through Ray Train on a real local Ray: the same worker loop as
every family, 2-worker DDP on CPU (gloo) with the generator and the discriminator each wrapped,
checkpoints, exact resume on resubmission, an export that the family's inference loads."""

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_checkpoints  # noqa: E402

from prodray.cluster.trainer import build_trainer  # noqa: E402
from prodray.config import RecolourTrainConfig, RepairTrainConfig, load_config  # noqa: E402
from prodray.recolour.colours import parse_colour  # noqa: E402
from prodray.recolour.inference import Recolourer  # noqa: E402
from prodray.recolour.training import RecolourTraining  # noqa: E402
from prodray.repair.inference import Repairer  # noqa: E402
from prodray.repair.training import RepairTraining  # noqa: E402

pytestmark = pytest.mark.slow


def repair_with(export: str, image: np.ndarray, mask: np.ndarray) -> tuple[str, np.ndarray]:
    repairer = Repairer.load(export, precision="fp32")
    return repairer.model_id, repairer.repair(image, mask)


def recolour_with(export: str, image: np.ndarray, mask: np.ndarray) -> tuple[str, np.ndarray]:
    recolourer = Recolourer.load(export)
    return recolourer.model_id, recolourer.recolour(image, parse_colour("Navy Blue")[1], mask)


# kind -> (config class, Training, its overrides, stats every tick must hold, export -> (model id, applied))
FAMILIES = {
    "repair": (RepairTrainConfig, RepairTraining, ["model.channels=8", "model.blocks=1"],
               ("loss_hole", "loss_d", "val_psnr_masked"), repair_with),
    "recolour": (RecolourTrainConfig, RecolourTraining,
                 ["model.channels=8", "model.grid_size=8", "model.input_size=16", "model.grid_depth=4",
                  "data.hr_scales=[1.0]"],
                 ("detail_ssim", "loss_d", "val_named_colour_acc"), recolour_with),
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def tiny_config(kind, images, storage, total):
    config_class, _, overrides, _, _ = FAMILIES[kind]
    return load_config(config_class, None, [
        f"data.sources=[{images}]", "data.patch_size=32", "data.batch_size=2", "data.patches_per_image=2",
        f"data.val_folder={images}", "data.val_max_images=1", "loss.d_channels=8", f"optim.total_images={total}",
        "optim.warmup_images=4", f"run.storage_path={storage}", f"run.name={kind}", "run.num_workers=2",
        "run.cpus_per_worker=0.5", "run.tick_images=8", "run.threads_per_worker=1", *overrides]).resolved()


def stats(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_ddp_run_checkpoints_resumes_exactly_and_exports(kind, local_ray, images, tmp_path):
    _, training_class, _, stat_keys, apply_export = FAMILIES[kind]
    cfg = tiny_config(kind, images, tmp_path, 16)
    result = build_trainer(cfg).fit()
    assert result.error is None and result.metrics["images_seen"] == 16
    run = tmp_path / kind
    first = stats(run)
    assert [s["images_seen"] for s in first] == [8, 16] and [s["step"] for s in first] == [2, 4]  # 2 workers x 2
    assert all(np.isfinite(s[key]) for s in first for key in stat_keys), first
    assert len(list((run / "samples").glob("tick-*.png"))) == 2
    checkpoint = run_checkpoints(run)[-1]
    assert {"model.safetensors", "ema.safetensors", "discriminator.safetensors", "state.pt"} <= \
        {p.name for p in checkpoint.iterdir()}
    stored = training_class(cfg, {}, "cpu").resume(checkpoint, log=lambda _: None)

    result = build_trainer(tiny_config(kind, images, tmp_path, 32)).fit()
    assert result.error is None
    history = stats(run)
    assert [s["images_seen"] for s in history] == [8, 16, 24, 32] and [s["step"] for s in history] == [2, 4, 6, 8]
    assert history[2]["resumed_state"] == stored

    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["kind"] == kind and exported["images_seen"] == 32
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    model_id, out = apply_export(str(run / "export"), image, mask)
    assert model_id == exported["model_id"]
    assert np.array_equal(out[~mask], image[~mask])
