"""HTTP plumbing of the Serve ingress: refusals as JSON, capped body reads, multipart, request
parsing, upload decoding, and encoding the answers (the zip of generated images among them).

Owns what a request may be and how a refusal looks (status, `error` reason, message); not the
routes (serve.py) nor decoding rules (io/codec.py). Imports no model code.
"""

import base64
import hashlib
import hmac
import io
import json
import zipfile

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request as StarletteRequest

from prodray.gan.limits import MAX_SEED, MAX_TRUNCATION
from prodray.io.codec import DecodedImage, ImageRejected, decode_image, encode_image

MAX_GENERATE_N = 16  # images per /v1/generate request
MAX_GENERATE_BYTES = 64 * 1024  # a /v1/generate JSON body
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
MAX_VOTE_BYTES = 4 * 1024  # a /v1/votes JSON body: a trial token and a choice
MAX_TRIAL_CHARS = 2048  # a signed trial token is a few hundred characters

# codec.ImageRejected.reason -> HTTP status. Anything not listed is a 422 (bad content).
REJECT_STATUS = {"unsupported_format": 415, "too_many_pixels": 413, "too_many_bytes": 413}
# The largest side each output format can store (WebP: 14-bit sizes; JPEG: 16-bit).
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}
# A full queue (Serve's max_queued_requests) answers this at once, from the proxy or a handle.
BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}
# Handle failures that mean "no capacity right now", not "this request is wrong": a full queue,
# a deployment that is (re)starting, a replica that died or is unreachable mid-request.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError)


class Refused(Exception):
    """A request answered with a JSON refusal {"error": reason, "message": ..., **extra}. Raised
    anywhere under a route; `refused_response`, registered on the app, turns it into the answer."""

    def __init__(self, status: int, reason: str, message: str | None = None, headers: dict | None = None,
                 **extra):
        super().__init__(reason)
        self.status, self.headers = status, headers
        self.body = {"error": reason, **({"message": message} if message else {}), **extra}


def overloaded() -> Refused:
    return Refused(503, "overloaded", "try again shortly", headers={"retry-after": str(BACKPRESSURE["retry_after_s"])})


async def refused_response(request, exc: Refused) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def invalid_parameter_response(request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's query-parameter errors, in the refusal shape."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse({"error": "invalid_parameter", "detail": detail}, status_code=422)


async def read_capped(request: Request, limit: int, message: str) -> bytes:
    """The request body; 413 `message` as soon as it passes `limit` bytes (declared or read so far)."""
    too_many = Refused(413, "too_many_bytes", message)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_many
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_many
        chunks.append(chunk)
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> bytes | None:
    """The "file" field of a multipart body already read into memory (None when absent)."""
    value = (await multipart_fields(request, body, ("file",))).get("file")
    return value if isinstance(value, bytes) else None


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of POST /v1/enhance: the raw body, or the multipart field "file"."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    message = f"uploads are limited to {max_bytes} bytes"
    body = await read_capped(request, max_bytes + (MULTIPART_SLACK if multipart else 0), message)
    if not multipart:
        return body
    try:
        data = await multipart_file(request, body)
    except Exception:  # noqa: BLE001 - malformed multipart is the client's error
        raise Refused(422, "bad_multipart") from None
    if data is None:
        raise Refused(422, "missing_file", 'send the image in the multipart field "file"')
    if len(data) > max_bytes:
        raise Refused(413, "too_many_bytes", message)
    return data


async def multipart_fields(request: Request, body: bytes, names: tuple[str, ...]) -> dict[str, bytes | str]:
    """The named fields of a multipart body already read into memory: bytes for files, str for text."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await StarletteRequest(request.scope, receive=replay).form(max_files=len(names), max_fields=10)
    try:
        fields = {}
        for name in names:
            value = form.get(name)
            if value is not None:
                fields[name] = value if isinstance(value, str) else await value.read()
        return fields
    finally:
        await form.close()


async def read_image_upload(request: Request, max_bytes: int, required: tuple[str, ...],
                            optional: tuple[str, ...] = ()) -> dict[str, bytes | str]:
    """A multipart upload with the file `image` among `required` fields and maybe `optional` ones,
    each at most `max_bytes`."""
    names = required + optional
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        quoted = ", ".join(f'"{name}"' for name in required)
        raise Refused(415, "multipart_required", f"send multipart/form-data with the fields {quoted}")
    message = f"each field is limited to {max_bytes} bytes"
    body = await read_capped(request, len(names) * max_bytes + MULTIPART_SLACK, message)
    try:
        fields = await multipart_fields(request, body, names)
    except Exception:  # noqa: BLE001 - malformed multipart is the client's error
        raise Refused(422, "bad_multipart") from None
    for name in required:
        if name not in fields:
            raise Refused(422, f"missing_{name}", f'send the {name} in the multipart field "{name}"')
    if any(len(value) > max_bytes for value in fields.values()):
        raise Refused(413, "too_many_bytes", message)
    if not isinstance(fields["image"], bytes):
        raise Refused(422, "missing_image", 'the field "image" must be a file')
    return fields


async def read_repair_upload(request: Request, max_bytes: int) -> tuple[bytes, bytes | str]:
    """POST /v1/repair's multipart fields: `image` (file) and `mask` (a file, or a JSON list of
    [x, y, width, height] rectangles as text)."""
    fields = await read_image_upload(request, max_bytes, ("image", "mask"))
    return fields["image"], fields["mask"]


def parse_colour_field(value: bytes | str | None):
    """POST /v1/recolour's `colour` (a vocabulary name or #rrggbb) -> (name, (3,) uint8 sRGB); 422 otherwise."""
    from prodray.recolour.colours import parse_colour
    if value is None:
        raise Refused(422, "missing_colour", 'send the target colour in the field "colour" (a name or #rrggbb)')
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        return parse_colour(text[:64])
    except ValueError as exc:
        raise Refused(422, "bad_colour", str(exc)) from None


def parse_repair_mask(mask: bytes | str, shape: tuple[int, int], max_bytes: int):
    """The mask of a /v1/repair request as (H, W) bool; its refusals as 4xx."""
    from prodray.repair.masks import MaskError, mask_from_png, mask_from_rects
    try:
        if isinstance(mask, str):
            try:
                rects = json.loads(mask)
            except (ValueError, RecursionError):
                raise MaskError("bad_mask", "a text mask must be a JSON list of [x, y, width, height]") from None
            return mask_from_rects(rects, shape)
        return mask_from_png(mask, shape, max_bytes=max_bytes)
    except MaskError as exc:
        raise Refused(422, exc.reason, str(exc)) from None
    except ImageRejected as exc:
        raise Refused(REJECT_STATUS.get(exc.reason, 422), f"mask_{exc.reason}", f"mask: {exc}") from None


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """codec.decode_image, its rejections as refusals (415 format, 413 size, else 422)."""
    try:
        return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise Refused(REJECT_STATUS.get(exc.reason, 422), exc.reason, str(exc)) from None


def check_fits_format(height: int, width: int, fmt: str) -> None:
    if max(height, width) > MAX_SIDE[fmt]:
        raise Refused(422, "too_large_for_format", f"a {width}x{height} result does not fit {fmt} "
                      f"(max side {MAX_SIDE[fmt]})")


class GenerateRequest(BaseModel):
    """The JSON body of POST /v1/generate. Strict: 1.0, "1" and true are not integers."""
    model_config = ConfigDict(extra="forbid")
    attributes: dict[StrictStr, StrictStr]
    n: StrictInt = Field(1, ge=1, le=MAX_GENERATE_N)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)  # None: a random seed, sent back in x-seed
    truncation: StrictFloat | None = Field(None, gt=0, le=MAX_TRUNCATION, allow_inf_nan=False)  # None: no cut


def parse_generate(body: bytes) -> GenerateRequest:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, absurd nesting or digits
        doc = None
    if not isinstance(doc, dict):
        raise Refused(422, "invalid_json", "the body must be a JSON object")
    try:
        return GenerateRequest.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = str(first["loc"][0]) if first.get("loc") else None
        detail = [{"loc": [str(part) for part in e.get("loc", ())], "msg": e.get("msg", "")} for e in errors]
        raise Refused(422, "invalid_parameter", f"{field}: {first['msg']}", field=field, detail=detail) from None


def zip_files(files: list[tuple[str, bytes]]) -> bytes:
    """Uncompressed (PNGs are compressed already) and with fixed timestamps, so the same seed
    gives the same bytes; sizes sit in each local header (the page reads them without a library)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def encode_enhanced(result: dict, image: DecodedImage, fmt: str, quality: int) -> bytes:
    """The enhancer's answer as `fmt`, with the upload's alpha, ICC profile and DPI carried over."""
    # Same physical print size at the higher resolution: DPI scales with the pixels.
    dpi = tuple(v * result["scale"] for v in image.dpi) if image.dpi else None
    return encode_image(result["rgb"], alpha=result["alpha"], fmt=fmt, quality=quality,
                        icc_profile=image.icc_profile, dpi=dpi)


def encode_generated(images, seed: int) -> bytes:
    """One PNG, or a zip of PNGs named by seed and index."""
    pngs = [encode_image(image, fmt="png") for image in images]
    if len(pngs) == 1:
        return pngs[0]
    return zip_files([(f"seed{seed}-{i:02d}.png", png) for i, png in enumerate(pngs)])


def timing_headers(**spans: tuple[float, float]) -> dict:
    """x-<name>-ms for each (start, end) of time.perf_counter()."""
    return {f"x-{name}-ms": f"{(end - start) * 1000:.1f}" for name, (start, end) in spans.items()}


def model_timing_headers(result: dict) -> dict:
    """x-wait-ms (batching and queueing in the model replica) and x-forward-ms (the forward pass),
    so a client can tell the model's time from Serve's."""
    return {f"x-{name}-ms": f"{result[f'{name}_s'] * 1000:.1f}" for name in ("wait", "forward")
            if result.get(f"{name}_s") is not None}


def parse_strength_parameter(value: str | None):
    """The `strength` query parameter, parsed, or a 422 naming it."""
    from prodray.config import parse_strength
    try:
        return parse_strength(value)
    except ValueError as exc:
        raise Refused(422, "invalid_parameter", str(exc), field="strength") from None


# --- blind A/B trials ------------------------------------------------------------------------
# A trial token carries what the vote must record (which arm was left, the model, the input's
# hash) through the browser, signed so a voter cannot alter it: the server keeps no state between
# showing a pair and storing its vote.

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def sign_trial(secret: str, trial: dict) -> str:
    """`trial` as base64url JSON + "." + its HMAC-SHA256 under `secret`."""
    payload = _b64(json.dumps(trial, sort_keys=True, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


TRIAL_FIELDS = {"trial_id": str, "left": str, "right": str, "model_id": str, "input_sha256": str,
                "issued": (int, float)}


def open_trial(secret: str, token) -> dict:
    """The trial a token signed by `sign_trial` carries; 422 `bad_trial` for anything else."""
    bad = Refused(422, "bad_trial", "the trial token is not one this server issued")
    if not isinstance(token, str) or len(token) > MAX_TRIAL_CHARS or token.count(".") != 1:
        raise bad
    payload, signature = token.split(".")
    if not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        raise bad
    try:
        trial = json.loads(_unb64(payload))
    except ValueError:
        raise bad from None
    if not isinstance(trial, dict) or any(not isinstance(trial.get(k), t) for k, t in TRIAL_FIELDS.items()):
        raise bad
    return trial


def parse_vote(body: bytes) -> tuple[str, str]:
    """(trial token, choice) of a /v1/votes body {"trial": ..., "choice": "left" | "right" | "same"}."""
    from prodray.catalog.preference import CHOICES
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise Refused(422, "invalid_json", "the body must be a JSON object")
    extra = sorted(set(doc) - {"trial", "choice"})
    if extra:
        raise Refused(422, "invalid_parameter", f"{extra[0]}: unknown field", field=extra[0])
    if doc.get("choice") not in CHOICES:
        raise Refused(422, "invalid_parameter", f"choice: must be one of {', '.join(CHOICES)}", field="choice")
    return doc.get("trial"), doc["choice"]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
