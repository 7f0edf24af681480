"""Ray Train shell for the conditional product GAN: TorchTrainer builder and the per-worker loop.

Phases per step, named as in StyleGAN2-ADA: `d_step` (hinge / logistic loss on augmented real
and generated images), lazy `r1` (every `r1_interval` steps, scaled up by the interval), `g_step`,
`ema`. G and D are each wrapped for DDP on their own; a phase calls the other network's bare
module with its gradients off, so DDP only ever all-reduces the network being stepped.
Progress is counted in real images shown to the discriminator.
"""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from prodray import checkpoint as ckpt_io
from prodray import storage
from prodray.augment import diff_augment, parse_policy
from prodray.config import ConfigError, GanTrainConfig
from prodray.gan_data import decode_small, encode_attributes, read_vocab
from prodray.losses import d_loss, g_loss, mode_seeking_loss, r1_penalty
from prodray.models import count_parameters
from prodray.models.gan import build_discriminator, build_generator
from prodray.train.loop import (apply_configured_hyperparameters, image_grid, linear_decay_factor, make_ema,
                                restore_rng, rng_state, set_lr, update_ema)
from prodray.train.run_files import RunFiles, end_tick, maybe_crash_for_test

NETWORKS = ("generator", "discriminator", "generator_ema")


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


# ---------------------------------------------------------------- data

def decode_rows(batch: dict, prepared: str, resolution: int, vocab: dict) -> dict:
    """Ray Data map_batches: manifest rows -> decoded images + attribute indices."""
    images = [decode_small(storage.get_bytes(storage.join(prepared, uri)), resolution) for uri in batch["uri"]]
    encoded = encode_attributes({name: list(batch[name]) for name in vocab}, vocab)
    return {"image": np.stack(images), **{f"attr_{name}": encoded[name] for name in vocab}}


def build_dataset(cfg: GanTrainConfig, mconfig: dict):
    import ray.data
    from ray.data.expressions import col

    filesystem, path = storage.pyarrow_filesystem(storage.join(cfg.data.prepared, "manifest.parquet"))
    return (ray.data.read_parquet(path, filesystem=filesystem).filter(expr=col("split") == "train")
            .map_batches(decode_rows, batch_size=1024, num_cpus=0.5,
                         fn_kwargs={"prepared": cfg.data.prepared, "resolution": mconfig["resolution"],
                                    "vocab": mconfig["vocab"]}))


def load_pool(shard, names: list[str], log) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """This worker's shard, read once into memory: uint8 NHWC images + attribute index arrays."""
    images, attributes = [], {name: [] for name in names}
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        images.append(batch["image"])
        for name in names:
            attributes[name].append(batch[f"attr_{name}"])
    if not images:
        raise RuntimeError("no training images in this worker's shard")
    pool = np.concatenate(images), {name: np.concatenate(parts) for name, parts in attributes.items()}
    log(f"training pool: {len(pool[0])} images in memory")
    return pool


def sample_batch(pool, batch_size: int, rng: np.random.Generator, device):
    """-> (real images NCHW in [-1, 1], attribute index tensors) of a random batch."""
    images, attributes = pool
    index = rng.integers(0, len(images), batch_size)
    real = torch.from_numpy(images[index]).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
    return real, {name: torch.from_numpy(values[index]).to(device) for name, values in attributes.items()}


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


# ---------------------------------------------------------------- state

def state_digest(networks: dict, optimizers: dict) -> str:
    """sha256 over every network tensor and optimizer state tensor (resume checks compare it)."""
    digest = hashlib.sha256()
    for name in sorted(networks):
        digest.update(ckpt_io.weights_bytes(networks[name]))
    for name in sorted(optimizers):
        for _, slots in sorted(optimizers[name].state_dict()["state"].items()):
            for key in sorted(slots):
                digest.update(slots[key].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_checkpoint(folder: Path, networks: dict, optimizers: dict, scalers: dict, counters: dict, rng: dict,
                     policy: str) -> None:
    for name, network in networks.items():
        (folder / f"{name}.safetensors").write_bytes(ckpt_io.weights_bytes(network))
    state = {**{f"optimizer_{k}": v.state_dict() for k, v in optimizers.items()},
             **{f"scaler_{k}": v.state_dict() for k, v in scalers.items()},
             **counters, "rng": [rng], "augment": policy}
    (folder / "state.pt").write_bytes(ckpt_io.state_bytes(state))


def read_checkpoint(folder: Path, networks: dict, optimizers: dict, scalers: dict) -> dict:
    """Restore networks/optimizers/scalers in place; returns the rest of the state."""
    for name, network in networks.items():
        ckpt_io.load_weights_bytes(network, (folder / f"{name}.safetensors").read_bytes())
    state = ckpt_io.load_state_bytes((folder / "state.pt").read_bytes())
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state[f"optimizer_{name}"])
    for name, scaler in scalers.items():
        scaler.load_state_dict(state[f"scaler_{name}"])
    return state


def set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


# ---------------------------------------------------------------- worker loop

def train_worker(config: dict) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = GanTrainConfig.model_validate(config["cfg"])
    mconfig = config["model"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.run.threads_per_worker or max(1, (os.cpu_count() or 1) // world))
    device = get_device()
    log = (lambda msg: print(f"[gan] {msg}", flush=True)) if rank == 0 else (lambda msg: None)

    generator_net, discriminator = build_generator(mconfig).to(device), build_discriminator(mconfig).to(device)
    generator_ema = make_ema(generator_net)
    networks = {"generator": generator_net, "discriminator": discriminator, "generator_ema": generator_ema}
    betas = tuple(cfg.optim.betas)
    optimizers = {"g": torch.optim.Adam(generator_net.parameters(), lr=cfg.optim.lr_g, betas=betas),
                  "d": torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.lr_d, betas=betas)}
    use_amp = cfg.run.amp and device.type == "cuda"
    scalers = {"g": torch.amp.GradScaler("cuda", enabled=use_amp), "d": torch.amp.GradScaler("cuda", enabled=use_amp)}
    torch_rng = torch.Generator(device=device).manual_seed(cfg.run.seed + rank)
    rng = np.random.default_rng(cfg.run.seed + rank)
    step, images_seen = 0, 0

    resumed = ray.train.get_checkpoint()
    resumed_digest = None
    if resumed:
        with resumed.as_directory() as folder:
            state = read_checkpoint(Path(folder), networks, optimizers, scalers)
        step, images_seen = int(state["step"]), int(state["images_seen"])
        if rank < len(state["rng"]):
            restore_rng(state["rng"][rank], torch_rng, rng)
        else:  # other ranks: a fresh, distinct stream that still depends on the resume point
            torch_rng.manual_seed(cfg.run.seed + rank + step)
            rng = np.random.default_rng(cfg.run.seed + rank + step)
        resumed_digest = state_digest(networks, optimizers)
        log(f"resumed at step {step}, {images_seen} images seen (state {resumed_digest})")
        apply_configured_hyperparameters(
            optimizers, {"g": {"lr": cfg.optim.lr_g, "betas": betas}, "d": {"lr": cfg.optim.lr_d, "betas": betas}}, log)
    g_ddp, d_ddp = prepare_model(generator_net), prepare_model(discriminator)

    files = RunFiles(storage.join(cfg.run.storage_path, cfg.run.name)) if rank == 0 else None
    if files:
        files.write_config(cfg)
        log(f"generator {count_parameters(generator_net):,} parameters, discriminator "
            f"{count_parameters(discriminator):,}; {mconfig['resolution']}px; attributes "
            + ", ".join(f"{k} ({len(v)})" for k, v in mconfig["vocab"].items()) + f"; run folder {files.uri}")

    names = list(mconfig["vocab"])
    pool = load_pool(ray.train.get_dataset_shard("train"), names, log)
    policy = parse_policy(cfg.optim.augment)
    batch, global_batch = cfg.data.batch_size, cfg.data.batch_size * world
    next_tick = (images_seen // cfg.run.tick_images + 1) * cfg.run.tick_images
    tick_start, tick_images = time.perf_counter(), 0
    sums = {"loss_d": 0.0, "loss_g": 0.0, "real_score": 0.0, "fake_score": 0.0, "r1": 0.0}
    counts = {"steps": 0, "r1": 0}

    def augment(x):
        return diff_augment(x, policy, torch_rng) if policy else x

    def autocast():
        return torch.autocast(device.type, dtype=torch.float16, enabled=use_amp)

    base_lr = {"g": cfg.optim.lr_g, "d": cfg.optim.lr_d}
    while images_seen < cfg.optim.total_images:
        lr_factor = linear_decay_factor(images_seen, cfg.optim.lr_decay_from_images, cfg.optim.total_images,
                                        cfg.optim.lr_final_fraction)
        for name, optimizer in optimizers.items():
            set_lr(optimizer, base_lr[name] * lr_factor)
        real, attributes = sample_batch(pool, batch, rng, device)
        both = {name: torch.cat([values, values]) for name, values in attributes.items()}

        # d_step: D sees augmented real and generated images (G's bare module, no gradients).
        with torch.no_grad(), autocast():
            fake = generator_net(torch.randn(batch, mconfig["z_dim"], generator=torch_rng, device=device), attributes)
        with autocast():
            scores = d_ddp(augment(torch.cat([real, fake.float()])), both).float()
            loss_d = d_loss(scores[:batch], scores[batch:], cfg.optim.loss)
        optimizers["d"].zero_grad(set_to_none=True)
        scalers["d"].scale(loss_d).backward()
        scalers["d"].step(optimizers["d"])
        scalers["d"].update()

        # r1: lazy, full precision, on augmented reals; scaled by the interval it stands for.
        if cfg.optim.r1_gamma > 0 and step % cfg.optim.r1_interval == 0:
            real_input = real.detach().requires_grad_(True)
            real_scores = d_ddp(augment(real_input), attributes)
            penalty = r1_penalty(real_scores, real_input)
            optimizers["d"].zero_grad(set_to_none=True)
            # `0 * scores` gives every D parameter a (zero) gradient, e.g. the head's bias that the
            # penalty does not depend on, so DDP's reducer sees all parameters used.
            (penalty * (cfg.optim.r1_gamma / 2 * cfg.optim.r1_interval) + 0 * real_scores.mean()).backward()
            optimizers["d"].step()
            sums["r1"] += float(penalty.detach())
            counts["r1"] += 1

        # g_step: D's bare module with gradients off, so only G is all-reduced.
        set_requires_grad(discriminator, False)
        if cfg.optim.mode_seeking > 0:  # halves share attributes, so their images must differ by noise
            attributes = {name: torch.cat([values[:batch // 2], values[:batch - batch // 2]])
                          for name, values in attributes.items()}
        with autocast():
            noise = torch.randn(batch, mconfig["z_dim"], generator=torch_rng, device=device)
            fake = g_ddp(noise, attributes)
            loss_g = g_loss(discriminator(augment(fake), attributes).float(), cfg.optim.loss)
            if cfg.optim.mode_seeking > 0:
                loss_g = loss_g + cfg.optim.mode_seeking * mode_seeking_loss(fake.float(), noise)
        optimizers["g"].zero_grad(set_to_none=True)
        scalers["g"].scale(loss_g).backward()
        if cfg.optim.grad_clip:
            scalers["g"].unscale_(optimizers["g"])
            torch.nn.utils.clip_grad_norm_(generator_net.parameters(), cfg.optim.grad_clip)
        scalers["g"].step(optimizers["g"])
        scalers["g"].update()
        set_requires_grad(discriminator, True)

        # ema
        images_seen += global_batch
        update_ema(generator_ema, generator_net, global_batch, cfg.run.ema_half_life_images, images_seen)
        step += 1
        tick_images += global_batch
        sums["loss_d"] += float(loss_d.detach())
        sums["loss_g"] += float(loss_g.detach())
        sums["real_score"] += float(scores[:batch].mean().detach())
        sums["fake_score"] += float(scores[batch:].mean().detach())
        counts["steps"] += 1

        if rank == world - 1:
            maybe_crash_for_test(cfg.run.name, images_seen)
        if images_seen < next_tick and images_seen < cfg.optim.total_images:
            continue

        # ---- tick maintenance: every rank reports; rank 0 logs, samples and checkpoints.
        elapsed = time.perf_counter() - tick_start
        metrics = {"step": step, "images_seen": images_seen, "images_per_s": tick_images / max(elapsed, 1e-9),
                   "lr_g": optimizers["g"].param_groups[0]["lr"],
                   **{k: v / max(counts["steps"], 1) for k, v in sums.items() if k != "r1"},
                   "r1": sums["r1"] / max(counts["r1"], 1)}
        if resumed_digest:
            metrics["resumed_state"] = resumed_digest
            resumed_digest = None
        tick_index = images_seen // cfg.run.tick_images
        if files:
            files.save_sample(f"tick-{tick_index:06d}.png",
                              sample_grid(generator_ema, mconfig["vocab"], mconfig["z_dim"], cfg.run.seed, device))
        end_tick(metrics, files, tick_index % cfg.run.checkpoint_ticks == 0 or images_seen >= cfg.optim.total_images,
                 lambda folder: write_checkpoint(folder, networks, optimizers, scalers,
                                                 {"step": step, "images_seen": images_seen},
                                                 rng_state(torch_rng, rng), cfg.optim.augment), log)
        next_tick += cfg.run.tick_images
        tick_start, tick_images = time.perf_counter(), 0
        sums = dict.fromkeys(sums, 0.0)
        counts = dict.fromkeys(counts, 0)

    if rank == 0:
        export_uri = storage.join(cfg.run.storage_path, cfg.run.name, "export")
        model_id = ckpt_io.export_model(export_uri, "generator", generator_ema,
                                        {**mconfig, "kind": "generator", "images_seen": images_seen,
                                         "dataset": read_vocab(cfg.data.prepared).get("source")})
        log(f"exported {model_id} to {export_uri}")


def export_checkpoint(run_uri: str, checkpoint: str, export_uri: str) -> str:
    """Export a checkpoint's EMA generator (e.g. a run stopped early) like the end of training
    does; returns the model id. The networks' sizes come from the run's config.json."""
    cfg = GanTrainConfig.model_validate_json(storage.get_bytes(storage.join(run_uri, "config.json")))
    meta = read_vocab(cfg.data.prepared)
    mconfig = model_config(cfg, meta)
    generator_ema = build_generator(mconfig)
    ckpt_io.load_weights_bytes(generator_ema, storage.get_bytes(storage.join(checkpoint, "generator_ema.safetensors")))
    images_seen = int(ckpt_io.load_state_bytes(storage.get_bytes(storage.join(checkpoint, "state.pt")))["images_seen"])
    return ckpt_io.export_model(export_uri, "generator", generator_ema.eval(),
                                {**mconfig, "kind": "generator", "images_seen": images_seen, "dataset": meta.get("source")})


def build_trainer(cfg: GanTrainConfig):
    """A TorchTrainer for `cfg`: DDP over num_workers, checkpoints to run.storage_path, retries."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    meta = read_vocab(cfg.data.prepared)
    check_attributes(cfg, meta)
    mconfig = model_config(cfg, meta)
    filesystem, storage_path = storage.pyarrow_filesystem(cfg.run.storage_path)
    if not storage.is_s3(cfg.run.storage_path):
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model": mconfig},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": build_dataset(cfg, mconfig)},
    )
