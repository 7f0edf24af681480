"""prodray.io.storage against a real S3 server (SeaweedFS) and a local folder."""

from __future__ import annotations

import time
import uuid

import pytest
from botocore.exceptions import ClientError
from conftest import closed_port

from prodray.io import storage
from prodray.io.storage import StorageError
from prodray.local import stack as local

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- URIs

def test_split_uri_s3():
    assert storage.split_uri("s3://bucket/a/b.png") == ("s3", "bucket/a/b.png")
    assert storage.split_uri("s3://bucket/prefix/") == ("s3", "bucket/prefix")
    assert storage.split_uri("s3://bucket") == ("s3", "bucket")


def test_split_uri_local(tmp_path):
    assert storage.split_uri(str(tmp_path / "x.png")) == ("file", str(tmp_path / "x.png"))
    assert storage.split_uri(f"file://{tmp_path}/x.png") == ("file", str(tmp_path / "x.png"))
    scheme, path = storage.split_uri("relative/dir")
    assert scheme == "file" and path.startswith("/") and path.endswith("relative/dir")


def test_split_uri_unknown_scheme():
    with pytest.raises(StorageError, match="gcs"):
        storage.split_uri("gcs://bucket/key")
    with pytest.raises(StorageError, match="bucket"):
        storage.split_uri("s3:///key")


def test_join():
    assert storage.join("s3://b/prefix/", "a", "/b.png") == "s3://b/prefix/a/b.png"
    assert storage.join("/tmp/x", "y/", "", "z") == "/tmp/x/y/z"


def test_relative_key():
    assert storage.relative_key("s3://b/cat/x/y.png", "s3://b/cat") == "x/y.png"
    with pytest.raises(StorageError):
        storage.relative_key("s3://b/other/y.png", "s3://b/cat")


# ---------------------------------------------------------------- byte I/O, both backends

def test_put_get_exists(root, make_image):
    data = make_image("PNG")
    uri = storage.join(root, "img/a.png")
    assert not storage.exists(uri)
    storage.put_bytes(uri, data)
    assert storage.exists(uri)
    assert storage.get_bytes(uri) == data
    storage.put_bytes(uri, b"replaced")  # put_bytes overwrites
    assert storage.get_bytes(uri) == b"replaced"
    assert storage.info(uri)["size"] == len(b"replaced")


def test_get_missing_is_file_not_found(root):
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(storage.join(root, "missing.png"))


def test_list_files_recursive_skips_underscore(root, make_image):
    png, jpeg = make_image("PNG"), make_image("JPEG", seed=1)
    storage.put_bytes(storage.join(root, "a.png"), png)
    storage.put_bytes(storage.join(root, "sub/deeper/b.jpg"), jpeg)
    storage.put_bytes(storage.join(root, "_manifest.parquet"), b"manifest")
    storage.put_bytes(storage.join(root, "sub/_SUCCESS"), b"")
    files = storage.list_files(root)
    keys = [storage.relative_key(entry["uri"], root) for entry in files]
    assert keys == ["a.png", "sub/deeper/b.jpg"]
    sizes = {key: entry["size"] for key, entry in zip(keys, files)}
    assert sizes == {"a.png": len(png), "sub/deeper/b.jpg": len(jpeg)}
    if root.startswith("s3://"):
        assert all(entry["uri"].startswith("s3://") for entry in files)
    # Listed URIs can be read back as they are.
    assert storage.get_bytes(files[1]["uri"]) == jpeg
    assert [e["uri"] for e in storage.list_files(root, suffixes=(".jpg",))] == [files[1]["uri"]]


def test_put_if_absent_creates_once(root):
    uri = storage.join(root, "out/result.png")
    assert storage.put_if_absent(uri, b"first") is True
    assert storage.put_if_absent(uri, b"second") is False
    assert storage.get_bytes(uri) == b"first"


def test_local_list_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "nope"))


def test_local_put_leaves_no_temp_files(tmp_path):
    uri = str(tmp_path / "d" / "x.bin")
    storage.put_bytes(uri, b"1")
    storage.put_if_absent(uri, b"2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.bin"]


# ---------------------------------------------------------------- the embedded server's capacity

def test_many_buckets_each_take_writes(s3_env, boto_client):
    """The test suite and catalog teams make many buckets; each must accept writes whatever the
    disk's free space (auto volume slots with 7 volumes per bucket refused the 20th bucket with
    30 GB free, an S3 InternalError)."""
    names = [f"cap-{uuid.uuid4().hex[:12]}" for _ in range(50)]
    for name in names:
        local.create_bucket(s3_env.endpoint, s3_env.access_key, s3_env.secret_key, name)
        boto_client.put_object(Bucket=name, Key="k", Body=name.encode())
    assert [boto_client.get_object(Bucket=n, Key="k")["Body"].read() for n in names] == [n.encode() for n in names]


# ---------------------------------------------------------------- failures

def test_wrong_credentials_error_is_redacted(bucket, s3_env, monkeypatch):
    uri = f"s3://{bucket}/x.bin"
    storage.put_bytes(uri, b"ok")
    wrong_secret = "WrongSecret" + "x" * 29
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    storage._FS_CACHE.clear()
    for operation in (lambda: storage.get_bytes(uri), lambda: storage.put_bytes(uri, b"no"),
                      lambda: storage.exists(uri), lambda: storage.list_files(f"s3://{bucket}")):
        with pytest.raises(StorageError) as info:
            operation()
        message = str(info.value)
        assert wrong_secret not in message
        assert s3_env.secret_key not in message
        assert bucket in message
        assert "denied" in message and "AWS_SECRET_ACCESS_KEY" in message


def test_unreachable_endpoint_is_quick_and_named(monkeypatch, s3_env):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    storage._FS_CACHE.clear()
    real = storage.with_retries
    monkeypatch.setattr(storage, "with_retries",
                        lambda op, description, **kw: real(op, description, attempts=2, base_delay=0.01))
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.get_bytes("s3://somebucket/key.png")
    assert endpoint in str(info.value)
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- retries

def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_with_retries_retries_slowdown_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise _client_error("SlowDown", 503)
        return "done"

    assert storage.with_retries(flaky, "test", base_delay=0.001) == "done"
    assert len(calls) == 3


@pytest.mark.parametrize("code,status", [("NoSuchKey", 404), ("AccessDenied", 403)])
def test_with_retries_does_not_retry_permanent_errors(code, status):
    calls = []

    def failing():
        calls.append(1)
        raise _client_error(code, status)

    with pytest.raises(ClientError):
        storage.with_retries(failing, "test", base_delay=0.001)
    assert len(calls) == 1


def test_with_retries_gives_up_after_attempts():
    calls = []

    def always_slow():
        calls.append(1)
        raise _client_error("SlowDown", 503)

    with pytest.raises(ClientError):
        storage.with_retries(always_slow, "test", attempts=3, base_delay=0.001)
    assert len(calls) == 3


def test_redact_removes_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3tvalue")
    assert "s3cr3tvalue" not in storage.redact("bad key s3cr3tvalue here")


# ---------------------------------------------------------------- pyarrow

def test_pyarrow_filesystem_reads_s3_object(bucket, make_image):
    data = make_image("JPEG")
    uri = f"s3://{bucket}/pa/x.jpg"
    storage.put_bytes(uri, data)
    fs, path = storage.pyarrow_filesystem(uri)
    assert path == f"{bucket}/pa/x.jpg"
    with fs.open_input_stream(path) as stream:
        assert stream.read() == data
    assert fs.get_file_info(path).size == len(data)


def test_pyarrow_filesystem_local(tmp_path):
    target = tmp_path / "y.bin"
    target.write_bytes(b"abc")
    fs, path = storage.pyarrow_filesystem(str(target))
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b"abc"
