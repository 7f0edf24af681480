"""Input listing for bulk jobs, in parallel and without the catalog's keys in the driver.

Ray tasks each list one directory level (an S3 delimiter listing, or one local folder) and write
that level's pending image rows to parquet shards under `<output>/_listing/<run id>/`; they
return only the subdirectories to visit next and counts, so the driver holds a frontier of
directory names, never keys. Inputs that are already done are dropped inside those tasks, by
looking their key up in a sorted array of 64-bit key hashes built (also by tasks) from the result
manifest: 8 bytes per done key in the object store. A done key is the output key an input gets
from (input key, model id, parameters), so a rerun with another model or scale is not "done".
Two different keys sharing a hash would skip an unprocessed image; at a million done keys the
chance of any such pair is about 3e-8.
"""

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prodray.catalog.manifest import done_key
from prodray.io import storage

LISTING_DIR = "_listing"
SHARD_ROWS = 4096  # rows per listing shard: bounds a listing task's memory on huge flat folders
MANIFEST_SHARDS_PER_TASK = 32
INPUT_SCHEMA = pa.schema([("uri", pa.string()), ("key", pa.string()), ("etag", pa.string()), ("size", pa.int64())])


@dataclass(frozen=True)
class Listing:
    uri: str  # folder of parquet shards with the pending rows {uri, key, etag, size}
    listed: int  # images found
    pending: int  # of those, not done yet
    shards: int


def key_hashes(keys) -> np.ndarray:
    """uint64 hash per key (blake2b, 8 bytes)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
                     for key in keys], dtype=np.uint64)


def is_done(keys, done: np.ndarray, result_key=None) -> np.ndarray:
    """Boolean mask: which keys are in the sorted hash array `done`, each looked up as
    `result_key(key)` (the output key it would get: the done set is keyed by what the output
    depends on) or as itself. `result_key` may give a list (recolour: a result per colour): then
    the key is done when every one is. A key `result_key` refuses is never done (the job refuses it)."""
    if len(done) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    if result_key is None:
        return _in_done(key_hashes(keys), done)
    answers = [_result_key_or_none(result_key, key) for key in keys]
    groups = [[] if answer is None else [answer] if isinstance(answer, str) else list(answer) for answer in answers]
    found = _in_done(key_hashes([result for group in groups for result in group]), done)
    ends = np.cumsum([len(group) for group in groups])
    return np.array([len(group) > 0 and bool(found[end - len(group):end].all()) for group, end in zip(groups, ends)])


def _in_done(hashes: np.ndarray, done: np.ndarray) -> np.ndarray:
    where = np.minimum(np.searchsorted(done, hashes), len(done) - 1)
    return done[where] == hashes


class ShardWriter:
    """Buffers pending rows and writes them as numbered parquet shards of at most SHARD_ROWS."""

    def __init__(self, folder: str, name: str):
        self.folder, self.name = folder, name
        self.rows: list[dict] = []
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        while len(self.rows) >= SHARD_ROWS:
            self._flush(self.rows[:SHARD_ROWS])
            self.rows = self.rows[SHARD_ROWS:]

    def close(self) -> int:
        if self.rows:
            self._flush(self.rows)
            self.rows = []
        return self.written

    def _flush(self, rows: list[dict]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=INPUT_SCHEMA), buffer)
        storage.put_bytes(storage.join(self.folder, f"{self.name}-{self.written:05d}.parquet"), buffer.getvalue())
        self.written += 1


def _result_key_or_none(result_key, key: str) -> str | None:
    try:
        return result_key(key)
    except ValueError:
        return None


def pending_rows(files: list[dict], root: str, suffixes: tuple[str, ...], done: np.ndarray,
                 result_key=None) -> tuple[int, list[dict]]:
    """-> (images among `files`, rows of those not done)."""
    images = [f for f in files if f["uri"].rsplit("/", 1)[-1].lower().endswith(suffixes)]
    rows = [{"uri": f["uri"], "key": storage.relative_key(f["uri"], root), "etag": f["etag"], "size": int(f["size"])}
            for f in images]
    keep = ~is_done([row["key"] for row in rows], done, result_key)
    return len(images), [row for row, kept in zip(rows, keep) if kept]


def list_directory(directory: str, root: str, suffixes: tuple[str, ...], done: np.ndarray, folder: str,
                   name: str, result_key=None) -> dict:
    """Task body: one directory level -> listing shards; returns subdirectories and counts."""
    writer = ShardWriter(folder, name)
    listed = pending = 0
    subdirectories: list[str] = []
    for files, subdirs in storage.list_level(directory):
        images, rows = pending_rows(files, root, suffixes, done, result_key)
        listed, pending = listed + images, pending + len(rows)
        writer.add(rows)
        subdirectories.extend(subdirs)
    return {"subdirectories": subdirectories, "listed": listed, "pending": pending, "shards": writer.close()}


def list_manifest(manifest: str, done: np.ndarray, folder: str, result_key=None) -> dict:
    """Task body: a parquet manifest of keys (columns `key`, `bytes`; keys relative to the
    manifest's folder) -> listing shards, read a record batch at a time."""
    base = manifest.rsplit("/", 1)[0]
    writer = ShardWriter(folder, "manifest")
    listed = pending = 0
    filesystem, path = storage.pyarrow_filesystem(manifest)
    # Ranged reads: the footer, then one row group at a time, never the whole object.
    with filesystem.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        missing = {"key", "bytes"} - set(parquet.schema_arrow.names)
        if missing:
            raise ValueError(f"input manifest {manifest} lacks column(s) {sorted(missing)} (needs key, bytes)")
        for batch in parquet.iter_batches(columns=["key", "bytes"], batch_size=SHARD_ROWS):
            keys, sizes = batch.column("key").to_pylist(), batch.column("bytes").to_pylist()
            keep = ~is_done(keys, done, result_key)
            rows = [{"uri": storage.join(base, key), "key": key, "etag": "", "size": int(size)}
                    for key, size, kept in zip(keys, sizes, keep) if kept]
            listed, pending = listed + len(keys), pending + len(rows)
            writer.add(rows)
    return {"subdirectories": [], "listed": listed, "pending": pending, "shards": writer.close()}


def done_hashes_of(shard_uris: list[str], statuses: tuple[str, ...]) -> np.ndarray:
    """Task body: hashes of the result keys (input, model, parameters: manifest.done_key) with a
    final status in some result-manifest shards."""
    keys = []
    for uri in shard_uris:
        for row in pq.read_table(io.BytesIO(storage.get_bytes(uri))).to_pylist():
            if row["status"] in statuses and done_key(row):
                keys.append(done_key(row))
    return key_hashes(keys)


def done_hashes(manifest_dir: str, statuses: tuple[str, ...]) -> np.ndarray:
    """Sorted unique hashes of every result key already done, read by parallel tasks."""
    import ray

    try:
        shards = [entry["uri"] for entry in storage.list_files(manifest_dir, suffixes=(".parquet",))]
    except FileNotFoundError:
        return np.zeros(0, dtype=np.uint64)
    task = ray.remote(num_cpus=0.25)(done_hashes_of)
    groups = [shards[i:i + MANIFEST_SHARDS_PER_TASK] for i in range(0, len(shards), MANIFEST_SHARDS_PER_TASK)]
    parts = ray.get([task.remote(group, statuses) for group in groups])
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def list_pending(source: str, suffixes: tuple[str, ...], done: np.ndarray, folder: str, echo=print,
                 result_key=None) -> Listing:
    """Walk `source` (a prefix/folder, or a .parquet manifest of keys) with Ray tasks, one per
    directory level, several in flight; pending rows land in shards under `folder`. An input is
    done when `result_key(key)` (default: the key itself) is in `done`."""
    import ray

    done_ref = ray.put(done)
    if source.endswith(".parquet"):
        result = ray.get(ray.remote(num_cpus=0.25)(list_manifest).remote(source, done_ref, folder, result_key))
        return Listing(folder, result["listed"], result["pending"], result["shards"])
    task = ray.remote(num_cpus=0.25, max_retries=3)(list_directory)
    in_flight = {task.remote(source, source, suffixes, done_ref, folder, "d00000", result_key): source}
    launched, visited, listed, pending, shards = 1, 0, 0, 0, 0
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        in_flight.pop(ready[0])
        result = ray.get(ready[0])
        visited += 1
        listed, pending, shards = listed + result["listed"], pending + result["pending"], shards + result["shards"]
        for subdirectory in result["subdirectories"]:
            in_flight[task.remote(subdirectory, source, suffixes, done_ref, folder, f"d{launched:05d}",
                                  result_key)] = subdirectory
            launched += 1
        if visited % 100 == 0:
            echo(f"listing: {visited} folders, {listed} images so far, {len(in_flight)} folders in flight")
    return Listing(folder, listed, pending, shards)
