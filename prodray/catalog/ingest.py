"""Catalogs in object storage: import a folder/prefix of images with a `_manifest.parquet`,
and build the offline sample catalog (scikit-image photos + Fashion-MNIST).

The manifest has one row per image: key, bytes, sha256, width, height, format, plus any
attribute columns (sku, category, colour, ...). Images are validated with the codec first.
"""

import csv
import gzip
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prodray.io import storage
from prodray.io.codec import ImageRejected, encode_image, read_image_size
from prodray.io.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
SKIMAGE_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "cat", "camera"]


def _format_of(data: bytes) -> str:
    from prodray.io.codec import decode_image
    return decode_image(data).format


def load_attributes(csv_path) -> dict[str, dict]:
    """CSV with a `key` (path relative to the source) or `filename` column; other columns are attributes."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"attributes CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        id_column = next((c for c in ("key", "filename", "path") if c in (reader.fieldnames or [])), None)
        if id_column is None:
            raise ValueError(f"attributes CSV {path} needs a 'key' or 'filename' column; has {reader.fieldnames}")
        return {row.pop(id_column): row for row in reader}


def write_manifest(dest_uri: str, rows: list[dict]) -> str:
    uri = storage.join(dest_uri, "_manifest.parquet")
    buffer = io.BytesIO()
    # from_pylist takes its columns from the first row only: give every row every column.
    columns = list(dict.fromkeys(name for row in rows for name in row))
    pq.write_table(pa.Table.from_pylist([{name: row.get(name) for name in columns} for row in rows]), buffer)
    storage.put_bytes(uri, buffer.getvalue())
    return uri


def import_catalog(src: str, dest_uri: str, attributes_csv=None, echo=print) -> dict:
    """Copy every image under `src` to `dest_uri` (same relative keys) and write the manifest.

    Unreadable files are reported and skipped, not copied; the manifest is written last, so a
    failed import never leaves a manifest that names missing objects."""
    files = storage.list_files(src, suffixes=tuple(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {src}")
    attributes = load_attributes(attributes_csv) if attributes_csv else {}
    rows, rejected = [], []
    for index, entry in enumerate(files, 1):
        key = storage.relative_key(entry["uri"], src)
        data = storage.get_bytes(entry["uri"])
        try:
            width, height = read_image_size(data)
            image_format = _format_of(data)
        except ImageRejected as exc:
            rejected.append({"key": key, "reason": exc.reason})
            continue
        storage.put_bytes(storage.join(dest_uri, key), data)
        extra = attributes.get(key) or attributes.get(Path(key).name) or {}
        rows.append({"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "width": width, "height": height, "format": image_format, **extra})
        if index % 100 == 0 or index == len(files):
            echo(f"  imported {index}/{len(files)}")
    if not rows:
        raise ValueError(f"none of the {len(files)} files under {src} is a readable image")
    manifest = write_manifest(dest_uri, rows)
    for item in rejected:
        echo(f"  skipped {item['key']}: {item['reason']}")
    return {"images": len(rows), "rejected": len(rejected), "manifest": manifest}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (MNIST-format) file, gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str = "t10k", folder: Path = FASHION_MNIST_DIR):
    """(images (N, 28, 28) uint8, labels (N,)) from the Debian package's files."""
    def find(stem):
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"Fashion-MNIST file {stem} not found in {folder}")
    return read_idx(find(f"{split}-images-idx3-ubyte")), read_idx(find(f"{split}-labels-idx1-ubyte"))


def sample_catalog(dest_uri: str, fashion_count: int = 100, echo=print, jpeg_quality: int | None = None) -> dict:
    """Build the sample catalog from images installed offline and write its manifest. With
    `jpeg_quality`, every image is stored as a JPEG at that quality, as suppliers send them."""
    rows = []

    def add(key, rgb, **attrs):
        if jpeg_quality:
            key = str(Path(key).with_suffix(".jpg"))
            data = encode_image(rgb, fmt="jpeg", quality=jpeg_quality)
        else:
            data = encode_image(rgb, fmt="png")
        storage.put_bytes(storage.join(dest_uri, key), data)
        rows.append({"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "width": rgb.shape[1], "height": rgb.shape[0], "format": "JPEG" if jpeg_quality else "PNG",
                     "sku": Path(key).stem, "category": attrs.get("category", ""), "source": attrs["source"]})

    try:
        import skimage.data
        for name in SKIMAGE_PHOTOS:
            image = getattr(skimage.data, name)()
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            add(f"photos/{name}.png", np.ascontiguousarray(image[..., :3]).astype(np.uint8),
                category="photo", source="scikit-image (CC0/public domain)")
    except ImportError:
        echo("scikit-image is not installed: skipping its photos (pip install scikit-image)")
    try:
        images, labels = fashion_mnist()
        for index in range(min(fashion_count, len(images))):
            rgb = np.repeat(images[index][..., None], 3, axis=2)
            add(f"fashion-mnist/{index:05d}.png", rgb, category=FASHION_MNIST_CLASSES[labels[index]],
                source="Fashion-MNIST (MIT)")
    except FileNotFoundError:
        echo("Fashion-MNIST not found: install it with `sudo apt-get update && sudo apt-get install "
             "dataset-fashion-mnist`; continuing without it")
    if not rows:
        raise FileNotFoundError("no sample images available: install scikit-image or dataset-fashion-mnist")
    manifest = write_manifest(dest_uri, rows)
    echo(f"sample catalog: {len(rows)} images at {dest_uri} (manifest {manifest})")
    return {"images": len(rows), "manifest": manifest}
