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
from s3_fault_proxy import FaultProxy

from prodray.cluster.bulk import run_bulk
from prodray.config import BulkConfig
from prodray.enhancer.model import build_model
from prodray.io import storage
from prodray.io.artifacts import export_model

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


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
    storage._s3fs().invalidate_cache()
    for shard in storage.list_files(storage.join(output, "_manifest"), suffixes=(".parquet",)):
        rows += pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist()
    return rows


def result_keys(output: str) -> list[str]:
    """Every result object under the output prefix (manifest, _SUCCESS and temp files excluded)."""
    storage._s3fs().invalidate_cache()  # s3fs caches listings; we want what is there now
    return [storage.relative_key(f["uri"], output) for f in storage.list_files(output)]


def enable_versioning(boto_client, bucket: str) -> None:
    """Every PUT that lands becomes a version: an overwrite shows as a second version of the key."""
    boto_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert boto_client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"


def versions_per_key(boto_client, bucket: str, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    pages = boto_client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    for page in pages:
        for version in page.get("Versions", []):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def assert_one_result_per_input(output: str, keys: set[str], allowed=("ok", "skipped"), boto_client=None) -> list[dict]:
    """One manifest row and one result object per input; with `boto_client` (the output bucket
    versioned), also one write per result: a `skipped` row must never hide a second write."""
    rows = manifest_rows(output)
    by_key = [r["input_key"] for r in rows]
    assert sorted(by_key) == sorted(keys), "one manifest row per input, no duplicates, none missing"
    assert all(r["status"] in allowed for r in rows), [(r["input_key"], r["status"], r["reason"]) for r in rows
                                                       if r["status"] not in allowed]
    results = result_keys(output)
    assert len(results) == len(set(results)) == len(keys), "exactly one output object per input"
    assert sorted(results) == sorted(r["output_key"] for r in rows)
    if boto_client is not None:
        bucket, prefix = output[len("s3://"):].split("/", 1)
        versions = versions_per_key(boto_client, bucket, prefix)
        written = {key: versions.get(f"{prefix}/{key}", 0) for key in results}
        assert set(written.values()) == {1}, {k: n for k, n in written.items() if n != 1}
    return rows


def start_cluster(**head_node_args):
    """A ray.cluster_utils.Cluster head. Ray gives a raylet a fixed 30 s to register with the GCS
    (ray/_private/node.py); on a 2-core box at load average 40+ that can run out, so try twice."""
    from ray.cluster_utils import Cluster

    for attempt in (1, 2):
        try:
            return Cluster(initialize_head=True, head_node_args=head_node_args)
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            if attempt == 2:
                raise
            time.sleep(5)


# ---------------------------------------------------------------- a. S3 faults through a proxy

def test_s3_faults_are_retried_nothing_lost_nothing_doubled(bucket, s3_env, monkeypatch, boto_client):
    enable_versioning(boto_client, bucket)
    model_uri, _ = tiny_model(bucket)
    source, keys = put_catalog(bucket, 16)
    output = f"s3://{bucket}/enhanced"
    with FaultProxy(s3_env.endpoint, fault_rate=0.2, seed=5) as proxy:
        # The driver and the Ray workers (started after this) all talk to S3 through the proxy.
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage._FS_CACHE.clear()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            summary = run_bulk(BulkConfig(input=source, output=output, model=model_uri, scale=2, batch_size=4,
                                          actor_cpus=0.5, progress_every_s=1e9))
        finally:
            ray.shutdown()
        faults = dict(proxy.faults)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # check through the direct endpoint
    storage._FS_CACHE.clear()
    print(f"faults injected: {faults} of {proxy.requests} requests")
    assert sum(faults.values()) > 0 and len(faults) == 3, faults
    assert summary["counts"] == {"ok": len(keys)}
    assert_one_result_per_input(output, keys, allowed=("ok",), boto_client=boto_client)


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


# ---------------------------------------------------------------- b. a worker node killed mid-job

def _node_of_enhancer_actor() -> str | None:
    """Node id (hex) of the live Ray Data actor that runs EnhanceWriter, read from the GCS."""
    for actor in ray._private.state.actors().values():
        if actor.get("State") == "ALIVE" and "MapWorker" in str(actor.get("ActorClassName", "")):
            return actor["Address"]["NodeID"]
    return None


def count_results(boto_client, bucket: str, prefix: str) -> int:
    """Result objects written so far (read with boto3, uncached, safe from a second thread)."""
    pages = boto_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return sum(1 for page in pages for obj in page.get("Contents", []) if "/_" not in obj["Key"])


def test_worker_node_killed_mid_job_every_input_one_result(bucket, s3_env, boto_client):
    import threading

    enable_versioning(boto_client, bucket)
    model_uri, _ = tiny_model(bucket)
    source, keys = put_catalog(bucket, 40, size=64)
    output = f"s3://{bucket}/enhanced"
    # Head: 1 CPU (driver side, decode tasks). Two workers: 2 CPUs each. The enhancer actor asks for
    # 1.5 CPUs, so it can only live on a worker node; when that node dies Ray restarts it on the other.
    # Fast health checks so the dead node is noticed in seconds, not the default ~30 s.
    cluster = start_cluster(num_cpus=1, object_store_memory=100 * 2**20, include_dashboard=False,
                            _system_config={"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                                            "health_check_failure_threshold": 3})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20) for _ in range(2)]
    killed: dict = {}
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")

        def kill_actor_node_after_first_outputs():
            try:
                _kill_actor_node_after_first_outputs()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                killed.setdefault("error", repr(exc))

        def _kill_actor_node_after_first_outputs():
            deadline = time.time() + 300
            while time.time() < deadline and not killed:
                done = count_results(boto_client, bucket, "enhanced")
                node_id = _node_of_enhancer_actor()
                if done >= 4 and node_id:
                    for node in workers:
                        if node.node_id == node_id:
                            killed.update(node=node_id, outputs_before=done)
                            cluster.remove_node(node, allow_graceful=False)
                    if "node" not in killed:
                        killed["error"] = f"enhancer actor on {node_id}, not on a worker node"
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_actor_node_after_first_outputs, daemon=True)
        killer.start()
        summary = run_bulk(BulkConfig(input=source, output=output, model=model_uri, scale=2, batch_size=2,
                                      actor_cpus=1.5, progress_every_s=1e9))
        killer.join(timeout=10)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"killed {killed}; summary counts {summary['counts']}")
    assert "node" in killed and killed["outputs_before"] < len(keys), f"the node must die mid-job: {killed}"
    assert sum(summary["counts"].values()) == len(keys)
    # Results written by the dead node's last batch are found on the retry: `skipped`, and each
    # result object was written once (one version per key).
    assert_one_result_per_input(output, keys, allowed=("ok", "skipped"), boto_client=boto_client)


# ---------------------------------------------------------------- c. the driver killed mid-job

def test_driver_killed_mid_job_rerun_completes_the_rest(bucket, s3_env, boto_client):
    enable_versioning(boto_client, bucket)
    model_uri, _ = tiny_model(bucket)
    source, keys = put_catalog(bucket, 40, size=64)
    output = f"s3://{bucket}/enhanced"
    # A running cluster the job is submitted to (as with `ray job submit`); the driver is a separate
    # process that connects to it, so killing it leaves the cluster up, as a crashed job would.
    cluster = start_cluster(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False)
    env = {**os.environ, "RAY_ADDRESS": cluster.address}  # AWS_* set by s3_env
    command = [sys.executable, "jobs/enhance_catalog.py", "--input", source, "--output", output, "--model", model_uri,
               "--scale", "2", "--batch-size", "2", "--actor-cpus", "0.5"]
    try:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        deadline, written = time.time() + 300, 0
        while time.time() < deadline and first.poll() is None:
            written = count_results(boto_client, bucket, "enhanced")
            if written >= 4:
                break
            time.sleep(0.2)
        assert first.poll() is None, "the first run must still be going when it is killed"
        os.killpg(first.pid, signal.SIGKILL)  # the driver's own process group (start_new_session)
        first.wait(timeout=30)
        partial = count_results(boto_client, bucket, "enhanced")
        assert 4 <= partial < len(keys), partial
        assert not storage.exists(f"{output}/_SUCCESS")

        rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        cluster.shutdown()
    print(f"killed after {written} results ({partial} when it died); rerun:\n{rerun.stdout[-600:]}")
    rows = assert_one_result_per_input(output, keys, allowed=("ok", "skipped"), boto_client=boto_client)
    skipped = sum(r["status"] == "skipped" for r in rows)
    assert skipped >= partial  # what the killed run wrote is found again, never written twice
