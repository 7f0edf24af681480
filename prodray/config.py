"""Typed, validated run configuration: pydantic models loaded from YAML with `a.b=c` overrides.

Configs are plain data (pickled into Ray workers). A bad config fails here, before any work
starts, with the offending field named.
"""

from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the problem."""


# ---------------------------------------------------------------- enhancer

class EnhancerModelConfig(Strict):
    arch: str = "rpsnet"
    scale: Literal[1, 2, 4] = 2
    channels: int = Field(48, ge=4, le=512)
    blocks: int = Field(8, ge=1, le=64)


class DegradationConfig(Strict):
    """Probabilities and ranges of the training degradations; all zeros = benchmark bicubic."""

    blur_prob: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.2, 2.0)
    anisotropic_prob: float = Field(0.5, ge=0, le=1)
    noise_prob: float = Field(0.0, ge=0, le=1)
    noise_sigma: tuple[float, float] = (1.0, 10.0)
    poisson_prob: float = Field(0.0, ge=0, le=1)
    poisson_scale: tuple[float, float] = (0.05, 2.0)
    jpeg_prob: float = Field(0.0, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (40, 95)
    second_stage_prob: float = Field(0.0, ge=0, le=1)


class EnhancerDataConfig(Strict):
    sources: list[str] = Field(min_length=1)  # local folders or s3:// prefixes of HR images
    patch_size: int = Field(96, ge=8)  # HR patch side; must be a multiple of the scale
    patches_per_image: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)  # per worker
    val_folder: Optional[str] = None  # HR images scored with the SR protocol each tick
    val_max_images: int = Field(5, ge=1)
    # Each training image also enters the pool downscaled by these factors (MATLAB bicubic):
    # sharper HR patches with less JPEG blocking, and objects at more scales. 1.0 = as stored.
    hr_scales: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [1.0], min_length=1)


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_images: int = Field(2_000, ge=0)
    total_images: int = Field(100_000, ge=1)  # the schedule is in images seen, not steps
    grad_clip: float = Field(1.0, gt=0)


class RunConfig(Strict):
    """Where and how often: storage, ticks, checkpoints, workers."""

    storage_path: str = "runs"  # local folder or s3:// prefix holding all runs
    name: str = "enhancer"
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)  # leave CPUs free for Ray Data on small machines
    use_gpu: bool = False
    amp: bool = True  # mixed precision; only used on GPU
    tick_images: int = Field(5_000, ge=1)  # log / validate / sample every this many images
    checkpoint_ticks: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)
    ema_half_life_images: int = Field(10_000, ge=0)  # 0 disables EMA
    seed: int = 0
    threads_per_worker: Optional[int] = None


class AdversarialConfig(Strict):
    """Optional second stage: fine-tune a PSNR-trained enhancer with a discriminator.

    Loss of the enhancer = pixel_weight x L1 + perceptual_weight x perceptual + adversarial_weight
    x GAN. The perceptual term uses VGG19 features only when `vgg19_weights` names a local (or
    s3://) torchvision VGG19 weights file; otherwise a fixed multi-scale edge loss (Laplacian
    bands + gradients), so nothing is ever downloaded. See prodray/enhancer_losses.py."""

    init_from: str  # exported PSNR model to start from: shipped name (enhancer-x2), export folder or s3:// URI
    export_name: str = Field("enhancer-gan", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # model id = <name>-<hash>
    discriminator: Literal["unet", "patch"] = "unet"
    d_channels: int = Field(64, ge=4, le=256)
    d_lr: Optional[float] = Field(None, gt=0)  # None: same as optim.lr
    gan_loss: Literal["hinge", "nonsaturating"] = "hinge"
    pixel_weight: float = Field(1.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.1, ge=0)
    vgg19_weights: Optional[str] = None  # torchvision vgg19 state dict (.pth or .safetensors); None = edge loss


class EnhancerTrainConfig(Strict):
    kind: Literal["enhancer"] = "enhancer"
    model: EnhancerModelConfig = EnhancerModelConfig()
    degradation: DegradationConfig = DegradationConfig()
    data: EnhancerDataConfig
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    # Start the PSNR training from an exported enhancer (shipped name, export folder or s3:// URI)
    # instead of random weights: to continue a shipped model on more or other data.
    init_from: Optional[str] = None
    adversarial: Optional[AdversarialConfig] = None  # set = run the adversarial fine-tuning stage

    def check(self) -> "EnhancerTrainConfig":
        if self.data.patch_size % self.model.scale:
            raise ConfigError(f"data.patch_size ({self.data.patch_size}) must be a multiple of "
                              f"model.scale ({self.model.scale})")
        if self.init_from and self.adversarial is not None:
            raise ConfigError("config field init_from: the adversarial stage starts from adversarial.init_from; "
                              "set only that one")
        return self

    def resolved(self) -> "EnhancerTrainConfig":
        """Local paths made absolute (workers run elsewhere) and checked to exist, in the driver."""
        data = self.data.model_copy(update={
            "sources": [resolve_local(s, f"data.sources[{i}]") for i, s in enumerate(self.data.sources)],
            "val_folder": resolve_local(self.data.val_folder, "data.val_folder") if self.data.val_folder else None})
        run = self.run.model_copy(update={"storage_path": resolve_local(self.run.storage_path, "run.storage_path",
                                                                        must_exist=False)})
        update = {"data": data, "run": run}
        if self.init_from:
            update["init_from"] = resolve_model(self.init_from, "init_from")
        if self.adversarial is not None:
            adv = self.adversarial
            update["adversarial"] = adv.model_copy(update={
                "init_from": resolve_model(adv.init_from, "adversarial.init_from"),
                "vgg19_weights": resolve_local(adv.vgg19_weights, "adversarial.vgg19_weights") if adv.vgg19_weights else None})
        return self.model_copy(update=update)


def resolve_model(reference: str, field: str) -> str:
    """A shipped model's name passes through; anything else is a path or URI (see resolve_local)."""
    shipped = (Path(__file__).parent / "weights" / reference / "config.json").is_file()
    return reference if shipped else resolve_local(reference, field)


def resolve_local(uri: str, field: str, must_exist: bool = True) -> str:
    """Absolute path for a local path (s3:// URIs pass through); a missing one names the field."""
    if uri.startswith("s3://"):
        return uri
    path = Path(uri.removeprefix("file://")).expanduser().absolute()
    if must_exist and not path.exists():
        raise ConfigError(f"config field {field}: path {path} does not exist")
    return str(path)


# ---------------------------------------------------------------- product GAN

class GanModelConfig(Strict):
    z_dim: int = Field(128, ge=1, le=1024)
    embed_dim: int = Field(64, ge=1, le=1024)  # per attribute
    g_channels: int = Field(256, ge=8, le=2048)  # generator width at 4x4, halved per upsampling
    g_blocks: Literal["plain", "residual"] = "plain"  # one conv per resolution, or two with a skip
    d_channels: int = Field(32, ge=8, le=1024)  # discriminator width at full size, doubled per step
    d_mbstd_group: int = Field(4, ge=0, le=64)  # minibatch-stddev group size in D; 0 or 1 = off


class GanDataConfig(Strict):
    prepared: str  # a prepared dataset (folder or s3:// prefix): manifest.parquet + vocab.json
    attributes: Optional[list[str]] = None  # conditioning attributes; default: all in vocab.json
    batch_size: int = Field(64, ge=2)  # per worker


class GanOptimConfig(Strict):
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    total_images: int = Field(200_000, ge=1)  # images shown to the discriminator as real
    r1_gamma: float = Field(0.1, ge=0)  # 0 disables R1
    r1_interval: int = Field(16, ge=1)  # lazy regularisation: every this many steps, scaled up
    augment: str = "translation,cutout"  # DiffAugment policy: any of color, translation, cutout
    grad_clip: Optional[float] = None
    mode_seeking: float = Field(0.0, ge=0)  # weight of the mode-seeking term on G (MSGAN); 0 = off
    # Auxiliary classifier in D (AC-GAN, trained on real images only): weight of its cross-entropy
    # in D's loss and of "read as the asked attributes" in G's; 0 = off (projection alone).
    class_weight: float = Field(0.0, ge=0)
    # Constant lr until this many images, then linear decay to lr_final_fraction x lr at total_images.
    lr_decay_from_images: Optional[int] = Field(None, ge=0)  # None: constant lr throughout
    lr_final_fraction: float = Field(0.0, ge=0, le=1)


class GanTrainConfig(Strict):
    kind: Literal["gan"] = "gan"
    model: GanModelConfig = GanModelConfig()
    data: GanDataConfig
    optim: GanOptimConfig = GanOptimConfig()
    run: RunConfig = RunConfig(name="gan", tick_images=10_000)

    def check(self) -> "GanTrainConfig":
        from prodray.gan.augment import parse_policy
        try:
            parse_policy(self.optim.augment)
        except ValueError as exc:
            raise ConfigError(f"config field optim.augment: {exc}") from None
        start = self.optim.lr_decay_from_images
        if start is not None and start >= self.optim.total_images:
            raise ConfigError(f"config field optim.lr_decay_from_images: {start} must be below "
                              f"optim.total_images ({self.optim.total_images}), or the decay never starts")
        return self

    def resolved(self) -> "GanTrainConfig":
        data = self.data.model_copy(update={"prepared": resolve_local(self.data.prepared, "data.prepared")})
        run = self.run.model_copy(update={"storage_path": resolve_local(self.run.storage_path, "run.storage_path",
                                                                        must_exist=False)})
        return self.model_copy(update={"data": data, "run": run})


# ---------------------------------------------------------------- loading

def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides) -> list[tuple[str, object]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(raw)))
    return parsed


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"config field {field}: {first['msg']} (got {first.get('input')!r})"


def load_config(cls, path=None, overrides=None):
    """Load a config of type `cls` from YAML (or defaults) with `a.b=c` overrides applied."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        config = cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    return config.check() if hasattr(config, "check") else config


def dump_config(config) -> str:
    return config.model_dump_json(indent=2)
