"""Ray Serve application: an HTTP ingress (FastAPI) in front of a batched, autoscaled enhancer,
a batched, autoscaled product generator and a repair model, built from a typed config.ServeConfig; with
ServeConfig.votes set, also a blind A/B page whose votes go to object storage.

Owns the routes (one Ingress method each), `build_app(config)`, the typed builder `app_builder`
that serve_config.yaml names with `args:`, and `deploy` for jobs/serve.py. Not owned: HTTP
plumbing (http.py), the model replicas (serve_models.py), decoding rules (io/codec.py).
Importing it loads no weights.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the ingress
# methods, and Serve re-wraps them outside this module's globals.
import asyncio
import hashlib
import logging
import secrets
import time
import urllib.request
import uuid
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from prodray.catalog import preference
from prodray.cluster import http
from prodray.cluster.serve_models import (
    EnhancerDeployment,
    GeneratorDeployment,
    InProcess,
    RecolourDeployment,
    RepairDeployment,
)
from prodray.config import (
    SERVE_MAX_BYTES,
    SERVE_MAX_OUTPUT_PIXELS,
    SERVE_MAX_PIXELS,
    ModelReplicaConfig,
    OutputFormat,
    ReplicaConfig,
    ServeConfig,
    ServeJobConfig,
    validate,
)
from prodray.gan.limits import MAX_SEED
from prodray.io import storage
from prodray.io.codec import content_type
from prodray.recolour.colours import REFERENCE_HEX

logger = logging.getLogger("ray.serve")  # Serve routes it into each replica's log file
api = FastAPI(title="prodray", docs_url=None, redoc_url=None)
api.add_exception_handler(http.Refused, http.refused_response)
api.add_exception_handler(RequestValidationError, http.invalid_parameter_response)


# Below the proxy's request_timeout_s (serve_config.yaml, ServeJobConfig), so a stuck model call
# is answered with our JSON 504 rather than cut off by the proxy.
MODEL_CALL_TIMEOUT_S = 110.0


async def call(method, *args, timeout_s: float | None = None):
    """A deployment handle call; no capacity right now (full queue, restarting or dead replica) is a
    503, no answer within the timeout a 504 (the call is cancelled)."""
    timeout_s = MODEL_CALL_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        return await asyncio.wait_for(method.remote(*args), timeout=timeout_s)
    except http.UNAVAILABLE:
        raise http.overloaded() from None
    except asyncio.TimeoutError:
        raise http.Refused(504, "model_timeout", f"the model did not answer within {timeout_s:g} s") from None


def refuse_unless_enhanced(result: dict, image, max_output_pixels: int) -> None:
    """An enhancer answer that holds no image, as the refusal the client gets."""
    if result.get("rejected") == "too_many_output_pixels":
        raise http.Refused(413, "too_many_output_pixels", f"the x{result['scale']} result of a {image.width}x"
                           f"{image.height} upload would pass the {max_output_pixels} pixel limit")
    if result.get("rejected") == "strength_unsupported":
        raise http.Refused(422, "strength_unsupported", f"model {result['model_id']} is not a restoration "
                           "model: strength does not apply to it")
    if result.get("rejected") == "model_changed":
        raise http.overloaded()  # the model was swapped during the call: the next one sees one model
    if result.get("rejected"):
        raise http.Refused(422, result["rejected"], f"this endpoint serves scale {result['scale']}")
    if result.get("failed"):
        raise http.Refused(500, "enhance_failed", result["failed"])


async def probe(handle: DeploymentHandle | None) -> dict:
    """One model deployment's state for /healthz."""
    if handle is None:
        return {"status": "disabled"}
    try:
        info = await asyncio.wait_for(handle.info.remote(), timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return {"status": "unavailable", "reason": type(exc).__name__}
    return {"status": "ok", "model_id": info["id"]}


@serve.deployment(
    backpressure_config=http.BACKPRESSURE,  # the proxy's own 503 carries Retry-After too
    # An in-flight request may be waiting on a starting enhancer replica during a rollout.
    graceful_shutdown_timeout_s=60,
)
@serve.ingress(api)
class Ingress:
    """HTTP front: validates and decodes uploads, calls the models, encodes the results.

    Decoding and encoding happen here (in threads), so bad input never reaches a model replica
    and images travel to it as arrays through Ray's object store, not as JSON. Refusals are
    raised as http.Refused and answered as JSON by the app's handler."""

    def __init__(self, enhancer: DeploymentHandle | None, generator: DeploymentHandle | None = None,
                 max_bytes: int = SERVE_MAX_BYTES, max_pixels: int = SERVE_MAX_PIXELS,
                 max_output_pixels: int = SERVE_MAX_OUTPUT_PIXELS, votes: str | None = None,
                 vote_secret: str | None = None, repairer: DeploymentHandle | None = None,
                 recolourer: DeploymentHandle | None = None, held_enhancer: dict | None = None):
        # held_enhancer (EnhancerDeployment's init kwargs), with enhancer None: this replica holds the
        # enhancer itself; its user_config then reaches the model through `reconfigure`.
        if held_enhancer is not None:
            enhancer = InProcess(EnhancerDeployment.func_or_class(**held_enhancer))
        self.enhancer, self.generator = enhancer, generator  # generator None: enhancer-only app
        self.repairer = repairer  # None: no /v1/repair
        self.recolourer = recolourer  # None: no /v1/recolour
        self.max_bytes, self.max_pixels = int(max_bytes), int(max_pixels)
        self.max_output_pixels = int(max_output_pixels)
        self.votes, self.vote_secret = votes, vote_secret  # votes None: no A/B page
        web = resources.files("prodray") / "web"
        self.page = (web / "index.html").read_text(encoding="utf-8")
        self.ab_page = (web / "ab.html").read_text(encoding="utf-8")

    async def reconfigure(self, user_config: dict | None) -> None:
        """The held enhancer's user_config (model, batching): set only when this replica holds it."""
        if isinstance(self.enhancer, InProcess):
            await self.enhancer.instance.reconfigure(user_config)

    @api.get("/", response_class=HTMLResponse)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    def _need_votes(self) -> None:
        if not self.votes or not self.vote_secret:
            raise http.Refused(404, "no_vote_store", "this deployment stores no votes (ServeConfig.votes is unset)")

    @api.get("/ab", response_class=HTMLResponse)
    async def ab_page_route(self) -> HTMLResponse:
        self._need_votes()
        return HTMLResponse(self.ab_page)

    @api.post("/v1/ab")
    async def ab(self, request: Request):
        """One blind trial: the upload (as for /v1/enhance) run by two arms of the served model,
        answered as two PNG data URLs in random order and a signed token that the vote sends back."""
        self._need_votes()
        data = await http.read_upload(request, self.max_bytes)
        image, digest = await asyncio.to_thread(
            lambda: (http.decode_upload(data, self.max_bytes, self.max_pixels), hashlib.sha256(data).hexdigest()))
        result = await call(self.enhancer.enhance_ab, image.rgb, image.alpha, image.jpeg_quality,
                            self.max_output_pixels)
        refuse_unless_enhanced(result, image, self.max_output_pixels)
        pngs = await asyncio.to_thread(lambda: [http.encode_enhanced(r, image, "png", 90) for r in result["results"]])
        left, right = result["arms"]
        token = http.sign_trial(self.vote_secret, {
            "trial_id": uuid.uuid4().hex, "left": left, "right": right, "model_id": result["model_id"],
            "input_sha256": digest, "issued": time.time()})
        return {"trial": token, "left": http.data_url(pngs[0]), "right": http.data_url(pngs[1]),
                "model_id": result["model_id"]}

    @api.post("/v1/votes")
    async def vote(self, request: Request):
        """JSON {"trial": token from /v1/ab, "choice": "left" | "right" | "same"}: stores the vote as
        its own create-only object (one per trial: a second is 409) and reveals the arms."""
        self._need_votes()
        body = await http.read_capped(request, http.MAX_VOTE_BYTES,
                                      f"the JSON body is limited to {http.MAX_VOTE_BYTES} bytes")
        token, choice = http.parse_vote(body)
        trial = http.open_trial(self.vote_secret, token)
        key = preference.vote_key(trial["trial_id"], trial["issued"])
        line = preference.vote_line(preference.vote_record(trial, choice, time.time()))
        try:
            stored = await asyncio.to_thread(storage.put_if_absent, storage.join(self.votes, key), line)
        except (storage.StorageError, OSError):
            logger.exception("could not store the vote of trial %s", trial["trial_id"])
            raise http.Refused(503, "vote_store_unavailable", "the vote could not be stored; try again") from None
        if not stored:
            raise http.Refused(409, "already_voted", "this trial has a vote already")
        return {"stored": key, "left": trial["left"], "right": trial["right"]}

    @api.get("/healthz")
    async def healthz(self):
        """200 when every configured model answers; 503 (with each one's state) otherwise."""
        enhancer, generator, repair, recolour = await asyncio.gather(
            probe(self.enhancer), probe(self.generator), probe(self.repairer), probe(self.recolourer))
        parts = {"enhancer": enhancer, "generator": generator, "repair": repair, "recolour": recolour}
        down = [name for name, part in parts.items() if part["status"] == "unavailable"]
        if down:
            return JSONResponse({"error": f"{down[0]}_unavailable", "status": "unavailable", **parts},
                                status_code=503)
        return {"status": "ok", "model_id": enhancer["model_id"], **parts}

    @api.get("/v1/models")
    async def models(self):
        handles = [self.enhancer] + ([self.generator] if self.generator is not None else [])
        enhancer, *generators = await asyncio.gather(*(call(handle.info) for handle in handles))
        models = [{"id": enhancer["id"], "scale": enhancer["scale"], "task": "enhance"}]
        models += [{"id": info["id"], "task": "generate", "resolution": info["resolution"],
                    "attributes": info["attributes"], "max_n": http.MAX_GENERATE_N} for info in generators]
        if self.repairer is not None:
            models.append({"id": (await call(self.repairer.info))["id"], "task": "repair"})
        if self.recolourer is not None:
            models.append({"id": (await call(self.recolourer.info))["id"], "task": "recolour",
                           "colours": REFERENCE_HEX})
        return {"models": models}

    @api.post("/v1/repair")
    async def repair(
        self,
        request: Request,
        fmt: OutputFormat = Query("png", alias="format"),
        quality: int = Query(90, ge=1, le=100),
    ):
        """multipart `image` + `mask` (a PNG the image's size, white = repair; or a JSON list of
        [x, y, width, height] rectangles) -> the repaired image, equal to the upload outside the mask."""
        if self.repairer is None:
            raise http.Refused(404, "no_repair_model", "this deployment serves no repair model")
        data, mask_field = await http.read_repair_upload(request, self.max_bytes)
        image, mask, start = await self._decode_with_mask(data, mask_field)
        decoded = time.perf_counter()
        result = await call(self.repairer.repair, image.rgb, mask)
        repaired = time.perf_counter()
        if result.get("failed"):
            raise http.Refused(500, "repair_failed", result["failed"])
        return await self._same_size_response(result["rgb"], image, fmt, quality, {
            "x-model-id": result["model_id"], "x-repaired-pixels": str(int(mask.sum()))},
            decode=(start, decoded), repair=(decoded, repaired))

    @api.post("/v1/recolour")
    async def recolour(
        self,
        request: Request,
        fmt: OutputFormat = Query("png", alias="format"),
        quality: int = Query(90, ge=1, le=100),
    ):
        """multipart `image` + `colour` (a name of GET /v1/models' colours, or #rrggbb) + optional
        `mask` (a PNG the image's size, white = the product; or a JSON list of [x, y, width, height]
        rectangles; default: the product found on its background) -> the image with the product in
        that colour, equal to the upload outside the product."""
        if self.recolourer is None:
            raise http.Refused(404, "no_recolour_model", "this deployment serves no recolouring model")
        fields = await http.read_image_upload(request, self.max_bytes, ("image", "colour"), ("mask",))
        name, target = http.parse_colour_field(fields.get("colour"))
        image, mask, start = await self._decode_with_mask(fields["image"], fields.get("mask"))
        decoded = time.perf_counter()
        result = await call(self.recolourer.recolour, image.rgb, image.alpha, mask, target)
        recoloured = time.perf_counter()
        if result.get("refused"):
            raise http.Refused(422, result["refused"], "no product was found on a plain background; send a mask")
        if result.get("failed"):
            raise http.Refused(500, "recolour_failed", result["failed"])
        return await self._same_size_response(result["rgb"], image, fmt, quality, {
            "x-model-id": result["model_id"], "x-colour": name, "x-product-pixels": str(result["product_pixels"])},
            decode=(start, decoded), recolour=(decoded, recoloured))

    async def _decode_with_mask(self, data: bytes, mask_field):
        """The upload and its optional mask (None when not sent), decoded under the limits; and
        when decoding started."""
        start = time.perf_counter()
        image = await asyncio.to_thread(http.decode_upload, data, self.max_bytes, self.max_pixels)
        mask = None
        if mask_field is not None:
            mask = await asyncio.to_thread(http.parse_repair_mask, mask_field, image.rgb.shape[:2], self.max_bytes)
        return image, mask, start

    async def _same_size_response(self, rgb, image, fmt: str, quality: int, headers: dict, **steps) -> Response:
        """An edit the size of the upload, encoded as asked (with the upload's alpha), its timings
        (`steps`: name -> (start, end)) and encoding's in the headers."""
        http.check_fits_format(*rgb.shape[:2], fmt)
        encoding = time.perf_counter()
        payload = await asyncio.to_thread(http.encode_enhanced, {"rgb": rgb, "alpha": image.alpha, "scale": 1},
                                          image, fmt, quality)
        return Response(payload, media_type=content_type(fmt), headers={
            **headers, **http.timing_headers(**steps, encode=(encoding, time.perf_counter()))})

    @api.post("/v1/generate")
    async def generate(self, request: Request):
        """JSON {"attributes": {name: value}, "n": 1..MAX_GENERATE_N, "seed": 0..2**63-1,
        "truncation": (0, 4] (optional)} -> one PNG (n = 1) or a zip of n PNGs. The same body
        gives the same bytes."""
        if self.generator is None:
            raise http.Refused(404, "no_generator", "this deployment serves no generator")
        limit = http.MAX_GENERATE_BYTES
        body = await http.read_capped(request, limit, f"the JSON body is limited to {limit} bytes")
        parsed = http.parse_generate(body)
        seed = parsed.seed if parsed.seed is not None else secrets.randbelow(MAX_SEED + 1)
        start = time.perf_counter()
        result = await call(self.generator.generate, parsed.attributes, parsed.n, seed, parsed.truncation)
        generated = time.perf_counter()
        if result.get("rejected"):
            raise http.Refused(422, result["rejected"], result["message"], known=result["known"])
        payload = await asyncio.to_thread(http.encode_generated, result["images"], seed)
        headers = {"x-model-id": result["model_id"], "x-seed": str(seed), "x-n": str(parsed.n),
                   **http.timing_headers(generate=(start, generated), encode=(generated, time.perf_counter()))}
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
        fmt: OutputFormat = Query("png", alias="format"),
        quality: int = Query(90, ge=1, le=100),
        scale: int | None = Query(None, ge=1, le=16),
        strength: str | None = Query(None, max_length=16),
    ):
        strength = http.parse_strength_parameter(strength)
        data = await http.read_upload(request, self.max_bytes)
        start = time.perf_counter()
        image = await asyncio.to_thread(http.decode_upload, data, self.max_bytes, self.max_pixels)
        decoded = time.perf_counter()
        # x-enhance-ms: the whole model call (x-wait-ms + x-forward-ms + the hops), not decode/encode
        result = await call(self.enhancer.enhance, image.rgb, image.alpha, scale, strength, image.jpeg_quality,
                            self.max_output_pixels)
        enhanced = time.perf_counter()
        refuse_unless_enhanced(result, image, self.max_output_pixels)
        http.check_fits_format(*result["rgb"].shape[:2], fmt)
        payload = await asyncio.to_thread(http.encode_enhanced, result, image, fmt, quality)
        strength_header = {} if result["strength"] is None else {"x-strength": f"{result['strength']:g}"}
        return Response(payload, media_type=content_type(fmt), headers={
            "x-model-id": result["model_id"], "x-scale": str(result["scale"]), **strength_header,
            **http.timing_headers(decode=(start, decoded), enhance=(decoded, enhanced),
                                  encode=(enhanced, time.perf_counter())),
            **http.model_timing_headers(result)})


def deployment_options(replicas: ReplicaConfig) -> dict:
    """`Deployment.options(...)` for one replica section of ServeConfig."""
    return {"ray_actor_options": {"num_cpus": replicas.num_cpus, "num_gpus": replicas.num_gpus},
            "autoscaling_config": {"min_replicas": replicas.min_replicas, "max_replicas": replicas.max_replicas,
                                   "target_ongoing_requests": replicas.target_ongoing_requests,
                                   "upscale_delay_s": replicas.upscale_delay_s,
                                   "downscale_delay_s": replicas.downscale_delay_s},
            "max_ongoing_requests": replicas.max_ongoing_requests,
            "max_queued_requests": replicas.max_queued_requests}


def model_user_config(reference: str, replicas: ModelReplicaConfig) -> dict:
    # The model and batching are the deployment's user_config, so `serve deploy` can change them in place.
    return {"model": reference, "max_batch_size": replicas.max_batch_size,
            "batch_wait_timeout_s": replicas.batch_wait_timeout_s}


def _model_deployment(deployment, reference: str, replicas: ModelReplicaConfig, config: ServeConfig):
    return deployment.options(user_config=model_user_config(reference, replicas),
                              **deployment_options(replicas)).bind(reference, config.device, config.precision)


def _ingress(config: ServeConfig):
    """The ingress deployment and the enhancer handle it binds (None when it holds the enhancer)."""
    if config.enhancer_in_ingress:
        held = {"model": config.model, "device": config.device, "precision": config.precision}
        ingress = Ingress.options(user_config=model_user_config(config.model, config.enhancer_replicas),
                                  **deployment_options(config.enhancer_replicas))
        return ingress, None, held
    enhancer = _model_deployment(EnhancerDeployment, config.model, config.enhancer_replicas, config)
    return Ingress.options(**deployment_options(config.ingress_replicas)), enhancer, None


def build_app(config: ServeConfig | None = None) -> Application:
    """The bound Serve application (nothing is loaded until Serve starts the replicas). With
    generator "none" there is no generator replica, and /v1/generate answers 404; with
    enhancer_in_ingress the ingress replicas hold the enhancer and there is no enhancer deployment."""
    config = config or ServeConfig()
    ingress, enhancer, held_enhancer = _ingress(config)
    generator = (_model_deployment(GeneratorDeployment, config.generator, config.generator_replicas, config)
                 if config.serves_generator else None)
    repairer = (_model_deployment(RepairDeployment, config.repair, config.repair_replicas, config)
                if config.serves_repair else None)
    recolourer = (_model_deployment(RecolourDeployment, config.recolour, config.recolour_replicas, config)
                  if config.serves_recolour else None)
    # Every ingress replica gets the same init kwargs, so all of them verify each other's trial
    # tokens. The secret is drawn per build: Serve keeps it in its controller's checkpoint (readable
    # by whoever can reach the cluster's GCS), and a deploy that rebuilds the app draws a new one,
    # so trials shown before such a redeploy can no longer be voted on (bad_trial).
    vote_secret = secrets.token_hex(32) if config.votes else None
    return ingress.bind(enhancer, generator, max_bytes=config.max_bytes, max_pixels=config.max_pixels,
                        max_output_pixels=config.max_output_pixels, votes=config.votes, vote_secret=vote_secret,
                        repairer=repairer, recolourer=recolourer, held_enhancer=held_enhancer)


def app_builder(args: dict) -> Application:
    """Serve's application builder: `import_path: prodray.cluster.serve:app_builder` plus `args:` (a
    ServeConfig as a mapping) in serve_config.yaml, or `serve run prodray.cluster.serve:app_builder
    model=...`. An unknown key or a bad value fails the deploy with a ConfigError naming it."""
    return build_app(validate(ServeConfig, dict(args)))


# `serve run prodray.cluster.serve:app`: the defaults of ServeConfig.
app = build_app()


def direct_ingress_urls(app_name: str, host: str = "127.0.0.1", timeout: float = 60.0) -> list[str]:
    """The URLs at which `app_name`'s ingress replicas answer themselves (Ray Serve's direct ingress,
    RAY_SERVE_ENABLE_DIRECT_INGRESS=1 on the cluster), one per running replica. The replicas bind
    Serve's http host; `host` is where to reach them (the controller reports the node's IP, not the
    bound address). Raises RuntimeError when the cluster has no direct ingress for the app."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    proxy_port = ray.get(controller.get_http_config.remote()).port
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = time.monotonic() + timeout
    while True:
        for group in ray.get(controller.get_target_groups.remote(app_name)):
            # Without direct ingress (or before a replica runs) the controller answers the proxies.
            ports = [target.port for target in group.targets if target.port != proxy_port]
            if group.protocol == RequestProtocol.HTTP and group.app_name == app_name and ports:
                prefix = "" if group.route_prefix == "/" else group.route_prefix
                return [f"http://{host}:{port}{prefix}" for port in ports]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no direct ingress for {app_name!r}: was the cluster started with "
                               "RAY_SERVE_ENABLE_DIRECT_INGRESS=1?")
        time.sleep(1)


def deploy(config: ServeJobConfig) -> str:
    """Start Serve on config.host:port, run the app as "prodray" at /, wait for /healthz; -> its URL.
    Serve's controller is detached, so the app outlives the job that deployed it."""
    serve.start(http_options={"host": config.host, "port": config.port,
                              "request_timeout_s": config.request_timeout_s})
    serve.run(build_app(config.app_config()), name="prodray", route_prefix="/", blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    deadline = time.monotonic() + config.timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
                if resp.status == 200:
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {url}/healthz did not answer within {config.timeout:.0f} s")
        time.sleep(1)
