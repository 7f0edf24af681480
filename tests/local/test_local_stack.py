"""`prodray up / env / status / down` as a user runs them: real subprocesses, a real Ray head and SeaweedFS.

One up/down cycle covers everything (starting a Ray head takes 20-40 s on a small machine). All
ports are free ones passed through PRODRAY_*_PORT, the state lives in a temporary PRODRAY_HOME,
and the environment has no AWS_* variables: what jobs need must come from `prodray up` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import free_ports

from prodray.local import stack as local

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PORT_NAMES = ("ray", "dashboard", "s3", "master", "volume", "filer")


def _prodray_command() -> list[str]:
    script = BIN / "prodray"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from prodray.cli import main; main()"]


def _stack_env(home: Path, ports: dict, ray_tmp: Path) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "PRODRAY_")) and key != "RAY_ADDRESS"}
    # `ray start` records its address in <tmp>/ray/ray_current_cluster, where any `ray.init()` on
    # the machine would find and join it: keep the test head out of other processes' way.
    env["RAY_TMPDIR"] = str(ray_tmp)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as with an activated venv
    env["PRODRAY_HOME"] = str(home)
    # Ray gives its dashboard 60 s and the raylet 30-60 s to start; a busy 2-core machine can take longer.
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "240")
    env.setdefault("RAY_raylet_start_wait_time_s", "240")
    for name, port in ports.items():
        env[f"PRODRAY_{name.upper()}_PORT"] = str(port)
    return env


def _prodray(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*_prodray_command(), *args], env=env, cwd=env["PRODRAY_HOME"] + "-cwd",
                          capture_output=True, text=True, timeout=timeout)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (pgid, state) for every process in /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[2]), fields[0])
    return found


def _leftovers(pids: set[int], home: Path) -> list[str]:
    """Live processes that `up` started: a recorded pid, one of its process groups, or one with our PRODRAY_HOME."""
    marker = f"PRODRAY_HOME={home}".encode() + b"\0"
    left = []
    for pid, (pgid, state) in _processes().items():
        if state == "Z" or pid == os.getpid():
            continue
        if pid in pids or pgid in pids:
            left.append(f"{pid} (group {pgid})")
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if marker in environ:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            except OSError:
                cmdline = "?"
            left.append(f"{pid} {cmdline}")
    return left


def _wait_for_no_leftovers(pids: set[int], home: Path, timeout_s: float = 30) -> list[str]:
    # Ray workers (own process groups) exit shortly after their raylet: give them a moment.
    deadline = time.monotonic() + timeout_s
    while True:
        left = _leftovers(pids, home)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _logs(home: Path, ray_tmp: Path | None = None, lines: int = 40) -> str:
    """The tail of the stack's logs (and the Ray head's own), for failure messages."""
    out = []
    paths = sorted((home / "logs").glob("*.log"))
    if ray_tmp is not None:
        ray_logs = ray_tmp / "ray" / "session_latest" / "logs"
        paths += [ray_logs / name for name in ("raylet.err", "raylet.out", "gcs_server.err", "dashboard_agent.log")
                  if (ray_logs / name).is_file()]
    for path in paths:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)


def _lost_ray_agent_race(ray_tmp: Path) -> bool:
    for err in (ray_tmp / "ray").glob("session_*/logs/raylet.err"):
        if "Timed out waiting for file" in err.read_text(errors="replace"):
            return True
    return False


def _cleanup(env: dict, home: Path) -> None:
    """Best effort after a failure: `down`, then stop whatever process group the state still names."""
    try:
        _prodray(env, "down", timeout=120)
    except Exception:  # noqa: BLE001
        pass
    state_path = home / "stack.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        for name in ("ray_pid", "s3_pid"):
            if state.get(name):
                local.stop_group(state[name])


@pytest.fixture
def ray_tmp():
    """A short private Ray temp dir (Unix socket paths under it must stay below 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="prt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_local_stack_lifecycle(tmp_path, ray_tmp):
    home = tmp_path / "home"
    (tmp_path / "home-cwd").mkdir()
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    env = _stack_env(home, ports, ray_tmp)
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        # ---- up
        up = _prodray(env, "up", timeout=600)
        if up.returncode != 0 and _lost_ray_agent_race(ray_tmp):
            # Ray 2.60's raylet aborts when its dashboard agent takes more than ~15 s to report
            # its port (seen on a busy 2-core machine): Ray's start-up race, not prodray's; `up`
            # has cleaned up after itself, so try once more.
            up = _prodray(env, "up", timeout=600)
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}\n{_logs(home, ray_tmp)}"
        assert 'eval "$(prodray env)"' in up.stdout
        assert dashboard in up.stdout and f"http://127.0.0.1:{ports['s3']}" in up.stdout
        state = json.loads((home / "stack.json").read_text())
        pids = {state["ray_pid"], state["s3_pid"]}
        assert all(pids)
        credentials = home / "credentials.json"
        assert credentials.stat().st_mode & 0o077 == 0, "credentials must be readable by the owner only"

        # ---- env: export lines for eval
        env_out = _prodray(env, "env")
        assert env_out.returncode == 0, env_out.stderr
        exports = {}
        for line in env_out.stdout.splitlines():
            assert line.startswith("export "), line
            key, value = line[len("export "):].split("=", 1)
            exports[key] = value
        assert exports["RAY_ADDRESS"] == dashboard
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['s3']}"
        assert exports["AWS_REGION"] == "us-east-1"
        assert exports["PRODRAY_BUCKET"] == "prodray"
        assert exports["AWS_ACCESS_KEY_ID"] and exports["AWS_SECRET_ACCESS_KEY"]
        assert exports["AWS_SECRET_ACCESS_KEY"] not in up.stdout + up.stderr, "up must not print the secret"

        # ---- token auth is on: the job API refuses a request without the token or with a wrong one
        ray_env = {key: value for key, value in exports.items() if key.startswith("RAY_")}
        assert exports["RAY_AUTH_MODE"] == "token"
        token_path = Path(exports["RAY_AUTH_TOKEN_PATH"])
        assert token_path.stat().st_mode & 0o077 == 0, "the Ray token must be readable by the owner only"
        headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
        for refused_headers, code in (({}, 401), ({"Authorization": "Bearer " + "0" * 64}, 403)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(f"{dashboard}/api/jobs/", headers=refused_headers),
                                       timeout=10)
            assert refused.value.code == code, refused_headers
        with urllib.request.urlopen(urllib.request.Request(f"{dashboard}/api/jobs/", headers=headers),
                                    timeout=10) as response:
            assert response.status == 200
        request = urllib.request.Request(f"{dashboard}/api/version", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            version = json.loads(response.read())
        assert version.get("ray_version", "").startswith("2.")

        # ---- the bucket exists, reachable with the printed credentials
        import boto3

        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        s3.head_bucket(Bucket="prodray")

        # ---- status --json
        status = _prodray(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["running"] is True
        assert info["ray"]["alive"] is True and info["s3"]["alive"] is True
        assert info["ray"]["pid"] == state["ray_pid"] and info["s3"]["pid"] == state["s3_pid"]
        assert info["s3"]["bucket"] == "prodray"

        # ---- a second up reuses the running stack
        again = _prodray(env, "up", timeout=120)
        assert again.returncode == 0, again.stderr
        assert "reusing" in again.stdout + again.stderr
        assert json.loads((home / "stack.json").read_text())["ray_pid"] == state["ray_pid"]

        # ---- a Ray job reads and writes the bucket with no flags and no AWS_* in the submitter's env
        # (the submitter has what `eval "$(prodray env)"` sets for Ray; S3 settings come from the head)
        key = f"job-check/{uuid.uuid4().hex}.txt"
        job_code = ("import s3fs; fs = s3fs.S3FileSystem(); "
                    f"fs.pipe('prodray/{key}', b'written by a ray job'); "
                    f"print('JOB-READ', fs.cat('prodray/{key}'))")
        job = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--",
                              "python", "-c", job_code],
                             env={**env, **ray_env}, cwd=tmp_path / "home-cwd", capture_output=True, text=True,
                             timeout=300)
        assert job.returncode == 0, (f"ray job submit failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}\n"
                                     f"status: {_prodray(env, 'status').stdout}\n{_logs(home, ray_tmp)}")
        assert "JOB-READ b'written by a ray job'" in job.stdout
        assert s3.get_object(Bucket="prodray", Key=key)["Body"].read() == b"written by a ray job"

        # ---- down stops everything it started and keeps the data
        down = _prodray(env, "down", timeout=120)
        assert down.returncode == 0, f"down failed:\n{down.stdout}\n{down.stderr}"
        assert not (home / "stack.json").exists()
        assert (home / "s3data").is_dir()
        left = _wait_for_no_leftovers(pids, home)
        assert not left, f"processes left after down: {left}"
        after = _prodray(env, "status", "--json")
        assert json.loads(after.stdout) == {"running": False}
    finally:
        if (home / "stack.json").exists():
            _cleanup(env, home)


def test_up_refuses_a_taken_port(tmp_path, ray_tmp):
    home = tmp_path / "home"
    (tmp_path / "home-cwd").mkdir()
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    env = _stack_env(home, ports, ray_tmp)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["s3"]))
        holder.listen(1)
        try:
            result = _prodray(env, "up", timeout=120)
        finally:
            if (home / "stack.json").exists():
                _cleanup(env, home)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(ports["s3"]) in lines[0] and "in use" in lines[0]
    assert not (home / "stack.json").exists()
