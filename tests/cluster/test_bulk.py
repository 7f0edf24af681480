"""Bulk enhancement through Ray Data against the real S3 server: one result per input, bad
files recorded (never dropping neighbours), resume after a crash, nothing redone after success."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import image_bytes
from PIL import Image

from prodray.catalog.manifest import output_key
from prodray.cluster.bulk import check_reservations, run_bulk, with_cluster_defaults
from prodray.config import BulkConfig, ConfigError, validate
from prodray.enhancer.model import build_model
from prodray.io import storage
from prodray.io.artifacts import export_model

ray = pytest.importorskip("ray")


def test_actors_that_leave_no_cpu_for_ray_data_fail_before_work():
    # 2 actors x 0.75 CPU on 2 CPUs: Ray Data's 1-CPU file-listing task would wait forever.
    options = BulkConfig(input="s3://b/in", output="s3://b/out", actors=2, actor_cpus=0.75)
    plenty = 64 * 2**30
    with pytest.raises(ValueError, match="--actors 2 x --actor-cpus 0.75 reserves 1.5 of the cluster's 2 CPUs"):
        check_reservations(options, {"CPU": 2, "memory": plenty})
    check_reservations(options, {"CPU": 3, "memory": plenty})  # 1.5 left
    check_reservations(BulkConfig(input="s3://b/in", output="s3://b/out", actors=2, actor_cpus=0.5),
                       {"CPU": 2, "memory": plenty})
    check_reservations(options, {})  # an autoscaling cluster's empty head: not checked


def test_actors_that_cannot_get_their_memory_fail_before_work():
    options = BulkConfig(input="s3://b/in", output="s3://b/out", actors=3, actor_cpus=0.5, actor_memory_gib=2.0)
    with pytest.raises(ValueError, match="--actors 3 x --actor-memory-gib 2 reserves 6 GiB; the cluster has 5.0 GiB"):
        check_reservations(options, {"CPU": 4, "memory": 5 * 2**30})
    check_reservations(options, {"CPU": 4, "memory": 6 * 2**30})
    no_request = BulkConfig(input="s3://b/in", output="s3://b/out", actors=3, actor_cpus=0.5, actor_memory_gib=0)
    check_reservations(no_request, {"CPU": 4, "memory": 0})
    with pytest.raises(ConfigError, match="config field actor_memory_gib: Input should be greater than or equal to 0"):
        validate(BulkConfig, {"input": "s3://b/in", "output": "s3://b/out", "actor_memory_gib": -1})


def test_actors_take_a_gpu_each_when_the_cluster_has_gpus():
    options = BulkConfig(input="s3://b/in", output="s3://b/out", actors=2, actor_cpus=0.5)
    assert with_cluster_defaults(options, {"CPU": 8}).actor_gpus == 0
    on_gpus = with_cluster_defaults(options, {"CPU": 8, "GPU": 2})
    assert on_gpus.actor_gpus == 1
    check_reservations(on_gpus, {"CPU": 8, "GPU": 2, "memory": 64 * 2**30})
    with pytest.raises(ValueError, match="--actors 2 x --actor-gpus 1 asks for 2 GPUs; the cluster has 1"):
        check_reservations(with_cluster_defaults(options, {"GPU": 1}), {"CPU": 8, "GPU": 1, "memory": 64 * 2**30})
    forced_cpu = BulkConfig(input="s3://b/in", output="s3://b/out", actor_gpus=0)
    assert with_cluster_defaults(forced_cpu, {"CPU": 8, "GPU": 2}).actor_gpus == 0
    with pytest.raises(ConfigError, match="config field actor_gpus: Input should be greater than or equal to 0"):
        validate(BulkConfig, {"input": "s3://b/in", "output": "s3://b/out", "actor_gpus": -1})


def rgba_png() -> bytes:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 15:, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def manifest_rows(output: str) -> list[dict]:
    rows = []
    for shard in storage.list_files(storage.join(output, "_manifest"), suffixes=(".parquet",)):
        rows += pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist()
    return rows


def test_bulk_job_end_to_end_with_bad_files_and_resume(bucket, local_ray, tmp_path):
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    model_id = export_model(f"s3://{bucket}/model", "enhancer", model,
                            {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"})
    source = f"s3://{bucket}/catalog"
    good = {f"shoes/{i}.jpg": image_bytes("JPEG", 24 + 4 * i, 32, seed=i) for i in range(6)}
    bad = {"broken.jpg": image_bytes("JPEG")[:200], "empty.png": b"", "notes.png": b"hello, not an image"}
    for key, data in {**good, **bad, "logo.png": rgba_png()}.items():
        storage.put_bytes(f"{source}/{key}", data)
    output = f"s3://{bucket}/enhanced"
    options = BulkConfig(input=source, output=output, model=f"s3://{bucket}/model", scale=2, actor_cpus=0.5)

    summary = run_bulk(options)
    assert summary["counts"] == {"ok": 7, "rejected": 3}
    rows = {r["input_key"]: r for r in manifest_rows(output)}
    assert set(rows) == set(good) | set(bad) | {"logo.png"}
    for key in good:
        assert rows[key]["status"] == "ok" and rows[key]["model_id"] == model_id
        out = Image.open(io.BytesIO(storage.get_bytes(f"{output}/{rows[key]['output_key']}")))
        assert out.size == (2 * rows[key]["width_in"], 2 * rows[key]["height_in"])
        assert rows[key]["output_key"] == output_key(key, model_id, options)
    assert all(rows[k]["status"] == "rejected" and rows[k]["reason"] for k in bad)
    logo = Image.open(io.BytesIO(storage.get_bytes(f"{output}/{rows['logo.png']['output_key']}")))
    assert logo.mode == "RGBA" and logo.size == (60, 40)  # alpha kept, upscaled
    success = json.loads(storage.get_bytes(f"{output}/_SUCCESS"))
    assert success["counts"] == {"ok": 7, "rejected": 3} and success["model_id"] == model_id
    results = [f for f in storage.list_files(output) if "/_" not in f["uri"]]
    assert len(results) == 7  # exactly one result per good input

    # After a success the same command runs the model on nothing and writes nothing.
    assert run_bulk(options)["nothing_to_do"] is True
    assert len(manifest_rows(output)) == 10

    # Simulate a crash that wrote two results but no manifest: drop the manifest and one result.
    for shard in storage.list_files(f"{output}/_manifest"):
        storage._s3fs().rm(storage.split_uri(shard["uri"])[1])
    storage._s3fs().rm(storage.split_uri(f"{output}/{rows['shoes/0.jpg']['output_key']}")[1])
    resumed = run_bulk(options)
    assert resumed["counts"] == {"ok": 1, "skipped": 6, "rejected": 3}
    assert len([f for f in storage.list_files(output) if "/_" not in f["uri"]]) == 7


def tiny_export(uri: str, scale: int) -> str:
    config = {"arch": "rpsnet", "scale": scale, "channels": 8, "blocks": 1, "kind": "enhancer"}
    return export_model(uri, "enhancer", build_model("rpsnet", scale=scale, channels=8, blocks=1), config)


def test_a_rerun_with_another_scale_processes_every_input_again(bucket, local_ray):
    source, output = f"s3://{bucket}/catalog", f"s3://{bucket}/enhanced"
    for i in range(3):
        storage.put_bytes(f"{source}/{i}.png", image_bytes("PNG", 16, 20, seed=i))
    storage.put_bytes(f"{source}/junk.png", b"not an image")
    models = {scale: tiny_export(f"s3://{bucket}/model-x{scale}", scale) for scale in (2, 4)}
    x2 = BulkConfig(input=source, output=output, model=f"s3://{bucket}/model-x2", scale=2, actor_cpus=0.5)
    assert run_bulk(x2)["counts"] == {"ok": 3, "rejected": 1}
    x4 = x2.model_copy(update={"model": f"s3://{bucket}/model-x4", "scale": 4})
    summary = run_bulk(x4)  # the x2 results are not x4 results: nothing is "already done"
    assert summary["counts"] == {"ok": 3, "rejected": 1} and summary["model_id"] == models[4]
    for i in range(3):
        image = Image.open(io.BytesIO(storage.get_bytes(f"{output}/{output_key(f'{i}.png', models[4], x4)}")))
        assert image.size == (80, 64)
    assert run_bulk(x4)["nothing_to_do"] is True and run_bulk(x2)["nothing_to_do"] is True


def test_keys_that_would_leave_the_output_root_are_refused_per_input(bucket, local_ray):
    import pyarrow as pa

    base, output = f"s3://{bucket}/catalog", f"s3://{bucket}/enhanced"
    storage.put_bytes(f"{base}/ok.png", image_bytes("PNG", 16, 20))
    storage.put_bytes(f"s3://{bucket}/outside.png", image_bytes("PNG", 16, 20, seed=1))  # what `../` reaches
    keys = ["ok.png", "../outside.png", "a/../../outside.png", "/outside.png"]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"key": keys, "bytes": [100] * len(keys)}), buffer)
    storage.put_bytes(f"{base}/keys.parquet", buffer.getvalue())
    tiny_export(f"s3://{bucket}/model", 2)
    config = BulkConfig(input=f"{base}/keys.parquet", output=output, model=f"s3://{bucket}/model", actor_cpus=0.5)
    assert run_bulk(config)["counts"] == {"ok": 1, "rejected": 3}
    rows = {row["input_key"]: row for row in manifest_rows(output)}
    assert all(rows[key]["reason"].startswith("unsafe_key") for key in keys[1:])
    written = [f["uri"] for f in storage.list_files(f"s3://{bucket}") if not f["uri"].startswith(output + "/_")]
    assert sorted(written) == sorted([f"{base}/ok.png", f"{base}/keys.parquet", f"s3://{bucket}/outside.png",
                                      *[f"s3://{bucket}/model/{n}" for n in ("config.json", "enhancer.safetensors")],
                                      f"{output}/{rows['ok.png']['output_key']}"])
