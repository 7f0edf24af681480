"""prodray.cluster.serve over real HTTP: a local Ray cluster, Serve on a free 127.0.0.1 port, tiny models.

The enhancer (8 channels, 1 block) and the generator (32 px) are exported untrained, so outputs
are checked for shape, format, headers and seed semantics, not for quality. One app serves every
test; the last test redeploys it from serve_config.yaml. The typed builder and the deploy config
are checked without a cluster at the end.
"""

import asyncio
import base64
import hashlib
import io
import json
import os
import random
import shutil
import struct
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from prodray.enhancer.model import build_model
from prodray.io.artifacts import export_model
from prodray.local.stack import free_port
from prodray.recolour.colours import REFERENCE_HEX

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 1_000_000  # small byte cap for the test app
MAX_OUTPUT_PIXELS = 1_000_000  # and a small result cap
TINY = {"arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1, "kind": "enhancer"}
# Fit a busy 2-core box: no CPU reservation, one replica each, a short queue so overload shows.
ONE_REPLICA = {"num_cpus": 0, "min_replicas": 1, "max_replicas": 1}
GEN_VOCAB = {"articleType": ["Tshirts", "Watches", "Handbags"], "baseColour": ["Black", "Red"]}
GEN_CONFIG = {"vocab": GEN_VOCAB, "resolution": 32, "z_dim": 16, "embed_dim": 8, "g_channels": 32,
              "d_channels": 8}
WATCH = {"articleType": "Watches", "baseColour": "Red"}
INGRESS_REPLICAS = {**ONE_REPLICA, "max_ongoing_requests": 2, "max_queued_requests": 2}


def _export(path: Path, seed: int) -> tuple[str, str]:
    import torch
    torch.manual_seed(seed)
    model = build_model("rpsnet", scale=2, channels=8, blocks=1)
    return str(path), export_model(str(path), "enhancer", model, TINY)


def _export_generator(path: Path, seed: int) -> tuple[str, str]:
    import torch

    from prodray.gan.model import build_generator
    torch.manual_seed(seed)
    model = build_generator(GEN_CONFIG).eval()
    return str(path), export_model(str(path), "generator", model, {**GEN_CONFIG, "kind": "generator"})


def _export_repairer(path: Path, seed: int) -> tuple[str, str]:
    import torch

    from prodray.repair.model import build_repairer
    torch.manual_seed(seed)
    config = {"arch": "fourier-unet", "channels": 8, "blocks": 1, "kind": "repair"}
    return str(path), export_model(str(path), "repair", build_repairer(config).eval(), config)


def _export_recolourer(path: Path) -> tuple[str, str]:
    from prodray.recolour.model import RecolourNet
    config = {"arch": "bilateral-grid", "channels": 8, "grid_depth": 4, "grid_size": 8, "input_size": 32,
              "kind": "recolour"}
    net = RecolourNet(channels=8, grid_depth=4, grid_size=8, input_size=32).eval()
    return str(path), export_model(str(path), "recolour", net, config)


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


def _start_local_ray(ray, attempts: int = 3) -> None:
    """A fresh local cluster ("local": even when another runs on this machine).

    On a starved box the raylet can abort at startup (it gives the dashboard agent ~15 s to
    write its port files); that is Ray's startup race, not a Serve failure, so try a few times."""
    # The raylet's own wait for those files (RAY_raylet_start_wait_time_s) is what runs out on a
    # box loaded ~15x over its cores; with 120 s it started at once after ~10 failed tries.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
            return
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def _direct_url() -> str:
    """The prodray app's ingress replica's own URL (direct ingress); it changes when the replica does."""
    from prodray.cluster.serve import direct_ingress_urls

    (url,) = direct_ingress_urls("prodray")
    return url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray
    from ray import serve

    from prodray.cluster.serve import build_app
    from prodray.config import ServeConfig

    root = tmp_path_factory.mktemp("serve")
    model_a, id_a = _export(root / "a", seed=0)
    model_b, id_b = _export(root / "b", seed=1)
    gen_a, gen_id_a = _export_generator(root / "gen_a", seed=0)
    gen_b, gen_id_b = _export_generator(root / "gen_b", seed=1)
    repairer, repair_id = _export_repairer(root / "repair", seed=0)
    recolourer, recolour_id = _export_recolourer(root / "recolour")
    assert id_a != id_b and gen_id_a != gen_id_b
    port = free_port()
    # PRODRAY_TEST_DIRECT_INGRESS=1: the same tests against Ray Serve's direct ingress (ServeJobConfig.
    # direct_ingress), straight to the ingress replica's own port instead of through the proxy.
    direct = os.environ.get("PRODRAY_TEST_DIRECT_INGRESS") == "1"
    saved_flag = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS")
    if direct:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # inherited by the Ray started here
    _start_local_ray(ray)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(model=model_a, generator=gen_a, max_bytes=MAX_BYTES, max_output_pixels=MAX_OUTPUT_PIXELS,
                             ingress_replicas=INGRESS_REPLICAS, votes=str(root / "votes"),
                             enhancer_replicas=ONE_REPLICA, generator_replicas=ONE_REPLICA,
                             repair=repairer, repair_replicas=ONE_REPLICA,
                             recolour=recolourer, recolour_replicas=ONE_REPLICA)
        serve.run(build_app(config), name="prodray", route_prefix="/")
        proxy_url = f"http://127.0.0.1:{port}"
        url = _direct_url() if direct else proxy_url
        assert url != proxy_url or not direct
        yield {"url": url, "proxy_url": proxy_url, "direct": direct, "votes": root / "votes",
               "model_a": model_a, "id_a": id_a, "model_b": model_b, "id_b": id_b,
               "gen_a": gen_a, "gen_id_a": gen_id_a, "gen_b": gen_b, "gen_id_b": gen_id_b,
               "repair": repairer, "repair_id": repair_id, "recolour_id": recolour_id}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if saved_flag is None:
                os.environ.pop("RAY_SERVE_ENABLE_DIRECT_INGRESS", None)
            else:
                os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = saved_flag


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
    for timing in ("x-decode-ms", "x-enhance-ms", "x-encode-ms", "x-wait-ms", "x-forward-ms"):
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
    assert models["models"] == [
        {"id": server["id_a"], "scale": 2, "task": "enhance"},
        {"id": server["gen_id_a"], "task": "generate", "resolution": 32, "attributes": GEN_VOCAB, "max_n": 16},
        {"id": server["repair_id"], "task": "repair"},
        {"id": server["recolour_id"], "task": "recolour", "colours": REFERENCE_HEX},
    ]
    health = requests.get(server["url"] + "/healthz", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "model_id": server["id_a"],
                             "enhancer": {"status": "ok", "model_id": server["id_a"]},
                             "generator": {"status": "ok", "model_id": server["gen_id_a"]},
                             "repair": {"status": "ok", "model_id": server["repair_id"]},
                             "recolour": {"status": "ok", "model_id": server["recolour_id"]}}
    page = requests.get(server["url"] + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<form" in page.text and "/v1/enhance" in page.text and "/v1/generate" in page.text
    assert "/v1/repair" in page.text


# --- repair ------------------------------------------------------------------------------------

def _repair(server, image: bytes, mask, params=None) -> requests.Response:
    """POST /v1/repair: `mask` as PNG bytes (a file field) or a str (a text field: JSON rectangles)."""
    files = {"image": ("photo.png", image, "image/png")}
    if isinstance(mask, bytes):
        files["mask"] = ("mask.png", mask, "image/png")
    elif mask is not None:
        files["mask"] = (None, mask)
    return requests.post(server["url"] + "/v1/repair", files=files, params=params, timeout=60)


def _mask_png(w, h, box) -> bytes:
    mask = np.zeros((h, w), np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def test_repair_fills_only_the_masked_pixels(server):
    image = _png(64, 48)
    original = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    for mask in (_mask_png(64, 48, (10, 20, 30, 50)), json.dumps([[20, 10, 30, 20]])):
        resp = _repair(server, image, mask)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-model-id"] == server["repair_id"]
        assert resp.headers["x-repaired-pixels"] == str(20 * 30)
        out = np.asarray(_decode(resp).convert("RGB"))
        hole = np.zeros((48, 64), bool)
        hole[10:30, 20:50] = True
        assert out.shape == original.shape
        assert np.array_equal(out[~hole], original[~hole])
        assert not np.array_equal(out[hole], original[hole])  # random noise cannot be predicted exactly
    assert _decode(_repair(server, image, json.dumps([[0, 0, 8, 8]]), params={"format": "jpeg"})).format == "JPEG"


@pytest.mark.parametrize("mask,status,reason", [
    (_mask_png(63, 48, (0, 0, 10, 10)), 422, "mask_size_mismatch"),
    (_mask_png(64, 48, (0, 0, 0, 0)), 422, "empty_mask"),
    (None, 422, "missing_mask"),
    ("[[1, 2, 3]]", 422, "bad_mask"),
    ("not json", 422, "bad_mask"),
    (_mask_png(64, 48, (0, 0, 10, 10))[:70], 422, "mask_truncated"),
    (b"GIF89a" + bytes(64), 415, "mask_unsupported_format"),
])
def test_repair_refuses_bad_masks_with_a_reason(server, mask, status, reason):
    resp = _repair(server, _png(64, 48), mask)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == reason, resp.json()


def test_repair_refuses_bad_images_and_bodies_as_enhance_does(server):
    rects = json.dumps([[0, 0, 4, 4]])
    assert _repair(server, b"GIF89a" + bytes(64), rects).json()["error"] == "unsupported_format"
    huge = _repair(server, _png_header_only(100_000, 100_000), rects)
    assert huge.status_code == 413 and huge.json()["error"] == "too_many_pixels", huge.text
    raw = requests.post(server["url"] + "/v1/repair", data=_png(), timeout=30)
    assert raw.status_code == 415 and raw.json()["error"] == "multipart_required"
    no_image = requests.post(server["url"] + "/v1/repair", files={"mask": (None, rects)}, timeout=30)
    assert no_image.status_code == 422 and no_image.json()["error"] == "missing_image"


# --- recolour ----------------------------------------------------------------------------------

def _recolour(server, image: bytes, colour, mask=None, params=None) -> requests.Response:
    files = {"image": ("photo.png", image, "image/png")}
    if colour is not None:
        files["colour"] = (None, colour)
    if isinstance(mask, bytes):
        files["mask"] = ("mask.png", mask, "image/png")
    elif mask is not None:
        files["mask"] = (None, mask)
    return requests.post(server["url"] + "/v1/recolour", files=files, params=params, timeout=60)


def _product_photo(w=64, h=48) -> tuple[bytes, np.ndarray]:
    """A shaded green product on pure white, as PNG bytes and its pixels."""
    rgb = np.full((h, w, 3), 255, np.uint8)
    shade = np.linspace(0.7, 1.0, w - 24)[None, :, None]
    rgb[12:h - 12, 12:w - 12] = (np.array([40, 140, 60]) * shade).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), rgb


def test_recolour_moves_the_product_to_the_colour_and_keeps_the_background(server):
    from prodray.metrics import srgb_to_lab
    from prodray.recolour.colours import nearest_colour_name
    from prodray.recolour.segmentation import product_mask
    image, rgb = _product_photo()
    product = product_mask(rgb)  # the shape less its four corner pixels (the mask's opening)
    assert abs(int(product.sum()) - int((rgb != 255).any(axis=2).sum())) <= 4
    for colour, name in (("Red", "Red"), ("navy blue", "Navy Blue"), ("#f2c500", "Yellow")):
        resp = _recolour(server, image, colour)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-model-id"] == server["recolour_id"]
        assert resp.headers["x-product-pixels"] == str(int(product.sum()))
        out = np.asarray(_decode(resp).convert("RGB"))
        assert np.array_equal(out[~product], rgb[~product])  # pure white stays 255
        assert nearest_colour_name(srgb_to_lab(out[product]).mean(axis=0)) == name
        assert out[product][:, 0].std() > 1  # the shading is still there
    # An explicit mask recolours exactly its pixels.
    resp = _recolour(server, image, "Red", mask=json.dumps([[12, 12, 10, 10]]))
    out = np.asarray(_decode(resp).convert("RGB"))
    inside = np.zeros(rgb.shape[:2], bool)
    inside[12:22, 12:22] = True
    assert np.array_equal(out[~inside], rgb[~inside]) and not np.array_equal(out[inside], rgb[inside])


@pytest.mark.parametrize("colour,image,status,reason", [
    ("mauve-ish", None, 422, "bad_colour"),
    ("#12345", None, 422, "bad_colour"),
    (None, None, 422, "missing_colour"),
    ("Red", "white", 422, "no_product"),
    ("Red", "gif", 415, "unsupported_format"),
])
def test_recolour_refuses_with_a_reason(server, colour, image, status, reason):
    data = {None: _product_photo()[0], "gif": b"GIF89a" + bytes(64)}.get(image)
    if image == "white":
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
    resp = _recolour(server, data, colour)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == reason, resp.json()


# --- generation --------------------------------------------------------------------------------


def _generate(server, body, prefix="") -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server["url"] + prefix + "/v1/generate", data=data, timeout=60,
                         headers={"content-type": "application/json"})


def _unzip(resp: requests.Response) -> list[tuple[str, np.ndarray]]:
    with zipfile.ZipFile(io.BytesIO(resp.content)) as archive:
        return [(name, np.asarray(Image.open(io.BytesIO(archive.read(name))))) for name in archive.namelist()]


class OneThreadGenerator:
    """The generator in this process with the replica's arithmetic: Ray runs a replica of at most one
    CPU on one thread (OMP_NUM_THREADS=1), and the thread count can change an fp32 convolution's sums,
    and so a pixel, by one level."""

    def __init__(self, generator):
        self.generator = generator

    def generate(self, *args, **kwargs):
        from prodray.gan.classifier import torch_threads

        with torch_threads(1):
            return self.generator.generate(*args, **kwargs)


@pytest.fixture(scope="module")
def local_generator(server):
    from prodray.gan.inference import ProductGenerator
    return OneThreadGenerator(ProductGenerator.load(server["gen_a"], "cpu"))


def test_generate_one_png(server, local_generator):
    resp = _generate(server, {"attributes": WATCH, "n": 1, "seed": 7})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert resp.headers["x-model-id"] == server["gen_id_a"]
    assert resp.headers["x-seed"] == "7" and resp.headers["x-n"] == "1"
    for timing in ("x-generate-ms", "x-encode-ms"):
        assert float(resp.headers[timing]) >= 0
    im = _decode(resp)
    assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
    # Exactly what the generator gives in-process for this seed (noise is per request).
    assert np.array_equal(np.asarray(im), local_generator.generate(WATCH, 1, 7)[0])


def test_generate_zip_of_n(server, local_generator):
    attributes = {"articleType": "Handbags", "baseColour": "Black"}
    resp = _generate(server, {"attributes": attributes, "n": 3, "seed": 2**63 - 1})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    assert resp.headers["x-seed"] == str(2**63 - 1) and resp.headers["x-n"] == "3"
    assert "attachment" in resp.headers["content-disposition"]
    files = _unzip(resp)
    assert [name for name, _ in files] == [f"seed{2**63 - 1}-{i:02d}.png" for i in range(3)]
    expected = local_generator.generate(attributes, 3, 2**63 - 1)
    for (_, image), want in zip(files, expected):
        assert image.shape == (32, 32, 3) and np.array_equal(image, want)
    assert not np.array_equal(files[0][1], files[1][1])  # different draws within one request


def test_generate_seed_semantics(server):
    body = {"attributes": WATCH, "n": 2, "seed": 123}
    first, again = _generate(server, body), _generate(server, body)
    other = _generate(server, dict(body, seed=124))
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.content == again.content  # same seed, same bytes (the zip too)
    assert first.content != other.content
    # No seed: a random one, sent back, that reproduces the answer.
    chosen = _generate(server, {"attributes": WATCH})
    assert chosen.status_code == 200 and chosen.headers["content-type"] == "image/png"
    seed = int(chosen.headers["x-seed"])
    assert 0 <= seed < 2**63
    assert _generate(server, {"attributes": WATCH, "seed": seed}).content == chosen.content


def test_generate_truncation_is_the_generators(server, local_generator):
    resp = _generate(server, {"attributes": WATCH, "n": 1, "seed": 7, "truncation": 0.5})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-truncation"] == "0.5"
    image = np.asarray(_decode(resp))
    assert np.array_equal(image, local_generator.generate(WATCH, 1, 7, truncation=0.5)[0])
    assert not np.array_equal(image, local_generator.generate(WATCH, 1, 7)[0])
    assert "x-truncation" not in _generate(server, {"attributes": WATCH, "seed": 7}).headers


def test_generate_concurrent_requests_keep_their_seeds(server, local_generator):
    cases = [({"articleType": t, "baseColour": c}, n, seed)
             for (t, c, n, seed) in [("Tshirts", "Black", 1, 1), ("Watches", "Red", 3, 1),
                                     ("Handbags", "Red", 2, 99), ("Tshirts", "Red", 1, 5),
                                     ("Watches", "Black", 4, 0), ("Handbags", "Black", 1, 1)]]
    with ThreadPoolExecutor(2) as pool:  # 2 = the test ingress's max_ongoing_requests
        responses = list(pool.map(lambda c: _generate(server, {"attributes": c[0], "n": c[1], "seed": c[2]}),
                                  cases))
    for (attributes, n, seed), resp in zip(cases, responses):
        assert resp.status_code == 200, resp.text
        images = [np.asarray(_decode(resp))] if n == 1 else [image for _, image in _unzip(resp)]
        expected = local_generator.generate(attributes, n, seed)
        assert len(images) == n and all(np.array_equal(a, b) for a, b in zip(images, expected)), (attributes, n, seed)


def test_generator_batch_merges_requests_exactly(server, local_generator):
    """The batch body alone (no Ray; `@serve.batch` itself needs a replica): the rows of several
    requests run as one forward pass, and each request still gets exactly
    ProductGenerator.generate(attributes, n, seed). Over HTTP this is checked end to end by
    test_generate_concurrent_requests_keep_their_seeds."""
    from prodray.cluster.serve import GeneratorDeployment

    cls = GeneratorDeployment.func_or_class
    replica = cls()
    cases = [(WATCH, 3, 11), ({"articleType": "Tshirts", "baseColour": "Black"}, 1, 11),
             ({"articleType": "Handbags", "baseColour": "Red"}, 16, 2**40), (WATCH, 2, 0)]

    async def run():
        await replica.reconfigure({"model": server["gen_a"]})
        generator, calls = replica._model, []
        original = generator.generate_noise
        generator.generate_noise = lambda index, noise: calls.append(len(noise)) or original(index, noise)
        batch = [(generator, generator.indices(a), generator.noise(n, s)) for a, n, s in cases]
        return await cls._generate_batch.__wrapped__(replica, batch), calls

    results, calls = asyncio.run(run())
    assert calls == [sum(n for _, n, _ in cases)]  # one merged forward pass
    for (attributes, n, seed), (images, generator) in zip(cases, results):
        assert generator.model_id == server["gen_id_a"] and images.shape == (n, 32, 32, 3)
        assert all(np.array_equal(a, b) for a, b in zip(images, local_generator.generate(attributes, n, seed)))


def test_generator_reconfigure_in_process(server, tmp_path):
    from prodray.cluster.serve import GeneratorDeployment

    replica = GeneratorDeployment.func_or_class()

    async def run():
        await replica.reconfigure({"model": server["gen_a"]})
        loaded = replica._model
        await replica.reconfigure({"model": server["gen_a"]})
        assert replica._model is loaded  # same model: not reloaded
        with pytest.raises(FileNotFoundError):
            await replica.reconfigure({"model": str(tmp_path / "missing")})
        with pytest.raises(ValueError, match="not a generator"):
            await replica.reconfigure({"model": server["model_a"]})  # an enhancer export
        kept = await replica.info()
        await replica.reconfigure({"model": server["gen_b"], "max_batch_size": 2})
        assert replica._generate_batch._get_max_batch_size() == 2
        return kept, await replica.info()

    kept, swapped = asyncio.run(run())
    assert kept["id"] == server["gen_id_a"] and swapped["id"] == server["gen_id_b"]
    assert swapped["attributes"] == GEN_VOCAB and swapped["resolution"] == 32


@pytest.mark.parametrize("body,status,reason,field", [
    ({"attributes": {**WATCH, "size": "XL"}}, 422, "unknown_attribute", None),
    ({"attributes": {"articleType": "Watches", "baseColour": "Mauve"}}, 422, "unknown_attribute", None),
    ({"attributes": {"articleType": "Watches"}}, 422, "missing_attribute", None),
    ({"attributes": {}}, 422, "missing_attribute", None),
    ({"attributes": WATCH, "n": 0}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "n": 17}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "n": -3}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "n": "3"}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "n": 2.0}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "n": True}, 422, "invalid_parameter", "n"),
    ({"attributes": WATCH, "seed": -1}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": 2**63}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": 10**400}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": "5"}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": 1.5}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": False}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "seed": [1]}, 422, "invalid_parameter", "seed"),
    ({"attributes": WATCH, "truncation": 0}, 422, "invalid_parameter", "truncation"),
    ({"attributes": WATCH, "truncation": 4.5}, 422, "invalid_parameter", "truncation"),
    ({"attributes": WATCH, "truncation": "0.5"}, 422, "invalid_parameter", "truncation"),
    (b'{"attributes": {"articleType": "Watches", "baseColour": "Red"}, "truncation": NaN}', 422,
     "invalid_parameter", "truncation"),
    ({"attributes": WATCH, "colour": "Red"}, 422, "invalid_parameter", "colour"),
    ({"n": 1}, 422, "invalid_parameter", "attributes"),
    ({"attributes": ["Watches"]}, 422, "invalid_parameter", "attributes"),
    ({"attributes": {"articleType": 1, "baseColour": "Red"}}, 422, "invalid_parameter", "attributes"),
    (b"", 422, "invalid_json", None),
    (b"not json", 422, "invalid_json", None),
    (b"\xff\xfe{}", 422, "invalid_json", None),
    (b"[1, 2]", 422, "invalid_json", None),
    (b"null", 422, "invalid_json", None),
    (b"[" * 60_000, 422, "invalid_json", None),  # nesting deep enough to hit Python's recursion limit
    (b'{"attributes": {}, "seed": ' + b"9" * 5000 + b"}", 422, "invalid_json", None),  # past int digits limit
    (b'{"attributes": {"x": "' + b"a" * 70_000 + b'"}}', 413, "too_many_bytes", None),
])
def test_generate_rejects(server, body, status, reason, field):
    resp = _generate(server, body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    answer = resp.json()
    assert answer["error"] == reason, answer
    if field is not None:
        assert answer["field"] == field and field in answer["message"], answer
    if reason in ("unknown_attribute", "missing_attribute"):
        assert answer["known"] == GEN_VOCAB and answer["message"], answer


def test_generate_chunked_body_past_the_cap(server):
    body = json.dumps({"attributes": {"x": "a" * 70_000}}).encode()
    chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))
    resp = requests.post(server["url"] + "/v1/generate", data=chunks, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"] == "too_many_bytes"


def test_generate_fuzz_never_5xx(server):
    """Random bytes, cut and mutated JSON, random values of every field: 200 or a JSON 4xx."""
    rng = random.Random(7)
    valid = json.dumps({"attributes": WATCH, "n": 2, "seed": 3}).encode()
    bodies = [rng.randbytes(rng.randint(0, 512)) for _ in range(10)]
    bodies += [valid[:rng.randrange(len(valid))] for _ in range(8)]
    for _ in range(10):
        flipped = bytearray(valid)
        for _ in range(2):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        bodies.append(bytes(flipped))
    junk = [None, -1, 0, 1, 2**64, 1e308, float("inf"), "", "\u0000", [], {}, True, "Watches", {"a": {"b": []}}]
    for _ in range(20):
        doc = {"attributes": dict(WATCH), "n": 1, "seed": 0}
        key = rng.choice(["attributes", "n", "seed", "extra"])
        doc[key] = rng.choice(junk)
        if rng.random() < 0.3:
            doc["attributes"] = {rng.choice(["articleType", "baseColour", "", "\u00e9"]): rng.choice(junk)}
        bodies.append(json.dumps(doc).encode())  # inf -> Infinity: accepted by Python's json, not JSON
    for body in bodies:
        resp = _generate(server, body)
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, (body[:200], resp.text)
        if resp.status_code != 200:
            assert resp.headers["content-type"] == "application/json" and resp.json()["error"], resp.text


# --- the web page in a real browser ------------------------------------------------------------


def _chromium() -> str | None:
    """A Chromium/Chrome binary: $PRODRAY_CHROMIUM, else the first on PATH (Debian: `chromium`)."""
    if os.environ.get("PRODRAY_CHROMIUM"):
        return os.environ["PRODRAY_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@contextmanager
def _browser_page(url: str):
    """A page of headless Chromium at `url` -> (page, the page's uncaught errors); skips the test
    when playwright or a Chromium binary is missing."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the dev extra has it)")
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run tries it)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root).
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


SIZES_JS = """() => ["after", "before"].map((id) => {
    const img = document.getElementById(id);
    return [img.naturalWidth, img.naturalHeight];
})"""


def test_web_page_in_headless_chromium(server, tmp_path):
    """Upload a file on GET / like a user, see the result and wipe the before/after slider."""
    (tmp_path / "product.png").write_bytes(_png(48, 32))
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + bytes(range(256)) * 4)

    with _browser_page(server["url"] + "/") as (page, errors):
        assert not page.is_visible("#slider")  # nothing to compare yet

        page.set_input_files("#file", str(tmp_path / "product.png"))
        page.click("#form button[type=submit]")
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
        page.click("#form button[type=submit]")
        page.wait_for_function("document.getElementById('status').className === 'error'",
                               timeout=60_000)
        assert page.inner_text("#status") == "failed: 415 unsupported_format"
        assert not page.is_visible("#slider")

        # Generate: the selects come from /v1/models; pick attributes, see the images.
        page.wait_for_selector("#gen-button:not([disabled])", timeout=60_000)
        assert page.eval_on_selector_all(
            "#gen-attributes select",
            "selects => selects.map(s => [s.dataset.attribute, [...s.options].map(o => o.value)])",
        ) == [[name, values] for name, values in GEN_VOCAB.items()]
        page.select_option("select[data-attribute=articleType]", "Handbags")
        page.select_option("select[data-attribute=baseColour]", "Red")
        page.fill("#gen-n", "3")
        page.fill("#gen-seed", "42")
        page.click("#gen-button")
        page.wait_for_function("document.querySelectorAll('#generated img').length === 3 && "
                               "[...document.querySelectorAll('#generated img')].every(i => i.naturalWidth)",
                               timeout=60_000)
        sizes = page.eval_on_selector_all("#generated img",
                                          "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[32, 32]] * 3
        assert server["gen_id_a"] in page.inner_text("#gen-status") and "seed 42" in page.inner_text("#gen-status")
        # n = 1 answers a PNG, not a zip: one image.
        page.fill("#gen-n", "1")
        page.click("#gen-button")
        page.wait_for_function("document.querySelectorAll('#generated img').length === 1 && "
                               "document.querySelector('#generated img').naturalWidth === 32", timeout=60_000)
        page.fill("#gen-truncation", "0.5")
        page.click("#gen-button")
        page.wait_for_function("document.getElementById('gen-status').textContent.includes('truncation 0.5')",
                               timeout=60_000)
        # A refusal shows the server's reason: 2**63 is one past the largest seed (the page
        # sends the seed's digits as typed, not as a rounded JS number).
        page.fill("#gen-seed", str(2**63))
        page.click("#gen-button")
        page.wait_for_function("document.getElementById('gen-status').className === 'error'", timeout=60_000)
        assert page.inner_text("#gen-status").startswith("failed: 422 invalid_parameter: seed"), \
            page.inner_text("#gen-status")
        assert page.eval_on_selector_all("#generated img", "imgs => imgs.length") == 0
        assert not errors, errors


VARIANT_PIXELS_JS = """async () => Promise.all([...document.querySelectorAll("#c-variants img")].map(async (img) => {
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const at = (x, y) => [...ctx.getImageData(x, y, 1, 1).data.slice(0, 3)];
    return {caption: img.parentElement.textContent, centre: at(img.naturalWidth >> 1, img.naturalHeight >> 1),
            corner: at(1, 1)};
}))"""


def test_recolour_page_shows_the_picked_colours_side_by_side_in_headless_chromium(server, tmp_path):
    """Upload a product photo, keep the preselected colours, add a custom one: the original and one
    variant per colour show, each product in its colour on the untouched white background."""
    image, _ = _product_photo()
    (tmp_path / "product.png").write_bytes(image)
    with _browser_page(server["url"] + "/") as (page, errors):
        page.wait_for_selector("#c-button:not([disabled])", timeout=60_000)
        names = page.eval_on_selector_all("#c-colours input", "boxes => boxes.map(b => b.value)")
        assert names == list(REFERENCE_HEX)
        page.set_input_files("#c-file", str(tmp_path / "product.png"))
        page.check("#c-use-custom")
        page.fill("#c-custom", "#f2c500")
        page.click("#c-button")
        page.wait_for_function("document.getElementById('c-status').textContent.startsWith('4 colours')",
                               timeout=120_000)
        variants = page.evaluate(VARIANT_PIXELS_JS)
        assert [v["caption"] for v in variants] == ["original", "Red", "Green", "Navy Blue", "#f2c500"]
        assert all(v["corner"] == [255, 255, 255] for v in variants)
        red, green, navy, yellow = (v["centre"] for v in variants[1:])
        assert red[0] > red[1] + 60 and red[0] > red[2] + 60, red
        assert navy[2] > navy[0] and sum(navy) < 300, navy
        assert green[1] > green[0] and green[1] > green[2], green
        assert yellow[0] > 150 and yellow[1] > 120 and yellow[2] < 80, yellow
        assert server["recolour_id"] in page.inner_text("#c-status")
        assert not errors, errors


CHANGED_ROWS_JS = """async () => {
    const rows = async (img) => {
        await img.decode();
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        return ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    };
    const after = await rows(document.getElementById("r-after"));
    const before = await rows(document.getElementById("r-before"));
    const width = document.getElementById("r-after").naturalWidth, changed = new Set();
    for (let i = 0; i < after.length; i++) if (after[i] !== before[i]) changed.add(Math.floor(i / 4 / width));
    return [...changed].sort((a, b) => a - b);
}"""


def test_repair_page_paints_a_mask_in_headless_chromium(server, tmp_path):
    """Upload a photo, paint a horizontal stroke with the brush, repair: only the rows under the
    stroke change, and the before/after slider shows."""
    (tmp_path / "photo.png").write_bytes(_png(96, 64))
    with _browser_page(server["url"] + "/") as (page, errors):
        page.set_input_files("#r-file", str(tmp_path / "photo.png"))
        page.wait_for_selector("#r-mask", state="visible", timeout=30_000)
        assert page.is_disabled("#r-button")  # nothing painted yet
        page.fill("#r-brush", "4")
        page.dispatch_event("#r-brush", "input")
        box = page.locator("#r-mask").bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 0.2 * box["width"], y)
        page.mouse.down()
        page.mouse.move(box["x"] + 0.8 * box["width"], y, steps=8)
        page.mouse.up()
        page.click("#r-button")
        page.wait_for_selector("#r-slider", state="visible", timeout=60_000)
        status = page.inner_text("#r-status")
        assert server["repair_id"] in status and "pixels repaired" in status, status
        changed = page.evaluate(CHANGED_ROWS_JS)
        scale = 64 / box["height"]  # image pixels per CSS pixel
        assert changed and all(abs(row - 32) <= 4 * scale + 2 for row in changed), changed
        assert not errors, errors


# --- blind A/B page and votes ------------------------------------------------------------------


def _ab(server, data: bytes, prefix="", **kw) -> requests.Response:
    return requests.post(server["url"] + prefix + "/v1/ab", data=data, timeout=60, **kw)


def _vote_on(server, trial, choice, prefix="") -> requests.Response:
    return requests.post(server["url"] + prefix + "/v1/votes", json={"trial": trial, "choice": choice}, timeout=60)


def _from_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _stored_votes(server) -> set[Path]:
    return set(server["votes"].rglob("*.jsonl")) if server["votes"].exists() else set()


def _trial_of(token: str) -> dict:
    """What a trial token carries (readable by anyone: it is signed, not encrypted)."""
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _resign(token: str, secret: str | None = None, **changes) -> str:
    """A token with `changes` applied to its payload, keeping its signature or signing it with `secret`."""
    from prodray.cluster import http
    trial, signature = _trial_of(token), token.split(".")[1]
    if secret is not None:
        return http.sign_trial(secret, {**trial, **changes})
    forged = base64.urlsafe_b64encode(json.dumps({**trial, **changes}).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


def test_ab_pair_is_the_model_and_bicubic_and_the_vote_is_stored(server):
    """A model that is not a restoration model is compared with bicubic: the two images are exactly
    /v1/enhance's answer and bicubic_upscale, and the vote file says which side was which."""
    from prodray.enhancer.evaluation import bicubic_upscale

    data = _png(40, 30)
    resp = _ab(server, data, headers={"content-type": "image/png"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert set(answer) == {"trial", "left", "right", "model_id"} and answer["model_id"] == server["id_a"]
    left, right = _from_data_url(answer["left"]), _from_data_url(answer["right"])
    assert left.shape == right.shape == (60, 80, 3)
    before = _stored_votes(server)
    vote = _vote_on(server, answer["trial"], "right")
    assert vote.status_code == 200, vote.text
    revealed = vote.json()
    assert {revealed["left"], revealed["right"]} == {"model", "bicubic"}
    images = {revealed["left"]: left, revealed["right"]: right}
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(images["bicubic"], bicubic_upscale(rgb, 2))
    assert np.array_equal(images["model"], np.asarray(_decode(_post(server, data))))
    (stored,) = _stored_votes(server) - before
    assert stored == server["votes"] / revealed["stored"]
    (line,) = stored.read_text().splitlines()
    record = json.loads(line)
    assert record == {**record, "choice": "right", "winner": revealed["right"], "left": revealed["left"],
                      "right": revealed["right"], "model_id": server["id_a"],
                      "input_sha256": hashlib.sha256(data).hexdigest()}
    assert set(record) == {"trial_id", "model_id", "left", "right", "choice", "winner", "input_sha256", "time"}
    assert stored.name == record["trial_id"] + ".jsonl"
    # One vote per trial, whatever the second choice.
    for choice in ("right", "left"):
        again = _vote_on(server, answer["trial"], choice)
        assert again.status_code == 409 and again.json()["error"] == "already_voted", again.text
    assert stored.read_text() == line + "\n" and _stored_votes(server) - before == {stored}


def test_ab_sides_are_shuffled(server):
    orders = set()
    for _ in range(16):  # both orders show up unless the draw is fixed (chance 2 ** -15)
        trial = _trial_of(_ab(server, _png(8, 8)).json()["trial"])
        orders.add((trial["left"], trial["right"]))
    assert orders == {("model", "bicubic"), ("bicubic", "model")}


def test_forged_garbled_and_bad_votes_are_refused(server):
    token = _ab(server, _png(16, 16)).json()["trial"]
    before = _stored_votes(server)
    left = _trial_of(token)["left"]
    other = "model" if left == "bicubic" else "bicubic"
    for forged in (_resign(token, left=other), _resign(token, secret="0" * 64), token + "x", token.split(".")[0],
                   "", "a.b", "\u00e9.\u00e9", "x" * 3000, None, 42, ["a"]):
        resp = _vote_on(server, forged, "left")
        assert resp.status_code == 422 and resp.json()["error"] == "bad_trial", (forged, resp.text)
    for choice in ("both", "LEFT", "", None, 1, ["left"]):
        resp = _vote_on(server, token, choice)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == "invalid_parameter" and resp.json()["field"] == "choice", resp.text
    url = server["url"] + "/v1/votes"
    extra = requests.post(url, json={"trial": token, "choice": "left", "weight": 2}, timeout=60)
    assert extra.status_code == 422 and extra.json()["field"] == "weight", extra.text
    for body in (b"", b"not json", b"[1]", b"\xff"):
        resp = requests.post(url, data=body, timeout=60)
        assert resp.status_code == 422 and resp.json()["error"] == "invalid_json", resp.text
    big = requests.post(url, data=json.dumps({"trial": token, "choice": "left", "x": "a" * 5000}), timeout=60)
    assert big.status_code == 413 and big.json()["error"] == "too_many_bytes"
    assert _stored_votes(server) == before  # nothing refused was stored
    assert _vote_on(server, token, "same").status_code == 200  # the genuine token still votes


def test_ab_refuses_uploads_as_enhance_does(server):
    gif = _ab(server, b"GIF89a" + bytes(range(256)) * 4)
    assert gif.status_code == 415 and gif.json()["error"] == "unsupported_format"
    big = _ab(server, random.Random(0).randbytes(MAX_BYTES + 1))
    assert big.status_code == 413 and big.json()["error"] == "too_many_bytes"
    missing = requests.post(server["url"] + "/v1/ab", files={"other": ("x.png", _png(), "image/png")}, timeout=60)
    assert missing.status_code == 422 and missing.json()["error"] == "missing_file"
    flat = io.BytesIO()
    Image.new("RGB", (800, 400), (200, 30, 30)).save(flat, "PNG")  # x2 passes the test's output cap
    wide = _ab(server, flat.getvalue())
    assert wide.status_code == 413 and wide.json()["error"] == "too_many_output_pixels", wide.text
    multipart = requests.post(server["url"] + "/v1/ab", files={"file": ("p.jpg", _png(20, 10, fmt="JPEG"))},
                              timeout=60)
    assert multipart.status_code == 200 and _from_data_url(multipart.json()["left"]).shape == (20, 40, 3)


AB_SIZES_JS = """() => ["left", "right"].map((id) => {
    const img = document.getElementById(id), box = img.getBoundingClientRect();
    return [img.naturalWidth, img.naturalHeight, Math.round(box.width), Math.round(box.height)];
})"""


def test_ab_page_in_headless_chromium(server, tmp_path):
    """GET /ab like a voter: upload, two unlabelled results of one size, vote, see which was which;
    the one stored vote says the same."""
    photo = tmp_path / "product.png"
    photo.write_bytes(_png(48, 32))
    before = _stored_votes(server)
    with _browser_page(server["url"] + "/ab") as (page, errors):
        assert not page.is_visible("#left")
        page.set_input_files("#file", str(photo))
        page.click("#form button[type=submit]")
        page.wait_for_selector("#left", state="visible", timeout=60_000)
        (lw, lh, lbw, lbh), (rw, rh, rbw, rbh) = page.evaluate(AB_SIZES_JS)
        assert (lw, lh) == (rw, rh) == (96, 64)
        assert (lbw, lbh) == (rbw, rbh) and lbw > 0, (lbw, lbh, rbw, rbh)
        body = page.inner_text("body")
        assert "bicubic" not in body and "model" not in body  # no arm names before the vote
        assert _stored_votes(server) == before

        page.click("button[data-choice=left]")
        page.wait_for_selector("#next", state="visible", timeout=60_000)
        revealed = [page.inner_text("#left-arm"), page.inner_text("#right-arm")]
        assert sorted(revealed) == ["bicubic", "model"], revealed
        assert "chosen" in (page.get_attribute("#left", "class") or "")
        assert not page.is_visible("button[data-choice=right]")

        (stored,) = _stored_votes(server) - before
        record = json.loads(stored.read_text())
        assert (record["left"], record["right"]) == tuple(revealed)
        assert record["choice"] == "left" and record["winner"] == revealed[0]
        assert record["model_id"] == server["id_a"]
        assert record["input_sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()

        page.click("#next")  # starts again: nothing shown, nothing revealed
        assert not page.is_visible("#left") and page.inner_text("#left-arm") == ""
        assert not errors, errors
    assert _stored_votes(server) - before == {stored}


def test_restoration_model_arms_are_its_strengths(server, tmp_path):
    """The replica class alone: a restoration model's pair is two of strength-0/1/auto, each exactly
    `enhance` at that strength."""
    from prodray.cluster.serve import EnhancerDeployment
    from prodray.cluster.serve_models import RESTORE_ARMS
    from prodray.enhancer.inference import Enhancer

    shipped = Enhancer.load("enhancer-x2")
    export_model(str(tmp_path / "restore"), "enhancer", shipped.model,
                 {**shipped.config, "init_model_id": shipped.model_id})
    replica = EnhancerDeployment.func_or_class()

    async def unbatched(request):  # @serve.batch needs a replica context; its body does not
        return (await EnhancerDeployment.func_or_class._enhance_batch.__wrapped__(replica, [request]))[0]
    replica._enhance_batch = unbatched
    rgb = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)

    async def run():
        await replica.reconfigure({"model": str(tmp_path / "restore")})
        pairs = [await replica.enhance_ab(rgb, None, 30) for _ in range(12)]
        return pairs, {arm: (await replica.enhance(rgb, None, None, strength, 30))["rgb"]
                       for arm, strength in RESTORE_ARMS.items()}

    pairs, expected = asyncio.run(run())
    for pair in pairs:
        assert len(set(pair["arms"])) == 2 and set(pair["arms"]) <= set(RESTORE_ARMS)
        for arm, result in zip(pair["arms"], pair["results"]):
            assert np.array_equal(result["rgb"], expected[arm]), arm
    assert {arm for pair in pairs for arm in pair["arms"]} == set(RESTORE_ARMS)


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
                                    {"quality": "high"}, {"strength": "1.5"}, {"strength": "-1"},
                                    {"strength": "strong"}, {"strength": "x" * 40}])
def test_bad_query_params(server, params):
    resp = _post(server, _png(), params=params)
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_parameter"


def test_a_result_past_the_output_pixel_cap_is_413_before_the_model_runs(server):
    flat = io.BytesIO()
    Image.new("RGB", (800, 400), (200, 30, 30)).save(flat, "PNG")  # x2: 1.28 MP > the test cap of 1 MP
    resp = _post(server, flat.getvalue())
    assert resp.status_code == 413 and resp.json()["error"] == "too_many_output_pixels", resp.text
    assert "800x400" in resp.json()["message"]
    fits = io.BytesIO()
    Image.new("RGB", (700, 350), (200, 30, 30)).save(fits, "PNG")  # x2: 0.98 MP
    assert _post(server, fits.getvalue()).status_code == 200


def test_strength_on_a_model_that_is_not_a_restoration_model_is_422(server):
    resp = _post(server, _png(), params={"strength": "0.5"})
    assert resp.status_code == 422 and resp.json()["error"] == "strength_unsupported", resp.text
    assert "x-strength" not in _post(server, _png()).headers


def test_one_failing_image_does_not_fail_its_batch_neighbours(server):
    """The replica class alone: a batch whose forward pass raises for one image answers the
    others with their results and that one with its own exception (issue 20, item 2)."""
    from prodray.cluster.serve import EnhancerDeployment

    replica = EnhancerDeployment.func_or_class()

    class FailsOnWidth13(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[-1] == 13:
                raise RuntimeError("poisoned input")
            return self.inner(x)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((16, 16, 3), (16, 13, 3), (12, 20, 3))]

    async def run():
        await replica.reconfigure({"model": server["model_a"]})
        expected = [replica._model.enhance_many([image])[0] for image in (images[0], images[2])]
        replica._model.model = FailsOnWidth13(replica._model.model)
        batch = [(image, None) for image in images]
        return expected, await EnhancerDeployment.func_or_class._enhance_batch.__wrapped__(replica, batch)

    expected, answers = asyncio.run(run())
    assert np.array_equal(answers[0][0], expected[0]) and np.array_equal(answers[2][0], expected[1])
    assert isinstance(answers[1][0], RuntimeError) and "poisoned" in str(answers[1][0])


@pytest.mark.parametrize("alone_when_idle", [True, False])
def test_a_request_that_finds_the_model_idle_skips_the_batch_queue(server, alone_when_idle):
    """The replica class alone: a request with no other in the model stage (after a forward of one)
    runs at once; those arriving meanwhile, and a lone one after a forward of several, go through
    @serve.batch (here a stand-in that records them). Each answer is its own image's, either way."""
    from prodray.cluster.serve import EnhancerDeployment

    replica = EnhancerDeployment.func_or_class()
    replica.run_alone_when_idle = alone_when_idle
    batched = []

    async def through_batch(request):  # @serve.batch needs a replica context; its body does not
        batched.append(request[0].shape)
        return (await EnhancerDeployment.func_or_class._enhance_batch.__wrapped__(replica, [request]))[0]
    replica._enhance_batch = through_batch
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (8 + i, 10, 3), dtype=np.uint8) for i in range(3)]

    async def run():
        await replica.reconfigure({"model": server["model_a"]})
        lone = await replica.enhance(images[0])
        together = await asyncio.gather(*(replica.enhance(image) for image in images))
        await replica._enhance_requests([(image, None) for image in images[:2]])  # a forward of two
        after_two = await replica.enhance(images[2])
        return lone, together, after_two

    lone, together, after_two = asyncio.run(run())
    expected = replica._model.enhance_many(images)
    assert np.array_equal(lone["rgb"], expected[0]) and np.array_equal(after_two["rgb"], expected[2])
    for answer, image in zip(together, expected):
        assert np.array_equal(answer["rgb"], image) and answer["wait_s"] >= 0 and answer["forward_s"] >= 0
    shapes = [image.shape for image in images]
    if alone_when_idle:
        assert batched == shapes[1:] + [shapes[2]]  # the first of the three found it idle
    else:
        assert batched == [shapes[0]] + shapes + [shapes[2]]
    assert replica._in_model == 0


def test_a_restoration_model_answers_with_the_strength_it_chose(server, tmp_path):
    from prodray.cluster.serve import EnhancerDeployment
    from prodray.enhancer.inference import Enhancer
    from prodray.io.artifacts import export_model

    shipped = Enhancer.load("enhancer-x2")
    export_model(str(tmp_path / "restore"), "enhancer", shipped.model,
                 {**shipped.config, "init_model_id": shipped.model_id})
    replica = EnhancerDeployment.func_or_class()
    smooth = np.stack(np.mgrid[0:24, 0:24], axis=2).sum(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)

    async def unbatched(request):  # @serve.batch needs a replica context; its body does not
        return (await EnhancerDeployment.func_or_class._enhance_batch.__wrapped__(replica, [request]))[0]
    replica._enhance_batch = unbatched

    async def run():
        await replica.reconfigure({"model": str(tmp_path / "restore")})
        return [(await replica.enhance(smooth, None, None, strength, quality))["strength"]
                for strength, quality in (("auto", 30), ("auto", None), (0.5, None), (None, None))]

    assert asyncio.run(run()) == [1.0, 0.0, 0.5, 1.0]


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

    from prodray.cluster.serve import build_app
    from prodray.config import ServeConfig

    server = {**server, "url": server["proxy_url"]}  # another app: the proxy routes to it, a replica's own port not
    tight = {**ONE_REPLICA, "max_ongoing_requests": 1, "max_queued_requests": 1}
    wide = {**INGRESS_REPLICAS, "max_ongoing_requests": 32, "max_queued_requests": 32}
    config = ServeConfig(model=server["model_a"], generator="none", repair="none", recolour="none", max_bytes=MAX_BYTES,
                         enhancer_replicas=tight, ingress_replicas=wide)
    serve.run(build_app(config), name="tight", route_prefix="/tight")
    try:
        # Also the enhancer-only app (generator "none"): no generator replica, /v1/generate is a 404.
        missing = _generate(server, {"attributes": WATCH}, prefix="/tight")
        assert missing.status_code == 404 and missing.json()["error"] == "no_generator"
        health = requests.get(server["url"] + "/tight/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["generator"] == {"status": "disabled"}
        assert [m["task"] for m in requests.get(server["url"] + "/tight/v1/models", timeout=30).json()["models"]] \
            == ["enhance"]
        # And without `votes`: no A/B page, no trials, no votes.
        for resp in (requests.get(server["url"] + "/tight/ab", timeout=30), _ab(server, _png(), prefix="/tight"),
                     _vote_on(server, "a.b", "left", prefix="/tight")):
            assert resp.status_code == 404 and resp.json()["error"] == "no_vote_store", resp.text
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
    from prodray.cluster.serve import EnhancerDeployment

    replica = EnhancerDeployment.func_or_class()

    async def run():
        await replica.reconfigure({"model": server["model_a"]})
        loaded = replica._model
        await replica.reconfigure({"model": server["model_a"]})
        assert replica._model is loaded
        with pytest.raises(FileNotFoundError):
            await replica.reconfigure({"model": str(tmp_path / "missing")})
        kept = await replica.info()
        await replica.reconfigure({"model": server["model_b"]})
        swapped = await replica.info()
        await replica.reconfigure({"model": server["model_b"], "max_batch_size": 1,
                                   "batch_wait_timeout_s": 0.05})
        assert replica._enhance_batch._get_max_batch_size() == 1
        assert replica._enhance_batch._get_batch_wait_timeout_s() == 0.05
        assert replica._model.model_id == server["id_b"]  # same model: not reloaded
        return kept, swapped

    kept, swapped = asyncio.run(run())
    assert kept == {"id": server["id_a"], "scale": 2}
    assert swapped == {"id": server["id_b"], "scale": 2}


def test_an_ingress_holding_the_enhancer_answers_as_the_enhancer_deployment_does(server):
    """enhancer_in_ingress: a second app whose ingress replica holds the enhancer (no enhancer
    deployment) answers an upload with the same pixels, model id and timing headers as the main app,
    and refuses a bad one with a reason."""
    from ray import serve

    from prodray.cluster.serve import build_app
    from prodray.config import ServeConfig

    config = ServeConfig(model=server["model_a"], generator="none", repair="none", recolour="none",
                         enhancer_in_ingress=True, max_bytes=MAX_BYTES, max_output_pixels=MAX_OUTPUT_PIXELS,
                         enhancer_replicas=ONE_REPLICA)
    serve.run(build_app(config), name="held", route_prefix="/held")  # a replica's own port serves only its app
    try:
        assert set(serve.status().applications["held"].deployments) == {"Ingress"}
        data = _png(40, 30)
        held = requests.post(server["proxy_url"] + "/held/v1/enhance", data=data, timeout=60)
        own = _post(server, data)
        assert held.status_code == 200 and own.status_code == 200, held.text
        assert held.headers["x-model-id"] == own.headers["x-model-id"] == server["id_a"]
        assert np.array_equal(np.asarray(_decode(held)), np.asarray(_decode(own)))
        assert float(held.headers["x-forward-ms"]) > 0 and float(held.headers["x-wait-ms"]) >= 0
        refused = requests.post(server["proxy_url"] + "/held/v1/enhance", data=b"not an image", timeout=60)
        assert 400 <= refused.status_code < 500 and refused.json()["error"], refused.text
    finally:
        serve.delete("held")


def test_an_ingress_holding_the_enhancer_passes_its_user_config_to_the_model(server):
    """The ingress class alone (no Ray): its reconfigure swaps the held model and retunes its batching."""
    from prodray.cluster.serve import Ingress

    wrapper, ours = Ingress.func_or_class.__mro__[:2]  # Serve's ASGI wrapper subclasses our class
    assert ours.__module__ == "prodray.cluster.serve" and wrapper is not ours
    ingress = ours(None, held_enhancer={"model": server["model_a"]})

    async def run():
        await ingress.reconfigure({"model": server["model_a"]})
        before = await ingress.enhancer.info.remote()
        await ingress.reconfigure({"model": server["model_b"], "max_batch_size": 1})
        return before, await ingress.enhancer.info.remote()

    before, after = asyncio.run(run())
    assert before["id"] == server["id_a"] and after["id"] == server["id_b"]
    assert ingress.enhancer.instance._enhance_batch._get_max_batch_size() == 1


def test_serve_deploy_config_reconfigures_in_place(server):
    """serve_config.yaml as `serve deploy` sends it (same controller call as the dashboard's
    REST API): the typed builder with the file's args; then adding only a user_config.model to each
    deployment (as the file's comment says) is a lightweight update, i.e. `reconfigure` on the
    running replicas, again with no failed request."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def config(model, generator):
        doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        del doc["http_options"], doc["proxy_location"]  # Serve already runs on the test port
        (app,) = doc["applications"]
        # The fixture's limits, so the tests after this one still talk to the app they expect.
        app["args"].update(model=server["model_a"], generator=server["gen_a"], repair=server["repair"],
                           max_bytes=MAX_BYTES, max_output_pixels=MAX_OUTPUT_PIXELS, votes=str(server["votes"]))
        for section in ("ingress_replicas", "enhancer_replicas", "generator_replicas", "repair_replicas"):
            app["args"].setdefault(section, {}).update(ONE_REPLICA)
        app["deployments"] = [{"name": "EnhancerDeployment", "user_config": {"model": model}},
                              {"name": "GeneratorDeployment", "user_config": {"model": generator}}]
        return ServeDeploySchema.model_validate(doc)

    client = _get_global_client()
    _deploy(client, config(server["model_a"], server["gen_a"]))  # a code change: full rollout
    if server["direct"]:
        server["url"] = _direct_url()  # a new ingress replica, on a port of its own
    _wait_for_model(server, server["id_a"])
    _wait_for_model(server, server["gen_id_a"], index=1)

    data, seen, failures, stop = _png(16, 16), [], [], threading.Event()
    generated = []

    def traffic(call, record):  # one client posting nonstop through the swap
        while not stop.is_set():
            try:
                resp = call()
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            record.append(resp.headers.get("x-model-id"))
            if resp.status_code != 200:
                failures.append((resp.status_code, resp.text[:300]))

    workers = [threading.Thread(target=traffic, args=(lambda: _post(server, data), seen)),
               threading.Thread(target=traffic, args=(lambda: _generate(server, {"attributes": WATCH, "seed": 1}),
                                                      generated))]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        # Only user_config changed (both models): `reconfigure` on the running replicas.
        _deploy(client, config(server["model_b"], server["gen_b"]))
        _wait_for_model(server, server["id_b"])
        _wait_for_model(server, server["gen_id_b"], index=1)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert not failures, failures
    assert seen[0] == server["id_a"] and seen[-1] == server["id_b"], seen
    assert generated[0] == server["gen_id_a"] and generated[-1] == server["gen_id_b"], generated


def _deploy(client, config, timeout=300):
    """`serve deploy`'s controller call, then wait until every app in `config` runs: Ray's own
    `_blocking=True` gives up after a fixed 60 s, which a full rollout on a loaded 2-core machine
    can pass."""
    from ray.serve.schema import ApplicationStatus

    client.deploy_apps(config)
    names, deadline = {app.name for app in config.applications}, time.time() + timeout
    while True:
        statuses = {status.name: status.app_status.status for status in client.list_serve_statuses()
                    if status.name in names}
        if len(statuses) == len(names) and set(statuses.values()) == {ApplicationStatus.RUNNING}:
            break
        assert time.time() < deadline, f"apps not running within {timeout} s: {statuses}"
        time.sleep(0.5)
    client.wait_for_proxies_serving(wait_for_applications_running=True)


def _wait_for_model(server, model_id, timeout=90, index=0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            resp = requests.get(server["url"] + "/v1/models", timeout=30)
            if resp.status_code == 200 and resp.json()["models"][index]["id"] == model_id:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"model {model_id} not served within {timeout} s")


# --- deploy config -----------------------------------------------------------------------------


def test_serve_config_is_valid_and_calls_the_typed_builder():
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    from prodray.cluster.serve import app_builder
    from prodray.config import ServeConfig, validate

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(doc)
    assert doc["http_options"]["host"] == "127.0.0.1"
    (app,) = doc["applications"]
    assert import_attr(app["import_path"]) is app_builder
    config = validate(ServeConfig, app["args"])
    assert (config.model, config.generator, config.repair) == ("enhancer-x2", "gan-fashion-products", "repair")
    for name in ("model", "generator", "repair"):  # shipped models, so the file deploys as it is
        assert (ROOT / "prodray" / "weights" / getattr(config, name) / "config.json").is_file(), name
    # What Serve does with import_path + args when it deploys the file.
    built = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app["args"])
    assert isinstance(built, Application)
    assert json.dumps(doc)  # plain data


def _deployments(app) -> dict:
    """Deployment name -> Deployment of a bound app, as Serve builds it (no cluster needed)."""
    from ray.serve._private.build_app import build_app as serve_build_app
    return {d.name: d for d in serve_build_app(app, name="check").deployments}


def test_app_builder_builds_from_args():
    from prodray.cluster.serve import app_builder

    deployments = _deployments(app_builder({"model": "enhancer-x4", "generator": "none", "repair": "none",
                                            "recolour": "none", "device": "cpu", "precision": "fp32", "max_bytes": 1234,
                                            "enhancer_replicas": {"num_gpus": 1, "max_replicas": 2}}))
    assert set(deployments) == {"Ingress", "EnhancerDeployment"}  # none: no generator or repair replica
    enhancer = deployments["EnhancerDeployment"]
    assert enhancer.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 1.0}  # the unnamed ones keep defaults
    assert enhancer.user_config == {"model": "enhancer-x4", "max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    assert enhancer.init_args == ("enhancer-x4", "cpu", "fp32")  # model, device, precision
    scaling = enhancer._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 2)
    assert (scaling.upscale_delay_s, scaling.downscale_delay_s) == (30.0, 600.0)  # Serve's own defaults
    quick = _deployments(app_builder({"generator": "none", "enhancer_replicas": {"downscale_delay_s": 15}}))
    assert quick["EnhancerDeployment"]._deployment_config.autoscaling_config.downscale_delay_s == 15
    assert deployments["Ingress"].init_kwargs == {"max_bytes": 1234, "max_pixels": 4096 * 4096,
                                                  "max_output_pixels": 64_000_000, "votes": None,
                                                  "vote_secret": None, "repairer": None,
                                                  "recolourer": None, "held_enhancer": None}
    # no A/B page, no repair, no recolour, and the enhancer in its own replicas
    assert deployments["Ingress"].ray_actor_options["num_cpus"] == 0.5
    held = _deployments(app_builder({"model": "enhancer-x4", "generator": "none", "repair": "none",
                                     "recolour": "none", "precision": "fp32", "enhancer_in_ingress": True,
                                     "enhancer_replicas": {"num_cpus": 2, "max_replicas": 3}}))
    assert set(held) == {"Ingress"}  # the ingress holds the enhancer: no enhancer deployment
    assert held["Ingress"].init_kwargs["held_enhancer"] == {"model": "enhancer-x4", "device": "auto",
                                                           "precision": "fp32"}
    assert held["Ingress"].ray_actor_options["num_cpus"] == 2.0  # it takes the enhancer's replica section
    assert held["Ingress"]._deployment_config.autoscaling_config.max_replicas == 3
    voting = _deployments(app_builder({"votes": "relative/votes", "generator": "none"}))["Ingress"].init_kwargs
    assert voting["votes"] == str(Path("relative/votes").absolute())  # replicas run elsewhere
    assert len(voting["vote_secret"]) == 64 and int(voting["vote_secret"], 16) >= 0
    assert _deployments(app_builder({"votes": "s3://bucket/votes"}))["Ingress"].init_kwargs["votes"] \
        == "s3://bucket/votes"
    defaults = _deployments(app_builder({}))
    assert set(defaults) == {"Ingress", "EnhancerDeployment", "GeneratorDeployment", "RepairDeployment",
                             "RecolourDeployment"}
    assert defaults["RecolourDeployment"].user_config["model"] == "recolour"  # the shipped model
    assert defaults["RecolourDeployment"].ray_actor_options["num_cpus"] == 0.0
    assert defaults["GeneratorDeployment"].user_config["model"] == "gan-fashion-products"
    assert defaults["RepairDeployment"].user_config["model"] == "repair"  # the shipped repair model


@pytest.mark.parametrize("args,named", [
    ({"colour": "red"}, "config field colour: Extra inputs are not permitted"),
    ({"enhancer_replicas": {"num_gpu": 1}}, "config field enhancer_replicas.num_gpu: Extra inputs"),
    ({"max_bytes": 0}, "config field max_bytes: Input should be greater than or equal to 1"),
    ({"device": "tpu"}, "config field device: Input should be 'auto', 'cpu' or 'cuda'"),
    ({"votes": "ftp://host/votes"}, "config field votes: Value error, unsupported URI scheme 'ftp'"),
    ({"generator_replicas": {"min_replicas": 3, "max_replicas": 2}},
     "config field generator_replicas.max_replicas: Value error, max_replicas 2 is below min_replicas 3"),
])
def test_app_builder_rejects_bad_args_naming_them(args, named):
    from prodray.cluster.serve import app_builder
    from prodray.config import ConfigError

    with pytest.raises(ConfigError, match=named):
        app_builder(args)


def test_import_is_lazy():
    """Importing the module and building the app must not start Ray or import torch-heavy code,
    nor must what the ingress does per request (parsing parameters, decoding, refusals): torch
    loading in the ingress would stall its first requests for seconds."""
    import subprocess
    import sys
    code = ("import sys, ray, prodray.cluster.serve as s; assert not ray.is_initialized(); "
            "assert 'prodray.enhancer.inference' not in sys.modules and 'prodray.gan.inference' not in sys.modules; "
            "from prodray.cluster import http; http.parse_strength_parameter('auto'); "
            "http.parse_strength_parameter('0.5'); "
            "t = {'trial_id': 'a', 'left': 'model', 'right': 'bicubic', 'model_id': 'm', 'input_sha256': 'h', "
            "'issued': 0.0}; trial = http.open_trial('k', http.sign_trial('k', t)); "
            "choice = http.parse_vote(b'{\"choice\": \"same\"}')[1]; "
            "s.preference.vote_line(s.preference.vote_record(trial, choice, 0)); "
            "assert 'torch' not in sys.modules; print(type(s.app).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Application"


def test_a_model_call_that_never_answers_is_a_504_after_the_timeout():
    """`call` bounds every handle call (issue 20, item 7): here a method whose answer never comes."""
    from prodray.cluster import http
    from prodray.cluster.serve import call

    class Stuck:
        @staticmethod
        def remote(*args):
            return asyncio.sleep(3600)

    with pytest.raises(http.Refused) as refused:
        asyncio.run(call(Stuck, 1, timeout_s=0.2))
    assert refused.value.status == 504 and refused.value.body["error"] == "model_timeout"


def test_direct_ingress_is_opt_in_and_set_before_ray_starts(monkeypatch):
    """ServeJobConfig.direct_ingress (off by default) sets Ray Serve's cluster-wide flag before the job
    starts or joins Ray, and the job then names the replicas' own URLs."""
    import importlib.util

    from prodray.cluster import serve as serve_module
    from prodray.config import ServeJobConfig
    assert ServeJobConfig().direct_ingress is False

    spec = importlib.util.spec_from_file_location("serve_job", ROOT / "jobs" / "serve.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    seen = {}
    monkeypatch.delenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", raising=False)
    monkeypatch.setattr(job, "connect_ray",
                        lambda: seen.setdefault("flag", os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS")))
    monkeypatch.setattr(serve_module, "deploy", lambda config: "http://127.0.0.1:8000")
    monkeypatch.setattr(serve_module, "direct_ingress_urls", lambda app, host: ["http://127.0.0.1:30000"])
    job.main(["--direct-ingress", "--generator", "none"])
    assert seen["flag"] == "1"


def test_serve_job_passes_the_request_timeout_to_serve():
    from prodray.config import ServeJobConfig
    assert ServeJobConfig().request_timeout_s == 120.0
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    from prodray.cluster.serve import MODEL_CALL_TIMEOUT_S
    assert doc["http_options"]["request_timeout_s"] > MODEL_CALL_TIMEOUT_S


REFUSAL_STATUS = {"empty": 422, "unsupported_format": 415, "truncated": 422, "too_many_pixels": 413,
                  "too_many_bytes": 413, "corrupt": 422}


def test_the_bad_input_corpus_never_gives_a_5xx(server):
    """Every kind of tests/bad_inputs.py, posted as an upload: 200 with the image at twice the size,
    or the documented refusal; never a 5xx."""
    from bad_inputs import corpus

    from prodray.io.codec import decode_image
    wrong = {}
    for case in corpus(MAX_BYTES):
        resp = _post(server, case.data)
        if case.outcome == "ok":
            source = decode_image(case.data, max_bytes=MAX_BYTES)
            if resp.status_code != 200 or _decode(resp).size != (2 * source.width, 2 * source.height):
                wrong[case.name] = (resp.status_code, resp.text[:200])
        elif resp.status_code != REFUSAL_STATUS[case.outcome] or resp.json().get("error") != case.outcome:
            wrong[case.name] = (resp.status_code, resp.text[:200])
    assert not wrong, wrong
