"""Bulk catalog enhancement on Ray Data: input prefix -> enhanced objects + manifest + _SUCCESS.

Stages: listing (Ray tasks per folder level, pending rows to parquet shards; see listing.py) ->
fetch + decode (CPU tasks, per-image failures recorded, never dropping neighbours) ->
enhance + encode + create-only write (actor pool, model loaded once per actor) -> manifest
rows streamed back to the driver, which writes them in parquet shards and prints progress.
Output keys are a pure function of (input key, model id, parameters), so reruns resume.
"""

import io
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prodray.io import storage
from prodray.io.codec import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected, decode_image, encode_image
from prodray.io.images import IMAGE_SUFFIXES, pad_to_square
from prodray.cluster.listing import LISTING_DIR, done_hashes, list_pending

log = logging.getLogger(__name__)

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MANIFEST_DIR = "_manifest"
DONE_STATUSES = ("ok", "skipped", "rejected")


@dataclass(frozen=True)
class BulkOptions:
    input: str
    output: str
    model: str | None = None  # export folder / s3:// URI / shipped name; default: shipped for `scale`
    scale: int = 2
    format: str = "png"
    quality: int = 90
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 8
    actors: int = 1
    actor_cpus: float = 1.0  # CPUs reserved per enhancer actor
    actor_gpus: float | None = None  # GPUs per enhancer actor; None: 1 when the cluster has GPUs, else 0
    # Memory reserved per enhancer actor, for Ray's scheduler (not a hard limit): one measured
    # 1.4-1.7 GiB on 8-image batches of 256-512 px, so 2 GiB keeps actors off nodes that cannot
    # hold them. 0 reserves nothing.
    actor_memory_gib: float = 2.0
    max_error_fraction: float | None = None  # fail the job above this share of rejected+error
    progress_every_s: float = 10.0
    # Marketplace constraints (None/False: off). An output whose longest side is below
    # min_longest_side is `rejected` (pick a larger --scale; we do not invent pixels by resizing);
    # pad_square centres it on pure white; max_output_bytes lowers JPEG/WebP quality in steps until
    # it fits (PNG cannot shrink losslessly: `rejected`).
    min_longest_side: int | None = None
    pad_square: bool = False
    max_output_bytes: int | None = None
    # Average the model over the 8 flips/turns of each input: 8x the model's compute for
    # +0.05-0.09 dB on Set5/Set14 with the shipped models (BENCHMARKS.md, "Self-ensemble").
    self_ensemble: bool = False

    def check(self) -> "BulkOptions":
        storage.split_uri(self.input)
        storage.split_uri(self.output)
        if self.format not in EXTENSIONS:
            raise ValueError(f"--format must be one of {sorted(EXTENSIONS)}, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be 1..100, got {self.quality}")
        if self.scale not in (1, 2, 4):
            raise ValueError(f"--scale must be 1, 2 or 4, got {self.scale}")
        if self.input.rstrip("/") == self.output.rstrip("/"):
            raise ValueError("--output must differ from --input")
        if self.min_longest_side is not None and self.min_longest_side < 1:
            raise ValueError(f"--min-longest-side must be positive, got {self.min_longest_side}")
        if self.actor_gpus is not None and not self.actor_gpus >= 0:
            raise ValueError(f"--actor-gpus must be 0 or more, got {self.actor_gpus}")
        if not self.actor_memory_gib >= 0:
            raise ValueError(f"--actor-memory-gib must be 0 or more, got {self.actor_memory_gib}")
        if self.max_output_bytes is not None and self.max_output_bytes < 1:
            raise ValueError(f"--max-output-bytes must be positive, got {self.max_output_bytes}")
        return self


def output_key(input_key: str, model_id: str, options: BulkOptions) -> str:
    """The result's key under the output prefix: a pure function of input key, model and parameters."""
    params = f"x{options.scale}-{options.format}-q{options.quality}"
    # Constraints change the bytes, so they are part of the key (only when set: old keys stay valid).
    if options.min_longest_side:
        params += f"-min{options.min_longest_side}"
    if options.pad_square:
        params += "-square"
    if options.max_output_bytes:
        params += f"-max{options.max_output_bytes}b"
    if options.self_ensemble:
        params += "-ens8"
    stem = str(PurePosixPath(input_key).with_suffix(""))
    return f"{model_id}/{params}/{stem}.{EXTENSIONS[options.format]}"


class ConstraintFailed(ValueError):
    """The enhanced image cannot meet a marketplace constraint; recorded as `rejected`."""


MIN_FIT_QUALITY = 30


def encode_for_marketplace(rgb: np.ndarray, alpha: np.ndarray | None, options: BulkOptions, icc_profile=None,
                           dpi=None) -> tuple[bytes, str, tuple[int, int]]:
    """Apply the constraints in `options` and encode. -> (bytes, note for the manifest's reason, (H, W) out).

    Raises ConstraintFailed when the image cannot meet them."""
    longest = max(rgb.shape[:2])
    if options.min_longest_side and longest < options.min_longest_side:
        raise ConstraintFailed(f"too_small: longest side {longest} px < {options.min_longest_side} px after "
                               f"x{options.scale}")
    if options.pad_square:
        rgb, alpha = pad_to_square(rgb, alpha)
    quality = options.quality
    while True:
        data = encode_image(rgb, alpha=alpha, fmt=options.format, quality=quality, icc_profile=icc_profile, dpi=dpi)
        if not options.max_output_bytes or len(data) <= options.max_output_bytes:
            note = f"quality lowered to {quality} to fit {options.max_output_bytes} bytes" if quality != options.quality else ""
            return data, note, rgb.shape[:2]
        if options.format == "png" or quality <= MIN_FIT_QUALITY:
            raise ConstraintFailed(f"too_many_output_bytes: {len(data)} > {options.max_output_bytes} "
                                   f"({options.format}, quality {quality})")
        quality = max(MIN_FIT_QUALITY, quality - 10)


# ---------------------------------------------------------------- stage 1: fetch + decode (tasks)

def fetch_and_decode(batch: dict, max_bytes: int, max_pixels: int) -> dict:
    """Per row: get bytes, decode with limits. Failures become rows with a status, not exceptions."""
    rows = {k: [] for k in ("input_uri", "input_key", "input_etag", "input_size", "status", "reason",
                            "pixels", "alpha", "height", "width", "icc", "dpi", "decode_ms")}
    for uri, key, etag, size in zip(batch["uri"], batch["key"], batch["etag"], batch["size"]):
        started = time.perf_counter()
        status, reason, decoded = "pending", "", None
        try:
            if int(size) > max_bytes:
                raise ImageRejected("too_many_bytes", f"{size} bytes > limit {max_bytes}")
            decoded = decode_image(storage.get_bytes(str(uri)), max_bytes=max_bytes, max_pixels=max_pixels)
        except ImageRejected as exc:
            status, reason = "rejected", f"{exc.reason}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - recorded in the manifest, the job goes on
            status, reason = "error", storage.redact(f"{type(exc).__name__}: {exc}")[:300]
        rows["input_uri"].append(str(uri))
        rows["input_key"].append(str(key))
        rows["input_etag"].append(str(etag))
        rows["input_size"].append(int(size))
        rows["status"].append(status)
        rows["reason"].append(reason)
        rows["pixels"].append(decoded.rgb.tobytes() if decoded else b"")
        rows["alpha"].append(decoded.alpha.tobytes() if decoded is not None and decoded.alpha is not None else b"")
        rows["height"].append(decoded.height if decoded else 0)
        rows["width"].append(decoded.width if decoded else 0)
        rows["icc"].append((decoded.icc_profile or b"") if decoded is not None else b"")
        rows["dpi"].append(json.dumps(list(decoded.dpi)) if decoded is not None and decoded.dpi else "")
        rows["decode_ms"].append((time.perf_counter() - started) * 1000)
    return rows


# ---------------------------------------------------------------- stage 2: enhance + write (actors)

class EnhanceWriter:
    """Actor: loads the model once; enhances a batch (same-shape pieces batched), encodes, writes
    create-only, and returns manifest rows."""

    def __init__(self, model_ref: str, options: BulkOptions):
        import torch

        from prodray.enhancer.inference import Enhancer
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so "cuda" is that one.
        device = "cuda" if options.actor_gpus and torch.cuda.is_available() else "cpu"
        self.enhancer = Enhancer.load(model_ref, device=device, max_batch=options.batch_size,
                                      self_ensemble=options.self_ensemble)
        self.options = options

    def __call__(self, batch: dict) -> dict:
        options, enhancer = self.options, self.enhancer
        count = len(batch["input_key"])
        out = {"output_key": [""] * count, "width_out": [0] * count, "height_out": [0] * count,
               "enhance_ms": [0.0] * count, "encode_ms": [0.0] * count, "model_id": [enhancer.model_id] * count}
        status, reason = list(batch["status"]), list(batch["reason"])
        todo = []
        for i in range(count):
            if status[i] != "pending":
                continue
            key = output_key(batch["input_key"][i], enhancer.model_id, options)
            out["output_key"][i] = key
            if storage.exists(storage.join(options.output, key)):
                status[i], reason[i] = "skipped", "output exists"  # resumed after a crash
                continue
            todo.append(i)
        images = [np.frombuffer(batch["pixels"][i], np.uint8).reshape(int(batch["height"][i]), int(batch["width"][i]), 3)
                  for i in todo]
        started = time.perf_counter()
        try:
            results = enhancer.enhance_many(images) if images else []
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one huge batch: record, go on
            results = [None] * len(images)
            for i in todo:
                status[i], reason[i] = "error", f"enhance failed: {type(exc).__name__}: {exc}"[:300]
        per_image_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        for i, result in zip(todo, results):
            if result is None:
                continue
            out["enhance_ms"][i] = per_image_ms
            height, width = int(batch["height"][i]), int(batch["width"][i])
            alpha = None
            if len(batch["alpha"][i]):
                from prodray.enhancer.inference import upscale_alpha
                alpha = upscale_alpha(np.frombuffer(batch["alpha"][i], np.uint8).reshape(height, width), enhancer.scale)
            started = time.perf_counter()
            try:
                dpi = tuple(json.loads(batch["dpi"][i])) if batch["dpi"][i] else None
                data, note, shape = encode_for_marketplace(result, alpha, options, dpi=dpi,
                                                           icc_profile=bytes(batch["icc"][i]) or None)
                written = storage.put_if_absent(storage.join(options.output, out["output_key"][i]), data)
                status[i], reason[i] = ("ok", note) if written else ("skipped", "output exists")
                out["height_out"][i], out["width_out"][i] = shape
            except ConstraintFailed as exc:
                status[i], reason[i] = "rejected", str(exc)[:300]
                out["output_key"][i] = ""  # nothing written
            except Exception as exc:  # noqa: BLE001
                status[i], reason[i] = "error", storage.redact(f"write failed: {type(exc).__name__}: {exc}")[:300]
            out["encode_ms"][i] = (time.perf_counter() - started) * 1000
        return {"input_key": list(batch["input_key"]), "input_etag": list(batch["input_etag"]),
                "input_size": list(batch["input_size"]), "status": status, "reason": reason,
                "width_in": list(batch["width"]), "height_in": list(batch["height"]),
                "decode_ms": list(batch["decode_ms"]), **out}


# ---------------------------------------------------------------- driver

def write_manifest_shard(output: str, rows: list[dict], run_id: str, index: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    storage.put_bytes(storage.join(output, MANIFEST_DIR, f"{run_id}-{index:05d}.parquet"), buffer.getvalue())


def resolve_model(options: BulkOptions) -> tuple[str, dict]:
    from prodray.io.artifacts import resolve_export
    reference = options.model or f"enhancer-x{options.scale}"
    _, config_uri = resolve_export(reference)
    config = json.loads(storage.get_bytes(config_uri))
    if int(config["scale"]) != options.scale:
        raise ValueError(f"model {config.get('model_id')} is x{config['scale']}, but --scale is {options.scale}")
    return reference, config


def with_cluster_defaults(options: BulkOptions, cluster: dict) -> BulkOptions:
    """Fill in what depends on the cluster (`cluster` is ray.cluster_resources()): a GPU per
    enhancer actor when the cluster has any, unless --actor-gpus was given. An autoscaling
    cluster with no GPU worker up yet reads as CPU-only: there --actor-gpus must be given."""
    if options.actor_gpus is not None:
        return options
    return replace(options, actor_gpus=1.0 if cluster.get("GPU", 0) > 0 else 0.0)


def check_reservations(options: BulkOptions, cluster: dict) -> None:
    """Fail before any work if the enhancer actors cannot all be placed, or would reserve so many
    CPUs that Ray Data's own file-listing and repartition tasks (1 CPU each, not configurable)
    never start: either way the job would hang, not fail. `cluster` is ray.cluster_resources();
    a cluster with no CPUs yet is autoscaling, and is not checked."""
    cluster_cpus = cluster.get("CPU", 0.0)
    if cluster_cpus <= 0:
        return
    reserved = options.actors * options.actor_cpus
    if cluster_cpus - reserved < 1:
        raise ValueError(f"--actors {options.actors} x --actor-cpus {options.actor_cpus:g} reserves {reserved:g} of "
                         f"the cluster's {cluster_cpus:g} CPUs; Ray Data's read tasks need 1 CPU free. "
                         f"Lower --actor-cpus (a fraction still runs one torch thread) or --actors")
    gpus = options.actors * (options.actor_gpus or 0)
    if gpus > cluster.get("GPU", 0):
        raise ValueError(f"--actors {options.actors} x --actor-gpus {options.actor_gpus:g} asks for {gpus:g} GPUs; "
                         f"the cluster has {cluster.get('GPU', 0):g}. Lower --actors or --actor-gpus (0: CPU only)")
    memory_gib = options.actors * options.actor_memory_gib
    cluster_memory_gib = cluster.get("memory", 0.0) / 2**30
    if memory_gib > cluster_memory_gib:
        raise ValueError(f"--actors {options.actors} x --actor-memory-gib {options.actor_memory_gib:g} reserves "
                         f"{memory_gib:g} GiB; the cluster has {cluster_memory_gib:.1f} GiB for tasks and actors. "
                         f"Lower --actor-memory-gib (0 reserves nothing) or --actors")


def run_bulk(options: BulkOptions, echo=print) -> dict:
    """Run the whole job; returns the _SUCCESS summary (or {'nothing_to_do': True, ...})."""
    options.check()
    model_ref, model_config = resolve_model(options)  # fails before any work on a bad model
    model_id = model_config["model_id"]
    started = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    listing_uri = storage.join(options.output, LISTING_DIR, run_id)
    try:
        return _run_listed(options, model_ref, model_id, run_id, listing_uri, started, echo)
    finally:
        storage.delete_tree(listing_uri)


def _run_listed(options: BulkOptions, model_ref: str, model_id: str, run_id: str, listing_uri: str,
                started: float, echo) -> dict:
    import ray
    import ray.data

    # Before the listing, which on a large catalog is minutes of work.
    cluster = ray.cluster_resources()
    options = with_cluster_defaults(options, cluster)
    check_reservations(options, cluster)
    done = done_hashes(storage.join(options.output, MANIFEST_DIR), DONE_STATUSES)
    listing = list_pending(options.input, IMAGE_SUFFIXES, done, listing_uri, echo)
    if not listing.listed:
        raise FileNotFoundError(f"no images found under {options.input}")
    echo(f"{listing.listed} inputs, {listing.listed - listing.pending} already done, "
         f"{listing.pending} to process with {model_id}")
    if not listing.pending:
        return {"nothing_to_do": True, "inputs": listing.listed, "model_id": model_id}

    filesystem, path = storage.pyarrow_filesystem(listing_uri)
    # Small blocks, so decode tasks spread over the cluster instead of one per listing shard.
    dataset = ray.data.read_parquet(path, filesystem=filesystem).repartition(target_num_rows_per_block=16)
    dataset = dataset.map_batches(fetch_and_decode, batch_size=16, num_cpus=0.25,
                                  fn_kwargs={"max_bytes": options.max_bytes, "max_pixels": options.max_pixels})
    dataset = dataset.map_batches(EnhanceWriter, fn_constructor_args=(model_ref, options),
                                  batch_size=options.batch_size, num_cpus=options.actor_cpus,
                                  num_gpus=options.actor_gpus or None,
                                  memory=int(options.actor_memory_gib * 2**30) or None,
                                  compute=ray.data.ActorPoolStrategy(size=options.actors))
    counts: dict = {}
    buffer, shard_index, processed = [], 0, 0
    last_print = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        buffer.extend(rows)
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        processed += len(rows)
        if len(buffer) >= 1000:
            write_manifest_shard(options.output, buffer, run_id, shard_index)
            buffer, shard_index = [], shard_index + 1
        now = time.perf_counter()
        if now - last_print >= options.progress_every_s:
            rate = processed / (now - started)
            eta = (listing.pending - processed) / rate if rate else float("inf")
            echo(f"progress: {processed}/{listing.pending} images, {rate:.1f} images/s, ETA {eta:.0f}s, {counts}")
            last_print = now
    if buffer:
        write_manifest_shard(options.output, buffer, run_id, shard_index)
    wall = time.perf_counter() - started
    summary = {"counts": counts, "inputs": listing.listed, "processed": processed,
               "images_per_s": round(processed / wall, 3), "wall_s": round(wall, 3), "model_id": model_id,
               "run_id": run_id, "config": asdict(options)}
    failed = counts.get("rejected", 0) + counts.get("error", 0)
    storage.put_bytes(storage.join(options.output, "_SUCCESS"), json.dumps(summary, indent=2).encode())
    echo(f"done: {counts} in {wall:.1f}s ({summary['images_per_s']} images/s); manifest {storage.join(options.output, MANIFEST_DIR)}")
    if options.max_error_fraction is not None and failed / max(processed, 1) > options.max_error_fraction:
        raise RuntimeError(f"{failed} of {processed} images rejected or failed, above --max-error-fraction "
                           f"{options.max_error_fraction}")
    return summary
