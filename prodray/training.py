"""The training contract every model family meets, and the bookkeeping both runners share:
ticks, checkpoint state, learning-rate schedules, EMA, RNG state. Pure torch.

A family (enhancer PSNR stage, its adversarial stage, the GAN, ...) is a `Training` subclass; the
Ray Train worker loop (cluster/trainer.py) and the one-process runner (local/runner.py) drive any
of them the same way: prepare in the driver, load the pool, step, tick, checkpoint, export.
"""

import copy
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from prodray.config import ConfigError
from prodray.io import artifacts, storage
from prodray.precision import autocast
from prodray.precision import resolve as resolve_precision

# ---------------------------------------------------------------- the contract

# Trainer-state keys of checkpoints written before every family shared one layout.
LEGACY_STATE_KEYS = {"optimizer": "optimizer_enhancer", "scaler": "scaler_enhancer",
                     "g_optimizer": "optimizer_g", "d_optimizer": "optimizer_d",
                     "g_scaler": "scaler_g", "d_scaler": "scaler_d"}


class Training:
    """One model family's networks, optimizers, pool and step, with nothing about where it runs.

    Driver side (class methods, before any work): `prepare` checks the config against what it
    refers to and returns a plain-data context for the workers; `source_rows` lists the rows
    (small dicts) that are sharded over workers; `read_rows` fetches and decodes one batch of
    them (in Ray Data tasks or the runner's threads). Worker side: `load_pool`, then
    `train_step(*next_batch(), world=...)` until optim.total_images; once per tick `validate`
    and `grid` on rank 0; `save` / `resume` the full state; `export` the model to ship.
    Subclasses set `networks`, `optimizers`, `scalers` and implement the abstract parts.
    """

    name = "model"  # log prefix
    read_batch_size = 256  # rows per read_rows call

    def __init__(self, cfg, context: dict, device: torch.device, rank: int = 0):
        self.cfg, self.context, self.device, self.rank = cfg, context, torch.device(device), rank
        self.precision = resolve_precision(cfg.run.precision if cfg.run.amp else "fp32", self.device)
        self.torch_rng = torch.Generator(device=self.device).manual_seed(cfg.run.seed + rank)
        self.rng = np.random.default_rng(cfg.run.seed + rank)
        self.step, self.images_seen = 0, 0
        self.networks: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}

    def autocast(self):
        """The step's forward passes run under this (bf16 / fp16 convolutions, float32 weights)."""
        return autocast(self.precision, self.device)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed for fp16 only (bf16 has float32's range)."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    # ---- driver side
    @classmethod
    def prepare(cls, cfg) -> dict:
        return {}

    @classmethod
    def source_rows(cls, cfg, context: dict) -> list[dict]:
        raise NotImplementedError

    @staticmethod
    def read_rows(batch: dict, cfg: dict, context: dict) -> dict:
        raise NotImplementedError

    # ---- worker side
    def load_pool(self, batches, log) -> None:
        raise NotImplementedError

    def next_batch(self) -> tuple:
        raise NotImplementedError

    def train_step(self, *batch, world: int = 1) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def wrap(self, prepare) -> None:
        """prepare: e.g. ray.train.torch.prepare_model (DDP); each stepped network on its own."""

    def describe(self) -> str:
        return self.name

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{name}": optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}

    def validate(self) -> dict[str, float]:
        return {}

    def grid(self) -> np.ndarray | None:
        return None

    def export(self, export_uri: str) -> str:
        raise NotImplementedError

    def export_network(self, export_uri: str, name: str, network: torch.nn.Module, config: dict) -> str:
        """Write `network` and `config` as an export; the model id hashes the weights and the model
        section's weight-free fields, so the same weights run another way get another id."""
        return artifacts.export_model(export_uri, name, network, config,
                                      id_fields=self.cfg.model.weight_free_fields)

    def configured_hyperparameters(self) -> dict[str, dict]:
        """Optimizer settings the config sets and a resume must not take from the checkpoint."""
        return {}

    def extra_state(self) -> dict:
        return {}

    # ---- state
    def digest(self) -> str:
        return state_digest(self.networks, self.optimizers)

    def save(self, folder: Path) -> None:
        for name, network in self.networks.items():
            (folder / f"{name}.safetensors").write_bytes(artifacts.weights_bytes(network))
        state = {**{f"optimizer_{k}": v.state_dict() for k, v in self.optimizers.items()},
                 **{f"scaler_{k}": v.state_dict() for k, v in self.scalers.items()},
                 "step": self.step, "images_seen": self.images_seen,
                 "rng": [rng_state(self.torch_rng, self.rng)], **self.extra_state()}
        (folder / "state.pt").write_bytes(artifacts.state_bytes(state))

    def resume(self, folder: Path, log=print) -> str:
        """Restore everything from a checkpoint folder; the config's optimizer settings win over
        the checkpoint's (a resubmission may lower the lr). Returns the restored state's digest."""
        for name, network in self.networks.items():
            artifacts.load_weights_bytes(network, (folder / f"{name}.safetensors").read_bytes())
        state = artifacts.load_state_bytes((folder / "state.pt").read_bytes())
        state = {LEGACY_STATE_KEYS.get(key, key): value for key, value in state.items()}
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[f"optimizer_{name}"])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state[f"scaler_{name}"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        seed = self.cfg.run.seed + self.rank
        if self.rank < len(state["rng"]):
            restore_rng(state["rng"][self.rank], self.torch_rng, self.rng)
        else:  # a rank the checkpoint has no stream for: a fresh one that still depends on the step
            self.torch_rng.manual_seed(seed + self.step)
            self.rng = np.random.default_rng(seed + self.step)
        digest = self.digest()
        apply_configured_hyperparameters(self.optimizers, self.configured_hyperparameters(), log)
        return digest


def state_digest(networks: dict, optimizers: dict) -> str:
    """sha256 over every network tensor and optimizer state tensor (resume checks compare it)."""
    digest = hashlib.sha256()
    for name in sorted(networks):
        digest.update(artifacts.weights_bytes(networks[name]))
    for name in sorted(optimizers):
        for _, slots in sorted(optimizers[name].state_dict()["state"].items()):
            for key in sorted(slots):
                digest.update(slots[key].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- ticks

class TickStats:
    """Means of the step scalars over a tick (a scalar a step may skip, like lazy r1, over the
    steps that ran it)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, stats: dict) -> None:
        for name, value in stats.items():  # tensors stay on the device until `means`
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: float(total) / self.counts[name] for name, total in self.sums.items()}


class Ticks:
    """When a tick ends and what it measured; progress counted in images seen, so batch size and
    worker count do not change when maintenance runs."""

    def __init__(self, tick_images: int, images_seen: int):
        self.tick_images = tick_images
        self.restart(images_seen)

    def restart(self, images_seen: int) -> None:
        self.next = (images_seen // self.tick_images + 1) * self.tick_images
        self.started, self.images, self.stats = time.perf_counter(), 0, TickStats()

    def add(self, stats: dict, images: int) -> None:
        self.stats.add(stats)
        self.images += images

    def due(self, images_seen: int) -> bool:
        return images_seen >= self.next

    def index(self, images_seen: int) -> int:
        return images_seen // self.tick_images

    def close(self, training: Training) -> dict:
        """The tick's stats.jsonl record (counters, images/s, lr, step means); starts the next tick."""
        if training.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.started
        metrics = {"step": training.step, "images_seen": training.images_seen,
                   "images_per_s": self.images / max(elapsed, 1e-9), **training.learning_rates(),
                   **self.stats.means()}
        self.restart(training.images_seen)
        return metrics


def record_tick(training: Training, files, metrics: dict, tick_index: int, log) -> None:
    """Rank 0's tick maintenance: validation metrics, the sample grid, stats.jsonl, the log line."""
    metrics.update(training.validate())
    grid = training.grid()
    if grid is not None:
        files.save_sample(f"tick-{tick_index:06d}.png", grid)
    metrics["time"] = time.time()
    files.append_stats(metrics)
    log(format_metrics(metrics))


def format_metrics(metrics: dict) -> str:
    """The tick's log line: key=value, floats to 4 significant digits, wall time left out."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "time")


def checkpoint_due(cfg, tick_index: int, images_seen: int) -> bool:
    return tick_index % cfg.run.checkpoint_ticks == 0 or images_seen >= cfg.optim.total_images


def torch_threads(cfg, world: int, cpus: int | None) -> int:
    return cfg.run.threads_per_worker or max(1, (cpus or 1) // world)


# ---------------------------------------------------------------- schedules, EMA, RNG

def read_init_model(reference: str, field: str, model, growable: tuple[str, ...] = ()) -> dict:
    """In the driver, before any work: the exported model `reference` (shipped name, export folder
    or s3:// URI) exists and has the network `model` (the config's model section) describes; -> its
    config. Errors name the config field. A field an older export lacks counts as the field's default
    (fields are added with a default that keeps the older behaviour); fields the model section lists
    as `weight_free_fields` (no weights depend on them) may differ, and `growable` ones (the caller
    grows the network without changing its function) may be larger."""
    try:
        _, config_uri = artifacts.resolve_export(reference)
        init = json.loads(storage.get_bytes(config_uri))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"config field {field}: {exc}") from None
    weight_free = getattr(model, "weight_free_fields", ())
    for name, info in type(model).model_fields.items():
        init.setdefault(name, info.default)
        wanted = getattr(model, name)
        if name in weight_free or wanted == init[name] or (name in growable and wanted > init[name]):
            continue
        may = " (it may only grow)" if name in growable else ""
        raise ConfigError(f"config field model.{name}: {wanted!r} differs from the "
                          f"{field} model's {init[name]!r} ({reference}){may}")
    return init


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


def rng_state(generator: torch.Generator, numpy_rng: np.random.Generator) -> dict:
    """RNG state as tensors only, so it round-trips through torch.load(weights_only=True). PCG64's
    buffered half of a 64-bit draw (`has_uint32`, `uinteger`) is kept too: bounded integer draws
    use it, and a resume without it would take a different next crop."""
    numpy_state = numpy_rng.bit_generator.state
    pcg = numpy_state["state"]
    return {"torch": generator.get_state(), "torch_global": torch.get_rng_state(),
            "numpy_pcg": torch.tensor(np.frombuffer(
                int(pcg["state"]).to_bytes(16, "little") + int(pcg["inc"]).to_bytes(16, "little"),
                dtype=np.uint8).copy()),
            "numpy_buffer": torch.tensor([numpy_state["has_uint32"], numpy_state["uinteger"]], dtype=torch.int64)}


def restore_rng(state: dict, generator: torch.Generator, numpy_rng: np.random.Generator) -> None:
    generator.set_state(state["torch"])
    torch.set_rng_state(state["torch_global"])
    raw = state["numpy_pcg"].numpy().tobytes()
    has_uint32, uinteger = (int(v) for v in state["numpy_buffer"]) if "numpy_buffer" in state else (0, 0)
    numpy_rng.bit_generator.state = {
        "bit_generator": "PCG64", "has_uint32": has_uint32, "uinteger": uinteger,
        "state": {"state": int.from_bytes(raw[:16], "little"), "inc": int.from_bytes(raw[16:], "little")}}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
