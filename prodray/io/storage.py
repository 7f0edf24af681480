"""Object storage: `s3://bucket/key` URIs and local paths behind one small API.

Owns filesystems (s3fs for byte I/O, pyarrow for Ray Data), listing, get/put, create-only
put, and retries with backoff on throttling, 5xx and dropped connections. S3 settings come
only from the standard AWS_* environment variables; secrets never reach logs or errors.
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


def s3_settings() -> dict:
    """Endpoint and region from the standard variables (credentials are read by botocore)."""
    return {"endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None,
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}


_FS_CACHE: dict = {}


def _s3fs():
    import s3fs

    settings = s3_settings()
    key = (settings["endpoint_url"], settings["region"], os.environ.get("AWS_ACCESS_KEY_ID"))
    if key not in _FS_CACHE:
        client_kwargs = {"region_name": settings["region"]}
        if settings["endpoint_url"]:
            client_kwargs["endpoint_url"] = settings["endpoint_url"]
        # Retries are ours (with_retries); botocore's own stay on for transport hiccups.
        _FS_CACHE[key] = s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True,
                                           config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}})
    return _FS_CACHE[key]


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


def with_retries(operation, description: str, attempts: int = 8, base_delay: float = 0.2, max_delay: float = 5.0):
    """Run `operation()`; retry throttling, 5xx and connection errors with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("retrying %s after %s (attempt %d/%d)", description, redact(type(exc).__name__),
                        attempt, attempts)
            time.sleep(delay)


def _friendly(exc: BaseException, uri: str) -> StorageError:
    text = redact(str(exc))
    # s3fs turns botocore errors into OSError subclasses and keeps the original as __cause__.
    code = _error_code(exc) or _error_code(exc.__cause__)
    if isinstance(exc, PermissionError) and not code:
        code = "AccessDenied"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
        return StorageError(f"access to {uri} denied ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if ("Could not connect" in text or "EndpointConnectionError" in type(exc).__name__
            or "Connect" in type(exc).__name__):
        return StorageError(f"cannot reach the S3 endpoint for {uri} "
                            f"({s3_settings()['endpoint_url'] or 'AWS default'}): "
                            "check AWS_ENDPOINT_URL and that the server runs (prodray status)")
    return StorageError(f"{type(exc).__name__} on {uri}: {text[:300]}")


def _guarded(operation, uri: str, description: str):
    try:
        return with_retries(operation, f"{description} {uri}")
    except (FileNotFoundError, FileExistsError, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _friendly(exc, uri) from None


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
    _guarded(lambda: fs.pipe_file(path, data), uri, "put")


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create-only write. Returns False (writing nothing) if the object already exists with other bytes.

    S3: a conditional PUT (If-None-Match: *), so two racing writers cannot both win. A PUT whose
    response was lost (dropped connection) may have taken effect; its retry (ours or botocore's)
    then meets a 412. So on a 412 the existing object's ETag is compared with our bytes' MD5:
    equal means these very bytes are stored (our own earlier attempt, or an identical duplicate),
    and that counts as written.
    Local: temp file + hard link, which fails atomically if the target exists.
    """
    scheme, path = split_uri(uri)
    if scheme == "file":
        return _atomic_local_write(Path(path), data, exclusive=True)
    fs = _s3fs()

    def attempt():
        try:
            fs.pipe_file(path, data, IfNoneMatch="*")
            return True
        except FileExistsError:  # s3fs's translation of a 412 that names the If-None-Match condition
            return _holds_exactly(fs, path, data)
        except Exception as exc:  # noqa: BLE001
            # s3fs wraps other 412s in an OSError; the botocore error is its __cause__.
            code = _error_code(exc) or _error_code(exc.__cause__)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or "PreconditionFailed" in str(exc):
                return _holds_exactly(fs, path, data)
            raise

    return _guarded(attempt, uri, "create")


def _holds_exactly(fs, path: str, data: bytes) -> bool:
    """True if the object at `path` was stored by a single PUT of exactly `data` (ETag == MD5)."""
    etag = str(fs.info(path, refresh=True).get("ETag") or "").strip('"')
    return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()  # a multipart ETag ("...-N") never matches


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
