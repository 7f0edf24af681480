"""Parallel input listing: level-by-level walks on both backends, S3 paging, shards of bounded
size, done keys filtered by hash, and the Ray walk over a tree that finds every image once."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prodray.cluster import listing
from prodray.io import storage
from prodray.io.images import IMAGE_SUFFIXES

ray = pytest.importorskip("ray")


TREE = ["a.jpg", "b.png", "notes.txt", "shoes/s1.jpg", "shoes/red/s2.webp", "shoes/red/deep/s3.JPG",
        "bags/b1.png", "_manifest/m.parquet", "bags/.hidden.png", "bags/_tmp/x.png"]
IMAGES = {"a.jpg", "b.png", "shoes/s1.jpg", "shoes/red/s2.webp", "shoes/red/deep/s3.JPG", "bags/b1.png"}


def make_tree(root: str) -> None:
    for key in TREE:
        storage.put_bytes(storage.join(root, key), key.encode())


def shard_rows(folder: str) -> list[dict]:
    rows = []
    for shard in storage.list_files(folder, suffixes=(".parquet",)):
        rows += pq.read_table(io.BytesIO(storage.get_bytes(shard["uri"]))).to_pylist()
    return rows


def test_list_level_is_one_level_and_skips_hidden(root):
    make_tree(root)
    files, subdirectories = [], []
    for page_files, page_dirs in storage.list_level(root):
        files += page_files
        subdirectories += page_dirs
    assert sorted(storage.relative_key(f["uri"], root) for f in files) == ["a.jpg", "b.png", "notes.txt"]
    assert sorted(storage.relative_key(d, root).strip("/") for d in subdirectories) == ["bags", "shoes"]
    assert {f["size"] for f in files if f["uri"].endswith("a.jpg")} == {len(b"a.jpg")}
    assert all(f["etag"] for f in files)


def test_list_level_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(storage.list_level(str(tmp_path / "nope")))


def test_s3_level_pages_and_shards_stay_bounded(bucket, boto_client, monkeypatch, tmp_path):
    """1,003 keys in one S3 folder: more than one listing page (1,000), and shards of at most
    SHARD_ROWS rows; a done set drops exactly its keys."""
    root = f"s3://{bucket}/flat"
    keys = [f"flat/img-{i:05d}.png" for i in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: boto_client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    pages = list(storage.list_level(root))
    assert len(pages) >= 2 and sum(len(files) for files, _ in pages) == 1003

    monkeypatch.setattr(listing, "SHARD_ROWS", 300)
    done = np.unique(listing.key_hashes([f"img-{i:05d}.png" for i in range(0, 1003, 10)]))  # 101 done
    folder = str(tmp_path / "shards")
    result = listing.list_directory(root, root, IMAGE_SUFFIXES, done, folder, "d0")
    assert result["listed"] == 1003 and result["pending"] == 902 and result["shards"] == 4
    rows = shard_rows(folder)
    assert len(rows) == 902 and len({row["key"] for row in rows}) == 902
    assert not any(int(row["key"][4:9]) % 10 == 0 for row in rows)
    sizes = [pq.read_metadata(io.BytesIO(storage.get_bytes(s["uri"]))).num_rows
             for s in storage.list_files(folder)]
    assert max(sizes) <= 300


def test_key_manifest_input_is_streamed_into_shards(bucket, monkeypatch, tmp_path):
    """A .parquet manifest of keys (several row groups) on S3 -> shards of the keys not done,
    with URIs next to the manifest; a manifest without the needed columns is refused."""
    manifest = f"s3://{bucket}/lists/keys.parquet"
    keys = [f"shoes/img-{i:04d}.jpg" for i in range(250)]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"key": keys, "bytes": list(range(250))}), buffer, row_group_size=64)
    storage.put_bytes(manifest, buffer.getvalue())
    monkeypatch.setattr(listing, "SHARD_ROWS", 100)
    done = np.unique(listing.key_hashes(keys[:50]))
    result = listing.list_manifest(manifest, done, str(tmp_path / "shards"))
    assert result["listed"] == 250 and result["pending"] == 200 and result["shards"] == 2
    rows = shard_rows(str(tmp_path / "shards"))
    assert sorted(row["key"] for row in rows) == keys[50:]
    assert {row["uri"] for row in rows} == {f"s3://{bucket}/lists/{key}" for key in keys[50:]}
    assert sum(row["size"] for row in rows) == sum(range(50, 250))

    pq.write_table(pa.table({"path": keys}), buffer := io.BytesIO())
    storage.put_bytes(manifest, buffer.getvalue())
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bytes', 'key'\]"):
        listing.list_manifest(manifest, done, str(tmp_path / "other"))


def test_is_done_matches_exactly():
    done = np.unique(listing.key_hashes(["a", "b/c.png"]))
    assert listing.is_done(["a", "b/c.png", "b/c.PNG", "x"], done).tolist() == [True, True, False, False]
    assert listing.is_done(["a"], np.zeros(0, np.uint64)).tolist() == [False]


@pytest.fixture
def local_ray(s3_env):
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_walk_finds_every_image_once(root, local_ray, tmp_path):
    make_tree(root)
    folder = storage.join(root + "-out", "_listing", "run")
    result = listing.list_pending(root, IMAGE_SUFFIXES, np.zeros(0, np.uint64), folder, echo=lambda _: None)
    rows = shard_rows(folder)
    assert sorted(row["key"] for row in rows) == sorted(IMAGES)
    assert (result.listed, result.pending) == (len(IMAGES), len(IMAGES))
    assert all(storage.get_bytes(row["uri"]) == row["key"].encode() for row in rows)

    storage.delete_tree(folder)
    done = np.unique(listing.key_hashes(["shoes/red/s2.webp", "a.jpg"]))
    result = listing.list_pending(root, IMAGE_SUFFIXES, done, folder, echo=lambda _: None)
    assert (result.listed, result.pending) == (len(IMAGES), len(IMAGES) - 2)
    assert sorted(row["key"] for row in shard_rows(folder)) == sorted(IMAGES - {"shoes/red/s2.webp", "a.jpg"})
    storage.delete_tree(folder)
    assert not storage.exists(folder) or not storage.list_files(folder)


def test_the_done_set_is_keyed_by_the_output_key_not_the_input_key():
    from functools import partial

    from prodray.catalog.manifest import output_key
    from prodray.config import BulkConfig
    x2 = BulkConfig(input="s3://b/in", output="s3://b/out", scale=2)
    x4 = x2.model_copy(update={"scale": 4})
    done = np.unique(listing.key_hashes([output_key("a.png", "m", x2), output_key("b.png", "m", x2)]))
    keys = ["a.png", "b.png", "c.png", "../evil.png"]
    assert list(listing.is_done(keys, done, partial(output_key, model_id="m", config=x2))) == [True, True, False, False]
    assert not listing.is_done(keys, done, partial(output_key, model_id="m", config=x4)).any()
    assert not listing.is_done(keys, done, partial(output_key, model_id="other", config=x2)).any()
