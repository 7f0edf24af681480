"""The layout of a bulk run's output prefix: result keys, the `_manifest/` parquet shards, `_SUCCESS`,
and which statuses count as done. Pure (storage + parquet): the Ray job (cluster/bulk.py) writes it;
resumed runs and `prodray report` read it.
"""

import hashlib
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
SAME_FORMAT_SUFFIXES = {"png": {".png"}, "jpeg": {".jpg", ".jpeg"}, "webp": {".webp"}}


class UnsafeKey(ValueError):
    """An input key that could name a place outside the output root; that input is refused."""


def check_key(key: str) -> str:
    """`key` when it is safe to place under the output root: relative, no `..` component, no NUL,
    valid UTF-8 (a key read with surrogate escapes is not)."""
    if not key or key.startswith("/") or "\x00" in key or ".." in key.replace("\\", "/").split("/"):
        raise UnsafeKey(f"input key {key!r} is empty, absolute or has a '..' component")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeKey(f"input key {key!r} is not valid UTF-8") from None
    return key


def output_key(input_key: str, model_id: str, config: BulkConfig, mask_tag: str = "", colour: str = "") -> str:
    """The result's key under the output prefix: a pure function of input key, model and parameters
    (for repair, `mask_tag` names the masks: see mask_tag; for recolour, `colour` is one of
    config.colours). It is also what a rerun checks its done set against, so another model or other
    parameters (another key) process the input again."""
    check_key(input_key)
    if config.task == "repair":
        params = f"repair-m{mask_tag}-{config.format}-q{config.quality}"
    elif config.task == "recolour":
        params = f"recolour-{colour_slug(colour)}-{config.format}-q{config.quality}"
    else:
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
    if config.strength is not None:
        params += f"-s{config.strength}"
    return f"{model_id}/{params}/{result_name(input_key, config.format)}"


def colour_slug(colour: str) -> str:
    """A canonical colour as a key part: `Navy Blue` -> `navy-blue`, `#2e8b57` -> `2e8b57`."""
    if not colour:
        raise ValueError("a recolour result key needs its colour")
    return colour.lstrip("#").lower().replace(" ", "-")


def result_keys(input_key: str, model_id: str, config: BulkConfig, mask_tag: str = "") -> list[str]:
    """Every result key of one input: one per colour for recolour (the input is done when all
    are), else its one output_key."""
    colours = config.colours.split(",") if config.task == "recolour" else [""]
    return [output_key(input_key, model_id, config, mask_tag, colour) for colour in colours]


def mask_tag(config: BulkConfig, mask_bytes: bytes | None = None) -> str:
    """What the masks of a repair run are, for its output keys: the one mask file's content
    (--mask), or the masks prefix's URI (--masks; new masks under the same prefix need a new one)."""
    named = mask_bytes if config.mask is not None else (config.masks or "").rstrip("/").encode()
    return hashlib.sha256(named).hexdigest()[:10]


def mask_key(input_key: str) -> str:
    """Where an input's mask lies under --masks: its key with `.png` as the suffix (`a/b.jpg` -> `a/b.png`)."""
    return f"{PurePosixPath(input_key).with_suffix('')}.png"


def result_name(input_key: str, fmt: str) -> str:
    """The input key with the output format's extension: replaced when the input already has that
    format's extension (`a.png` -> `a.png`, `a.jpeg` -> `a.jpg` for jpeg), appended otherwise
    (`a.jpg` -> `a.jpg.png`), so that `a.jpg` and `a.webp` never share a result."""
    extension = EXTENSIONS[fmt]
    path = PurePosixPath(input_key)
    if path.suffix.lower() in SAME_FORMAT_SUFFIXES[fmt]:
        return f"{path.with_suffix('')}.{extension}"
    return f"{input_key}.{extension}"


def write_manifest_shard(output: str, rows: list[dict], run_id: str, index: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    storage.put_bytes(storage.join(output, MANIFEST_DIR, f"{run_id}-{index:05d}.parquet"), buffer.getvalue())


def done_key(row: dict) -> str:
    """What a manifest row answers for: (input, output key). Rows written before `result_key`
    existed fall back to their output key (empty for refusals, which are then retried once)."""
    return row.get("result_key") or row.get("output_key") or ""


def final_rows(rows: list[dict]) -> list[dict]:
    """One final answer per (input, output key): the last row written for it (shards are named
    by run id, which starts with the run's start time, so listing order is run order)."""
    last: dict = {}
    for row in rows:
        last[(row["input_key"], done_key(row))] = row
    return list(last.values())


def read_manifest(output: str) -> list[dict]:
    """The final manifest row of every (input, output key) under `output`, over every run so far."""
    rows = []
    shards = storage.list_files(storage.join(output, MANIFEST_DIR), suffixes=(".parquet",))
    for shard in sorted(shards, key=lambda entry: entry["uri"]):
        rows.extend(pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist())
    return final_rows(rows)
