"""Per-image isolation in the bulk job's enhance stage (issue 20, item 3): a batch whose forward
pass fails is retried image by image, and a failure in any per-image stage (alpha, encode, write)
fails only that image. Runs the stage functions directly on a local output folder, without Ray."""

import io

import numpy as np
import torch
from PIL import Image

from prodray.cluster.bulk import EnhanceWriter, fetch_and_decode
from prodray.config import BulkConfig

POISON_WIDTH = 13  # an image this wide makes the test model fail


class FailsOnPoison(torch.nn.Module):
    """The shipped enhancer, except that any batch holding a POISON_WIDTH-wide image raises."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.shape[-1] == POISON_WIDTH:
            raise RuntimeError("poisoned input")
        return self.inner(x)


def write_inputs(folder, sizes: dict) -> dict:
    rng = np.random.default_rng(0)
    batch = {"uri": [], "key": [], "etag": [], "size": []}
    for name, (height, width, mode) in sizes.items():
        buffer = io.BytesIO()
        channels = 4 if mode == "RGBA" else 3
        Image.fromarray(rng.integers(0, 255, (height, width, channels), dtype=np.uint8), mode).save(buffer, "PNG")
        (folder / name).write_bytes(buffer.getvalue())
        row = {"uri": str(folder / name), "key": name, "etag": "e", "size": len(buffer.getvalue())}
        for column, value in row.items():
            batch[column].append(value)
    return batch


def run_stage(tmp_path, sizes: dict, corrupt_alpha_of: str | None = None) -> dict:
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    batch = fetch_and_decode(write_inputs(inputs, sizes), max_bytes=10**7, max_pixels=10**7)
    if corrupt_alpha_of is not None:
        row = batch["input_key"].index(corrupt_alpha_of)
        batch["alpha"][row] = b"\x00" * 7  # not height x width bytes: the alpha stage raises
    writer = EnhanceWriter("enhancer-x2", BulkConfig(input=str(inputs), output=str(output), precision="fp32"))
    writer.enhancer.model = FailsOnPoison(writer.enhancer.model)
    result = writer(batch)
    return dict(zip(result["input_key"], zip(result["status"], result["reason"], result["output_key"])))


def test_a_failing_image_in_the_model_fails_only_itself(tmp_path):
    sizes = {"a.png": (16, POISON_WIDTH, "RGB"), "b.png": (16, 16, "RGB"), "c.png": (16, POISON_WIDTH, "RGB"),
             "d.png": (12, 20, "RGB")}
    rows = run_stage(tmp_path, sizes)
    assert rows["b.png"][0] == rows["d.png"][0] == "ok"
    for poisoned in ("a.png", "c.png"):
        status, reason, key = rows[poisoned]
        assert status == "error" and "poisoned input" in reason and key == "", rows[poisoned]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["b.png", "d.png"]


def test_a_failing_alpha_stage_fails_only_its_image(tmp_path):
    sizes = {"a.png": (16, 16, "RGBA"), "b.png": (16, 16, "RGBA"), "c.png": (16, 16, "RGB")}
    rows = run_stage(tmp_path, sizes, corrupt_alpha_of="a.png")
    assert rows["a.png"][0] == "error" and "reshape" in rows["a.png"][1], rows["a.png"]
    assert rows["b.png"][0] == rows["c.png"][0] == "ok", rows


def restoration_copy(tmp_path) -> str:
    """An export of the shipped enhancer-x2 that names it as its clean partner (as restore-x2 does)."""
    from prodray.enhancer.inference import Enhancer
    from prodray.io.artifacts import export_model
    shipped = Enhancer.load("enhancer-x2")
    folder = str(tmp_path / "restore")
    export_model(folder, "enhancer", shipped.model, {**shipped.config, "init_model_id": shipped.model_id})
    return folder


def test_auto_strength_is_chosen_per_image_and_recorded(tmp_path):
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    smooth = np.stack(np.mgrid[0:32, 0:32], axis=2).sum(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8) * 3
    Image.fromarray(smooth).save(inputs / "low.jpg", quality=30)
    Image.fromarray(smooth).save(inputs / "clean.png")
    names = ["low.jpg", "clean.png"]
    batch = fetch_and_decode({"uri": [str(inputs / n) for n in names], "key": names, "etag": ["e", "e"],
                              "size": [(inputs / n).stat().st_size for n in names]}, max_bytes=10**7, max_pixels=10**7)
    assert batch["jpeg_quality"] == [30, 0]
    config = BulkConfig(input=str(inputs), output=str(output), model=restoration_copy(tmp_path), strength="auto")
    result = EnhanceWriter(config.model, config)(batch)
    assert result["status"] == ["ok", "ok"]
    assert result["strength"] == [1.0, 0.0]
    assert all("/x2-png-q90-sauto/" in key for key in result["output_key"])


def test_a_same_size_restoration_model_writes_same_size_results_and_leaves_clean_inputs_alone(tmp_path):
    """A scale-1 model (as restore-x1): strength auto gives a clean PNG strength 0, which is the input
    unchanged, and a JPEG q30 full strength."""
    from prodray.enhancer.model import build_enhancer
    from prodray.io.artifacts import export_model
    from prodray.io.codec import decode_image
    config = {"arch": "rpsnet", "scale": 1, "channels": 8, "blocks": 1, "unshuffle": 2, "kind": "enhancer"}
    torch.manual_seed(0)
    model = build_enhancer(config)
    torch.nn.init.normal_(model.upsample[0].weight, std=0.05)
    export_model(str(tmp_path / "restore-x1"), "enhancer", model, {**config, "model_id": "restore-x1-test"})
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    yy, xx = np.mgrid[0:40, 0:30]
    image = np.stack([yy * 5, xx * 7, yy + xx], axis=2).astype(np.uint8)
    Image.fromarray(image).save(inputs / "low.jpg", quality=30)
    Image.fromarray(image).save(inputs / "clean.png")
    names = ["low.jpg", "clean.png"]
    batch = fetch_and_decode({"uri": [str(inputs / n) for n in names], "key": names, "etag": ["e", "e"],
                              "size": [(inputs / n).stat().st_size for n in names]}, max_bytes=10**7, max_pixels=10**7)
    bulk = BulkConfig(input=str(inputs), output=str(output), model=str(tmp_path / "restore-x1"), scale=1,
                      strength="auto")
    from prodray.cluster.bulk import resolve_model
    assert resolve_model(bulk)[1]["scale"] == 1  # the driver's check before work accepts a strength
    result = EnhanceWriter(bulk.model, bulk)(batch)
    assert result["status"] == ["ok", "ok"] and result["strength"] == [1.0, 0.0]
    assert all("/x1-png-q90-sauto/" in key for key in result["output_key"])
    written = {name: decode_image((output / key).read_bytes()).rgb for name, key in zip(names, result["output_key"])}
    assert written["clean.png"].shape == written["low.jpg"].shape == image.shape
    assert np.array_equal(written["clean.png"], image)
    low = decode_image((inputs / "low.jpg").read_bytes()).rgb
    assert not np.array_equal(written["low.jpg"], low)


def test_a_strength_for_a_model_without_a_clean_partner_fails_before_work(tmp_path):
    import pytest

    from prodray.cluster.bulk import resolve_model
    from prodray.config import ConfigError, validate
    with pytest.raises(ValueError, match="not a restoration model"):
        resolve_model(BulkConfig(input=str(tmp_path), output=str(tmp_path / "o"), strength="0.5"))
    with pytest.raises(ConfigError, match="strength"):
        validate(BulkConfig, {"input": str(tmp_path), "output": str(tmp_path / "o"), "strength": "1.5"})
    assert resolve_model(BulkConfig(input=str(tmp_path), output=str(tmp_path / "o"), scale=2,
                                    model=restoration_copy(tmp_path), strength="0.5"))[0]


def test_an_input_whose_result_passes_the_output_cap_is_refused_undecoded(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    batch = write_inputs(inputs, {"big.png": (40, 50, "RGB"), "small.png": (20, 25, "RGB")})
    rows = fetch_and_decode(batch, max_bytes=10**7, max_pixels=10**7, max_output_pixels=40 * 50 * 16 - 1, scale=4)
    assert rows["status"] == ["rejected", "pending"]
    assert rows["reason"][0].startswith("too_many_output_pixels: the x4 result") and rows["pixels"][0] == b""
    assert fetch_and_decode(batch, max_bytes=10**7, max_pixels=10**7, max_output_pixels=40 * 50 * 16,
                            scale=4)["status"] == ["pending", "pending"]
