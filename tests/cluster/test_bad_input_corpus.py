"""The bad-input corpus (tests/bad_inputs.py) through the bulk job on real Ray and the real S3
server: every file gets exactly one manifest row with the documented outcome, every decodable one a
result, and the job finishes. (The endpoint runs the same corpus in test_serve.py.)"""

import pytest
from bad_inputs import corpus

from prodray.catalog.manifest import read_manifest
from prodray.cluster.bulk import run_bulk
from prodray.config import BulkConfig
from prodray.enhancer.model import build_model
from prodray.io import storage
from prodray.io.artifacts import export_model
from prodray.io.codec import decode_image

ray = pytest.importorskip("ray")
MAX_BYTES = 1_000_000


def test_every_corpus_file_is_recorded_with_its_outcome_and_the_job_finishes(bucket, s3_env):
    cases = corpus(MAX_BYTES)
    assert len(cases) >= 40
    source, output = f"s3://{bucket}/catalog", f"s3://{bucket}/enhanced"
    for case in cases:
        storage.put_bytes(f"{source}/bad/{case.name}", case.data)
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    model_uri = f"s3://{bucket}/model"
    export_model(model_uri, "enhancer", model, {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1,
                                                "kind": "enhancer"})
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    try:
        summary = run_bulk(BulkConfig(input=source, output=output, model=model_uri, scale=2, max_bytes=MAX_BYTES,
                                      actor_cpus=0.5, progress_every_s=1e9))
    finally:
        ray.shutdown()
    rows = {row["input_key"]: row for row in read_manifest(output)}
    assert sorted(rows) == sorted(f"bad/{case.name}" for case in cases)
    wrong = {}
    for case in cases:
        row = rows[f"bad/{case.name}"]
        if case.outcome == "ok":
            if row["status"] != "ok":
                wrong[case.name] = (row["status"], row["reason"])
                continue
            result = decode_image(storage.get_bytes(storage.join(output, row["output_key"])))
            source_image = decode_image(case.data, max_bytes=MAX_BYTES)
            assert (result.height, result.width) == (2 * source_image.height, 2 * source_image.width), case.name
        elif row["status"] != "rejected" or not row["reason"].startswith(case.outcome):
            wrong[case.name] = (row["status"], row["reason"])
    assert not wrong, wrong
    ok = sum(case.outcome == "ok" for case in cases)
    assert summary["counts"] == {"ok": ok, "rejected": len(cases) - ok}
