"""prodray.io.storage against a real S3 server (SeaweedFS) and a local folder."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from contextlib import contextmanager

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


@pytest.fixture
def small_multipart(monkeypatch):
    """Create-only writes above 6 MiB go multipart, in 5 MiB parts (the smallest S3 allows)."""
    monkeypatch.setattr(storage, "CREATE_ONLY_SINGLE_PUT_BYTES", 6 * storage.MiB)
    monkeypatch.setattr(storage, "CREATE_ONLY_PART_BYTES", 5 * storage.MiB)


@pytest.mark.parametrize("size,parts", [(4 * 2**20, 0), (6 * 2**20, 0), (13 * 2**20, 3)],
                         ids=["below", "at", "above"])
def test_put_if_absent_never_overwrites_at_any_size(bucket, small_multipart, size, parts):
    uri = f"s3://{bucket}/big/object.bin"
    first, second = os.urandom(size), os.urandom(size)
    assert storage.put_if_absent(uri, first) is True
    etag = storage.info(uri)["ETag"].strip('"')
    assert etag.endswith(f"-{parts}") if parts else "-" not in etag  # one PUT, or the multipart upload
    assert storage.put_if_absent(uri, second) is False
    assert storage.get_bytes(uri) == first
    assert storage.put_if_absent(uri, first) is True  # these very bytes are stored: counts as written
    assert storage.get_bytes(uri) == first


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


# A bound on how long an error path may hang, kept generous: a correctness claim, not a speed claim.
HANG_BOUND_S = 20


@pytest.fixture
def offline_env(monkeypatch):
    """Credentials to sign with and a fresh filesystem cache; the endpoint is the test's to set."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "offline")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "offline-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    storage._FS_CACHE.clear()
    yield monkeypatch
    storage._FS_CACHE.clear()


@contextmanager
def silent_endpoint(accepts: bool):
    """An endpoint on 127.0.0.1 that never answers. accepts=True: the kernel completes handshakes
    and nothing reads the request (a hung server); False: its one-slot backlog is kept full, so
    new connects time out (a black hole)."""
    server = socket.socket()
    server.bind((local.HOST, 0))
    server.listen(64 if accepts else 0)
    filler = None if accepts else socket.create_connection(server.getsockname())
    try:
        yield f"http://{local.HOST}:{server.getsockname()[1]}"
    finally:
        for sock in (filler, server):
            if sock is not None:
                sock.close()


@contextmanager
def endpoint_that_stops_reading():
    """An endpoint that reads a request's headers, says "100 Continue", then never reads the body."""
    server = socket.socket()
    server.bind((local.HOST, 0))
    server.listen(16)
    held = []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            held.append(connection)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(1)
            connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://{local.HOST}:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in held:
            connection.close()


def error_within(seconds: float, operation) -> BaseException | None:
    """The error `operation()` raises; fails the test if it has not ended after `seconds`."""
    outcome = {}

    def run():
        try:
            operation()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)  # daemon: a hang must not keep pytest alive
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome.get("error")


OPERATIONS = {"get": lambda: storage.get_bytes("s3://somebucket/key.png"),
              "put": lambda: storage.put_bytes("s3://somebucket/key.png", b"x"),
              "create": lambda: storage.put_if_absent("s3://somebucket/key.png", b"x"),
              "list": lambda: storage.list_files("s3://somebucket/prefix")}


@pytest.mark.parametrize("operation", ["get", "create"])
def test_unreachable_endpoint_fails_in_seconds_naming_it(offline_env, operation):
    endpoint = f"http://{local.HOST}:{closed_port()}"
    offline_env.setenv("AWS_ENDPOINT_URL", endpoint)
    error = error_within(HANG_BOUND_S, OPERATIONS[operation])
    assert isinstance(error, StorageError), error
    assert f"cannot reach the S3 endpoint {endpoint}" in str(error)
    assert "gave up after" in str(error)


@pytest.mark.parametrize("accepts,says", [(False, "cannot reach"), (True, "did not answer in time")],
                         ids=["black-hole", "hung"])
def test_silent_endpoint_times_out_naming_it(offline_env, accepts, says):
    offline_env.setenv("PRODRAY_S3_CONNECT_TIMEOUT", "1")
    offline_env.setenv("PRODRAY_S3_READ_TIMEOUT", "1")
    offline_env.setenv("PRODRAY_S3_RETRY_DEADLINE", "3")
    with silent_endpoint(accepts) as endpoint:
        offline_env.setenv("AWS_ENDPOINT_URL", endpoint)
        for operation in OPERATIONS.values():
            error = error_within(HANG_BOUND_S, operation)
            assert isinstance(error, StorageError), error
            assert says in str(error) and endpoint in str(error)


def test_write_that_stalls_mid_body_times_out(offline_env):
    offline_env.setenv("PRODRAY_S3_CONNECT_TIMEOUT", "1")
    offline_env.setenv("PRODRAY_S3_READ_TIMEOUT", "1")
    offline_env.setenv("PRODRAY_S3_RETRY_DEADLINE", "3")
    offline_env.setattr(storage, "WRITE_FLOOR_BYTES_PER_S", 8 * storage.MiB)
    data = bytes(32 * storage.MiB)  # more than the kernel's socket buffers hold
    with endpoint_that_stops_reading() as endpoint:
        offline_env.setenv("AWS_ENDPOINT_URL", endpoint)
        for write in (storage.put_bytes, storage.put_if_absent):
            error = error_within(HANG_BOUND_S, lambda: write("s3://somebucket/key.bin", data))
            assert isinstance(error, StorageError), error
            assert "did not answer in time" in str(error) and endpoint in str(error)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_bad_timeout_setting_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("PRODRAY_S3_READ_TIMEOUT", value)
    with pytest.raises(StorageError, match="PRODRAY_S3_READ_TIMEOUT"):
        storage.s3_settings()


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


def test_with_retries_stops_at_the_deadline():
    calls = []

    def always_slow():
        calls.append(1)
        raise _client_error("SlowDown", 503)

    with pytest.raises(ClientError) as info:
        storage.with_retries(always_slow, "test", attempts=100, base_delay=0.01, max_delay=0.05, deadline_s=0.5)
    assert 1 < len(calls) < 100
    assert any("gave up after" in note for note in info.value.__notes__)


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


def test_a_secret_that_reaches_an_error_message_is_redacted(bucket, s3_env):
    """The secret really is in the failing call (it is part of the key), so the message would carry
    it if nothing redacted it."""
    uri = f"s3://{bucket}/{s3_env.secret_key}/missing.bin"
    with pytest.raises((StorageError, FileNotFoundError)) as info:
        storage.get_bytes(uri)
    message = str(info.value)
    assert s3_env.secret_key not in message
    assert "<AWS_SECRET_ACCESS_KEY>" in message and bucket in message
