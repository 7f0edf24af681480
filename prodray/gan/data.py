"""GAN training data: prepared datasets of small product images with attribute columns.

A prepared dataset is a folder or s3:// prefix holding `images/<split>/<id>.png`, a
`manifest.parquet` (columns `uri` relative to the prefix, `split`, `id`, one column per
attribute) and `vocab.json` (the conditioning attributes, each value list in index order, and
the image resolution). Two loaders build one from the sources this project may use offline:

- Fashion-MNIST (Debian `dataset-fashion-mnist`): 28x28 grey, padded on black to 32x32 RGB;
  one attribute, `category` (10 values).
- Fashion Product Images (small) (`../shared/data/fashion-product-small`): 60x80 JPEGs padded on
  white to square and resized to 64x64; attributes `articleType` and `baseColour` parsed from
  `description` (values seen fewer than `min_count` times are grouped as `other`).

`load_split` reads a split back into memory (uint8 NHWC + attribute indices) for evaluation;
training reads the manifest through Ray Data (prodray/cluster/trainer.py) or the one-process runner.
"""

import csv
import io
import json
import tarfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prodray.catalog.ingest import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist
from prodray.io import storage
from prodray.io.codec import decode_image, encode_image
from prodray.io.images import imresize_uint8, pad_to_square

FASHION_PRODUCTS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-product-small"
OTHER = "other"


@dataclass
class GanSplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    attributes: dict[str, np.ndarray]  # attribute name -> (N,) int64 index into vocab[name]
    vocab: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.images)


def read_vocab(prepared: str) -> dict:
    """`vocab.json` of a prepared dataset: {"attributes": {name: [values]}, "resolution": R, ...}."""
    uri = storage.join(prepared, "vocab.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{prepared} is not a prepared GAN dataset (no vocab.json); "
                                f"make one with `prodray gan prepare`")
    return json.loads(storage.get_bytes(uri))


def read_manifest(prepared: str, split: str | None = None) -> pa.Table:
    table = pq.read_table(io.BytesIO(storage.get_bytes(storage.join(prepared, "manifest.parquet"))))
    if split is not None:
        table = table.filter(pa.compute.equal(table["split"], split))
    return table


def encode_attributes(table_or_rows, vocab: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Attribute value strings -> index arrays; a value outside the vocabulary maps to `other`
    when the vocabulary has it, otherwise it is an error naming the value."""
    columns = table_or_rows if isinstance(table_or_rows, dict) else table_or_rows.to_pydict()
    encoded = {}
    for name, values in vocab.items():
        index = {value: i for i, value in enumerate(values)}
        fallback = index.get(OTHER)
        out = []
        for value in columns[name]:
            if value in index:
                out.append(index[value])
            elif fallback is not None:
                out.append(fallback)
            else:
                raise ValueError(f"attribute {name}: value {value!r} not in the vocabulary {values}")
        encoded[name] = np.asarray(out, dtype=np.int64)
    return encoded


def decode_small(data: bytes, resolution: int) -> np.ndarray:
    """Bytes of a prepared image -> (resolution, resolution, 3) uint8."""
    # The default pixel cap: codec's cap is PIL's process-wide limit, so a tiny one here would
    # leak into every later decode in this process (and did, in the test suite).
    rgb = decode_image(data).rgb
    if rgb.shape[:2] != (resolution, resolution):
        raise ValueError(f"prepared image is {rgb.shape[1]}x{rgb.shape[0]}, expected {resolution}x{resolution}")
    return rgb


def load_split(prepared: str, split: str, limit: int | None = None, seed: int = 0, threads: int = 8) -> GanSplit:
    """A split of a prepared dataset in memory; `limit` takes a seeded random subset."""
    meta = read_vocab(prepared)
    table = read_manifest(prepared, split)
    if table.num_rows == 0:
        raise ValueError(f"split {split!r} of {prepared} is empty")
    if limit is not None and limit < table.num_rows:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, limit, replace=False))
        table = table.take(pa.array(rows))
    resolution = int(meta["resolution"])
    uris = [storage.join(prepared, u) for u in table["uri"].to_pylist()]
    with ThreadPoolExecutor(threads) as pool:
        images = list(pool.map(lambda u: decode_small(storage.get_bytes(u), resolution), uris))
    vocab = meta["attributes"]
    return GanSplit(np.stack(images), encode_attributes(table, vocab), vocab)


def decode_rows(batch: dict, prepared: str, resolution: int, vocab: dict) -> dict:
    """A batch of manifest rows -> decoded images + attribute indices (the training pool's rows)."""
    images = [decode_small(storage.get_bytes(storage.join(prepared, str(uri))), resolution) for uri in batch["uri"]]
    encoded = encode_attributes({name: list(batch[name]) for name in vocab}, vocab)
    return {"image": np.stack(images), **{f"attr_{name}": encoded[name] for name in vocab}}


def pool_from_batches(batches, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Decoded batches, concatenated: uint8 NHWC images + attribute index arrays."""
    images, attributes = [], {name: [] for name in names}
    for batch in batches:
        images.append(batch["image"])
        for name in names:
            attributes[name].append(batch[f"attr_{name}"])
    if not images:
        raise RuntimeError("no training images in this worker's share")
    return np.concatenate(images), {name: np.concatenate(parts) for name, parts in attributes.items()}


# ---------------------------------------------------------------- writing prepared datasets

def _write_prepared(out: str, records: list[dict], images: list[np.ndarray], vocab: dict, resolution: int,
                    source: str, echo) -> dict:
    """records[i] (id, split, attributes...) describes images[i]; writes PNGs, manifest, vocab."""
    def put(i: int) -> str:
        record = records[i]
        key = f"images/{record['split']}/{record['id']}.png"
        storage.put_bytes(storage.join(out, key), encode_image(images[i], fmt="png"))
        return key

    keys = []
    with ThreadPoolExecutor(8) as pool:
        for index, key in enumerate(pool.map(put, range(len(records))), 1):
            keys.append(key)
            if index % 10_000 == 0 or index == len(records):
                echo(f"  wrote {index}/{len(records)} images")
    columns = list(dict.fromkeys(name for record in records for name in record))
    table = pa.table({"uri": keys, **{name: [r.get(name) for r in records] for name in columns}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.put_bytes(storage.join(out, "manifest.parquet"), buffer.getvalue())
    counts = Counter(r["split"] for r in records)
    meta = {"attributes": vocab, "resolution": resolution, "source": source, "splits": dict(counts)}
    storage.put_bytes(storage.join(out, "vocab.json"), json.dumps(meta, indent=2).encode())
    return {"out": out, "images": len(records), **meta}


def prepare_fashion_mnist(out: str, source: Path = FASHION_MNIST_DIR, limit: int | None = None, echo=print) -> dict:
    """Fashion-MNIST -> prepared dataset at 32x32 RGB (grey replicated), attribute `category`."""
    records, images = [], []
    for split, idx_split in (("train", "train"), ("test", "t10k")):
        grey, labels = fashion_mnist(idx_split, Path(source))
        count = len(grey) if limit is None else min(limit, len(grey))
        padded = np.zeros((count, 32, 32), np.uint8)
        padded[:, 2:30, 2:30] = grey[:count]
        images += list(np.repeat(padded[..., None], 3, axis=3))
        records += [{"id": f"{split}-{i:05d}", "split": split, "category": FASHION_MNIST_CLASSES[labels[i]]}
                    for i in range(count)]
    echo(f"Fashion-MNIST: {len(records)} images -> {out}")
    return _write_prepared(out, records, images, {"category": list(FASHION_MNIST_CLASSES)}, 32,
                           "fashion-mnist (MIT)", echo)


def pad_square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pad on pure white to a centred square, then resize (antialiased bicubic) to size x size."""
    canvas, _ = pad_to_square(rgb)
    return canvas if canvas.shape[0] == size else imresize_uint8(canvas, size / canvas.shape[0])


def grouped_vocab(values: list[str], min_count: int) -> list[str]:
    """Values seen at least `min_count` times (most frequent first), then `other` if any were grouped."""
    counts = Counter(values)
    kept = [value for value, count in counts.most_common() if count >= min_count]
    return kept + ([OTHER] if len(kept) < len(counts) else [])


def is_held_out(product_id: str, test_fraction: float = 0.1) -> bool:
    """The products' test split: a stable hash of the product id."""
    return zlib.crc32(product_id.encode()) % 1000 < test_fraction * 1000


def prepare_fashion_products(out: str, source: Path = FASHION_PRODUCTS_DIR, resolution: int = 64,
                             min_count: int = 500, test_fraction: float = 0.1, limit: int | None = None,
                             echo=print) -> dict:
    """Fashion Product Images (small) -> prepared dataset (articleType, baseColour).

    The test split is a stable hash of the product id (so it never changes with `limit`)."""
    source = Path(source)
    metadata = source / "all_metadata.csv"
    archive = next(iter(sorted(source.glob("*.tar.gz"))), None)
    if not metadata.is_file() or archive is None:
        raise FileNotFoundError(f"{source} must hold all_metadata.csv and the images .tar.gz")
    with metadata.open(newline="") as handle:
        described = {}
        for row in csv.DictReader(handle):
            parts = [p.strip() for p in row["description"].split(" - ")]
            if len(parts) == 5:
                described[row["product_id"]] = dict(zip(
                    ("masterCategory", "subCategory", "articleType", "baseColour", "usage"), parts))
    records, images, unreadable = [], [], 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            product_id = Path(member.name).stem
            if not member.isfile() or product_id not in described:
                continue
            try:
                rgb = decode_image(tar.extractfile(member).read(), max_pixels=1_000_000).rgb
            except ValueError:
                unreadable += 1
                continue
            split = "test" if is_held_out(product_id, test_fraction) else "train"
            records.append({"id": product_id, "split": split, **described[product_id]})
            images.append(pad_square_resize(rgb, resolution))
            if len(records) % 10_000 == 0:
                echo(f"  decoded {len(records)} images")
            if limit is not None and len(records) >= limit:
                break
    train_rows = [r for r in records if r["split"] == "train"]
    vocab = {name: grouped_vocab([r[name] for r in train_rows], min_count) for name in ("articleType", "baseColour")}
    for record in records:  # store the grouped value the model is conditioned on
        for name, values in vocab.items():
            if record[name] not in values:
                record[name] = OTHER
    echo(f"fashion-product-small: {len(records)} images ({unreadable} unreadable) -> {out}; "
         + ", ".join(f"{name}: {len(values)} values" for name, values in vocab.items()))
    return _write_prepared(out, records, images, vocab, resolution,
                           "fashion-product-small (Kaggle dataset terms: development and benchmarks only)", echo)
