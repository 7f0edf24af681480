"""The product GAN's training core, pure torch: the networks, their optimizers and one step.

`GanTraining` owns G, D, the EMA generator, both optimizers and grad scalers, the random state
and the counters, and runs one step in the phases named as in StyleGAN2-ADA: `d_step` (hinge /
logistic loss on augmented real and generated images), lazy `r1` (every `r1_interval` steps,
scaled up by the interval), `g_step`, `ema`; with `optim.class_weight`, D also classifies real
images' attributes and G is pushed to be read as the asked ones (AC-GAN; loss_d and loss_g include
those terms, class_d and class_g report them alone). It is a `Training`: the runners
(cluster/trainer.py under Ray Train, local/runner.py in one process) log, save and feed it.
Progress is counted in real images shown to the discriminator.
"""

import numpy as np
import torch

from prodray.config import ConfigError, GanTrainConfig
from prodray.gan import data
from prodray.gan.augment import diff_augment, parse_policy
from prodray.gan.losses import class_loss, d_loss, g_loss, mode_seeking_loss, r1_penalty
from prodray.gan.model import build_discriminator, build_generator
from prodray.io.images import image_grid
from prodray.training import Training, count_parameters, linear_decay_factor, make_ema, set_lr, update_ema


def model_config(cfg: GanTrainConfig, meta: dict) -> dict:
    """What the networks are built from (also the export's config): sizes + vocabularies."""
    names = cfg.data.attributes or list(meta["attributes"])
    return {**cfg.model.model_dump(), "resolution": int(meta["resolution"]),
            "vocab": {name: meta["attributes"][name] for name in names}}


def check_attributes(cfg: GanTrainConfig, meta: dict) -> None:
    unknown = [name for name in cfg.data.attributes or [] if name not in meta["attributes"]]
    if unknown:
        raise ConfigError(f"config field data.attributes: {unknown} not in the prepared dataset "
                          f"(has {list(meta['attributes'])})")


def sample_batch(pool, batch_size: int, rng: np.random.Generator, device):
    """-> (real images NCHW in [-1, 1], attribute index tensors) of a random batch of the pool:
    uint8 NHWC images + {name: index array}, as numpy arrays or as tensors already on `device`
    (see `pool_to_device`)."""
    images, attributes = pool
    index = rng.integers(0, len(images), batch_size)
    if isinstance(images, torch.Tensor):
        index = torch.from_numpy(index).to(images.device)
        picked, labels = images[index], {name: values[index] for name, values in attributes.items()}
    else:
        picked, labels = torch.from_numpy(images[index]), {k: torch.from_numpy(v[index]) for k, v in attributes.items()}
    real = picked.to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
    return real, {name: values.to(device) for name, values in labels.items()}


def pool_to_device(pool, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A numpy pool as tensors on `device`: on a GPU, no host-to-device copy per step."""
    images, attributes = pool
    return torch.from_numpy(images).to(device), {k: torch.from_numpy(v).to(device) for k, v in attributes.items()}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------- samples

def grid_conditions(vocab: dict[str, list[str]], rows: int = 10) -> list[dict[str, int]]:
    """One attribute combination per row: the first attribute walks its values, the others cycle
    at a different pace, so rows show several combinations of every attribute."""
    names = list(vocab)
    count = min(rows, max(len(values) for values in vocab.values()))
    return [{name: (r * (k + 1)) % len(vocab[name]) for k, name in enumerate(names)} for r in range(count)]


@torch.no_grad()
def sample_grid(generator_ema, vocab, z_dim: int, seed: int, device, columns: int = 8) -> np.ndarray:
    """Rows = attribute combinations, columns = the same fixed noise in every row."""
    noise = torch.randn(columns, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for condition in grid_conditions(vocab):
        attributes = {name: torch.full((columns,), index, dtype=torch.long, device=device)
                      for name, index in condition.items()}
        rows.append(list(to_uint8(generator_ema(noise, attributes))))
    return image_grid(rows)


def set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


# ---------------------------------------------------------------- the step

class GanTraining(Training):
    """G, D, G_ema, both optimizers and grad scalers, random state and counters; `train_step`
    runs d_step, lazy r1, g_step and ema on one batch. `wrap` swaps in DDP wrappers for the
    networks being stepped (each phase calls the other network's bare module with its gradients
    off, so DDP only ever all-reduces the network being stepped). The context is the networks'
    config (`model_config`) plus the dataset's source line."""

    name = "gan"
    read_batch_size = 1024

    @classmethod
    def prepare(cls, cfg: GanTrainConfig) -> dict:
        meta = data.read_vocab(cfg.data.prepared)
        check_attributes(cfg, meta)
        return {**model_config(cfg, meta), "dataset": meta.get("source")}

    @classmethod
    def source_rows(cls, cfg: GanTrainConfig, context: dict) -> list[dict]:
        rows = data.read_manifest(cfg.data.prepared, "train").to_pylist()
        if not rows:
            raise FileNotFoundError(f"the train split of {cfg.data.prepared} is empty")
        return rows

    @staticmethod
    def read_rows(batch: dict, cfg: dict, context: dict) -> dict:
        return data.decode_rows(batch, cfg["data"]["prepared"], context["resolution"], context["vocab"])

    def __init__(self, cfg: GanTrainConfig, context: dict, device, rank: int = 0):
        super().__init__(cfg, context, device, rank)
        self.mconfig = context
        # NHWC weights: oneDNN (CPU) and cuDNN convolutions then run without layout reorders.
        self.generator = build_generator(context).to(self.device, memory_format=torch.channels_last)
        self.classify = cfg.optim.class_weight > 0
        self.discriminator = build_discriminator(context, classify=self.classify).to(
            self.device, memory_format=torch.channels_last)
        self.generator_ema = make_ema(self.generator)
        self.g_train, self.d_train = self.generator, self.discriminator  # DDP wrappers after `wrap`
        betas = tuple(cfg.optim.betas)
        self.optimizers = {"g": torch.optim.Adam(self.generator.parameters(), lr=cfg.optim.lr_g, betas=betas),
                           "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.optim.lr_d, betas=betas)}
        self.scalers = {name: self.grad_scaler() for name in ("g", "d")}
        self.networks = {"generator": self.generator, "discriminator": self.discriminator,
                         "generator_ema": self.generator_ema}
        self.policy = parse_policy(cfg.optim.augment)
        self.pool = None

    def load_pool(self, batches, log) -> None:
        self.pool = data.pool_from_batches(batches, list(self.mconfig["vocab"]))
        if self.device.type == "cuda":  # on a GPU, no host-to-device copy per step
            self.pool = pool_to_device(self.pool, self.device)
        log(f"training pool: {len(self.pool[0])} images in memory")

    def next_batch(self) -> tuple[torch.Tensor, dict]:
        return sample_batch(self.pool, self.cfg.data.batch_size, self.rng, self.device)

    def wrap(self, prepare) -> None:
        self.g_train, self.d_train = prepare(self.generator), prepare(self.discriminator)

    def describe(self) -> str:
        return (f"generator {count_parameters(self.generator):,} parameters, discriminator "
                f"{count_parameters(self.discriminator):,}; {self.mconfig['resolution']}px on {self.device}"
                + f" in {self.precision}; attributes "
                + ", ".join(f"{k} ({len(v)})" for k, v in self.mconfig["vocab"].items()))

    def grid(self) -> np.ndarray:
        """The tick's sample grid from the EMA generator (fixed noise: comparable across ticks)."""
        return sample_grid(self.generator_ema, self.mconfig["vocab"], self.mconfig["z_dim"], self.cfg.run.seed,
                           self.device)

    def learning_rates(self) -> dict[str, float]:
        return {"lr_g": self.optimizers["g"].param_groups[0]["lr"]}

    def configured_hyperparameters(self) -> dict[str, dict]:
        betas = tuple(self.cfg.optim.betas)
        return {"g": {"lr": self.cfg.optim.lr_g, "betas": betas}, "d": {"lr": self.cfg.optim.lr_d, "betas": betas}}

    def extra_state(self) -> dict:
        return {"augment": self.cfg.optim.augment}

    def export(self, export_uri: str) -> str:
        """The endpoint's artifact: the EMA generator's weights + config.json (sizes, vocabularies,
        images seen, the dataset's source line); returns the model id."""
        config = {k: v for k, v in self.mconfig.items() if k != "dataset"}
        return self.export_network(export_uri, "generator", self.generator_ema.eval(), {
            **config, "kind": "generator", "images_seen": self.images_seen, "dataset": self.context.get("dataset")})

    def judge(self, discriminator, images: torch.Tensor, attributes: dict) -> tuple[torch.Tensor, dict | None]:
        """(scores, class logits or None): D's output in one shape whether or not it classifies."""
        out = discriminator(images, attributes)
        return out if self.classify else (out, None)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, self.policy, self.torch_rng) if self.policy else images

    def set_learning_rates(self) -> None:
        """Constant, then (from optim.lr_decay_from_images) linear to lr_final_fraction."""
        optim = self.cfg.optim
        factor = linear_decay_factor(self.images_seen, optim.lr_decay_from_images, optim.total_images,
                                     optim.lr_final_fraction)
        set_lr(self.optimizers["g"], optim.lr_g * factor)
        set_lr(self.optimizers["d"], optim.lr_d * factor)

    def train_step(self, real: torch.Tensor, attributes: dict[str, torch.Tensor], world: int = 1) -> dict:
        """One step on this rank's batch `real` ((B, 3, H, W) in [-1, 1]) with its attribute
        indices; `world` ranks step together. Returns the step's scalars as detached tensors
        (no device sync here: the caller reads them once per tick)."""
        optim, batch = self.cfg.optim, real.shape[0]
        z_dim, optimizers, scalers = self.mconfig["z_dim"], self.optimizers, self.scalers
        self.set_learning_rates()
        both = {name: torch.cat([values, values]) for name, values in attributes.items()}

        # d_step: D sees augmented real and generated images (G's bare module, no gradients).
        with torch.no_grad(), self.autocast():
            fake = self.generator(torch.randn(batch, z_dim, generator=self.torch_rng, device=self.device), attributes)
        with self.autocast():
            scores, logits = self.judge(self.d_train, self.augment(torch.cat([real, fake.float()])), both)
            scores = scores.float()
            loss_d = d_loss(scores[:batch], scores[batch:], optim.loss)
            if logits is not None:  # the classifier learns from real images only
                class_d = class_loss({name: values[:batch] for name, values in logits.items()}, attributes)
                loss_d = loss_d + optim.class_weight * class_d
        optimizers["d"].zero_grad(set_to_none=True)
        scalers["d"].scale(loss_d).backward()
        scalers["d"].step(optimizers["d"])
        scalers["d"].update()
        stats = {"loss_d": loss_d.detach(), "real_score": scores[:batch].mean().detach(),
                 "fake_score": scores[batch:].mean().detach()}
        if logits is not None:
            stats["class_d"] = class_d.detach()

        # r1: lazy, full precision, on augmented reals; scaled by the interval it stands for.
        if optim.r1_gamma > 0 and self.step % optim.r1_interval == 0:
            real_input = real.detach().requires_grad_(True)
            real_scores, logits = self.judge(self.d_train, self.augment(real_input), attributes)
            penalty = r1_penalty(real_scores, real_input)
            optimizers["d"].zero_grad(set_to_none=True)
            # `0 * ...` gives every D parameter a (zero) gradient, e.g. the head's bias and the
            # classifiers that the penalty does not depend on, so DDP's reducer sees all parameters used.
            unused = 0 * real_scores.mean() + (0 * sum(v.mean() for v in logits.values()) if logits else 0)
            (penalty * (optim.r1_gamma / 2 * optim.r1_interval) + unused).backward()
            optimizers["d"].step()
            stats["r1"] = penalty.detach()

        # g_step: D's bare module with gradients off, so only G is all-reduced.
        set_requires_grad(self.discriminator, False)
        if optim.mode_seeking > 0:  # halves share attributes, so their images must differ by noise
            attributes = {name: torch.cat([values[:batch // 2], values[:batch - batch // 2]])
                          for name, values in attributes.items()}
        with self.autocast():
            noise = torch.randn(batch, z_dim, generator=self.torch_rng, device=self.device)
            fake = self.g_train(noise, attributes)
            scores, logits = self.judge(self.discriminator, self.augment(fake), attributes)
            loss_g = g_loss(scores.float(), optim.loss)
            if logits is not None:
                class_g = class_loss(logits, attributes)
                loss_g = loss_g + optim.class_weight * class_g
                stats["class_g"] = class_g.detach()
            if optim.mode_seeking > 0:
                loss_g = loss_g + optim.mode_seeking * mode_seeking_loss(fake.float(), noise)
        optimizers["g"].zero_grad(set_to_none=True)
        scalers["g"].scale(loss_g).backward()
        if optim.grad_clip:
            scalers["g"].unscale_(optimizers["g"])
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), optim.grad_clip)
        scalers["g"].step(optimizers["g"])
        scalers["g"].update()
        set_requires_grad(self.discriminator, True)
        stats["loss_g"] = loss_g.detach()

        # ema
        global_batch = batch * world
        self.images_seen += global_batch
        update_ema(self.generator_ema, self.generator, global_batch, self.cfg.run.ema_half_life_images,
                   self.images_seen)
        self.step += 1
        return stats
