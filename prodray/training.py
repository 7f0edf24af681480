"""Pure-torch training pieces shared by every trainer: schedule, resumed optimizer settings, EMA,
crops, grids, RNG state.

No Ray here, so the same step runs in a plain process (benchmarks, GPU checks) and in a Ray
Train worker.
"""

import copy
import math

import numpy as np
import torch


def lr_at(images_seen: int, base_lr: float, warmup_images: int, total_images: int) -> float:
    """Linear warm-up then cosine decay to 1% of the base rate, counted in images seen."""
    if warmup_images and images_seen < warmup_images:
        return base_lr * max(images_seen, 1) / warmup_images
    progress = min(1.0, (images_seen - warmup_images) / max(1, total_images - warmup_images))
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedules set the rate of every param group before each step."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def linear_decay_factor(images_seen: int, decay_from: int | None, total_images: int, final_fraction: float) -> float:
    """1 until `decay_from` images, then a straight line down to `final_fraction` at `total_images`
    (the GAN's schedule: a resumed run can be given one late, from where it stands)."""
    if decay_from is None or images_seen <= decay_from:
        return 1.0
    progress = min(1.0, (images_seen - decay_from) / max(1, total_images - decay_from))
    return 1.0 - (1.0 - final_fraction) * progress


def apply_configured_hyperparameters(optimizers: dict, settings: dict[str, dict], log=print) -> list[str]:
    """Set each optimizer's param-group settings (e.g. {"g": {"lr": 1e-4, "betas": (0.5, 0.999)}})
    after a resume: `load_state_dict` brings back the checkpoint's, which would silently override
    a changed config (say, a lower lr on resubmission). Logs and returns what changed."""
    changes = []
    for name, values in settings.items():
        for key, value in values.items():
            old = optimizers[name].param_groups[0][key]
            if old != value:
                changes.append(f"{name}.{key} {old} -> {value}")
            for group in optimizers[name].param_groups:
                group[key] = value
    if changes:
        log("optimizer settings from the config, not the checkpoint: " + ", ".join(changes))
    return changes


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(model).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, batch_images: int, half_life_images: int,
               images_seen: int, rampup: float = 0.05) -> None:
    """EMA whose half-life is in images (StyleGAN2-ADA style), so it is batch-size independent.

    The half-life ramps up with training (at most `rampup` x images seen), so the average
    never drags the untrained initial weights along on short runs."""
    half_life = min(half_life_images, images_seen * rampup)
    beta = 0.5 ** (batch_images / max(half_life, 1e-8)) if half_life > 0 else 0.0
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param.detach(), 1.0 - beta)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def random_crops(image: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random size x size crops of a uint8 HWC image (augmented by flips and 90° turns);
    images smaller than the crop are skipped (returns [])."""
    height, width = image.shape[:2]
    if height < size or width < size:
        return []
    crops = []
    for _ in range(count):
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        crop = image[top:top + size, left:left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        crops.append(np.ascontiguousarray(crop))
    return crops


def charbonnier(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((prediction - target) ** 2 + eps * eps).mean()


def rng_state(generator: torch.Generator, numpy_rng: np.random.Generator) -> dict:
    """RNG state as tensors only, so it round-trips through torch.load(weights_only=True)."""
    numpy_state = numpy_rng.bit_generator.state
    return {"torch": generator.get_state(), "torch_global": torch.get_rng_state(),
            "numpy_pcg": torch.tensor(np.frombuffer(
                int(numpy_state["state"]["state"]).to_bytes(16, "little") + int(numpy_state["state"]["inc"]).to_bytes(16, "little"),
                dtype=np.uint8).copy())}


def restore_rng(state: dict, generator: torch.Generator, numpy_rng: np.random.Generator) -> None:
    generator.set_state(state["torch"])
    torch.set_rng_state(state["torch_global"])
    raw = state["numpy_pcg"].numpy().tobytes()
    numpy_rng.bit_generator.state = {"bit_generator": "PCG64",
                                     "state": {"state": int.from_bytes(raw[:16], "little"), "inc": int.from_bytes(raw[16:], "little")},
                                     "has_uint32": 0, "uinteger": 0}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
