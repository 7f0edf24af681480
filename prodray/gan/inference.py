"""Generate product images from attributes with an exported conditional generator.

Loads `generator.safetensors` + `config.json` (vocabularies, sizes) by shipped name, folder or
s3:// URI. The same seed always gives the same images: noise comes from a torch.Generator
seeded with it, and the network runs in eval mode (batch-norm running statistics), so an
image does not depend on what else is in the batch.
"""

import numpy as np
import torch

from prodray.gan.limits import MAX_SEED, MAX_TRUNCATION
from prodray.gan.model import build_generator
from prodray.io.artifacts import load_export
from prodray.precision import autocast
from prodray.precision import resolve as resolve_precision


class UnknownAttribute(ValueError):
    """An attribute name or value the model was not trained with; the message lists the known ones."""


class ProductGenerator:
    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu", precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.config = config
        self.model_id: str = config["model_id"]
        self.vocab: dict[str, list[str]] = config["vocab"]
        self.resolution: int = int(config["resolution"])
        self.z_dim: int = int(config["z_dim"])

    @classmethod
    def load(cls, reference: str, device: str = "cpu", precision: str = "auto") -> "ProductGenerator":
        def build(config: dict) -> torch.nn.Module:
            if config.get("kind") != "generator":
                raise ValueError(f"{reference} is a {config.get('kind')!r} model, not a generator")
            return build_generator(config)

        model, config = load_export(reference, build)
        return cls(model, config, device, precision)

    def indices(self, attributes: dict[str, str]) -> dict[str, int]:
        """Attribute values -> vocabulary indices; every conditioning attribute must be given."""
        unknown = sorted(set(attributes) - set(self.vocab))
        if unknown:
            raise UnknownAttribute(f"unknown attribute(s) {unknown}; this model knows {list(self.vocab)}")
        missing = [name for name in self.vocab if name not in attributes]
        if missing:
            raise UnknownAttribute(f"missing attribute(s) {missing}; give one value each")
        result = {}
        for name, value in attributes.items():
            if value not in self.vocab[name]:
                raise UnknownAttribute(f"unknown {name} {value!r}; known: {self.vocab[name]}")
            result[name] = self.vocab[name].index(value)
        return result

    def noise(self, count: int, seed: int, truncation: float | None = None) -> torch.Tensor:
        """(count, z_dim) float32 on the CPU: the first `count` draws from `seed`, from a normal
        truncated to [-truncation, truncation] when that is given."""
        if isinstance(seed, bool) or not 0 <= int(seed) <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed}")
        draws = torch.Generator().manual_seed(int(seed))
        if truncation is None:
            return torch.randn(count, self.z_dim, generator=draws)
        if isinstance(truncation, bool) or not 0 < float(truncation) <= MAX_TRUNCATION:
            raise ValueError(f"truncation must be a number in (0, {MAX_TRUNCATION:g}], got {truncation}")
        cut = float(truncation)
        return torch.nn.init.trunc_normal_(torch.empty(count, self.z_dim), a=-cut, b=cut, generator=draws)

    @torch.no_grad()
    def generate_noise(self, attributes: dict[str, np.ndarray], noise: torch.Tensor, chunk: int = 256) -> np.ndarray:
        """uint8 (N, R, R, 3) for N attribute index rows and N noise rows (callers batching
        several requests concatenate each one's `noise(n, seed)`)."""
        out = []
        for start in range(0, len(noise), chunk):
            part = {name: torch.as_tensor(np.asarray(values[start:start + chunk]), dtype=torch.long, device=self.device)
                    for name, values in attributes.items()}
            with autocast(self.precision, self.device):
                images = self.model(noise[start:start + chunk].to(self.device), part).float()
            out.append(images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    def generate_indices(self, attributes: dict[str, np.ndarray], seed: int, chunk: int = 256,
                         truncation: float | None = None) -> np.ndarray:
        """uint8 (N, R, R, 3) for N attribute index rows; noise row i is the i-th draw from `seed`."""
        count = len(next(iter(attributes.values())))
        return self.generate_noise(attributes, self.noise(count, seed, truncation), chunk)

    def generate(self, attributes: dict[str, str], n: int = 1, seed: int = 0,
                 truncation: float | None = None) -> list[np.ndarray]:
        """n images of one attribute combination, as uint8 HWC RGB."""
        index = self.indices(attributes)
        images = self.generate_indices({name: np.full(n, i) for name, i in index.items()}, seed,
                                       truncation=truncation)
        return list(images)
