"""The enhancer's training data: image files listed from folders or s3:// prefixes, decoded into
an in-memory pool of HR images (at every `data.hr_scales` factor), random patch crops, and the
(LR, HR) batch made by degrading them on the fly. Pure (storage + codec + torch), no Ray.
"""

import ctypes

import numpy as np
import torch

from prodray.enhancer.degradations import DegradationRanges, degrade
from prodray.io import storage
from prodray.io.codec import ImageRejected, decode_image
from prodray.io.images import IMAGE_SUFFIXES, imresize_uint8

MAX_POOL_IMAGES = 20_000


def source_rows(sources: list[str]) -> list[dict]:
    """One row per training image under the sources; a source without images is an error."""
    rows = []
    for source in sources:
        found = [{"uri": f["uri"]} for f in storage.list_files(source, suffixes=IMAGE_SUFFIXES)]
        if not found:
            raise FileNotFoundError(f"no training images under {source}")
        rows += found
    return rows


def read_rows(batch: dict) -> dict:
    """Rows -> their encoded bytes (decoded in the worker, where the pool lives)."""
    return {"bytes": np.array([storage.get_bytes(str(uri)) for uri in batch["uri"]], dtype=object)}


def load_pool(batches, patch_size: int, log, hr_scales: tuple[float, ...] = (1.0,)) -> list[np.ndarray]:
    """Decode this worker's share of the images once into memory (bounded), each at every factor
    of `hr_scales` (1.0 = as stored; copies smaller than the patch are left out).

    One pass only: every rank then draws crops from its own pool forever, so ranks never wait on
    each other at epoch boundaries (DDP steps stay in lockstep)."""
    pool, skipped = [], 0
    for batch in batches:
        for data in batch["bytes"]:
            try:
                image = decode_image(bytes(data)).rgb
            except ImageRejected:
                skipped += 1
                continue
            for factor in hr_scales:
                if min(image.shape[:2]) * factor < patch_size:
                    skipped += 1
                elif len(pool) < MAX_POOL_IMAGES:
                    pool.append(image if factor == 1.0 else imresize_uint8(image, factor))
        release_free_heap()
    log(f"training pool: {len(pool)} images in memory at scales {list(hr_scales)} "
        f"({skipped} skipped: unreadable images, or copies smaller than the patch)")
    if not pool:
        raise RuntimeError(f"no usable training images (need at least {patch_size}x{patch_size} px)")
    return pool


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only). Resizing leaves freed float temporaries
    between the kept images, which glibc keeps, and Ray's OOM killer reads RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def random_crops(image: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random size x size crops of a uint8 HWC image (augmented by flips and 90° turns);
    images smaller than the crop are skipped (returns [])."""
    height, width = image.shape[:2]
    if height < size or width < size:
        return []
    crops = []
    for _ in range(count):
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        crop = image[top:top + size, left:left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        crops.append(np.ascontiguousarray(crop))
    return crops


def make_batch(pool: list[np.ndarray], data_cfg, scale: int, ranges: DegradationRanges, rng: np.random.Generator,
               generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (lr, hr): random HR crops (B, 3, P, P) in [0, 1] and their degraded LR versions."""
    crops = []
    while len(crops) < data_cfg.batch_size:
        image = pool[int(rng.integers(0, len(pool)))]
        crops += random_crops(image, data_cfg.patch_size,
                              min(data_cfg.patches_per_image, data_cfg.batch_size - len(crops)), rng)
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255).to(device)
    return degrade(hr, scale, ranges, generator), hr
