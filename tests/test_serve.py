"""prodray.serve over real HTTP: a local Ray cluster, Serve on a free 127.0.0.1 port, a tiny model.

The model is exported untrained (8 channels, 1 block), so outputs are checked for shape, format
and headers, not for quality. One app serves every test; the last test redeploys it from serve_config.yaml.
"""

import asyncio
import io
import json
import os
import random
import shutil
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from prodray.checkpoint import export_model
from prodray.models import build_model

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000  # small byte cap for the test app
TINY = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"}
# Fit a busy 2-core box: no CPU reservation, one replica each, a short queue so overload shows.
ENHANCER_OPTIONS = {"ray_actor_options": {"num_cpus": 0},
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
INGRESS_OPTIONS = {"ray_actor_options": {"num_cpus": 0},
                   "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                   "max_ongoing_requests": 2, "max_queued_requests": 2}


def _export(path: Path, seed: int) -> tuple[str, str]:
    import torch
    torch.manual_seed(seed)
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    return str(path), export_model(str(path), "enhancer", model, TINY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(w=40, h=30, mode="RGB", fmt="PNG", **params) -> bytes:
    rng = np.random.default_rng(w * 1000 + h)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    im = Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one empty IDAT: tiny, "huge" image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def _start_local_ray(ray, attempts: int = 2) -> None:
    """A fresh local cluster ("local": even when another runs on this machine).

    On a starved box the raylet can abort at startup (it gives the dashboard agent ~15 s to
    write its port files); that is Ray's startup race, not a Serve failure, so try twice."""
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
            return
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray
    from ray import serve

    from prodray.serve import build_app

    root = tmp_path_factory.mktemp("serve")
    model_a, id_a = _export(root / "a", seed=0)
    model_b, id_b = _export(root / "b", seed=1)
    assert id_a != id_b
    port = _free_port()
    _start_local_ray(ray)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(model_a, max_bytes=MAX_BYTES, enhancer_options=ENHANCER_OPTIONS,
                            ingress_options=INGRESS_OPTIONS), name="prodray", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}",
               "model_a": model_a, "id_a": id_a, "model_b": model_b, "id_b": id_b}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _post(server, data: bytes, params=None, **kw) -> requests.Response:
    return requests.post(server["url"] + "/v1/enhance", data=data, params=params, timeout=60, **kw)


def _decode(resp: requests.Response) -> Image.Image:
    im = Image.open(io.BytesIO(resp.content))
    im.load()
    return im


# --- happy paths -------------------------------------------------------------------------------


def test_png_in_png_out_at_twice_the_size(server):
    resp = _post(server, _png(40, 30), headers={"content-type": "image/png"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["x-model-id"] == server["id_a"]
    assert resp.headers["x-scale"] == "2"
    for timing in ("x-decode-ms", "x-enhance-ms", "x-encode-ms"):
        assert float(resp.headers[timing]) >= 0
    im = _decode(resp)
    assert im.format == "PNG" and im.size == (80, 60) and im.mode == "RGB"


def test_jpeg_output_and_quality(server):
    small = _post(server, _png(64, 48), params={"format": "jpeg", "quality": 5})
    large = _post(server, _png(64, 48), params={"format": "jpeg", "quality": 95})
    for resp in (small, large):
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "image/jpeg"
        assert _decode(resp).size == (128, 96)
    assert len(small.content) < len(large.content)


def test_webp_output_keeps_alpha(server):
    resp = _post(server, _png(20, 10, mode="RGBA"), params={"format": "webp"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/webp"
    im = _decode(resp)
    assert im.size == (40, 20) and im.mode == "RGBA"


def test_multipart_upload(server):
    files = {"file": ("product.jpg", _png(33, 17, fmt="JPEG"), "image/jpeg")}
    resp = requests.post(server["url"] + "/v1/enhance", files=files, timeout=60)
    assert resp.status_code == 200, resp.text
    assert _decode(resp).size == (66, 34)
    missing = requests.post(server["url"] + "/v1/enhance", files={"other": ("x.png", _png(), "image/png")},
                            timeout=60)
    assert missing.status_code == 422 and missing.json()["error"] == "missing_file"


def test_concurrent_mixed_sizes_are_batched_correctly(server):
    sizes = [(16, 16), (16, 16), (24, 8), (16, 16)]
    with ThreadPoolExecutor(2) as pool:  # 2 = the test ingress's max_ongoing_requests
        responses = list(pool.map(lambda s: _post(server, _png(*s)), sizes))
    assert [r.status_code for r in responses] == [200] * len(sizes)
    assert [_decode(r).size for r in responses] == [(2 * w, 2 * h) for w, h in sizes]


def test_scale_parameter(server):
    ok = _post(server, _png(20, 10), params={"scale": "2"})
    assert ok.status_code == 200 and _decode(ok).size == (40, 20)
    other = _post(server, _png(20, 10), params={"scale": "4"})
    assert other.status_code == 422, other.text
    assert other.json()["error"] == "unsupported_scale" and "2" in other.json()["message"]


def test_result_too_large_for_the_format(server):
    """A 9000x8 strip is fine in PNG, but x2 is 18000 wide: past WebP's 16383 limit."""
    strip = _png(9000, 8)
    resp = _post(server, strip, params={"format": "webp"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "too_large_for_format"
    assert _decode(_post(server, strip)).size == (18000, 16)


def test_models_health_and_page(server):
    models = requests.get(server["url"] + "/v1/models", timeout=30).json()
    assert models["models"] == [{"id": server["id_a"], "scale": 2, "task": "enhance"}]
    health = requests.get(server["url"] + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = requests.get(server["url"] + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<form" in page.text and "/v1/enhance" in page.text


# --- the web page in a real browser ------------------------------------------------------------


def _chromium() -> str | None:
    """A Chromium/Chrome binary: $PRODRAY_CHROMIUM, else the first on PATH (Debian: `chromium`)."""
    if os.environ.get("PRODRAY_CHROMIUM"):
        return os.environ["PRODRAY_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


SIZES_JS = """() => ["after", "before"].map((id) => {
    const img = document.getElementById(id);
    return [img.naturalWidth, img.naturalHeight];
})"""


def test_web_page_in_headless_chromium(server, tmp_path):
    """Upload a file on GET / like a user, see the result and wipe the before/after slider."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the dev extra has it)")
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run tries it)")
    (tmp_path / "product.png").write_bytes(_png(48, 32))
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + bytes(range(256)) * 4)

    with sync_api.sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root).
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server["url"] + "/")
            assert not page.is_visible("#slider")  # nothing to compare yet

            page.set_input_files("#file", str(tmp_path / "product.png"))
            page.click("button[type=submit]")
            page.wait_for_selector("#slider", state="visible", timeout=60_000)
            assert page.evaluate(SIZES_JS) == [[96, 64], [48, 32]]
            assert server["id_a"] in page.inner_text("#status")
            assert page.inner_text("#after-size") == "after 96x64"
            assert (page.get_attribute("#download", "href") or "").startswith("blob:")

            # The before image covers the result, clipped at the slider: click at ~20% across.
            box = page.locator("#compare").bounding_box()
            assert box["width"] > 0 and box["height"] > 0
            page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + box["height"] / 2)
            value = float(page.input_value("#slider"))
            assert 10 <= value <= 30, value
            clip = page.evaluate("document.getElementById('before').style.clipPath")
            assert clip == f"inset(0px {100 - value:g}% 0px 0px)", clip

            # A rejected upload shows the server's reason and no stale comparison.
            page.set_input_files("#file", str(tmp_path / "anim.gif"))
            page.click("button[type=submit]")
            page.wait_for_function("document.getElementById('status').className === 'error'",
                                   timeout=60_000)
            assert page.inner_text("#status") == "failed: 415 unsupported_format"
            assert not page.is_visible("#slider")
            assert not errors, errors
        finally:
            browser.close()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data,status,reason", [
    (b"", 422, "empty"),
    (b"GIF89a" + bytes(range(256)) * 4, 415, "unsupported_format"),
    (_png_header_only(50_000, 50_000), 413, "too_many_pixels"),
    (_png(64, 64)[:200], 422, "truncated"),
])
def test_rejected_inputs(server, data, status, reason):
    resp = _post(server, data)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == reason


def test_real_gif_is_415(server):
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, format="GIF")
    resp = _post(server, buf.getvalue())
    assert resp.status_code == 415 and resp.json()["error"] == "unsupported_format"


def test_byte_cap_before_decode(server):
    big = random.Random(0).randbytes(MAX_BYTES + 1)
    resp = _post(server, big)
    assert resp.status_code == 413 and resp.json()["error"] == "too_many_bytes"
    files = {"file": ("big.png", big, "image/png")}
    resp = requests.post(server["url"] + "/v1/enhance", files=files, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"] == "too_many_bytes"
    # Chunked, so no content-length to refuse up front: the cap applies while reading.
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    resp = _post(server, chunks)
    assert resp.status_code == 413 and resp.json()["error"] == "too_many_bytes"


@pytest.mark.parametrize("params", [{"format": "gif"}, {"quality": "0"}, {"quality": "101"},
                                    {"quality": "high"}])
def test_bad_query_params(server, params):
    resp = _post(server, _png(), params=params)
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_parameter"


def test_fuzz_never_5xx(server):
    rng = random.Random(1234)
    png = _png(24, 24)
    bodies = [rng.randbytes(rng.randint(1, 4096)) for _ in range(30)]
    bodies += [png[:cut] for cut in sorted(rng.sample(range(1, len(png)), 15))]
    bodies += [png[:8] + rng.randbytes(rng.randint(1, 512)) for _ in range(5)]
    for _ in range(10):
        flipped = bytearray(png)
        for _ in range(4):
            flipped[rng.randrange(8, len(flipped))] = rng.randrange(256)
        bodies.append(bytes(flipped))
    statuses = [_post(server, body).status_code for body in bodies]
    assert all(s < 500 for s in statuses), statuses
    assert all(s == 200 or 400 <= s < 500 for s in statuses), statuses


def test_fuzz_multipart_and_parameters_never_5xx(server):
    """Random multipart bodies, content types and query strings: always 200 or a JSON 4xx."""
    rng = random.Random(99)
    png = _png(16, 16)
    boundary = "fuzzboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    cases = []
    for _ in range(12):  # a valid multipart body, cut or with bytes flipped anywhere
        body = bytearray(part)
        if rng.random() < 0.5:
            body = body[:rng.randrange(1, len(body))]
        else:
            for _ in range(3):
                body[rng.randrange(len(body))] = rng.randrange(256)
        cases.append((bytes(body), f"multipart/form-data; boundary={boundary}", None))
    for _ in range(6):  # random bytes under multipart headers, with and without a boundary
        cases.append((rng.randbytes(rng.randint(0, 2048)),
                      rng.choice(["multipart/form-data", f"multipart/form-data; boundary={boundary}",
                                  "multipart/form-data; boundary="]), None))
    junk = ["", "-1", "1e9", "nan", "\u00e9", "png\x00", "9" * 40, "[]"]
    for _ in range(12):  # random parameter values on a valid image
        params = {rng.choice(["format", "quality", "scale", "other"]): rng.choice(junk)
                  for _ in range(rng.randint(1, 3))}
        cases.append((png, rng.choice(["image/png", "application/octet-stream", "text/plain"]), params))
    for body, ctype, params in cases:
        resp = _post(server, body, params=params, headers={"content-type": ctype})
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, (ctype, params, resp.text)
        if resp.status_code != 200:
            assert resp.headers["content-type"] == "application/json", resp.headers
            assert resp.json()["error"], resp.text


# --- overload and model swap -------------------------------------------------------------------


def test_overload_gives_503(server):
    """Twice the concurrency the ingress admits (2 running + 2 queued): the excess is refused at
    once with 503 + Retry-After; every request gets an answer (a hang would hit the timeout)."""
    data = _png(384, 384)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: _post(server, data), range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses, statuses
    for resp in responses:
        if resp.status_code == 503:
            assert resp.headers["retry-after"] == "1", resp.headers
    # Once the burst is over the service answers normally again.
    assert _post(server, _png(16, 16)).status_code == 200
    assert requests.get(server["url"] + "/healthz", timeout=30).status_code == 200


def test_enhancer_overload_gives_json_503(server):
    """When the enhancer's queue is the one that fills (ingress admits more than the enhancer),
    the ingress answers a JSON 503 "overloaded" with Retry-After, not a 500."""
    from ray import serve

    from prodray.serve import build_app

    tight = {"ray_actor_options": {"num_cpus": 0}, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
             "max_ongoing_requests": 1, "max_queued_requests": 1}
    wide = dict(INGRESS_OPTIONS, max_ongoing_requests=32, max_queued_requests=32)
    serve.run(build_app(server["model_a"], max_bytes=MAX_BYTES, enhancer_options=tight, ingress_options=wide),
              name="tight", route_prefix="/tight")
    try:
        data = _png(512, 512)  # 786 kB, under MAX_BYTES; tiles keep the enhancer busy a while
        url = server["url"] + "/tight/v1/enhance"
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: requests.post(url, data=data, timeout=120), range(12)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        for resp in responses:
            if resp.status_code == 503:
                assert resp.json()["error"] == "overloaded", resp.text
                assert resp.headers["retry-after"] == "1"
    finally:
        serve.delete("tight")


def test_reconfigure_swaps_model_in_process(server, tmp_path):
    """The replica class alone (no Ray): same model is not reloaded, a bad one keeps the old."""
    from prodray.serve import EnhancerDeployment

    replica = EnhancerDeployment.func_or_class()

    async def run():
        await replica.reconfigure({"model": server["model_a"]})
        loaded = replica._enhancer
        await replica.reconfigure({"model": server["model_a"]})
        assert replica._enhancer is loaded
        with pytest.raises(FileNotFoundError):
            await replica.reconfigure({"model": str(tmp_path / "missing")})
        kept = await replica.info()
        await replica.reconfigure({"model": server["model_b"]})
        swapped = await replica.info()
        await replica.reconfigure({"model": server["model_b"], "max_batch_size": 1,
                                   "batch_wait_timeout_s": 0.05})
        assert replica._enhance_batch._get_max_batch_size() == 1
        assert replica._enhance_batch._get_batch_wait_timeout_s() == 0.05
        assert replica._enhancer.model_id == server["id_b"]  # same model: not reloaded
        return kept, swapped

    kept, swapped = asyncio.run(run())
    assert kept == {"id": server["id_a"], "scale": 2}
    assert swapped == {"id": server["id_b"], "scale": 2}


def test_serve_deploy_config_reconfigures_in_place(server):
    """serve_config.yaml as `serve deploy` sends it (same controller call as the dashboard's
    REST API): import path prodray.serve:app; changing only user_config.model is a lightweight
    update, i.e. `reconfigure` on the running replica, again with no failed request."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def config(model):
        doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        del doc["http_options"], doc["proxy_location"]  # Serve already runs on the test port
        for deployment in doc["applications"][0]["deployments"]:
            deployment["ray_actor_options"] = {"num_cpus": 0}
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
            if deployment["name"] == "EnhancerDeployment":
                deployment["user_config"] = {"model": model}
        return ServeDeploySchema.model_validate(doc)

    client = _get_global_client()
    client.deploy_apps(config(server["model_a"]), _blocking=True)  # a code change: full rollout
    _wait_for_model(server, server["id_a"])

    data, seen, failures, stop = _png(16, 16), [], [], threading.Event()

    def traffic():  # one client posting nonstop through the swap
        while not stop.is_set():
            try:
                resp = _post(server, data)
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            seen.append(resp.headers.get("x-model-id"))
            if resp.status_code != 200:
                failures.append((resp.status_code, resp.text[:300]))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        client.deploy_apps(config(server["model_b"]), _blocking=True)  # only user_config changed
        _wait_for_model(server, server["id_b"])
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures
    assert seen[0] == server["id_a"] and seen[-1] == server["id_b"], seen


def _wait_for_model(server, model_id, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            resp = requests.get(server["url"] + "/v1/models", timeout=30)
            if resp.status_code == 200 and resp.json()["models"][0]["id"] == model_id:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"model {model_id} not served within {timeout} s")


# --- deploy config -----------------------------------------------------------------------------


def test_serve_config_is_valid_and_matches_app():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(doc)
    assert doc["http_options"]["host"] == "127.0.0.1"
    (app,) = doc["applications"]
    assert app["import_path"] == "prodray.serve:app"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "EnhancerDeployment"}
    enhancer = deployments["EnhancerDeployment"]
    assert enhancer["user_config"]["model"]
    scaling = enhancer["autoscaling_config"]
    assert scaling["max_replicas"] >= scaling["min_replicas"] >= 1 and scaling["target_ongoing_requests"] > 0
    assert json.dumps(doc)  # plain data


def test_import_is_lazy():
    """Importing the module and building the app must not start Ray or import torch-heavy code."""
    import subprocess
    import sys
    code = ("import sys, ray, prodray.serve as s; assert not ray.is_initialized(); "
            "assert 'prodray.enhance' not in sys.modules; print(type(s.app).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Application"
