"""Bulk job under faults, with real Ray and the real SeaweedFS (no mocks): S3 errors injected by
a loopback proxy, a worker node killed mid-job, the driver killed mid-job and resubmitted.
Each must end with exactly one output object and one manifest row per input."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import image_bytes
from prodray import storage
from prodray.bulk import BulkOptions, run_bulk
from prodray.checkpoint import export_model
from prodray.models import build_model
from s3_fault_proxy import FaultProxy

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def tiny_model(bucket: str) -> tuple[str, str]:
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    uri = f"s3://{bucket}/model"
    model_id = export_model(uri, "enhancer", model,
                            {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"})
    return uri, model_id


def put_catalog(bucket: str, count: int, size: int = 40) -> tuple[str, set[str]]:
    source = f"s3://{bucket}/catalog"
    keys = {f"items/{i:03d}.jpg" for i in range(count)}
    for i, key in enumerate(sorted(keys)):
        storage.put_bytes(f"{source}/{key}", image_bytes("JPEG", size, size + 8 * (i % 3), seed=i))
    return source, keys


def manifest_rows(output: str) -> list[dict]:
    rows = []
    for shard in storage.list_files(storage.join(output, "_manifest"), suffixes=(".parquet",)):
        rows += pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist()
    return rows


def result_keys(output: str) -> list[str]:
    """Every result object under the output prefix (manifest, _SUCCESS and temp files excluded)."""
    return [storage.relative_key(f["uri"], output) for f in storage.list_files(output)]


def assert_one_result_per_input(output: str, keys: set[str], allowed=("ok", "skipped")) -> list[dict]:
    rows = manifest_rows(output)
    by_key = [r["input_key"] for r in rows]
    assert sorted(by_key) == sorted(keys), "one manifest row per input, no duplicates, none missing"
    assert all(r["status"] in allowed for r in rows), [(r["input_key"], r["status"], r["reason"]) for r in rows
                                                       if r["status"] not in allowed]
    results = result_keys(output)
    assert len(results) == len(set(results)) == len(keys), "exactly one output object per input"
    assert sorted(results) == sorted(r["output_key"] for r in rows)
    return rows


# ---------------------------------------------------------------- a. S3 faults through a proxy

def test_s3_faults_are_retried_nothing_lost_nothing_doubled(bucket, s3_env, monkeypatch):
    model_uri, _ = tiny_model(bucket)
    source, keys = put_catalog(bucket, 16)
    output = f"s3://{bucket}/enhanced"
    with FaultProxy(s3_env.endpoint, fault_rate=0.2, seed=5) as proxy:
        # The driver and the Ray workers (started after this) all talk to S3 through the proxy.
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._FS_CACHE.clear()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            summary = run_bulk(BulkOptions(input=source, output=output, model=model_uri, scale=2, batch_size=4,
                                           actor_cpus=0.5, progress_every_s=1e9))
        finally:
            ray.shutdown()
        faults = dict(proxy.faults)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # check through the direct endpoint
    storage._FS_CACHE.clear()
    print(f"faults injected: {faults} of {proxy.requests} requests")
    assert sum(faults.values()) > 0 and len(faults) == 3, faults
    assert summary["counts"] == {"ok": len(keys)}
    assert_one_result_per_input(output, keys, allowed=("ok",))


def test_create_only_put_whose_response_was_lost_counts_as_written(bucket, s3_env, monkeypatch):
    uri = f"s3://{bucket}/results/a.png"
    # The first request (the PUT) is forwarded, then the connection dropped: the object lands, the
    # client never hears, and its retry meets a 412 from the object it wrote itself.
    with FaultProxy(s3_env.endpoint, fault_rate=1.0, faults=("drop_after",), max_faults=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._FS_CACHE.clear()
        assert storage.put_if_absent(uri, b"first") is True
        assert proxy.faults["drop_after"] == 1
        assert storage.put_if_absent(uri, b"other") is False  # other bytes: never overwritten
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    storage._FS_CACHE.clear()
    assert storage.get_bytes(uri) == b"first"
