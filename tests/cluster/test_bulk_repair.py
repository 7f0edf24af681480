"""Bulk repair (--task repair) through Ray Data against the real S3 server: per-image masks from
a prefix or one mask for every image, results equal to the input outside the mask, bad or missing
masks recorded per image, the task, model and masks in the key, and reruns that resume."""

import io

import numpy as np
import pytest
from conftest import gradient
from PIL import Image

from prodray.catalog.manifest import output_key
from prodray.config import BulkConfig, ConfigError, validate
from prodray.io import storage
from prodray.io.artifacts import export_model

ray = pytest.importorskip("ray")


def repair_export(uri: str) -> str:
    import torch

    from prodray.repair.model import build_repairer
    torch.manual_seed(0)
    config = {"arch": "fourier-unet", "channels": 8, "blocks": 1, "kind": "repair"}
    return export_model(uri, "repair", build_repairer(config).eval(), config)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def box_mask(height: int, width: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[top:top + size, left:left + size] = True
    return mask


def read_rgba(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(uri))).convert("RGBA"))


def manifest(output: str) -> dict:
    from prodray.catalog.manifest import read_manifest
    return {row["input_key"]: row for row in read_manifest(output)}


def test_repair_with_a_mask_per_image(bucket, local_ray):
    source, masks, output = f"s3://{bucket}/catalog", f"s3://{bucket}/masks", f"s3://{bucket}/repaired"
    model_id = repair_export(f"s3://{bucket}/model")
    photos = {f"shoes/{i}.png": gradient(40 + 8 * i, 56, seed=i) for i in range(3)}
    for key, rgb in photos.items():
        storage.put_bytes(f"{source}/{key}", png(rgb))
        storage.put_bytes(f"{masks}/{key}", png(box_mask(*rgb.shape[:2], 10, 12, 9).astype(np.uint8) * 255))
    logo = np.dstack([gradient(32, 32, seed=5), np.full((32, 32), 255, np.uint8)])
    logo[:, :8, 3] = 0
    storage.put_bytes(f"{source}/logo.png", png(logo, "RGBA"))
    storage.put_bytes(f"{masks}/logo.png", png(box_mask(32, 32, 4, 12, 10).astype(np.uint8) * 255))
    # A JPEG input's mask is the same key with .png; the bad cases are refused one by one.
    storage.put_bytes(f"{source}/photo.jpg", png(gradient(24, 24, seed=7)))
    storage.put_bytes(f"{masks}/photo.png", png(box_mask(24, 24, 2, 2, 6).astype(np.uint8) * 255))
    storage.put_bytes(f"{source}/no_mask.png", png(gradient(24, 24, seed=8)))
    storage.put_bytes(f"{source}/wrong_size.png", png(gradient(24, 24, seed=9)))
    storage.put_bytes(f"{masks}/wrong_size.png", png(np.full((20, 24), 255, np.uint8)))
    storage.put_bytes(f"{source}/empty.png", png(gradient(24, 24, seed=10)))
    storage.put_bytes(f"{masks}/empty.png", png(np.zeros((24, 24), np.uint8)))
    storage.put_bytes(f"{source}/broken_mask.png", png(gradient(24, 24, seed=11)))
    storage.put_bytes(f"{masks}/broken_mask.png", b"not a png")
    config = BulkConfig(input=source, output=output, task="repair", masks=masks, model=f"s3://{bucket}/model",
                        actor_cpus=0.5)

    summary = run(config)
    assert summary["counts"] == {"ok": 5, "rejected": 4} and summary["model_id"] == model_id
    rows = manifest(output)
    reasons = {key: rows[key]["reason"].split(":")[0] for key in rows if rows[key]["status"] == "rejected"}
    assert reasons == {"no_mask.png": "missing_mask", "wrong_size.png": "mask_size_mismatch",
                       "empty.png": "empty_mask", "broken_mask.png": "mask_unsupported_format"}
    for key, rgb in photos.items():
        row = rows[key]
        assert row["output_key"] == output_key(key, model_id, config, mask_tag=_tag(config))
        assert row["output_key"].startswith(f"{model_id}/repair-m")
        result = read_rgba(f"{output}/{row['output_key']}")[..., :3]
        hole = box_mask(*rgb.shape[:2], 10, 12, 9)
        assert result.shape == rgb.shape and np.array_equal(result[~hole], rgb[~hole])
        assert not np.array_equal(result[hole], rgb[hole])  # the hole was filled by the model
    repaired_logo = read_rgba(f"{output}/{rows['logo.png']['output_key']}")
    assert np.array_equal(repaired_logo[..., 3], logo[..., 3])  # alpha kept as it was
    assert run(config)["nothing_to_do"] is True

    # A mask arrives for the image that had none: the rerun does that one only.
    storage.put_bytes(f"{masks}/no_mask.png", png(box_mask(24, 24, 3, 3, 5).astype(np.uint8) * 255))
    assert run(config)["nothing_to_do"] is True  # refusals are final answers for (input, output key)...
    storage.delete_tree(f"{output}/_manifest")  # ...until the manifest is dropped: results are kept
    again = run(config)
    assert again["counts"] == {"ok": 1, "skipped": 5, "rejected": 3}


def _tag(config: BulkConfig, mask_bytes: bytes | None = None) -> str:
    from prodray.catalog.manifest import mask_tag
    return mask_tag(config, mask_bytes)


def test_one_mask_for_every_image_scaled_to_each(bucket, local_ray, tmp_path):
    source, output = f"s3://{bucket}/catalog", f"s3://{bucket}/repaired"
    model_id = repair_export(f"s3://{bucket}/model")
    sizes = {"small.png": (20, 30), "large.png": (60, 90)}
    for key, (height, width) in sizes.items():
        storage.put_bytes(f"{source}/{key}", png(gradient(height, width, seed=height)))
    corner = np.zeros((10, 10), np.uint8)
    corner[:5, :5] = 255  # the top-left quarter of every image
    mask_file = tmp_path / "corner.png"
    mask_file.write_bytes(png(corner))
    config = BulkConfig(input=source, output=output, task="repair", mask=str(mask_file),
                        model=f"s3://{bucket}/model", actor_cpus=0.5)
    assert run(config)["counts"] == {"ok": 2}
    rows = manifest(output)
    for key, (height, width) in sizes.items():
        original = gradient(height, width, seed=height)
        result = read_rgba(f"{output}/{rows[key]['output_key']}")[..., :3]
        outside = np.ones((height, width), bool)
        outside[:height // 2, :width // 2] = False
        assert np.array_equal(result[outside], original[outside])
        assert not np.array_equal(result[~outside], original[~outside])
        assert rows[key]["output_key"] == output_key(key, model_id, config, _tag(config, png(corner)))

    # Another mask is another result: the rerun processes every image again, into new keys.
    corner[:5, :5], corner[5:, 5:] = 0, 255
    mask_file.write_bytes(png(corner))
    assert run(config)["counts"] == {"ok": 2}
    assert len([f for f in storage.list_files(output) if "/_" not in f["uri"]]) == 4


def test_a_mask_that_marks_nothing_stops_the_job_before_any_work(bucket, local_ray, tmp_path):
    repair_export(f"s3://{bucket}/model")
    storage.put_bytes(f"s3://{bucket}/catalog/a.png", png(gradient(20, 20)))
    blank = tmp_path / "blank.png"
    blank.write_bytes(png(np.zeros((8, 8), np.uint8)))
    config = BulkConfig(input=f"s3://{bucket}/catalog", output=f"s3://{bucket}/out", task="repair",
                        mask=str(blank), model=f"s3://{bucket}/model")
    with pytest.raises(ValueError, match="--mask .*blank.png: the mask marks no pixel"):
        run(config)
    assert storage.list_files(f"s3://{bucket}/out") == []
    # An enhancer model cannot repair, and a repair model cannot enhance: refused before any work.
    from prodray.enhancer.model import build_model
    export_model(f"s3://{bucket}/sr", "enhancer", build_model("rpsnet", scale=2, channels=8, blocks=1),
                 {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"})
    with pytest.raises(ValueError, match="is a 'enhancer' model; --task repair needs a repair model"):
        run(config.model_copy(update={"model": f"s3://{bucket}/sr"}))
    with pytest.raises(ValueError, match="is a 'repair' model; --task enhance needs an enhancer model"):
        run(BulkConfig(input=f"s3://{bucket}/catalog", output=f"s3://{bucket}/out", model=f"s3://{bucket}/model"))


def run(config: BulkConfig) -> dict:
    from prodray.cluster.bulk import run_bulk
    return run_bulk(config)


@pytest.mark.parametrize("fields,named", [
    ({"task": "repair"}, "config field mask: Value error, repair needs exactly one of --masks"),
    ({"task": "repair", "mask": "m.png", "masks": "s3://b/m"}, "config field mask: Value error, repair needs"),
    ({"mask": "m.png"}, "config field mask: Value error, masks are for --task repair"),
    ({"task": "repair", "mask": "m.png", "scale": 2}, "config field scale: Value error, repair keeps the image's"),
    ({"task": "repair", "mask": "m.png", "strength": "auto"}, "config field strength: Value error, strength is for"),
    ({"task": "repair", "mask": "m.png", "self_ensemble": True}, "config field self_ensemble: Value error"),
    ({"task": "repair", "masks": "gs://b/m"}, "config field masks: Value error, unsupported URI scheme 'gs'"),
    ({"task": "inpaint"}, "config field task: Input should be 'enhance', 'repair' or 'recolour'"),
])
def test_repair_flags_that_do_not_fit_fail_naming_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        validate(BulkConfig, {"input": "s3://b/in", "output": "s3://b/out", **fields})
    assert BulkConfig(input="s3://b/in", output="s3://b/out", task="repair", mask="m.png").scale == 1
