"""The layout of a bulk run's output prefix: result keys, the `_manifest/` parquet shards, `_SUCCESS`,
and which statuses count as done. Pure (storage + parquet): the Ray job (cluster/bulk.py) writes it;
resumed runs and `prodray report` read it.
"""

import io
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from prodray.config import BulkConfig
from prodray.io import storage

MANIFEST_DIR = "_manifest"
SUCCESS_FILE = "_SUCCESS"
# A rerun skips inputs with these statuses; "error" (a fault, not the input's content) is retried.
DONE_STATUSES = ("ok", "skipped", "rejected")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # one per config.OutputFormat


def output_key(input_key: str, model_id: str, config: BulkConfig) -> str:
    """The result's key under the output prefix: a pure function of input key, model and parameters."""
    params = f"x{config.scale}-{config.format}-q{config.quality}"
    # Constraints change the bytes, so they are part of the key (only when set: old keys stay valid).
    if config.min_longest_side:
        params += f"-min{config.min_longest_side}"
    if config.pad_square:
        params += "-square"
    if config.max_output_bytes:
        params += f"-max{config.max_output_bytes}b"
    if config.self_ensemble:
        params += "-ens8"
    stem = str(PurePosixPath(input_key).with_suffix(""))
    return f"{model_id}/{params}/{stem}.{EXTENSIONS[config.format]}"


def write_manifest_shard(output: str, rows: list[dict], run_id: str, index: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    storage.put_bytes(storage.join(output, MANIFEST_DIR, f"{run_id}-{index:05d}.parquet"), buffer.getvalue())


def read_manifest(output: str) -> list[dict]:
    """Every manifest row under `output`, of every run so far."""
    rows = []
    for shard in storage.list_files(storage.join(output, MANIFEST_DIR), suffixes=(".parquet",)):
        rows.extend(pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist())
    return rows
