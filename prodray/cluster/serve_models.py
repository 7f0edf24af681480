"""The model deployments of the Serve app: a batched enhancer, a batched product generator and
the repair model, each holding one model that `user_config` swaps without downtime.

Owns loading (in a thread, beside the old model), batching and the swap; not HTTP (serve.py,
http.py) nor inference itself (enhancer/inference.py, gan/inference.py). Importing it loads no
weights and no torch.
"""

import asyncio
import logging
import random
import time

import numpy as np
from ray import serve

from prodray.cluster.http import BACKPRESSURE
from prodray.config import ServeConfig

logger = logging.getLogger("ray.serve")  # Serve routes it into each replica's log file


class SwappableModel:
    """What the model deployments share: one loaded model (`_model`), replaced whole, never
    mutated. `reconfigure({"model": URI})` loads the new model in a thread beside the old one,
    then swaps, so requests keep being served meanwhile (no downtime on `serve deploy`); a failed
    load raises and the old model stays. Optional `max_batch_size` / `batch_wait_timeout_s`
    retune the deployment's batching in place (1 turns it off; the benchmark compares both).

    `model` is what the replica serves when no user_config names one (default: `default_model`);
    `device` is "cpu", "cuda" or "auto" (cuda when the replica has a GPU); `precision` is the
    inference precision setting (prodray/precision.py), resolved for that device."""

    default_model: str

    def __init__(self, model: str | None = None, device: str = "auto", precision: str = "auto"):
        self._configured, self._device, self._precision = model or self.default_model, device, precision
        self._model = None
        self._reference: str | None = None
        self._load_lock = asyncio.Lock()

    def _batched(self):
        """The deployment's @serve.batch method."""
        raise NotImplementedError

    @staticmethod
    def _load(reference: str, device: str, precision: str):
        raise NotImplementedError

    async def reconfigure(self, user_config: dict | None) -> None:
        config = user_config or {}
        await self._ensure_loaded(config.get("model"))
        if config.get("max_batch_size") is not None:
            self._batched().set_max_batch_size(int(config["max_batch_size"]))
        if config.get("batch_wait_timeout_s") is not None:
            self._batched().set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    async def _ensure_loaded(self, reference: str | None = None) -> None:
        reference = reference or self._configured
        async with self._load_lock:
            if reference == self._reference and self._model is not None:
                return
            device = _default_device() if self._device == "auto" else self._device
            model = await asyncio.to_thread(self._load, reference, device, self._precision)
            self._model, self._reference = model, reference
            logger.info("serving %s from %s on %s in %s", model.model_id, reference, device, model.precision)


class InProcess:
    """A model deployment's class run inside the calling replica, called like its DeploymentHandle
    (`held.method.remote(*args)` is awaitable): the ingress holding the enhancer itself answers a
    request with no actor call and no second replica between it and the forward."""

    def __init__(self, instance: SwappableModel):
        self.instance = instance

    def __getattr__(self, name: str):
        return _LocalMethod(getattr(self.instance, name))


class _LocalMethod:
    def __init__(self, method):
        self._method = method

    def remote(self, *args, **kwargs):
        return self._method(*args, **kwargs)


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"




# The arms of the blind A/B page (GET /ab): a restoration model against itself at three strengths,
# any other model against the plain bicubic upscaling it improves on.
RESTORE_ARMS = {"strength-0": 0.0, "strength-1": 1.0, "strength-auto": "auto"}
CLEAN_ARMS = {"model": None, "bicubic": None}


def arms_of(enhancer) -> list[str]:
    return list(RESTORE_ARMS if enhancer.restores else CLEAN_ARMS)


# Resources, replicas, queues and batching come from config.ServeConfig: serve.build_app sets
# them. Let in-flight batches of large images finish when a replica is scaled down or replaced.
@serve.deployment(graceful_shutdown_timeout_s=60, backpressure_config=BACKPRESSURE)
class EnhancerDeployment(SwappableModel):
    """Holds one loaded Enhancer; `enhance` calls from many requests are batched together."""

    default_model = ServeConfig.model_fields["model"].default
    # A request that finds the model idle, with no sign of concurrent load, runs at once instead of
    # waiting batch_wait_timeout_s for company (the latency benchmark turns this off to compare).
    run_alone_when_idle = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_model = 0  # enhance requests between batching and their answer
        self._last_batch = 1  # requests in the last forward: more than one means clients arrive together
        self._forward_lock = asyncio.Lock()  # one forward at a time: alone or batched, they share the cores

    def _batched(self):
        return self._enhance_batch

    @staticmethod
    def _load(reference: str, device: str, precision: str):
        from prodray.enhancer.inference import Enhancer  # torch is imported by model replicas only
        return Enhancer.load(reference, device, precision=precision)

    async def info(self) -> dict:
        await self._ensure_loaded(self._reference)
        return {"id": self._model.model_id, "scale": self._model.scale}

    async def enhance(self, rgb: np.ndarray, alpha: np.ndarray | None = None, scale: int | None = None,
                      strength=None, jpeg_quality: int | None = None, max_output_pixels: int | None = None) -> dict:
        """(H, W, 3) uint8 (+ (H, W) alpha) -> {"rgb": (sH, sW, 3), "alpha", "model_id", "scale", "strength"}.

        `scale` (optional) must be the loaded model's, and a `strength` (a number in [0, 1] or
        "auto", already parsed) needs a restoration model, and the result must stay within
        `max_output_pixels`; otherwise the answer is
        {"rejected": reason, ...} and nothing runs. A failure of this image alone in the model
        is {"failed": message}; the other requests of its batch are answered as usual."""
        if self._model is None:  # only when deployed without any user_config
            await self._ensure_loaded()
        enhancer = self._model
        if scale is not None and scale != enhancer.scale:
            return {"rejected": "unsupported_scale", "scale": enhancer.scale}
        if strength is not None and not enhancer.restores:
            return {"rejected": "strength_unsupported", "model_id": enhancer.model_id}
        if max_output_pixels and rgb.shape[0] * rgb.shape[1] * enhancer.scale**2 > max_output_pixels:
            return {"rejected": "too_many_output_pixels", "scale": enhancer.scale}
        chosen = enhancer.strength_for(rgb, jpeg_quality, requested=strength)
        queued = time.perf_counter()
        out, enhancer, (started, forward_s) = await self._batch_or_alone((rgb, chosen))
        if isinstance(out, Exception):
            return {"failed": f"{type(out).__name__}: {out}"[:300], "model_id": enhancer.model_id}
        if alpha is not None:
            from prodray.enhancer.inference import upscale_alpha
            alpha = await asyncio.to_thread(upscale_alpha, alpha, enhancer.scale)
        return {"rgb": out, "alpha": alpha, "model_id": enhancer.model_id, "scale": enhancer.scale,
                "strength": chosen, "wait_s": started - queued, "forward_s": forward_s}

    async def _batch_or_alone(self, request: tuple) -> tuple:
        """One request through @serve.batch, or at once when no other request is in the model stage
        and the last forward ran one request: at low load the batch wait only adds latency. After a
        forward of several, the batch wait lets closed-loop clients, answered together, batch again."""
        alone = self.run_alone_when_idle and self._in_model == 0 and self._last_batch <= 1
        self._in_model += 1
        try:
            return (await self._enhance_requests([request]))[0] if alone else await self._enhance_batch(request)
        finally:
            self._in_model -= 1

    async def enhance_ab(self, rgb: np.ndarray, alpha: np.ndarray | None = None, jpeg_quality: int | None = None,
                         max_output_pixels: int | None = None) -> dict:
        """Two different arms of the loaded model (arms_of), drawn at random and in random order, run on
        one image -> {"arms": [left, right], "results": [two `enhance` answers], "model_id"}, or
        the first rejection or failure (as `enhance` answers them)."""
        if self._model is None:
            await self._ensure_loaded()
        enhancer = self._model
        if max_output_pixels and rgb.shape[0] * rgb.shape[1] * enhancer.scale**2 > max_output_pixels:
            return {"rejected": "too_many_output_pixels", "scale": enhancer.scale}
        arms = random.SystemRandom().sample(arms_of(enhancer), 2)
        results = await asyncio.gather(*(self._arm(enhancer, arm, rgb, alpha, jpeg_quality) for arm in arms))
        for result in results:
            if result.get("rejected") or result.get("failed"):
                return result
        if {result["model_id"] for result in results} != {enhancer.model_id}:
            return {"rejected": "model_changed", "model_id": enhancer.model_id}  # a swap landed mid-trial
        return {"arms": arms, "results": list(results), "model_id": enhancer.model_id}

    async def _arm(self, enhancer, arm: str, rgb: np.ndarray, alpha: np.ndarray | None, jpeg_quality) -> dict:
        if arm != "bicubic":
            return await self.enhance(rgb, alpha, None, RESTORE_ARMS.get(arm), jpeg_quality)
        from prodray.enhancer.evaluation import bicubic_upscale  # the baseline of the project's evals
        from prodray.enhancer.inference import upscale_alpha
        out = await asyncio.to_thread(bicubic_upscale, rgb, enhancer.scale)
        alpha = await asyncio.to_thread(upscale_alpha, alpha, enhancer.scale)
        return {"rgb": out, "alpha": alpha, "model_id": enhancer.model_id, "scale": enhancer.scale, "strength": None}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _enhance_batch(self, requests: list[tuple]) -> list[tuple]:
        return await self._enhance_requests(requests)

    async def _enhance_requests(self, requests: list[tuple]) -> list[tuple]:
        """[(rgb, strength)] -> [(enhanced rgb or this image's exception, the Enhancer that ran it,
        (perf_counter when the forward began, its seconds))]."""
        # One model for the whole batch, even if a swap lands mid-batch. enhance_many runs
        # same-shape images (and tiles) through the network together; the thread keeps this
        # replica's event loop free to queue the next batch and answer health checks.
        images, strengths = [r[0] for r in requests], [r[1] for r in requests]
        async with self._forward_lock:
            enhancer, started, self._last_batch = self._model, time.perf_counter(), len(requests)
            try:
                outputs = await asyncio.to_thread(enhancer.enhance_many, images, strengths)
            except Exception:  # noqa: BLE001 - one request's image must not fail the others: each alone
                logger.warning("a batch of %d failed in the model; answering each request alone", len(images))
                outputs = [await asyncio.to_thread(_enhance_one, enhancer, image, strength)
                           for image, strength in zip(images, strengths)]
            timing = (started, time.perf_counter() - started)
        return [(out, enhancer, timing) for out in outputs]


def _enhance_one(enhancer, image: np.ndarray, strength):
    """The enhanced image, or the exception this image alone raised."""
    try:
        return enhancer.enhance_many([image], [strength])[0]
    except Exception as exc:  # noqa: BLE001 - handed back to its own request
        return exc


@serve.deployment(graceful_shutdown_timeout_s=30, backpressure_config=BACKPRESSURE)
class GeneratorDeployment(SwappableModel):
    """Holds one loaded ProductGenerator; `generate` calls from many requests run as one forward pass."""

    default_model = ServeConfig.model_fields["generator"].default

    def _batched(self):
        return self._generate_batch

    @staticmethod
    def _load(reference: str, device: str, precision: str):
        from prodray.gan.inference import ProductGenerator  # torch is imported by model replicas only
        return ProductGenerator.load(reference, device, precision=precision)

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


@serve.deployment(graceful_shutdown_timeout_s=60, backpressure_config=BACKPRESSURE)
class RepairDeployment(SwappableModel):
    """Holds one loaded Repairer (repair/inference.py); each call repairs one image."""

    default_model = ServeConfig.model_fields["repair"].default

    def _batched(self):
        return self._repair_batch

    @staticmethod
    def _load(reference: str, device: str, precision: str):
        from prodray.repair.inference import Repairer  # torch is imported by model replicas only
        return Repairer.load(reference, device=device, precision=precision)

    async def info(self) -> dict:
        await self._ensure_loaded(self._reference)
        return {"id": self._model.model_id}

    async def repair(self, rgb: np.ndarray, mask: np.ndarray) -> dict:
        """(H, W, 3) uint8 and (H, W) bool -> {"rgb": (H, W, 3) uint8, "model_id"}, or {"failed": message}
        when the model fails on this image (the others of its batch are answered as usual)."""
        if self._model is None:  # only when deployed without any user_config
            await self._ensure_loaded()
        out, repairer = await self._repair_batch((rgb, mask))
        if isinstance(out, Exception):
            return {"failed": f"{type(out).__name__}: {out}"[:300], "model_id": repairer.model_id}
        return {"rgb": out, "model_id": repairer.model_id}

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _repair_batch(self, requests: list[tuple]) -> list[tuple]:
        # Images of different sizes: one after the other, each failure its own request's.
        repairer = self._model
        return [(await asyncio.to_thread(_repair_one, repairer, rgb, mask), repairer) for rgb, mask in requests]


def _repair_one(repairer, rgb: np.ndarray, mask: np.ndarray):
    """The repaired image, or the exception this image alone raised."""
    try:
        return repairer.repair(rgb, mask)
    except Exception as exc:  # noqa: BLE001 - handed back to its own request
        return exc


@serve.deployment(graceful_shutdown_timeout_s=30, backpressure_config=BACKPRESSURE)
class RecolourDeployment(SwappableModel):
    """Holds one loaded recolouring model (recolour/inference.py, or `baseline`); each call
    recolours one image to one colour, finding the product itself when no mask is given."""

    default_model = ServeConfig.model_fields["recolour"].default

    def _batched(self):
        return self._recolour_batch

    @staticmethod
    def _load(reference: str, device: str, precision: str):
        from prodray.recolour.inference import load_recolourer  # torch is imported by model replicas only
        return load_recolourer(reference, device=device)

    async def info(self) -> dict:
        await self._ensure_loaded(self._reference)
        return {"id": self._model.model_id}

    async def recolour(self, rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray | None,
                       target: np.ndarray) -> dict:
        """-> {"rgb", "model_id", "product_pixels"}, {"refused": reason} when no product is found,
        or {"failed": message} when the model fails on this image."""
        if self._model is None:  # only when deployed without any user_config
            await self._ensure_loaded()
        out, recolourer = await self._recolour_batch((rgb, alpha, mask, target))
        if isinstance(out, Exception):
            return {"failed": f"{type(out).__name__}: {out}"[:300], "model_id": recolourer.model_id}
        return {**out, "model_id": recolourer.model_id}

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _recolour_batch(self, requests: list[tuple]) -> list[tuple]:
        recolourer = self._model
        return [(await asyncio.to_thread(_recolour_one, recolourer, *request), recolourer) for request in requests]


def _recolour_one(recolourer, rgb: np.ndarray, alpha, mask, target: np.ndarray):
    """{"rgb", "product_pixels"} or {"refused": ...}, or the exception this image alone raised."""
    from prodray.recolour.segmentation import MIN_PRODUCT_PIXELS, product_mask  # torch: model replicas only
    try:
        if mask is None:
            mask = product_mask(rgb, alpha)
        if int(mask.sum()) < MIN_PRODUCT_PIXELS:
            return {"refused": "no_product"}
        return {"rgb": recolourer.recolour(rgb, target, mask), "product_pixels": int(mask.sum())}
    except Exception as exc:  # noqa: BLE001 - handed back to its own request
        return exc
