"""Object storage: `s3://bucket/key` URIs and local paths behind one small API.

Owns filesystems (s3fs for byte I/O, pyarrow for Ray Data), listing, get/put, create-only
put, and retries with backoff on throttling, 5xx and dropped connections. Secrets never reach
logs or errors.

Settings, all from the environment: AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION and the
standard AWS credential variables; and for this module's own S3 calls (s3fs: pyarrow filesystems
keep the AWS SDK's timeouts and retries):
- PRODRAY_S3_CONNECT_TIMEOUT (seconds, default 5): time to open a connection to the endpoint.
- PRODRAY_S3_READ_TIMEOUT (seconds, default 15): time to wait for the endpoint's next bytes.
  A write also ends once it has taken both timeouts plus its size at WRITE_FLOOR_BYTES_PER_S.
- PRODRAY_S3_RETRY_DEADLINE (seconds, default 10): no retry starts after this long from the first
  try, so an operation takes at most the deadline plus one try (bounded by the two timeouts).
"""

import hashlib
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("s3", "file", "")
RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "503", "500", "502", "504", "RequestTimeTooSkewed"}
PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")

CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S = "PRODRAY_S3_CONNECT_TIMEOUT", 5.0
READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S = "PRODRAY_S3_READ_TIMEOUT", 15.0
RETRY_DEADLINE_ENV, DEFAULT_RETRY_DEADLINE_S = "PRODRAY_S3_RETRY_DEADLINE", 10.0

MiB = 2**20
# The read timeout only starts once a request body is sent (aiohttp), and a PUT first waits for
# "100 Continue": a server that stops reading would hold a write forever without this floor.
WRITE_FLOOR_BYTES_PER_S = 256 * 1024
# put_if_absent sends objects up to this size as one conditional PUT and larger ones as a multipart
# upload whose CompleteMultipartUpload carries the condition (an unconditional complete would overwrite).
CREATE_ONLY_SINGLE_PUT_BYTES = 100 * MiB
CREATE_ONLY_PART_BYTES = 50 * MiB
S3_MAX_SINGLE_PUT_BYTES = 5 * 2**30  # the S3 protocol's limits
S3_MIN_PART_BYTES = 5 * MiB
S3_MAX_PARTS = 10_000


class StorageError(RuntimeError):
    """A storage operation that failed for good; the message is safe to print."""


def redact(text: str) -> str:
    """Remove credential values (from the environment) from a message."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value:
            text = text.replace(value, f"<{name}>")
    return text


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """-> (scheme, path) where path is 'bucket/key' for s3 and an absolute path for local."""
    uri = str(uri)
    parsed = urlparse(uri)
    if parsed.scheme not in SUPPORTED_SCHEMES and not (len(parsed.scheme) == 1 and os.name == "nt"):
        raise StorageError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}: use s3://bucket/key or a local path")
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"S3 URI {uri!r} has no bucket: use s3://bucket/key")
        return "s3", f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
    local = parsed.path if parsed.scheme == "file" else uri
    return "file", str(Path(local).expanduser().absolute())


def join(uri: str, *parts: str) -> str:
    uri = str(uri).rstrip("/")
    return "/".join([uri, *(p.strip("/") for p in parts if p)])


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise StorageError(f"{name}={value!r} is not a positive number of seconds")
    return seconds


def s3_settings() -> dict:
    """Endpoint, region and timeouts from the environment (credentials are read by botocore)."""
    return {"endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None,
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "connect_timeout": _env_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S),
            "read_timeout": _env_seconds(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S)}


def _write_timeout(size: int) -> float:
    """The most one S3 call sending `size` bytes may take."""
    settings = s3_settings()
    return settings["connect_timeout"] + settings["read_timeout"] + size / WRITE_FLOOR_BYTES_PER_S


def _endpoint_name() -> str:
    return s3_settings()["endpoint_url"] or "AWS default"


_FS_CACHE: dict = {}


def _s3fs():
    settings = s3_settings()
    key = (*settings.values(), os.environ.get("AWS_ACCESS_KEY_ID"))
    if key not in _FS_CACHE:
        _FS_CACHE[key] = _new_s3fs(settings)
    return _FS_CACHE[key]


def _new_s3fs(settings: dict):
    import s3fs

    client_kwargs = {"region_name": settings["region"]}
    if settings["endpoint_url"]:
        client_kwargs["endpoint_url"] = settings["endpoint_url"]
    # One try per call in botocore and in s3fs: with_retries is the only retry loop, so its
    # deadline bounds the total (nested loops multiply: attempts x timeouts).
    config = {"connect_timeout": settings["connect_timeout"], "read_timeout": settings["read_timeout"],
              "retries": {"total_max_attempts": 1, "mode": "standard"}}
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True, config_kwargs=config)
    fs.retries = 1
    return fs


def fsspec_filesystem(uri: str):
    """-> (fsspec filesystem, path within it)."""
    scheme, path = split_uri(uri)
    if scheme == "s3":
        return _s3fs(), path
    from fsspec.implementations.local import LocalFileSystem
    return LocalFileSystem(), path


def pyarrow_filesystem(uri: str):
    """-> (pyarrow filesystem, path) for Ray Data readers and writers."""
    from pyarrow import fs as pafs

    scheme, path = split_uri(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    settings = s3_settings()
    kwargs = {"region": settings["region"], "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=8)}
    if settings["endpoint_url"]:
        parsed = urlparse(settings["endpoint_url"])
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs), path


# ---------------------------------------------------------------- retries

def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, StorageError)):
        return False
    code = _error_code(exc) or _error_code(getattr(exc, "__cause__", None) or exc)
    if code:
        return code in RETRYABLE_CODES
    text = f"{type(exc).__name__} {exc}"
    markers = ("SlowDown", "503", "500 ", "InternalError", "ServiceUnavailable", "Connection", "connection",
               "Timeout", "timed out", "reset by peer", "ServerDisconnected", "EndpointConnectionError",
               "IncompleteRead", "ResponseStreamingError", "Broken pipe")
    return any(marker in text for marker in markers)


def with_retries(operation, description: str, attempts: int = 8, base_delay: float = 0.2, max_delay: float = 5.0,
                 deadline_s: float | None = None):
    """Run `operation()`; retry throttling, 5xx and connection errors with jittered exponential backoff.

    No retry starts later than `deadline_s` (default: PRODRAY_S3_RETRY_DEADLINE) after the first try.
    The error that ends the loop carries a note saying how many tries it took and how long.
    """
    if deadline_s is None:
        deadline_s = _env_seconds(RETRY_DEADLINE_ENV, DEFAULT_RETRY_DEADLINE_S)
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            elapsed = time.monotonic() - start
            if attempt == attempts or elapsed + delay > deadline_s:
                _add_note(exc, f"gave up after {elapsed:.1f} s, {attempt} {'try' if attempt == 1 else 'tries'}")
                raise
            log.warning("retrying %s after %s (attempt %d/%d)", description, redact(type(exc).__name__),
                        attempt, attempts)
            time.sleep(delay)


def _add_note(exc: BaseException, note: str) -> None:
    """BaseException.add_note, which Python 3.10 lacks."""
    exc.__notes__ = [*getattr(exc, "__notes__", ()), note]


def _friendly(exc: BaseException, uri: str) -> StorageError:
    text = redact(str(exc))
    # s3fs turns botocore errors into OSError subclasses and keeps the original as __cause__.
    code = _error_code(exc) or _error_code(exc.__cause__)
    if isinstance(exc, PermissionError) and not code:
        code = "AccessDenied"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
        return StorageError(f"access to {uri} denied ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    name = type(exc).__name__
    tries = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
    if "Could not connect" in text or "Connect" in name:
        return StorageError(f"cannot reach the S3 endpoint {_endpoint_name()} for {uri}{tries}: "
                            f"check AWS_ENDPOINT_URL, {CONNECT_TIMEOUT_ENV} and that the server runs (prodray status)")
    if "Timeout" in name or "timed out" in text or "timeout" in text:
        return StorageError(f"the S3 endpoint {_endpoint_name()} did not answer in time for {uri}{tries}: "
                            f"check the server, or raise {READ_TIMEOUT_ENV}")
    return StorageError(f"{name} on {uri}{tries}: {text[:300]}")


def _guarded(operation, uri: str, description: str):
    try:
        return with_retries(operation, f"{description} {redact(uri)}")
    except (FileNotFoundError, FileExistsError, StorageError) as exc:
        if redact(str(exc)) == str(exc):
            raise
        raise type(exc)(redact(str(exc))) from None  # a key or message can carry a credential too
    except Exception as exc:  # noqa: BLE001
        raise _friendly(exc, redact(uri)) from None


# ---------------------------------------------------------------- operations

def get_bytes(uri: str) -> bytes:
    fs, path = fsspec_filesystem(uri)
    return _guarded(lambda: fs.cat_file(path), uri, "get")


def put_bytes(uri: str, data: bytes) -> None:
    """Write (or replace) an object atomically: one S3 PUT, or temp file + rename locally."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        _atomic_local_write(Path(path), data, exclusive=False)
        return
    fs = _s3fs()
    _guarded(lambda: fs.pipe_file(path, data, timeout=_write_timeout(len(data))), uri, "put")


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create-only write. Returns False (writing nothing) if the object already exists with other bytes.

    S3: a conditional write (If-None-Match: *) at every size, so two racing writers cannot both win:
    one PUT up to CREATE_ONLY_SINGLE_PUT_BYTES, above it a multipart upload whose complete carries
    the condition (the server must honour it there too, as AWS S3 and SeaweedFS do). A write whose
    response was lost (dropped connection) may have taken effect; its retry then meets a 412. So on
    a 412 the existing object's ETag is compared with the one our bytes would get: equal means
    these very bytes are stored (our own earlier attempt, or an identical duplicate), and that
    counts as written.
    Local: temp file + hard link, which fails atomically if the target exists.
    """
    scheme, path = split_uri(uri)
    if scheme == "file":
        return _atomic_local_write(Path(path), data, exclusive=True)
    fs = _s3fs()
    bucket, key, _ = fs.split_path(path)
    part_bytes = _create_only_part_bytes(len(data))

    def attempt():
        try:
            if part_bytes is None:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*",
                           timeout=_write_timeout(len(data)))
            else:
                _multipart_if_absent(fs, bucket, key, data, part_bytes)
            return True
        except Exception as exc:  # noqa: BLE001
            if not _precondition_failed(exc):
                raise
            return _holds_exactly(fs, path, data, part_bytes)
        finally:
            fs.invalidate_cache(path)

    return _guarded(attempt, uri, "create")


def _create_only_part_bytes(size: int) -> int | None:
    """None for one PUT, else the part size of the multipart upload (never s3fs's own choice)."""
    if size <= min(CREATE_ONLY_SINGLE_PUT_BYTES, S3_MAX_SINGLE_PUT_BYTES):
        return None
    return max(CREATE_ONLY_PART_BYTES, S3_MIN_PART_BYTES, -(-size // S3_MAX_PARTS))


def _multipart_if_absent(fs, bucket: str, key: str, data: bytes, part_bytes: int) -> None:
    upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        for number, offset in enumerate(range(0, len(data), part_bytes), start=1):
            body = data[offset:offset + part_bytes]
            out = fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                             timeout=_write_timeout(len(body)))
            parts.append({"PartNumber": number, "ETag": out["ETag"]})
        # The server assembles the parts before it answers: allow for the whole object.
        fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": parts}, IfNoneMatch="*", timeout=_write_timeout(len(data)))
    except BaseException:
        _abort_quietly(fs, bucket, key, upload_id)  # parts of a failed upload would be stored (and billed) forever
        raise


def _abort_quietly(fs, bucket: str, key: str, upload_id: str) -> None:
    try:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:  # noqa: BLE001 - the write's own error matters more
        log.warning("could not abort multipart upload of s3://%s/%s: %s", bucket, key, redact(type(exc).__name__))


def _precondition_failed(exc: BaseException) -> bool:
    """A 412: s3fs raises FileExistsError when it names If-None-Match, else an OSError caused by it."""
    if isinstance(exc, FileExistsError):
        return True
    code = _error_code(exc) or _error_code(exc.__cause__)
    return code in PRECONDITION_CODES or "PreconditionFailed" in str(exc)


def _holds_exactly(fs, path: str, data: bytes, part_bytes: int | None) -> bool:
    """True if the object at `path` has the ETag that writing `data` the same way gives."""
    etag = str(fs.info(path, refresh=True).get("ETag") or "").strip('"')
    return etag == _etag_of(data, part_bytes)


def _etag_of(data: bytes, part_bytes: int | None) -> str:
    """S3's ETag: the MD5 of a single PUT; for a multipart upload the MD5 of the parts' MD5s, then -N."""
    if part_bytes is None:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    view = memoryview(data)  # slices of a view, not copies
    digests = [hashlib.md5(view[offset:offset + part_bytes], usedforsecurity=False).digest()
               for offset in range(0, len(data), part_bytes)]
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def _atomic_local_write(target: Path, data: bytes, exclusive: bool) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if not exclusive:
            os.replace(tmp, target)
            return True
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def exists(uri: str) -> bool:
    """True if the object (or folder/prefix) exists; denied or unreachable raises, never False."""
    fs, path = fsspec_filesystem(uri)

    def head():
        try:
            fs.info(path)
            return True
        except FileNotFoundError:
            return False

    return bool(_guarded(head, uri, "head"))


def info(uri: str) -> dict:
    fs, path = fsspec_filesystem(uri)
    return _guarded(lambda: fs.info(path), uri, "head")


def list_files(uri: str, suffixes=None) -> list[dict]:
    """All objects under a prefix/folder, recursively: [{'uri', 'size', 'etag'}], sorted by uri.

    Keys starting with '_' or '.' (manifests, markers, temp files) are skipped.
    """
    scheme, path = split_uri(uri)
    fs, _ = fsspec_filesystem(uri)
    if scheme == "file" and not Path(path).exists():
        raise FileNotFoundError(f"source not found: {path}")
    found = _guarded(lambda: fs.find(path, detail=True), uri, "list")
    entries = []
    for key, meta in sorted(found.items()):
        name = key.rsplit("/", 1)[-1]
        relative = key[len(path):].lstrip("/")
        if any(part.startswith(("_", ".")) for part in relative.split("/")) or meta.get("type") == "directory":
            continue
        if suffixes and not name.lower().endswith(tuple(suffixes)):
            continue
        full = f"s3://{key}" if scheme == "s3" else key
        entries.append({"uri": full, "size": int(meta.get("size") or 0),
                        "etag": str(meta.get("ETag") or meta.get("mtime") or "").strip('"')})
    return entries


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def list_level(uri: str):
    """One directory level under a prefix/folder, a page at a time: yields (files, subdirectories).

    files: [{'uri', 'size', 'etag'}]; subdirectories: URIs. Names starting with '_' or '.' are
    skipped, as in `list_files`. Nothing below this level is read, so callers can walk a tree
    level by level in parallel without any one of them holding the whole listing.
    """
    scheme, path = split_uri(uri)
    if scheme == "file":
        if not Path(path).is_dir():
            raise FileNotFoundError(f"source not found: {path}")
        files, subdirectories = [], []
        with os.scandir(path) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir():
                    subdirectories.append(entry.path)
                elif entry.is_file():
                    stat = entry.stat()
                    files.append({"uri": entry.path, "size": stat.st_size, "etag": str(stat.st_mtime)})
                if len(files) >= 1000:
                    yield files, subdirectories
                    files, subdirectories = [], []
        yield files, subdirectories
        return
    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    fs = _s3fs()
    token = None
    while True:
        request = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/",
                   **({"ContinuationToken": token} if token else {})}
        page = _guarded(lambda: fs.call_s3("list_objects_v2", **request), uri, "list")
        files = [{"uri": f"s3://{bucket}/{item['Key']}", "size": int(item.get("Size") or 0),
                  "etag": str(item.get("ETag") or "").strip('"')}
                 for item in page.get("Contents", [])
                 if item["Key"] != prefix and not _hidden(item["Key"][len(prefix):])]
        subdirectories = [f"s3://{bucket}/{item['Prefix']}" for item in page.get("CommonPrefixes", [])
                          if not _hidden(item["Prefix"][len(prefix):])]
        yield files, subdirectories
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def delete_tree(uri: str) -> None:
    """Remove everything under a prefix/folder (missing is fine)."""
    fs, path = fsspec_filesystem(uri)
    try:
        _guarded(lambda: fs.rm(path, recursive=True), uri, "delete")
    except FileNotFoundError:
        pass


def ensure_bucket(bucket: str) -> None:
    fs = _s3fs()
    if not _guarded(lambda: fs.exists(bucket), f"s3://{bucket}", "head bucket"):
        _guarded(lambda: fs.mkdir(bucket), f"s3://{bucket}", "create bucket")


def relative_key(uri: str, prefix: str) -> str:
    """The part of `uri` below `prefix` (both URIs or both local paths)."""
    _, full = split_uri(uri)
    _, base = split_uri(prefix)
    if not full.startswith(base):
        raise StorageError(f"{uri} is not under {prefix}")
    return full[len(base):].lstrip("/")
