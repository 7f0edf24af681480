"""Enhancer training through Ray Train on a real local Ray: 2-worker DDP on CPU (gloo),
checkpoints, resume on resubmission, recovery after a worker is killed, export."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_checkpoints  # noqa: E402

from prodray.cluster.trainer import build_trainer  # noqa: E402
from prodray.config import EnhancerTrainConfig, load_config  # noqa: E402
from prodray.enhancer.inference import Enhancer  # noqa: E402
from prodray.io import artifacts as ckpt_io  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    os.environ["PRODRAY_TEST_CRASH"] = "recover:24"  # read by the workers of the run named "recover"
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
    os.environ.pop("PRODRAY_TEST_CRASH", None)


def tiny_config(images, storage, name, total, *extra):
    return load_config(EnhancerTrainConfig, None, [*extra,
        f"data.sources=[{images}]", "data.patch_size=24", "data.batch_size=4", "data.patches_per_image=2",
        f"data.val_folder={images}", "data.val_max_images=2",
        "model.channels=8", "model.blocks=1", f"optim.total_images={total}", "optim.warmup_images=8",
        f"run.storage_path={storage}", f"run.name={name}", "run.num_workers=2", "run.cpus_per_worker=0.5",
        "run.tick_images=16", "run.threads_per_worker=1", "run.max_failures=2"]).resolved()


def stats(storage, name):
    return [json.loads(line) for line in (Path(storage) / name / "stats.jsonl").read_text().splitlines()]


def test_ddp_run_checkpoints_exports_and_resumes(local_ray, images, tmp_path):
    result = build_trainer(tiny_config(images, tmp_path, "ddp", total=32)).fit()
    assert result.error is None
    assert result.metrics["images_seen"] == 32
    run = tmp_path / "ddp"
    checkpoints = run_checkpoints(run)
    assert checkpoints and (checkpoints[-1] / "state.pt").is_file() and (checkpoints[-1] / "ema.safetensors").is_file()
    assert [s["images_seen"] for s in stats(tmp_path, "ddp")] == [16, 32]
    assert (run / "samples").is_dir() and list((run / "samples").glob("*.png"))
    first_steps = [s["step"] for s in stats(tmp_path, "ddp")]

    # Resubmission with a longer schedule continues from the checkpoint: step count goes on, and a
    # changed weight decay is used (the optimizer's load_state_dict alone would keep the old one).
    result = build_trainer(tiny_config(images, tmp_path, "ddp", 64, "optim.weight_decay=0.05")).fit()
    assert result.error is None
    history = stats(tmp_path, "ddp")
    assert [s["images_seen"] for s in history] == [16, 32, 48, 64]
    steps = [s["step"] for s in history]
    assert steps[:2] == first_steps and steps[2] == steps[1] + 2 and steps[3] == steps[2] + 2  # 2 x 4 per step
    state = ckpt_io.load_state_bytes((run_checkpoints(run)[-1] / "state.pt").read_bytes())
    saved = state["optimizer_enhancer"]["param_groups"]
    assert {group["weight_decay"] for group in saved} == {0.05}

    enhancer = Enhancer.load(str(run / "export"))
    assert enhancer.scale == 2 and enhancer.model_id.startswith("enhancer-")
    assert enhancer.enhance(np.zeros((10, 12, 3), np.uint8)).rgb.shape == (20, 24, 3)


def test_killed_worker_recovers_through_failure_config(local_ray, images, tmp_path):
    marker = Path(tempfile.gettempdir()) / "prodray-crashed-recover"
    marker.unlink(missing_ok=True)
    result = build_trainer(tiny_config(images, tmp_path, "recover", total=48)).fit()
    assert marker.exists(), "the fault-injection hook did not fire"
    assert result.error is None
    assert result.metrics["images_seen"] == 48
    # The crash at 24 images came after the checkpoint at 16: training restarted from there.
    seen = [s["images_seen"] for s in stats(tmp_path, "recover")]
    assert seen[-1] == 48 and 16 in seen
    marker.unlink()


def test_init_from_starts_training_from_an_exported_model(local_ray, images, tmp_path):
    import torch

    from prodray.enhancer.model import build_enhancer
    model_config = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1}
    start = build_enhancer(model_config)
    with torch.no_grad():  # weights no fresh initialisation would give
        for i, parameter in enumerate(start.parameters()):
            parameter.copy_(torch.linspace(-0.1, 0.1, parameter.numel()).reshape(parameter.shape) * (i + 1))
    init_id = ckpt_io.export_model(str(tmp_path / "init"), "enhancer", start, {**model_config, "kind": "enhancer"})

    # A learning rate near zero: the exported (EMA) weights must still be the init model's.
    cfg = tiny_config(images, tmp_path, "warm", 16, f"init_from={tmp_path / 'init'}", "optim.lr=1e-12")
    result = build_trainer(cfg).fit()
    assert result.error is None
    trained = Enhancer.load(str(tmp_path / "warm" / "export"))
    for (name, expected), got in zip(start.state_dict().items(), trained.model.state_dict().values()):
        assert torch.allclose(got, expected, atol=1e-6), name
    exported = json.loads((tmp_path / "warm" / "export" / "config.json").read_text())
    assert exported["init_from"] == str(tmp_path / "init") and exported["init_model_id"] == init_id
