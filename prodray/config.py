"""Typed, validated run configuration: pydantic models loaded from YAML with `a.b=c` overrides.

Configs are plain data (pickled into Ray workers). A bad config fails here, before any work
starts, with the offending field named.
"""

import math
import typing
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from prodray.io.codec import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

# Inference and training precision; prodray/precision.py resolves "auto" for the device.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = typing.get_args(Precision)


def parse_strength(value) -> float | str | None:
    """'auto', a number in [0, 1] (as text or float), or None; anything else is a ValueError."""
    if value is None or value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in [0, 1] or 'auto', got {value!r}") from None
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise ValueError(f"strength must be in [0, 1] or 'auto', got {value!r}")
    return number


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the problem."""


class ModelSection(Strict):
    """A config's `model` section: the network. `weight_free_fields` name settings no weights depend
    on (a continuation may change them); an export's model id hashes them with the weights."""

    weight_free_fields: ClassVar[tuple[str, ...]] = ()


# ---------------------------------------------------------------- enhancer

class EnhancerModelConfig(ModelSection):
    arch: str = "rpsnet"
    scale: Literal[1, 2, 4] = 2
    channels: int = Field(48, ge=4, le=512)
    blocks: int = Field(8, ge=1, le=64)
    unshuffle: Literal[1, 2, 4] = 1  # fold u x u input pixels into channels: the body runs on 1/u^2 of them


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
    kernel_beta: tuple[float, float] = (2.0, 2.0)  # blur kernel exponent range; 2 = Gaussian
    resize_prob: float = Field(0.0, ge=0, le=1)
    resize_range: tuple[float, float] = (0.5, 1.5)  # random intermediate size, as a factor of the target
    first_jpeg_prob: float = Field(0.0, ge=0, le=1)  # a JPEG before the second stage (double JPEG)


class EnhancerDataConfig(Strict):
    sources: list[str] = Field(min_length=1)  # local folders or s3:// prefixes of HR images
    patch_size: int = Field(96, ge=8)  # HR patch side; must be a multiple of the scale
    patches_per_image: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)  # per worker
    val_folder: Optional[str] = None  # HR images scored with the SR protocol each tick
    val_max_images: int = Field(5, ge=1)
    # Also score the validation images with their LR saved as JPEG at this quality (restoration models).
    val_jpeg_quality: Optional[int] = Field(None, ge=1, le=100)
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
    # Training precision: auto = bf16 on CPUs with AMX/AVX512-BF16 and on GPUs with bf16, fp16 on
    # other GPUs, fp32 otherwise (prodray/precision.py). amp: false forces fp32.
    precision: Precision = "auto"
    amp: bool = True
    tick_images: int = Field(5_000, ge=1)  # log / validate / sample every this many images
    checkpoint_ticks: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)
    ema_half_life_images: int = Field(10_000, ge=0)  # 0 disables EMA
    seed: int = 0
    threads_per_worker: Optional[int] = None

    def resolved(self) -> "RunConfig":
        return self.model_copy(update={"storage_path": resolve_local(self.storage_path, "run.storage_path",
                                                                     must_exist=False)})


class AdversarialConfig(Strict):
    """Optional second stage: fine-tune a PSNR-trained enhancer with a discriminator.

    Loss of the enhancer = pixel_weight x L1 + perceptual_weight x perceptual + adversarial_weight
    x GAN. The perceptual term uses VGG19 features only when `vgg19_weights` names a local (or
    s3://) torchvision VGG19 weights file; otherwise a fixed multi-scale edge loss (Laplacian
    bands + gradients), so nothing is ever downloaded. See prodray/enhancer/losses.py."""

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


class PixelLossConfig(Strict):
    """The PSNR stage's loss: `kind` on RGB, plus `luma_weight` x the same loss on luma (BT.601 Y,
    what PSNR-Y and the eye weigh most): JPEG keeps colour at a quarter of the resolution, and
    a colour error the eye barely sees would otherwise weigh as much as a luma error."""

    kind: Literal["charbonnier", "mse"] = "charbonnier"  # charbonnier ~ L1; mse is what PSNR scores
    luma_weight: float = Field(0.0, ge=0)


class EnhancerTrainConfig(Strict):
    kind: Literal["enhancer"] = "enhancer"
    model: EnhancerModelConfig = EnhancerModelConfig()
    degradation: DegradationConfig = DegradationConfig()
    data: EnhancerDataConfig
    optim: OptimConfig = OptimConfig()
    loss: PixelLossConfig = PixelLossConfig()
    run: RunConfig = RunConfig()
    # Start the PSNR training from an exported enhancer (shipped name, export folder or s3:// URI)
    # instead of random weights: to continue a shipped model on more or other data.
    init_from: Optional[str] = None

    def check(self):
        if self.data.patch_size % self.model.scale:
            raise ConfigError(f"data.patch_size ({self.data.patch_size}) must be a multiple of "
                              f"model.scale ({self.model.scale})")
        return self

    def _resolved_update(self) -> dict:
        return {"data": resolved_photo_data(self.data), "run": self.run.resolved()}

    def resolved(self):
        update = self._resolved_update()
        if self.init_from:
            update["init_from"] = resolve_model(self.init_from, "init_from")
        return self.model_copy(update=update)


class AdversarialTrainConfig(EnhancerTrainConfig):
    """The enhancer's second stage: starts from an exported PSNR model (adversarial.init_from)."""

    kind: Literal["enhancer-adversarial"] = "enhancer-adversarial"
    init_from: None = Field(None, description="the adversarial stage starts from adversarial.init_from")
    loss: None = Field(None, description="the adversarial stage's losses are in adversarial")
    adversarial: AdversarialConfig

    def resolved(self):
        adv = self.adversarial
        vgg = resolve_local(adv.vgg19_weights, "adversarial.vgg19_weights") if adv.vgg19_weights else None
        return self.model_copy(update={**self._resolved_update(), "adversarial": adv.model_copy(update={
            "init_from": resolve_model(adv.init_from, "adversarial.init_from"), "vgg19_weights": vgg})})


def resolved_photo_data(data):
    """A photo family's data section with its local paths made absolute (workers run elsewhere) and
    checked to exist, in the driver."""
    return data.model_copy(update={
        "sources": [resolve_local(s, f"data.sources[{i}]") for i, s in enumerate(data.sources)],
        "val_folder": resolve_local(data.val_folder, "data.val_folder") if data.val_folder else None})


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

class GanModelConfig(ModelSection):
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
        return self.model_copy(update={"data": data, "run": self.run.resolved()})


# ---------------------------------------------------------------- repair (inpainting)

class RepairModelConfig(ModelSection):
    arch: Literal["fourier-unet"] = "fourier-unet"
    channels: int = Field(32, ge=8, le=256)  # width at full resolution, x2 and x4 further down
    blocks: int = Field(4, ge=1, le=32)  # Fourier blocks at 1/8 resolution
    # How the decoder upsamples (repair/model.py). No weights: a continuation may change it.
    upsample: Literal["nearest", "bilinear"] = "nearest"

    weight_free_fields: ClassVar[tuple[str, ...]] = ("upsample",)


class RepairDataConfig(Strict):
    sources: list[str] = Field(min_length=1)  # local folders or s3:// prefixes of undamaged photos
    patch_size: int = Field(96, ge=16)  # training crops; a multiple of 8
    patches_per_image: int = Field(4, ge=1)
    batch_size: int = Field(8, ge=1)  # per worker
    val_folder: Optional[str] = None  # photos repaired each tick under fixed masks (masked PSNR)
    val_max_images: int = Field(8, ge=1)
    hr_scales: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [1.0], min_length=1)
    mask_kinds: list[Literal["narrow", "thick", "blobs", "rect", "text", "large"]] = Field(
        default_factory=lambda: ["narrow", "thick", "blobs", "rect", "text"], min_length=1)
    # Masks are drawn on a canvas k x patch_size wide (k uniform in this range) and cropped to the patch:
    # k > 1 gives holes as large, relative to a crop, as masks drawn for a whole photo are.
    mask_canvas: list[Annotated[float, Field(ge=1, le=8)]] = Field(default_factory=lambda: [1.0, 1.0],
                                                                  min_length=2, max_length=2)


class RepairLossConfig(Strict):
    """Generator loss = hole_weight x L1 on the hole + edge_weight x edge loss (enhancer/losses.py)
    + perceptual_weight x VGG19 features (only with a user-supplied `vgg19_weights`) +
    adversarial_weight x GAN loss against a spectral-norm discriminator (0 = no discriminator)."""

    hole_weight: float = Field(1.0, ge=0)
    edge_weight: float = Field(0.1, ge=0)
    perceptual_weight: float = Field(0.0, ge=0)
    vgg19_weights: Optional[str] = None
    adversarial_weight: float = Field(0.01, ge=0)
    discriminator: Literal["unet", "patch"] = "patch"
    d_channels: int = Field(32, ge=4, le=256)
    d_lr: Optional[float] = Field(None, gt=0)  # None: same as optim.lr
    gan_loss: Literal["hinge", "nonsaturating"] = "hinge"


class RepairTrainConfig(Strict):
    kind: Literal["repair"] = "repair"
    model: RepairModelConfig = RepairModelConfig()
    data: RepairDataConfig
    loss: RepairLossConfig = RepairLossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig(name="repair")
    export_name: str = Field("repair", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # model id = <name>-<hash>
    # Start from an exported repair model (shipped name, export folder or s3:// URI) instead of
    # random weights: to continue a shipped model. The discriminator starts fresh.
    init_from: Optional[str] = None

    def check(self):
        if self.data.patch_size % 8:
            raise ConfigError(f"config field data.patch_size: {self.data.patch_size} must be a multiple of 8")
        if self.loss.perceptual_weight and not self.loss.vgg19_weights:
            raise ConfigError("config field loss.perceptual_weight: needs loss.vgg19_weights (a torchvision "
                              "VGG19 state dict); nothing is downloaded")
        return self

    def resolved(self):
        data = resolved_photo_data(self.data)
        loss = self.loss.model_copy(update={"vgg19_weights": resolve_local(
            self.loss.vgg19_weights, "loss.vgg19_weights") if self.loss.vgg19_weights else None})
        init_from = resolve_model(self.init_from, "init_from") if self.init_from else None
        return self.model_copy(update={"data": data, "loss": loss, "run": self.run.resolved(),
                                       "init_from": init_from})


# ---------------------------------------------------------------- recolour

class RecolourModelConfig(ModelSection):
    arch: Literal["bilateral-grid"] = "bilateral-grid"
    channels: int = Field(16, ge=8, le=256)  # width of the low-resolution view's first layer
    grid_depth: int = Field(8, ge=2, le=32)  # lightness levels of the bilateral grid
    grid_size: int = Field(16, ge=4, le=64)  # spatial cells per side
    input_size: int = Field(64, ge=16, le=512)  # side of the low-resolution view; grid_size x 1, 2, 4 or 8


class RecolourDataConfig(Strict):
    sources: list[str] = Field(min_length=1)  # local folders or s3:// prefixes of photos (no labels needed)
    patch_size: int = Field(128, ge=32)
    patches_per_image: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)  # per worker
    named_share: float = Field(0.5, ge=0, le=1)  # targets drawn from the named references (else any sRGB)
    val_folder: Optional[str] = None  # product photos scored each tick (evaluation.py's protocol)
    val_max_images: int = Field(8, ge=1)
    hr_scales: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [1.0], min_length=1)
    mask_kinds: list[Literal["narrow", "thick", "blobs", "rect", "text", "large"]] = Field(
        default_factory=lambda: ["blobs", "rect", "large"], min_length=1)
    # Outside the region the crop is made pure white: a product on a catalog's white background,
    # as the photos it recolours are.
    white_background: bool = True


class RecolourLossConfig(Strict):
    """Generator loss = detail_weight x (1 - detail SSIM) + colour_weight x the CIELAB distance of the
    mean product colour to the target beyond colour_margin + naming_weight x cross-entropy of its
    nearest named colour + gamut_weight x linear RGB outside [0, 1] + adversarial_weight x GAN loss
    (patch discriminator). The margin lets the mean give way a little where keeping shading needs
    room (a white or black target has none at the exact reference)."""

    detail_weight: float = Field(1.5, ge=0)
    colour_weight: float = Field(0.05, ge=0)
    colour_margin: float = Field(7.0, ge=0)
    naming_weight: float = Field(1.0, ge=0)
    gamut_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.01, ge=0)
    d_channels: int = Field(32, ge=4, le=256)
    d_lr: Optional[float] = Field(None, gt=0)  # None: same as optim.lr
    d_input_size: int = Field(64, ge=16)  # the discriminator judges crops downscaled to this side
    gan_loss: Literal["hinge", "nonsaturating"] = "hinge"


class RecolourTrainConfig(Strict):
    kind: Literal["recolour"] = "recolour"
    model: RecolourModelConfig = RecolourModelConfig()
    data: RecolourDataConfig
    loss: RecolourLossConfig = RecolourLossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig(name="recolour")
    export_name: str = Field("recolour", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # model id = <name>-<hash>

    def check(self):
        model = self.model
        if model.input_size % model.grid_size or model.input_size // model.grid_size not in (1, 2, 4, 8):
            raise ConfigError(f"config field model.input_size: {model.input_size} must be model.grid_size "
                              f"({model.grid_size}) times 1, 2, 4 or 8")
        return self

    def resolved(self):
        return self.model_copy(update={"data": resolved_photo_data(self.data), "run": self.run.resolved()})


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


def read_tree(path=None, overrides=None) -> dict:
    """The YAML mapping at `path` (or {}) with `a.b=c` overrides applied."""
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
    return tree


def validate(cls, tree: dict):
    try:
        config = cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    return config.check() if hasattr(config, "check") else config


def load_config(cls, path=None, overrides=None):
    """Load a config of type `cls` from YAML (or defaults) with `a.b=c` overrides applied."""
    return validate(cls, read_tree(path, overrides))


TRAIN_CONFIGS = {"enhancer": EnhancerTrainConfig, "enhancer-adversarial": AdversarialTrainConfig,
                 "gan": GanTrainConfig, "repair": RepairTrainConfig,
                 "recolour": RecolourTrainConfig}


def load_train_config(path=None, overrides=None, default_kind: str | None = None):
    """A training config of the class its `kind` names (jobs/train.py dispatches on it)."""
    return train_config_from_tree(read_tree(path, overrides), default_kind)


def train_config_from_tree(tree: dict, default_kind: str | None = None):
    """`tree` validated as the training config its `kind` names. A config written before the
    adversarial stage had its own kind still loads: kind enhancer with an `adversarial:` section is
    that stage, and the `adversarial: null` that run folders' config.json then carried is dropped."""
    tree = dict(tree)
    kind = tree.get("kind", default_kind)
    if kind == "enhancer" and "adversarial" in tree:
        if tree["adversarial"] is None:
            del tree["adversarial"]
        else:
            kind = tree["kind"] = "enhancer-adversarial"
    if kind not in TRAIN_CONFIGS:
        raise ConfigError(f"config field kind: {kind!r} is not one of {sorted(TRAIN_CONFIGS)}")
    return validate(TRAIN_CONFIGS[kind], tree)


def dump_config(config) -> str:
    return config.model_dump_json(indent=2)


# ---------------------------------------------------------------- bulk enhancement and serving
# The jobs' and `prodray`'s flags are generated from these fields (prodray/cli_flags.py): a field's
# description is its --help text, so each option is defined here once.

OutputFormat = Literal["png", "jpeg", "webp"]


def _checked_uri(uri: str) -> str:
    from prodray.io.storage import StorageError, split_uri
    try:
        split_uri(uri)
    except StorageError as exc:
        raise ValueError(str(exc)) from None
    return uri


# A result's RGB and its float copies in the model dominate an actor's memory: 160 MP is ~0.5 GB
# of uint8 RGB (a 40 MP input at x2, 10 MP at x4).
BULK_MAX_OUTPUT_PIXELS = 160_000_000


BulkTask = Literal["enhance", "repair", "recolour"]
SAME_SIZE_TASKS = ("repair", "recolour")


def canonical_colours(text: str) -> str:
    """`red,navy,#2E8B57` -> `Red,Navy Blue,#2e8b57`: each colour parsed (a name of the vocabulary
    in any case, an alias, or #rrggbb), repeats dropped, order kept; an unknown one raises."""
    from prodray.recolour.colours import parse_colour  # numpy + torch: only when recolouring

    names = [parse_colour(part)[0] for part in text.split(",") if part.strip()]
    return ",".join(dict.fromkeys(names))


class BulkConfig(Strict):
    """One bulk run (jobs/enhance_catalog.py, `prodray enhance`): input, output, task and model,
    encoding, marketplace constraints and the model actor pool."""

    input: str = Field(description="s3:// prefix, local folder, or a .parquet manifest of keys")
    output: str = Field(description="s3:// prefix or local folder for results + manifest (not the input)")
    task: BulkTask = Field("enhance", description="enhance (super-resolution / restoration), repair "
                           "(inpainting of masked regions; needs --masks or --mask) or recolour (the "
                           "product in each target colour; needs --colours)")
    masks: Optional[str] = Field(None, description="repair: s3:// prefix or folder of per-image PNG masks at "
                                 "the input's key with .png as its suffix (white = repair)")
    mask: Optional[str] = Field(None, validate_default=True, description="repair: one mask file (local path or "
                                "s3:// URI) for every image, scaled to each (white = repair)")
    colours: Optional[str] = Field(None, validate_default=True, description="recolour: target colours, "
                                   "comma-separated vocabulary names (any case) or #rrggbb; one result per "
                                   "image and colour (repeats count once)")
    model: Optional[str] = Field(None, description="export folder, s3:// URI or shipped name "
                                 "(default: the shipped enhancer-x<scale>, at scale 1 restore-x1; for repair, the "
                                 "shipped repair; for recolour, the shipped recolour; baseline: the classical Lab "
                                 "shift)")
    scale: Literal[1, 2, 4] = Field(2, description="upscaling factor; must be the model's (repair: 1)")
    format: OutputFormat = Field("png", description="output image format")
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality, 1-100")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="inputs larger than this are rejected unread")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1,
                            description="inputs with more pixels (read from the header) are rejected undecoded")
    max_output_pixels: int = Field(BULK_MAX_OUTPUT_PIXELS, ge=1, description="inputs whose result would have more "
                                   "pixels (input x scale^2) are rejected undecoded")
    batch_size: int = Field(8, ge=1, description="images per enhancer call")
    actors: int = Field(1, ge=1, description="enhancer actors (model replicas)")
    actor_cpus: float = Field(1.0, ge=0, description="CPUs reserved per enhancer actor; "
                              "leave 1 of the cluster free for Ray Data")
    actor_gpus: Optional[float] = Field(None, ge=0, description="GPUs per enhancer actor "
                                        "(default: 1 when the cluster has GPUs, else 0)")
    # A reservation for Ray's scheduler, not a limit: it keeps actors off nodes that cannot hold them.
    actor_memory_gib: float = Field(2.0, ge=0, description="memory reserved per enhancer actor for Ray's "
                                    "scheduler (0: none)")
    max_error_fraction: Optional[float] = Field(None, ge=0, le=1, description="fail the job when more than "
                                                "this share of the images is rejected or fails")
    progress_every_s: float = Field(10.0, ge=0, description="seconds between progress lines")
    # Marketplace constraints; each one set becomes part of the output key.
    min_longest_side: Optional[int] = Field(None, ge=1, description="marketplace: reject outputs whose longest "
                                            "side is below this (px); nothing is resized, pick a larger --scale")
    pad_square: bool = Field(False, description="marketplace: centre outputs on a pure-white square")
    max_output_bytes: Optional[int] = Field(None, ge=1, description="marketplace: lower JPEG/WebP quality in "
                                            "steps until outputs fit (PNG: reject)")
    strength: Optional[str] = Field(None, description="restoration models: 0 (the clean model) to 1 (full "
                                    "restoration), or auto (per image, from its JPEG quality and noise); default 1")
    self_ensemble: bool = Field(False, description="average the model over the 8 flips/turns of each image: "
                                "8x the compute, slightly sharper (results get their own keys)")
    precision: Precision = Field(
        "auto", description="inference precision (auto: bf16 on CPUs with AMX/AVX512-BF16 and on GPUs "
        "with bf16, fp16 on other GPUs, fp32 otherwise)")

    @model_validator(mode="before")
    @classmethod
    def _repair_keeps_the_size(cls, data):
        # Repair and recolour return the image at its own size: the scale such a run leaves unset is 1.
        if isinstance(data, dict) and data.get("task") in SAME_SIZE_TASKS and data.get("scale") is None:
            return {**data, "scale": 1}
        return data

    @field_validator("input", "output", "masks")
    @classmethod
    def _uri(cls, uri: Optional[str]) -> Optional[str]:
        return uri if uri is None else _checked_uri(uri)

    @field_validator("mask")
    @classmethod
    def _one_mask_source(cls, mask: Optional[str], info: ValidationInfo) -> Optional[str]:
        repair, masks = info.data.get("task") == "repair", info.data.get("masks")
        if mask is not None:
            _checked_uri(mask)
        if repair and (mask is None) == (masks is None):
            raise ValueError("repair needs exactly one of --masks (a mask per image) and --mask (one for all)")
        if not repair and (mask is not None or masks is not None):
            raise ValueError("masks are for --task repair")
        return mask

    @field_validator("colours")
    @classmethod
    def _colours(cls, colours: Optional[str], info: ValidationInfo) -> Optional[str]:
        if info.data.get("task") != "recolour":
            if colours is not None:
                raise ValueError("colours are for --task recolour")
            return None
        canonical = canonical_colours(colours or "")
        if not canonical:
            raise ValueError("recolour needs --colours (e.g. red,navy,#2e8b57)")
        return canonical

    @field_validator("scale")
    @classmethod
    def _repair_scale(cls, scale: int, info: ValidationInfo) -> int:
        task = info.data.get("task")
        if task in SAME_SIZE_TASKS and scale != 1:
            raise ValueError(f"{task} keeps the image's size; leave --scale out (or set 1), not {scale}")
        return scale

    @field_validator("self_ensemble")
    @classmethod
    def _enhance_only(cls, on: bool, info: ValidationInfo) -> bool:
        if on and info.data.get("task", "enhance") != "enhance":
            raise ValueError("self-ensemble is for --task enhance")
        return on

    @field_validator("output")
    @classmethod
    def _not_the_input(cls, output: str, info: ValidationInfo) -> str:
        if "input" in info.data and output.rstrip("/") == info.data["input"].rstrip("/"):
            raise ValueError("output must differ from input")
        return output

    @field_validator("strength")
    @classmethod
    def _strength(cls, strength: Optional[str], info: ValidationInfo) -> Optional[str]:
        if strength is not None and info.data.get("task", "enhance") != "enhance":
            raise ValueError("strength is for restoration models (--task enhance)")
        parsed = parse_strength(strength)
        return None if parsed is None else str(parsed)  # "auto" or "0.5": the form the output key carries


SERVE_MAX_BYTES = 20 * 2**20
SERVE_MAX_OUTPUT_PIXELS = 64_000_000
# A 2x result of 16 MP is 64 MP (192 MB of RGB): the biggest we accept per request.
SERVE_MAX_PIXELS = 4096 * 4096
NO_GENERATOR = "none"


class ReplicaConfig(Strict):
    """One Serve deployment's replicas, in Ray Serve's own terms: what each reserves, how many run,
    how many requests each admits before callers get 503."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (a model replica given one runs on it)")
    min_replicas: int = Field(1, ge=0, description="autoscaling: fewest replicas")
    max_replicas: int = Field(4, ge=1, description="autoscaling: most replicas")
    target_ongoing_requests: float = Field(4.0, gt=0, description="autoscaling: requests per replica to aim for")
    max_ongoing_requests: int = Field(16, ge=1, description="requests one replica runs at once")
    max_queued_requests: int = Field(64, ge=-1, description="requests waiting beyond those, after which callers "
                                     "get 503 at once (-1: no bound)")
    upscale_delay_s: float = Field(30.0, ge=0, description="autoscaling: seconds of high load before adding "
                                   "replicas")
    downscale_delay_s: float = Field(600.0, ge=0, description="autoscaling: seconds of low load before "
                                     "removing replicas")

    @field_validator("max_replicas")
    @classmethod
    def _range(cls, most: int, info: ValidationInfo) -> int:
        if most < info.data.get("min_replicas", 0):
            raise ValueError(f"max_replicas {most} is below min_replicas {info.data['min_replicas']}")
        return most


class ModelReplicaConfig(ReplicaConfig):
    # max_ongoing_requests stays >= max_batch_size so that a full batch can form.
    max_batch_size: int = Field(8, ge=1, description="requests batched into one model call (1: no batching)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="seconds a batch waits to fill (the enhancer's "
                                        "requests skip it while it serves one request at a time)")


class GeneratorReplicaConfig(ModelReplicaConfig):
    # A quarter CPU each for the small generator and the repair model: ingress (0.5) + enhancer (1) +
    # generator (0.25) + repair (0.25) then fit a 2-CPU head (the local demo). Scale-out adds replicas.
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved per replica")


class RepairReplicaConfig(GeneratorReplicaConfig):
    # Images of any size, one at a time: batching would only make requests wait for each other.
    max_batch_size: int = Field(1, ge=1, description="requests batched into one model call (1: no batching)")


class RecolourReplicaConfig(RepairReplicaConfig):
    # A small network (or the classical baseline): it reserves no CPU, so the 2-CPU demo head, whose
    # CPUs the other deployments reserve, still places it. Give it CPUs when it serves real traffic.
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica")


class IngressReplicaConfig(ReplicaConfig):
    # The ingress decodes and encodes in threads, so one replica admits more than a model replica.
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per replica")
    target_ongoing_requests: float = Field(16.0, gt=0, description="autoscaling: requests per replica to aim for")
    max_ongoing_requests: int = Field(32, ge=1, description="requests one replica runs at once")


class ServeConfig(Strict):
    """The Serve application: the `args` of prodray.cluster.serve:app_builder (serve_config.yaml,
    deploy/rayservice.yaml) and the flags of jobs/serve.py."""

    model: str = Field("enhancer-x2", description="enhancer: export folder, s3:// URI or shipped name")
    generator: str = Field("gan-fashion-products", description="product generator: export folder, s3:// URI or "
                           f"shipped name; '{NO_GENERATOR}' serves the enhancer only")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run "
                                                   "(auto: cuda when the replica has a GPU)")
    precision: Precision = Field(
        "auto", description="inference precision (auto: bf16 on CPUs with AMX/AVX512-BF16 and on GPUs "
        "with bf16, fp16 on other GPUs, fp32 otherwise)")
    max_bytes: int = Field(SERVE_MAX_BYTES, ge=1, description="upload size limit, enforced while reading")
    max_pixels: int = Field(SERVE_MAX_PIXELS, ge=1, description="pixel limit of an upload, checked on its header")
    max_output_pixels: int = Field(SERVE_MAX_OUTPUT_PIXELS, ge=1, description="pixel limit of a result "
                                   "(upload x scale^2), checked before the model runs")
    repair: str = Field("repair", description="repair (inpainting) model for POST /v1/repair: export folder, "
                        f"s3:// URI or shipped name; '{NO_GENERATOR}' serves no repair model")
    recolour: str = Field("recolour", description="recolouring model for POST /v1/recolour: export folder, "
                          f"s3:// URI, shipped name or 'baseline' (the classical Lab shift); '{NO_GENERATOR}' "
                          "serves no recolouring")
    votes: Optional[str] = Field(None, description="s3:// prefix (or local folder) where the blind A/B page "
                                 "(GET /ab) stores one JSONL object per vote; unset: no A/B page")
    enhancer_in_ingress: bool = Field(
        False, description="run the enhancer inside the ingress replicas (sized, scaled and batched by "
        "enhancer_replicas) instead of a deployment of its own: one hop less per request")
    ingress_replicas: IngressReplicaConfig = IngressReplicaConfig()
    enhancer_replicas: ModelReplicaConfig = ModelReplicaConfig()
    generator_replicas: GeneratorReplicaConfig = GeneratorReplicaConfig()
    repair_replicas: RepairReplicaConfig = RepairReplicaConfig()
    recolour_replicas: RecolourReplicaConfig = RecolourReplicaConfig()

    @field_validator("votes")
    @classmethod
    def _votes_uri(cls, votes: Optional[str]) -> Optional[str]:
        # Absolute, since the ingress replicas do not run in the deployer's working directory.
        return None if votes is None else resolve_local(_checked_uri(votes), "votes", must_exist=False)

    @field_validator("generator", "repair", "recolour")
    @classmethod
    def _none_spelling(cls, reference: str) -> str:
        return NO_GENERATOR if reference.lower() == NO_GENERATOR else reference

    @property
    def serves_generator(self) -> bool:
        return self.generator != NO_GENERATOR

    @property
    def serves_repair(self) -> bool:
        return self.repair != NO_GENERATOR

    @property
    def serves_recolour(self) -> bool:
        return self.recolour != NO_GENERATOR


class ServeJobConfig(ServeConfig):
    """jobs/serve.py: the application, plus where Serve listens and how long the job waits for it."""

    host: str = Field("127.0.0.1", description="address Serve binds to; 0.0.0.0 exposes the API to the network")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    timeout: float = Field(300.0, gt=0, description="seconds to wait for /healthz to answer")
    request_timeout_s: float = Field(120.0, gt=0, description="Serve's proxy answers 408 to a request still "
                                     "unanswered after this many seconds")
    direct_ingress: bool = Field(
        False, description="also serve straight from each ingress replica, on a port of its own (30000-30999, "
        "bound to --host like the proxy), skipping the proxy hop (Ray Serve's experimental direct ingress, "
        "RAY_SERVE_ENABLE_DIRECT_INGRESS=1; figures in BENCHMARKS.md). Cluster-wide: it takes effect "
        "on a Ray this job starts itself, or one whose `ray start` had that variable set; the job fails otherwise. "
        "The proxy on --port keeps answering; an ingress replica that stops drains for 30 s first")

    def app_config(self) -> ServeConfig:
        return ServeConfig(**self.model_dump(include=set(ServeConfig.model_fields)))
