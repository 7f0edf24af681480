"""Bulk catalog enhancement, repair and recolouring on Ray Data: input prefix -> results + manifest
+ _SUCCESS.

Stages: listing (Ray tasks per folder level, pending rows to parquet shards; see listing.py) ->
fetch + decode, with each image's repair mask or product mask (CPU tasks, per-image failures
recorded, never dropping neighbours) -> model + encode + create-only write (actor pool, model loaded
once per actor: EnhanceWriter, RepairWriter or RecolourWriter, which makes a row per colour) -> manifest
rows streamed back to the driver, which writes them in parquet shards and prints progress.
Output keys are a pure function of (input key, model id, parameters), so reruns resume. The
output layout is catalog/manifest.py's, the marketplace rules catalog/marketplace.py's.
"""

import functools
import json
import logging
import time
import uuid

import numpy as np

from prodray.catalog.manifest import (
    DONE_STATUSES,
    MANIFEST_DIR,
    SUCCESS_FILE,
    UnsafeKey,
    check_key,
    mask_key,
    mask_tag,
    output_key,
    result_keys,
    write_manifest_shard,
)
from prodray.catalog.marketplace import ConstraintFailed, encode_for_marketplace
from prodray.cluster.listing import LISTING_DIR, done_hashes, is_done, list_pending
from prodray.config import BulkConfig
from prodray.io import storage
from prodray.io.codec import ImageRejected, decode_image
from prodray.io.images import CATALOG_SUFFIXES
from prodray.repair.masks import MaskError, mask_from_png, mask_resized, read_mask

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stage 1: fetch + decode (tasks)

def fetch_and_decode(batch: dict, max_bytes: int, max_pixels: int, max_output_pixels: int | None = None,
                     scale: int = 1, masks: str | None = None, one_mask: bytes | None = None,
                     recolour: bool = False) -> dict:
    """Per row: get bytes, decode with limits (inputs whose x`scale` result would pass
    `max_output_pixels` are refused on their header, like too many input pixels); for repair, the
    row's mask too (from the `masks` prefix, or `one_mask` scaled to the image); for recolour, the
    product's mask (no product: refused). Failures become rows with a status, not exceptions."""
    output_bound = max_output_pixels // scale**2 if max_output_pixels else max_pixels
    pixel_cap = min(max_pixels, output_bound)
    shared_mask = read_mask(one_mask) if one_mask is not None else None  # checked in the driver already
    rows = {k: [] for k in ("input_uri", "input_key", "input_etag", "input_size", "status", "reason",
                            "pixels", "alpha", "mask", "height", "width", "icc", "dpi", "jpeg_quality",
                            "decode_ms")}
    for uri, key, etag, size in zip(batch["uri"], batch["key"], batch["etag"], batch["size"]):
        started = time.perf_counter()
        status, reason, decoded, mask = "pending", "", None, None
        try:
            check_key(str(key))  # before any read: a `..` key must not reach outside the input root
            if int(size) > max_bytes:
                raise ImageRejected("too_many_bytes", f"{size} bytes > limit {max_bytes}")
            decoded = decode_image(storage.get_bytes(str(uri)), max_bytes=max_bytes, max_pixels=pixel_cap)
            if shared_mask is not None:
                mask = mask_resized(shared_mask, (decoded.height, decoded.width))
            elif masks is not None:
                mask = _image_mask(masks, str(key), (decoded.height, decoded.width), max_bytes)
            elif recolour:
                mask = _product_mask(decoded)
        except ImageRejected as exc:
            status, reason = "rejected", f"{exc.reason}: {exc}"[:300]
            if exc.reason == "too_many_pixels" and pixel_cap < max_pixels:
                reason = (f"too_many_output_pixels: the x{scale} result would pass the {max_output_pixels} pixel "
                          f"limit ({exc})")[:300]
        except (UnsafeKey, MaskError) as exc:
            name = exc.reason if isinstance(exc, MaskError) else "unsafe_key"
            status, reason = "rejected", f"{name}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - recorded in the manifest, the job goes on
            status, reason = "error", storage.redact(f"{type(exc).__name__}: {exc}")[:300]
        if status != "pending":
            decoded, mask = None, None
        rows["input_uri"].append(str(uri))
        rows["input_key"].append(str(key))
        rows["input_etag"].append(str(etag))
        rows["input_size"].append(int(size))
        rows["status"].append(status)
        rows["reason"].append(reason)
        rows["pixels"].append(decoded.rgb.tobytes() if decoded else b"")
        rows["alpha"].append(decoded.alpha.tobytes() if decoded is not None and decoded.alpha is not None else b"")
        rows["mask"].append(mask.tobytes() if mask is not None else b"")  # (H, W) bool, one byte a pixel
        rows["height"].append(decoded.height if decoded else 0)
        rows["width"].append(decoded.width if decoded else 0)
        rows["icc"].append((decoded.icc_profile or b"") if decoded is not None else b"")
        rows["dpi"].append(json.dumps(list(decoded.dpi)) if decoded is not None and decoded.dpi else "")
        rows["jpeg_quality"].append(decoded.jpeg_quality or 0 if decoded is not None else 0)  # 0: not a JPEG
        rows["decode_ms"].append((time.perf_counter() - started) * 1000)
    return rows


def _image_mask(masks: str, key: str, shape: tuple[int, int], max_bytes: int):
    """The mask of input `key` under the `masks` prefix, the image's size -> (H, W) bool."""
    uri = storage.join(masks, mask_key(key))
    try:
        data = storage.get_bytes(uri)
    except FileNotFoundError:
        raise MaskError("missing_mask", f"no mask at {mask_key(key)} under the masks prefix") from None
    try:
        return mask_from_png(data, shape, max_bytes=max_bytes)
    except ImageRejected as exc:
        raise MaskError(f"mask_{exc.reason}", f"the mask {mask_key(key)}: {exc}") from None


def _product_mask(decoded):
    """The decoded image's product pixels -> (H, W) bool; refused when there is next to none."""
    from prodray.recolour.segmentation import MIN_PRODUCT_PIXELS, product_mask
    mask = product_mask(decoded.rgb, decoded.alpha)
    if mask.sum() < MIN_PRODUCT_PIXELS:
        raise ImageRejected("no_product", f"{int(mask.sum())} product pixels found (a blank or white-only photo)")
    return mask


# ---------------------------------------------------------------- stage 2: model + write (actors)

class ResultWriter:
    """Actor base: the model is loaded once per actor; a batch is run (`_run`), encoded, written
    create-only, and answered as manifest rows. Every per-image stage runs in that image's guard:
    only the failing image fails. Subclasses load the model and run it."""

    model_id: str
    scale: int = 1

    def __init__(self, config: BulkConfig, mask_tag: str = ""):
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so "cuda" is that one.
        self.device = "cuda" if config.actor_gpus and torch.cuda.is_available() else "cpu"
        self.config, self.mask_tag = config, mask_tag

    def _run(self, batch: dict, todo: list[int], images: list[np.ndarray]) -> list[tuple]:
        """-> per image in `todo`: (result (H', W', 3) uint8 or None, failure reason, strength or None)."""
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        config = self.config
        count = len(batch["input_key"])
        out = {"output_key": [""] * count, "result_key": [""] * count, "width_out": [0] * count,
               "height_out": [0] * count, "enhance_ms": [0.0] * count, "encode_ms": [0.0] * count,
               "model_id": [self.model_id] * count, "strength": [float("nan")] * count}
        status, reason = list(batch["status"]), list(batch["reason"])
        todo = []
        for i in range(count):
            try:  # every row answers for (input, output key), refusals too (see manifest.done_key)
                out["result_key"][i] = self._result_key(batch, i)
            except UnsafeKey:
                continue  # already refused by fetch_and_decode
            if status[i] != "pending":
                continue
            key = out["result_key"][i]
            out["output_key"][i] = key
            if storage.exists(storage.join(config.output, key)):
                status[i], reason[i] = "skipped", "output exists"  # resumed after a crash
                continue
            todo.append(i)
        images = [np.frombuffer(batch["pixels"][i], np.uint8).reshape(int(batch["height"][i]),
                                                                      int(batch["width"][i]), 3) for i in todo]
        started = time.perf_counter()
        results = self._run(batch, todo, images)
        per_image_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        for i, (result, failure, strength) in zip(todo, results):
            out["enhance_ms"][i] = per_image_ms
            if strength is not None:
                out["strength"][i] = strength
            if result is None:
                status[i], reason[i] = "error", failure
                out["output_key"][i] = ""
                continue
            started = time.perf_counter()
            try:
                status[i], reason[i], shape = self._encode_and_write(batch, i, result, out["output_key"][i])
                out["height_out"][i], out["width_out"][i] = shape
            except ConstraintFailed as exc:
                status[i], reason[i] = "rejected", str(exc)[:300]
                out["output_key"][i] = ""  # nothing written
            except Exception as exc:  # noqa: BLE001 - recorded in the manifest, the job goes on
                status[i], reason[i] = "error", storage.redact(f"{type(exc).__name__}: {exc}")[:300]
                out["output_key"][i] = ""
            out["encode_ms"][i] = (time.perf_counter() - started) * 1000
        return {"input_key": list(batch["input_key"]), "input_etag": list(batch["input_etag"]),
                "input_size": list(batch["input_size"]), "status": status, "reason": reason,
                "width_in": list(batch["width"]), "height_in": list(batch["height"]),
                "decode_ms": list(batch["decode_ms"]), **out}

    def _result_key(self, batch: dict, i: int) -> str:
        return output_key(batch["input_key"][i], self.model_id, self.config, self.mask_tag)

    def _alpha(self, alpha: np.ndarray) -> np.ndarray:
        """The input's alpha for the result (same size here; the enhancer upscales it)."""
        return alpha

    def _encode_and_write(self, batch: dict, i: int, result: np.ndarray, key: str) -> tuple[str, str, tuple]:
        """Alpha, marketplace encoding and the create-only write of row i -> (status, reason, shape)."""
        alpha = None
        if len(batch["alpha"][i]):
            height, width = int(batch["height"][i]), int(batch["width"][i])
            alpha = self._alpha(np.frombuffer(batch["alpha"][i], np.uint8).reshape(height, width))
        dpi = tuple(json.loads(batch["dpi"][i])) if batch["dpi"][i] else None
        data, note, shape = encode_for_marketplace(result, alpha, self.config, dpi=dpi,
                                                   icc_profile=bytes(batch["icc"][i]) or None)
        written = storage.put_if_absent(storage.join(self.config.output, key), data)
        return ("ok", note, shape) if written else ("skipped", "output exists", shape)


class EnhanceWriter(ResultWriter):
    """Super-resolution / restoration: same-shape pieces batched; a batch whose forward pass fails
    is retried image by image."""

    def __init__(self, model_ref: str, config: BulkConfig, mask_tag: str = ""):
        super().__init__(config, mask_tag)
        from prodray.enhancer.inference import Enhancer
        self.enhancer = Enhancer.load(model_ref, device=self.device, max_batch=config.batch_size,
                                      self_ensemble=config.self_ensemble, precision=config.precision,
                                      strength=config.strength)
        self.model_id, self.scale = self.enhancer.model_id, self.enhancer.scale

    def _run(self, batch: dict, todo: list[int], images: list[np.ndarray]) -> list[tuple]:
        strengths = [self.enhancer.strength_for(image, int(batch["jpeg_quality"][i]) or None)
                     for i, image in zip(todo, images)]
        return [(result, failure, strength)
                for (result, failure), strength in zip(self._enhance(images, strengths), strengths)]

    def _enhance(self, images: list, strengths: list) -> list[tuple]:
        """-> [(result or None, failure reason)]: the batch in one call; if that fails (out of
        memory, one image the model cannot take), each image alone."""
        if not images:
            return []
        try:
            return [(result, "") for result in self.enhancer.enhance_many(images, strengths)]
        except Exception:  # noqa: BLE001 - retried one by one below, where the failure is recorded
            log.warning("batch of %d failed in the model; retrying each image alone", len(images))
        results = []
        for image, strength in zip(images, strengths):
            try:
                results.append((self.enhancer.enhance_many([image], [strength])[0], ""))
            except Exception as exc:  # noqa: BLE001
                results.append((None, f"enhance failed: {type(exc).__name__}: {exc}"[:300]))
        return results

    def _alpha(self, alpha: np.ndarray) -> np.ndarray:
        from prodray.enhancer.inference import upscale_alpha
        return upscale_alpha(alpha, self.scale)


class RepairWriter(ResultWriter):
    """Repair (inpainting): each image with its own mask, one at a time (sizes differ); pixels
    outside the mask are written back as they were read."""

    def __init__(self, model_ref: str, config: BulkConfig, mask_tag: str = ""):
        super().__init__(config, mask_tag)
        from prodray.repair.inference import Repairer
        self.repairer = Repairer.load(model_ref, device=self.device, precision=config.precision)
        self.model_id = self.repairer.model_id

    def _run(self, batch: dict, todo: list[int], images: list[np.ndarray]) -> list[tuple]:
        results = []
        for i, image in zip(todo, images):
            try:
                mask = np.frombuffer(batch["mask"][i], np.bool_).reshape(image.shape[:2])
                results.append((self.repairer.repair(image, mask), "", None))
            except Exception as exc:  # noqa: BLE001 - this image fails alone
                results.append((None, f"repair failed: {type(exc).__name__}: {exc}"[:300], None))
        return results


class RecolourWriter(ResultWriter):
    """Recolouring: a row per (image, colour) not done yet, each its own result and manifest row;
    the product's pixels move to the colour, every other pixel is written back as it was read.
    `done` is the run's done hashes (an object ref): a rerun with a colour added drops the colours
    already done here, since the listing can only keep or drop a whole image."""

    def __init__(self, model_ref: str, config: BulkConfig, mask_tag: str = "", done=None):
        super().__init__(config, mask_tag)
        from prodray.recolour.colours import parse_colour
        from prodray.recolour.inference import load_recolourer
        self.targets = {name: parse_colour(name)[1] for name in config.colours.split(",")}
        self.done = _resolved(done) if done is not None else np.zeros(0, np.uint64)
        self.recolourer = load_recolourer(model_ref, device=self.device)  # or --model baseline's Lab shift
        self.model_id = self.recolourer.model_id

    def __call__(self, batch: dict) -> dict:
        expanded = self._per_colour(batch)
        return {**super().__call__(expanded), "colour": expanded["colour"]}

    def _per_colour(self, batch: dict) -> dict:
        """Each input row repeated once per colour whose result is not in the done set."""
        rows, colours = [], []
        for i, key in enumerate(batch["input_key"]):
            for colour in self.targets:
                try:
                    result = output_key(str(key), self.model_id, self.config, colour=colour)
                except UnsafeKey:
                    result = None  # refused in its row below, once per colour
                if result is None or not is_done([result], self.done)[0]:
                    rows.append(i)
                    colours.append(colour)
        return {**{name: [column[i] for i in rows] for name, column in batch.items()}, "colour": colours}

    def _result_key(self, batch: dict, i: int) -> str:
        return output_key(batch["input_key"][i], self.model_id, self.config, colour=batch["colour"][i])

    def _run(self, batch: dict, todo: list[int], images: list[np.ndarray]) -> list[tuple]:
        results = []
        for i, image in zip(todo, images):
            try:
                mask = np.frombuffer(batch["mask"][i], np.bool_).reshape(image.shape[:2])
                results.append((self.recolourer.recolour(image, self.targets[batch["colour"][i]], mask), "", None))
            except Exception as exc:  # noqa: BLE001 - this image fails alone
                results.append((None, f"recolour failed: {type(exc).__name__}: {exc}"[:300], None))
        return results


def _resolved(value):
    import ray
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


WRITERS = {"enhance": EnhanceWriter, "repair": RepairWriter, "recolour": RecolourWriter}
DEFAULT_MODELS = {"repair": "repair", "recolour": "recolour"}  # enhance: default_model(scale)


# ---------------------------------------------------------------- driver

def resolve_model(config: BulkConfig) -> tuple[str, dict]:
    from prodray.enhancer.inference import default_model, runs_at_a_strength
    from prodray.io.artifacts import resolve_export
    reference = config.model or DEFAULT_MODELS.get(config.task) or default_model(config.scale)
    if config.task == "recolour":
        from prodray.recolour.inference import BASELINE, BaselineRecolourer
        if reference == BASELINE:  # no export: the classical Lab shift
            return reference, {"model_id": BaselineRecolourer.model_id, "kind": "recolour"}
    _, config_uri = resolve_export(reference)
    exported = json.loads(storage.get_bytes(config_uri))
    kind = exported.get("kind", "enhancer")
    if (kind if kind in DEFAULT_MODELS else "enhance") != config.task:
        needed = {"repair": "a repair", "recolour": "a recolour"}.get(config.task, "an enhancer")
        raise ValueError(f"model {exported.get('model_id')} is a {kind!r} model; --task {config.task} needs "
                         f"{needed} model")
    if config.task in DEFAULT_MODELS:
        return reference, exported
    if int(exported["scale"]) != config.scale:
        raise ValueError(f"model {exported.get('model_id')} is x{exported['scale']}, but --scale is {config.scale}")
    if config.strength is not None and not runs_at_a_strength(exported):
        raise ValueError(f"--strength {config.strength}: model {exported.get('model_id')} is not a restoration "
                         "model with a shipped clean partner")
    return reference, exported


def with_cluster_defaults(config: BulkConfig, cluster: dict) -> BulkConfig:
    """Fill in what depends on the cluster (`cluster` is ray.cluster_resources()): a GPU per
    enhancer actor when the cluster has any, unless --actor-gpus was given. An autoscaling
    cluster with no GPU worker up yet reads as CPU-only: there --actor-gpus must be given."""
    if config.actor_gpus is not None:
        return config
    return config.model_copy(update={"actor_gpus": 1.0 if cluster.get("GPU", 0) > 0 else 0.0})


def check_reservations(config: BulkConfig, cluster: dict) -> None:
    """Fail before any work if the enhancer actors cannot all be placed, or would reserve so many
    CPUs that Ray Data's own file-listing and repartition tasks (1 CPU each, not configurable)
    never start: either way the job would hang, not fail. `cluster` is ray.cluster_resources();
    a cluster with no CPUs yet is autoscaling, and is not checked."""
    cluster_cpus = cluster.get("CPU", 0.0)
    if cluster_cpus <= 0:
        return
    reserved = config.actors * config.actor_cpus
    if cluster_cpus - reserved < 1:
        raise ValueError(f"--actors {config.actors} x --actor-cpus {config.actor_cpus:g} reserves {reserved:g} of "
                         f"the cluster's {cluster_cpus:g} CPUs; Ray Data's read tasks need 1 CPU free. "
                         f"Lower --actor-cpus (a fraction still runs one torch thread) or --actors")
    gpus = config.actors * (config.actor_gpus or 0)
    if gpus > cluster.get("GPU", 0):
        raise ValueError(f"--actors {config.actors} x --actor-gpus {config.actor_gpus:g} asks for {gpus:g} GPUs; "
                         f"the cluster has {cluster.get('GPU', 0):g}. Lower --actors or --actor-gpus (0: CPU only)")
    memory_gib = config.actors * config.actor_memory_gib
    cluster_memory_gib = cluster.get("memory", 0.0) / 2**30
    if memory_gib > cluster_memory_gib:
        raise ValueError(f"--actors {config.actors} x --actor-memory-gib {config.actor_memory_gib:g} reserves "
                         f"{memory_gib:g} GiB; the cluster has {cluster_memory_gib:.1f} GiB for tasks and actors. "
                         f"Lower --actor-memory-gib (0 reserves nothing) or --actors")


def read_one_mask(config: BulkConfig) -> bytes | None:
    """--mask's bytes, checked before any work (a mask that does not decode, or marks nothing, stops
    the job here, naming the flag)."""
    if config.mask is None:
        return None
    try:
        data = storage.get_bytes(config.mask)
        read_mask(data, max_bytes=config.max_bytes)
    except (MaskError, ImageRejected) as exc:
        raise ValueError(f"--mask {config.mask}: {exc}") from None
    return data


def run_bulk(config: BulkConfig, echo=print) -> dict:
    """Run the whole job; returns the _SUCCESS summary (or {'nothing_to_do': True, ...})."""
    model_ref, model_config = resolve_model(config)  # fails before any work on a bad model
    one_mask = read_one_mask(config)
    model_id = model_config["model_id"]
    started = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    listing_uri = storage.join(config.output, LISTING_DIR, run_id)
    try:
        return _run_listed(config, model_ref, model_id, run_id, listing_uri, started, echo, one_mask)
    finally:
        storage.delete_tree(listing_uri)


def _run_listed(config: BulkConfig, model_ref: str, model_id: str, run_id: str, listing_uri: str,
                started: float, echo, one_mask: bytes | None = None) -> dict:
    import ray
    import ray.data

    # Before the listing, which on a large catalog is minutes of work.
    cluster = ray.cluster_resources()
    config = with_cluster_defaults(config, cluster)
    check_reservations(config, cluster)
    tag = mask_tag(config, one_mask) if config.task == "repair" else ""
    done = done_hashes(storage.join(config.output, MANIFEST_DIR), DONE_STATUSES)
    # Recolour: an image is done when the result of every colour is.
    keys = result_keys if config.task == "recolour" else output_key
    listing = list_pending(config.input, CATALOG_SUFFIXES, done, listing_uri, echo,
                           result_key=functools.partial(keys, model_id=model_id, config=config, mask_tag=tag))
    if not listing.listed:
        raise FileNotFoundError(f"no images found under {config.input}")
    echo(f"{listing.listed} inputs, {listing.listed - listing.pending} already done, "
         f"{listing.pending} to process with {model_id}")
    if not listing.pending:
        return {"nothing_to_do": True, "inputs": listing.listed, "model_id": model_id}

    filesystem, path = storage.pyarrow_filesystem(listing_uri)
    # Small blocks, so decode tasks spread over the cluster instead of one per listing shard.
    dataset = ray.data.read_parquet(path, filesystem=filesystem).repartition(target_num_rows_per_block=16)
    dataset = dataset.map_batches(fetch_and_decode, batch_size=16, num_cpus=0.25,
                                  fn_kwargs={"max_bytes": config.max_bytes, "max_pixels": config.max_pixels,
                                             "max_output_pixels": config.max_output_pixels, "scale": config.scale,
                                             "masks": config.masks, "one_mask": one_mask,
                                             "recolour": config.task == "recolour"})
    writer_kwargs = {"done": ray.put(done)} if config.task == "recolour" else {}
    dataset = dataset.map_batches(WRITERS[config.task], fn_constructor_args=(model_ref, config, tag),
                                  fn_constructor_kwargs=writer_kwargs,
                                  batch_size=config.batch_size, num_cpus=config.actor_cpus,
                                  num_gpus=config.actor_gpus or None,
                                  memory=int(config.actor_memory_gib * 2**30) or None,
                                  compute=ray.data.ActorPoolStrategy(size=config.actors))
    counts: dict = {}
    # At most: recolour makes a row per colour (fewer for images with some colours done).
    expected = listing.pending * (len(config.colours.split(",")) if config.task == "recolour" else 1)
    buffer, shard_index, processed = [], 0, 0
    last_print = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        buffer.extend(rows)
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        processed += len(rows)
        if len(buffer) >= 1000:
            write_manifest_shard(config.output, buffer, run_id, shard_index)
            buffer, shard_index = [], shard_index + 1
        now = time.perf_counter()
        if now - last_print >= config.progress_every_s:
            rate = processed / (now - started)
            eta = (expected - processed) / rate if rate else float("inf")
            echo(f"progress: {processed}/{expected} results, {rate:.1f} results/s, ETA {eta:.0f}s, {counts}")
            last_print = now
    if buffer:
        write_manifest_shard(config.output, buffer, run_id, shard_index)
    wall = time.perf_counter() - started
    summary = {"counts": counts, "inputs": listing.listed, "processed": processed,
               "images_per_s": round(processed / wall, 3), "wall_s": round(wall, 3), "model_id": model_id,
               "run_id": run_id, "config": config.model_dump()}
    failed = counts.get("rejected", 0) + counts.get("error", 0)
    storage.put_bytes(storage.join(config.output, SUCCESS_FILE), json.dumps(summary, indent=2).encode())
    echo(f"done: {counts} in {wall:.1f}s ({summary['images_per_s']} images/s); "
         f"manifest {storage.join(config.output, MANIFEST_DIR)}")
    if config.max_error_fraction is not None and failed / max(processed, 1) > config.max_error_fraction:
        raise RuntimeError(f"{failed} of {processed} images rejected or failed, above --max-error-fraction "
                           f"{config.max_error_fraction}")
    return summary
