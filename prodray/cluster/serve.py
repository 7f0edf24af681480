"""Ray Serve application: an HTTP ingress (FastAPI) in front of a batched, autoscaled enhancer
and a batched, autoscaled product generator.

Owns request handling (byte cap before decode, codec rejections -> 4xx, overload -> 503), the
model replicas (one model per replica, hot-swapped by `user_config`) and `build_app`. It does
not own decoding rules (`codec.py`) or inference (`enhance.py`, `generate.py`); importing it
loads no weights.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the ingress
# methods, and Serve re-wraps them outside this module's globals.
import asyncio
import io
import json
import logging
import os
import secrets
import time
import zipfile
from importlib import resources
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request as StarletteRequest

from prodray.io.codec import ImageRejected, content_type, decode_image, encode_image
from prodray.gan.limits import MAX_SEED, MAX_TRUNCATION

logger = logging.getLogger("ray.serve")  # Serve routes it into each replica's log file

DEFAULT_MODEL = "enhancer-x2"
MODEL_ENV = "PRODRAY_MODEL"  # model reference when neither build_app nor user_config names one
DEVICE_ENV = "PRODRAY_DEVICE"  # "cpu" / "cuda"; default: cuda when the replica has a GPU
GENERATOR_ENV = "PRODRAY_GENERATOR"  # generator reference, or "none" for an enhancer-only app
DEFAULT_GENERATOR = "gan-fashion-products"
NO_GENERATOR = "none"
DEFAULT_MAX_BYTES = 20 * 2**20
MAX_GENERATE_N = 16  # images per /v1/generate request
MAX_GENERATE_BYTES = 64 * 1024  # a /v1/generate JSON body
# A 2x result of 16 MP is 64 MP (192 MB of RGB): the biggest we accept per request.
DEFAULT_MAX_PIXELS = 4096 * 4096
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file

# codec.ImageRejected.reason -> HTTP status. Anything not listed is a 422 (bad content).
REJECT_STATUS = {"unsupported_format": 415, "too_many_pixels": 413, "too_many_bytes": 413}
# The largest side each output format can store (WebP: 14-bit sizes; JPEG: 16-bit).
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}
# A full queue (Serve's max_queued_requests) answers this at once, from the proxy or a handle.
BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}
# Handle failures that mean "no capacity right now", not "this request is wrong": a full queue,
# a deployment that is (re)starting, a replica that died or is unreachable mid-request.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError)


def _error(status: int, reason: str, message: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": reason}
    if message:
        body["message"] = message
    return JSONResponse(body, status_code=status, headers=headers)


class SwappableModel:
    """What the model deployments share: one loaded model (`_model`), replaced whole, never
    mutated. `reconfigure({"model": URI})` loads the new model in a thread beside the old one,
    then swaps, so requests keep being served meanwhile (no downtime on `serve deploy`); a failed
    load raises and the old model stays. Optional `max_batch_size` / `batch_wait_timeout_s`
    retune the deployment's batching in place (1 turns it off; the benchmark compares both)."""

    model_env: str  # environment variable naming the model when no user_config does
    default_model: str

    def __init__(self):
        self._model = None
        self._reference: str | None = None
        self._load_lock = asyncio.Lock()

    def _batched(self):
        """The deployment's @serve.batch method."""
        raise NotImplementedError

    @staticmethod
    def _load(reference: str, device: str):
        raise NotImplementedError

    async def reconfigure(self, user_config: dict | None) -> None:
        config = user_config or {}
        await self._ensure_loaded(config.get("model"))
        if config.get("max_batch_size") is not None:
            self._batched().set_max_batch_size(int(config["max_batch_size"]))
        if config.get("batch_wait_timeout_s") is not None:
            self._batched().set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    async def _ensure_loaded(self, reference: str | None = None) -> None:
        reference = reference or os.environ.get(self.model_env) or self.default_model
        async with self._load_lock:
            if reference == self._reference and self._model is not None:
                return
            device = os.environ.get(DEVICE_ENV) or _default_device()
            model = await asyncio.to_thread(self._load, reference, device)
            self._model, self._reference = model, reference
            logger.info("serving %s from %s on %s", model.model_id, reference, device)


# Options both model deployments share.
MODEL_REPLICA_OPTIONS = dict(
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
    # >= max_batch_size so a full batch can form; beyond that callers queue, then get 503.
    max_ongoing_requests=16,
    max_queued_requests=64,
    backpressure_config=BACKPRESSURE,
)


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    # Let in-flight batches of large images finish when a replica is scaled down or replaced.
    graceful_shutdown_timeout_s=60,
    **MODEL_REPLICA_OPTIONS,
)
class EnhancerDeployment(SwappableModel):
    """Holds one loaded Enhancer; `enhance` calls from many requests are batched together."""

    model_env, default_model = MODEL_ENV, DEFAULT_MODEL

    def _batched(self):
        return self._enhance_batch

    @staticmethod
    def _load(reference: str, device: str):
        from prodray.enhancer.inference import Enhancer  # torch is imported by model replicas only
        return Enhancer.load(reference, device)

    async def info(self) -> dict:
        await self._ensure_loaded(self._reference)
        return {"id": self._model.model_id, "scale": self._model.scale}

    async def enhance(self, rgb: np.ndarray, alpha: np.ndarray | None = None,
                      scale: int | None = None) -> dict:
        """(H, W, 3) uint8 (+ (H, W) alpha) -> {"rgb": (sH, sW, 3), "alpha", "model_id", "scale"}.

        `scale` (optional) must be the loaded model's; otherwise the answer is
        {"rejected": "unsupported_scale", "scale": s} and nothing runs."""
        if self._model is None:  # only when deployed without any user_config
            await self._ensure_loaded()
        if scale is not None and scale != self._model.scale:
            return {"rejected": "unsupported_scale", "scale": self._model.scale}
        out, enhancer = await self._enhance_batch(rgb)
        if alpha is not None:
            from prodray.enhancer.inference import upscale_alpha
            alpha = await asyncio.to_thread(upscale_alpha, alpha, enhancer.scale)
        return {"rgb": out, "alpha": alpha, "model_id": enhancer.model_id, "scale": enhancer.scale}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _enhance_batch(self, images: list[np.ndarray]) -> list[tuple]:
        # One model for the whole batch, even if a swap lands mid-batch. enhance_many runs
        # same-shape images (and tiles) through the network together; the thread keeps this
        # replica's event loop free to queue the next batch and answer health checks.
        enhancer = self._model
        outputs = await asyncio.to_thread(enhancer.enhance_many, images)
        return [(out, enhancer) for out in outputs]


@serve.deployment(
    # Half a CPU: a 64 px generator is cheap, and ingress (0.5) + enhancer (1) + generator (0.5)
    # then fit a 2-CPU head (the local demo). Scale-out adds replicas.
    ray_actor_options={"num_cpus": 0.5},
    graceful_shutdown_timeout_s=30,
    **MODEL_REPLICA_OPTIONS,
)
class GeneratorDeployment(SwappableModel):
    """Holds one loaded ProductGenerator; `generate` calls from many requests run as one forward pass."""

    model_env, default_model = GENERATOR_ENV, DEFAULT_GENERATOR

    def _batched(self):
        return self._generate_batch

    @staticmethod
    def _load(reference: str, device: str):
        from prodray.gan.inference import ProductGenerator  # torch is imported by model replicas only
        return ProductGenerator.load(reference, device)

    async def info(self) -> dict:
        await self._ensure_loaded(self._reference)
        generator = self._model
        return {"id": generator.model_id, "resolution": generator.resolution, "attributes": generator.vocab}

    async def generate(self, attributes: dict, n: int, seed: int, truncation: float | None = None) -> dict:
        """-> {"images": uint8 (n, R, R, 3), "model_id"}, or {"rejected": reason, "message",
        "known": vocabularies} for attributes this model does not know (nothing runs then).

        The images are exactly ProductGenerator.generate(attributes, n, seed, truncation): the noise
        is this request's own draws from `seed`, whatever else shares the batch."""
        if self._model is None:  # only when deployed without any user_config
            await self._ensure_loaded()
        generator = self._model
        from prodray.gan.inference import UnknownAttribute
        try:
            index = generator.indices(attributes)
            noise = generator.noise(n, seed, truncation)
        except UnknownAttribute as exc:
            missing = any(name not in attributes for name in generator.vocab)
            unknown = any(name not in generator.vocab for name in attributes)
            reason = "missing_attribute" if missing and not unknown else "unknown_attribute"
            return {"rejected": reason, "message": str(exc), "known": generator.vocab}
        images, generator = await self._generate_batch((generator, index, noise))
        return {"images": images, "model_id": generator.model_id}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, requests: list[tuple]) -> list[tuple]:
        # Rows of all requests concatenated into one forward pass (eval mode: no row depends on
        # another). Requests validated against a model that was swapped out meanwhile are run by
        # the model they were validated against, so indices always match their vocabulary.
        import torch
        results = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, (generator, _, _) in enumerate(requests):
            groups.setdefault(id(generator), []).append(i)
        for members in groups.values():
            generator = requests[members[0]][0]
            noise = torch.cat([requests[i][2] for i in members])
            index = {name: np.concatenate([np.full(len(requests[i][2]), requests[i][1][name]) for i in members])
                     for name in generator.vocab}
            images = await asyncio.to_thread(generator.generate_noise, index, noise)
            start = 0
            for i in members:
                count = len(requests[i][2])
                results[i] = (images[start:start + count], generator)
                start += count
        return results


def _generator_reference(generator) -> str | None:
    """build_app's `generator` -> a reference, or None for no generator deployment."""
    if generator is False:
        return None
    reference = generator or os.environ.get(GENERATOR_ENV) or DEFAULT_GENERATOR
    return None if str(reference).lower() == NO_GENERATOR else str(reference)


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


api = FastAPI(title="prodray", docs_url=None, redoc_url=None)


@api.exception_handler(RequestValidationError)
async def _invalid_parameter(request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse({"error": "invalid_parameter", "detail": detail}, status_code=422)


def _overloaded() -> JSONResponse:
    return _error(503, "overloaded", "try again shortly",
                  headers={"retry-after": str(BACKPRESSURE["retry_after_s"])})


class BodyTooLarge(Exception):
    pass


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (BodyTooLarge) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes | None:
    """The "file" field of a multipart body already read into memory (None when absent)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await StarletteRequest(request.scope, receive=replay).form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return None
        return await upload.read()
    finally:
        await form.close()


class GenerateRequest(BaseModel):
    """The JSON body of POST /v1/generate. Strict: 1.0, "1" and true are not integers."""
    model_config = ConfigDict(extra="forbid")
    attributes: dict[StrictStr, StrictStr]
    n: StrictInt = Field(1, ge=1, le=MAX_GENERATE_N)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)  # None: a random seed, sent back in x-seed
    truncation: StrictFloat | None = Field(None, gt=0, le=MAX_TRUNCATION, allow_inf_nan=False)  # None: no cut


def _parse_generate(body: bytes) -> GenerateRequest | JSONResponse:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, absurd nesting or digits
        return _error(422, "invalid_json", "the body must be a JSON object")
    if not isinstance(doc, dict):
        return _error(422, "invalid_json", "the body must be a JSON object")
    try:
        return GenerateRequest.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = str(first["loc"][0]) if first.get("loc") else None
        body = {"error": "invalid_parameter", "field": field, "message": f"{field}: {first['msg']}",
                "detail": [{"loc": [str(part) for part in e.get("loc", ())], "msg": e.get("msg", "")}
                           for e in errors]}
        return JSONResponse(body, status_code=422)


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    """Uncompressed (PNGs are compressed already) and with fixed timestamps, so the same seed
    gives the same bytes; sizes sit in each local header (the page reads them without a library)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config=BACKPRESSURE,  # the proxy's own 503 carries Retry-After too
    # An in-flight request may be waiting on a starting enhancer replica during a rollout.
    graceful_shutdown_timeout_s=60,
)
@serve.ingress(api)
class Ingress:
    """HTTP front: validates and decodes uploads, calls the enhancer, encodes the result.

    Decoding and encoding happen here (in threads), so bad input never reaches a model replica
    and images travel to it as arrays through Ray's object store, not as JSON."""

    def __init__(self, enhancer: DeploymentHandle, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, generator: DeploymentHandle | None = None):
        self.enhancer, self.generator = enhancer, generator  # generator None: enhancer-only app
        self.max_bytes, self.max_pixels = int(max_bytes), int(max_pixels)
        self.page = (resources.files("prodray") / "web" / "index.html").read_text(encoding="utf-8")

    @api.get("/", response_class=HTMLResponse)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self):
        """200 when every configured model answers; 503 (with each one's state) otherwise."""
        async def probe(name: str, handle: DeploymentHandle | None) -> dict:
            if handle is None:
                return {"status": "disabled"}
            try:
                info = await asyncio.wait_for(handle.info.remote(), timeout=10)
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                return {"status": "unavailable", "reason": type(exc).__name__}
            return {"status": "ok", "model_id": info["id"]}

        enhancer, generator = await asyncio.gather(probe("enhancer", self.enhancer),
                                                   probe("generator", self.generator))
        parts = {"enhancer": enhancer, "generator": generator}
        down = [name for name, part in parts.items() if part["status"] == "unavailable"]
        if down:
            return JSONResponse({"error": f"{down[0]}_unavailable", "status": "unavailable", **parts},
                                status_code=503)
        return {"status": "ok", "model_id": enhancer["model_id"], **parts}

    @api.get("/v1/models")
    async def models(self):
        try:
            calls = [self.enhancer.info.remote()]
            if self.generator is not None:
                calls.append(self.generator.info.remote())
            infos = await asyncio.gather(*calls)
        except UNAVAILABLE:
            return _overloaded()
        models = [{"id": infos[0]["id"], "scale": infos[0]["scale"], "task": "enhance"}]
        if self.generator is not None:
            info = infos[1]
            models.append({"id": info["id"], "task": "generate", "resolution": info["resolution"],
                           "attributes": info["attributes"], "max_n": MAX_GENERATE_N})
        return {"models": models}

    @api.post("/v1/generate")
    async def generate(self, request: Request):
        """JSON {"attributes": {name: value}, "n": 1..MAX_GENERATE_N, "seed": 0..2**63-1,
        "truncation": (0, 4] (optional)} -> one PNG (n = 1) or a zip of n PNGs. The same body
        gives the same bytes."""
        if self.generator is None:
            return _error(404, "no_generator", "this deployment serves no generator")
        try:
            body = await _read_capped(request, MAX_GENERATE_BYTES)
        except BodyTooLarge:
            return _error(413, "too_many_bytes", f"the JSON body is limited to {MAX_GENERATE_BYTES} bytes")
        parsed = _parse_generate(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        seed = parsed.seed if parsed.seed is not None else secrets.randbelow(MAX_SEED + 1)

        start = time.perf_counter()
        try:
            result = await self.generator.generate.remote(parsed.attributes, parsed.n, seed, parsed.truncation)
        except UNAVAILABLE:
            return _overloaded()
        generated = time.perf_counter()
        if result.get("rejected"):
            return JSONResponse({"error": result["rejected"], "message": result["message"],
                                 "known": result["known"]}, status_code=422)

        def encode() -> bytes:
            pngs = [encode_image(image, fmt="png") for image in result["images"]]
            if len(pngs) == 1:
                return pngs[0]
            return _zip([(f"seed{seed}-{i:02d}.png", png) for i, png in enumerate(pngs)])

        payload = await asyncio.to_thread(encode)
        headers = {
            "x-model-id": result["model_id"],
            "x-seed": str(seed),
            "x-n": str(parsed.n),
            "x-generate-ms": f"{(generated - start) * 1000:.1f}",
            "x-encode-ms": f"{(time.perf_counter() - generated) * 1000:.1f}",
        }
        if parsed.truncation is not None:
            headers["x-truncation"] = f"{parsed.truncation:g}"
        if parsed.n == 1:
            return Response(payload, media_type="image/png", headers=headers)
        headers["content-disposition"] = f'attachment; filename="generated-seed{seed}.zip"'
        return Response(payload, media_type="application/zip", headers=headers)

    @api.post("/v1/enhance")
    async def enhance(
        self,
        request: Request,
        fmt: Literal["png", "jpeg", "webp"] = Query("png", alias="format"),
        quality: int = Query(90, ge=1, le=100),
        scale: int | None = Query(None, ge=1, le=16),
    ):
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        try:
            body = await _read_capped(request, self.max_bytes + (MULTIPART_SLACK if multipart else 0))
        except BodyTooLarge:
            return _error(413, "too_many_bytes", f"uploads are limited to {self.max_bytes} bytes")
        if multipart:
            try:
                data = await _multipart_file(request, body)
            except Exception:  # noqa: BLE001 - malformed multipart is the client's error
                return _error(422, "bad_multipart")
            if data is None:
                return _error(422, "missing_file", 'send the image in the multipart field "file"')
        else:
            data = body
        if len(data) > self.max_bytes:
            return _error(413, "too_many_bytes", f"uploads are limited to {self.max_bytes} bytes")

        start = time.perf_counter()
        try:
            image = await asyncio.to_thread(decode_image, data, max_bytes=self.max_bytes,
                                            max_pixels=self.max_pixels)
        except ImageRejected as exc:
            return _error(REJECT_STATUS.get(exc.reason, 422), exc.reason, str(exc))
        decoded = time.perf_counter()

        try:  # x-enhance-ms: batching wait + model + transfer, not decode/encode
            result = await self.enhancer.enhance.remote(image.rgb, image.alpha, scale)
        except UNAVAILABLE:
            return _overloaded()
        enhanced = time.perf_counter()
        if result.get("rejected"):
            return _error(422, result["rejected"], f"this endpoint serves scale {result['scale']}")
        height, width = result["rgb"].shape[:2]
        if max(height, width) > MAX_SIDE[fmt]:
            return _error(422, "too_large_for_format",
                          f"a {width}x{height} result does not fit {fmt} (max side {MAX_SIDE[fmt]})")

        # Same physical print size at the higher resolution: DPI scales with the pixels.
        dpi = tuple(v * result["scale"] for v in image.dpi) if image.dpi else None
        payload = await asyncio.to_thread(encode_image, result["rgb"], alpha=result["alpha"], fmt=fmt,
                                          quality=quality, icc_profile=image.icc_profile, dpi=dpi)
        return Response(payload, media_type=content_type(fmt), headers={
            "x-model-id": result["model_id"],
            "x-scale": str(result["scale"]),
            "x-decode-ms": f"{(decoded - start) * 1000:.1f}",
            "x-enhance-ms": f"{(enhanced - decoded) * 1000:.1f}",
            "x-encode-ms": f"{(time.perf_counter() - enhanced) * 1000:.1f}",
        })


def build_app(model: str | None = None, *, generator: str | bool | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
              enhancer_options: dict | None = None, generator_options: dict | None = None,
              ingress_options: dict | None = None):
    """The bound Serve application (nothing is loaded until Serve starts the replicas).

    model: enhancer export folder, s3:// URI or shipped name; None means $PRODRAY_MODEL, else
    "enhancer-x2". generator: the same for the product generator; None means
    $PRODRAY_GENERATOR, else "gan-fashion-products"; False or "none" (also as
    $PRODRAY_GENERATOR) builds an enhancer-only app (no generator replica; /v1/generate
    answers 404). Each is its deployment's `user_config`, so a config file can swap it later.
    *_options: `Deployment.options(...)` overrides, e.g. `{"ray_actor_options": {"num_cpus": 0}}`.
    """
    model = model or os.environ.get(MODEL_ENV) or None  # None: resolved in the replica
    enhancer_options = dict(enhancer_options or {})
    user_config = {"model": model, **enhancer_options.pop("user_config", {})}  # e.g. batching knobs
    enhancer = EnhancerDeployment.options(user_config=user_config, **enhancer_options).bind()
    generator_ref = _generator_reference(generator)
    generator_app = None
    if generator_ref is not None:
        generator_options = dict(generator_options or {})
        generator_config = {"model": generator_ref, **generator_options.pop("user_config", {})}
        generator_app = GeneratorDeployment.options(user_config=generator_config, **generator_options).bind()
    ingress = Ingress.options(**(ingress_options or {}))
    return ingress.bind(enhancer, max_bytes=max_bytes, max_pixels=max_pixels, generator=generator_app)


# Import path for `serve deploy serve_config.yaml` / `serve run prodray.cluster.serve:app`.
app = build_app()
