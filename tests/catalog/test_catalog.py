"""prodray.catalog.ingest: import a folder of real images into S3 (SeaweedFS) with a manifest; the sample catalog."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prodray.catalog import ingest as catalog
from prodray.io import storage

pytestmark = pytest.mark.slow


@pytest.fixture
def source(tmp_path, make_image):
    """A folder with PNG/JPEG images (one nested), a corrupt 'image', a non-image and an attributes CSV."""
    src = tmp_path / "src"
    (src / "shoes").mkdir(parents=True)
    files = {
        "aaa-no-attributes.png": make_image("PNG", 40, 30, seed=3),
        "shirt.png": make_image("PNG", 48, 64, seed=0),
        "shoes/boot.jpg": make_image("JPEG", 32, 80, seed=1),
        "shoes/sandal.jpeg": make_image("JPEG", 20, 24, seed=2),
    }
    for key, data in files.items():
        (src / key).write_bytes(data)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
    (src / "notes.txt").write_text("not an image")
    attributes = tmp_path / "attributes.csv"
    attributes.write_text("key,sku,category,colour\n"
                          "shirt.png,SKU-1,shirt,blue\n"
                          "shoes/boot.jpg,SKU-2,shoes,brown\n"
                          "shoes/sandal.jpeg,SKU-3,shoes,red\n"
                          "broken.jpg,SKU-4,shoes,black\n")
    return src, attributes, files


def test_import_catalog_to_s3(bucket, source):
    src, attributes, files = source
    dest = f"s3://{bucket}/cat"
    messages = []
    result = catalog.import_catalog(str(src), dest, attributes_csv=str(attributes), echo=messages.append)

    assert result["images"] == len(files)
    assert result["rejected"] == 1
    assert result["manifest"] == f"{dest}/_manifest.parquet"
    assert any("broken.jpg" in message for message in messages), messages

    copied = {storage.relative_key(entry["uri"], dest): entry for entry in storage.list_files(dest)}
    assert sorted(copied) == sorted(files)  # corrupt file and non-image not copied; manifest hidden
    for key, data in files.items():
        assert storage.get_bytes(storage.join(dest, key)) == data
    assert not storage.exists(storage.join(dest, "broken.jpg"))

    fs, path = storage.pyarrow_filesystem(result["manifest"])
    table = pq.read_table(path, filesystem=fs)
    for column in ("key", "bytes", "sha256", "width", "height", "format", "sku", "category", "colour"):
        assert column in table.column_names, table.column_names
    rows = {row["key"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(files)
    for key, data in files.items():
        row = rows[key]
        assert row["bytes"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["format"] == ("PNG" if key.endswith(".png") else "JPEG")
    assert (rows["shirt.png"]["width"], rows["shirt.png"]["height"]) == (64, 48)
    assert (rows["shoes/boot.jpg"]["width"], rows["shoes/boot.jpg"]["height"]) == (80, 32)
    assert rows["shoes/boot.jpg"]["colour"] == "brown"
    assert rows["shoes/sandal.jpeg"]["sku"] == "SKU-3"
    assert rows["aaa-no-attributes.png"]["sku"] is None  # sorted first, yet the columns are kept


def test_import_catalog_from_s3_to_local(bucket, source, tmp_path):
    src, _, files = source
    staged = f"s3://{bucket}/staged"
    for key, data in files.items():
        storage.put_bytes(storage.join(staged, key), data)
    dest = tmp_path / "local-cat"
    result = catalog.import_catalog(staged, str(dest), echo=lambda *_: None)
    assert result["images"] == len(files)
    assert (dest / "shoes" / "boot.jpg").read_bytes() == files["shoes/boot.jpg"]
    table = pq.read_table(dest / "_manifest.parquet")
    assert sorted(table.column("key").to_pylist()) == sorted(files)


def test_import_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        catalog.import_catalog(str(tmp_path / "does-not-exist"), str(tmp_path / "dest"), echo=lambda *_: None)


def test_import_empty_s3_prefix(bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        catalog.import_catalog(f"s3://{bucket}/empty", str(tmp_path / "dest"), echo=lambda *_: None)


def test_import_missing_attributes_csv(source, tmp_path):
    src, _, _ = source
    with pytest.raises(FileNotFoundError, match="attributes"):
        catalog.import_catalog(str(src), str(tmp_path / "dest"), attributes_csv=str(tmp_path / "none.csv"),
                               echo=lambda *_: None)


def _manifest_rows(dest: Path) -> list[dict]:
    return pq.read_table(dest / "_manifest.parquet").to_pylist()


def test_sample_catalog_has_skimage_photos(tmp_path):
    dest = tmp_path / "sample"
    result = catalog.sample_catalog(str(dest), fashion_count=5, echo=lambda *_: None)
    rows = _manifest_rows(dest)
    assert result["images"] == len(rows)
    photos = [row for row in rows if row["key"].startswith("photos/")]
    assert {Path(row["key"]).stem for row in photos} == set(catalog.SKIMAGE_PHOTOS)
    for row in photos:
        data = (dest / row["key"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["bytes"] == len(data) and row["format"] == "PNG"
        assert row["category"] == "photo"


def test_sample_catalog_as_suppliers_send_it_is_jpeg_at_the_quality_asked(tmp_path):
    from prodray.io.codec import decode_image
    dest = tmp_path / "supplier"
    catalog.sample_catalog(str(dest), fashion_count=0, echo=lambda *_: None, jpeg_quality=40)
    rows = _manifest_rows(dest)
    assert {Path(row["key"]).stem for row in rows} == set(catalog.SKIMAGE_PHOTOS)
    for row in rows:
        decoded = decode_image((dest / row["key"]).read_bytes())
        assert row["key"].endswith(".jpg") and row["format"] == decoded.format == "JPEG"
        assert decoded.jpeg_quality == 40


@pytest.mark.skipif(not catalog.FASHION_MNIST_DIR.is_dir(),
                    reason=f"Fashion-MNIST is not installed at {catalog.FASHION_MNIST_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_sample_catalog_has_fashion_mnist(tmp_path):
    dest = tmp_path / "sample"
    catalog.sample_catalog(str(dest), fashion_count=12, echo=lambda *_: None)
    rows = [row for row in _manifest_rows(dest) if row["key"].startswith("fashion-mnist/")]
    assert len(rows) == 12
    assert all(row["category"] in catalog.FASHION_MNIST_CLASSES for row in rows)
    assert all((row["width"], row["height"]) == (28, 28) for row in rows)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format (as MNIST ships it): magic with dtype 0x08 (uint8) and ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_reader_and_rows(tmp_path, monkeypatch):
    """Real IDX files written here, read by the real reader, so the Fashion-MNIST rows are covered anywhere."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 10
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    read_images, read_labels = catalog.fashion_mnist(folder=folder)
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)

    real_reader = catalog.fashion_mnist
    monkeypatch.setattr(catalog, "fashion_mnist", lambda split="t10k": real_reader(split, folder=folder))
    dest = tmp_path / "sample"
    catalog.sample_catalog(str(dest), fashion_count=5, echo=lambda *_: None)
    rows = [row for row in _manifest_rows(dest) if row["key"].startswith("fashion-mnist/")]
    assert [row["category"] for row in rows] == [catalog.FASHION_MNIST_CLASSES[i] for i in range(5)]
    from PIL import Image
    decoded = np.asarray(Image.open(io.BytesIO((dest / rows[2]["key"]).read_bytes())).convert("L"))
    assert np.array_equal(decoded, images[2])


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "/x.png", "a\\..\\x.png", "", "nul\x00.png",
                                 "bad-\udcff.png"])
def test_unsafe_input_keys_are_refused(key):
    from prodray.catalog.manifest import UnsafeKey, check_key, output_key
    from prodray.config import BulkConfig
    with pytest.raises(UnsafeKey):
        check_key(key)
    with pytest.raises(UnsafeKey):
        output_key(key, "m", BulkConfig(input="s3://b/in", output="s3://b/out"))


def test_safe_keys_pass_and_the_manifest_gives_one_final_answer_per_result():
    from prodray.catalog.manifest import check_key, final_rows
    assert check_key("shoes/red..blue/0.jpg") == "shoes/red..blue/0.jpg"  # dots inside a name are fine
    rows = [{"input_key": "a.png", "result_key": "m/x2/a.png", "status": "error"},
            {"input_key": "a.png", "result_key": "m/x4/a.png", "status": "ok"},
            {"input_key": "b.png", "result_key": "m/x2/b.png", "status": "ok"},
            {"input_key": "a.png", "result_key": "m/x2/a.png", "status": "ok"},  # the rerun's answer
            {"input_key": "c.png", "output_key": "m/x2/c.png", "status": "ok"}]  # a row from before result_key
    final = final_rows(rows)
    assert [(r["input_key"], r["status"]) for r in final] == [("a.png", "ok"), ("a.png", "ok"), ("b.png", "ok"),
                                                             ("c.png", "ok")]
    assert len(final) == 4 and rows[0] not in final
