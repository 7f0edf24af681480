"""Safe artifacts: weights as safetensors, trainer state as tensors-only .pt, exports by URI.

Weights never go through pickle; trainer state is read only with torch.load(weights_only=True).
Exports (`<dir>/<name>.safetensors` + `<dir>/config.json`) are what the bulk job and Serve load,
from a local path, an s3:// URI or a shipped model name.
"""

import hashlib
import io
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from prodray.io import storage

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def weights_bytes(model: torch.nn.Module) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    return save_safetensors_bytes(state)


def load_weights_bytes(model: torch.nn.Module, data: bytes) -> torch.nn.Module:
    unwrap(model).load_state_dict(load_safetensors_bytes(data), strict=True)
    return model


def state_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def export_model(export_uri: str, name: str, model: torch.nn.Module, config: dict,
                 id_fields: tuple[str, ...] = ()) -> str:
    """Write `<export_uri>/<name>.safetensors` and `<export_uri>/config.json`; returns the model id.

    The model id is `<name>-<first 12 hex of a sha256>` of the weights and of the config's
    `id_fields` (settings that change the output with the same weights), so it names what runs.
    """
    data = weights_bytes(model)
    digest = hashlib.sha256(data)
    if id_fields:
        digest.update(json.dumps({field: config[field] for field in id_fields}, sort_keys=True).encode())
    model_id = f"{name}-{digest.hexdigest()[:12]}"
    storage.put_bytes(storage.join(export_uri, f"{name}.safetensors"), data)
    storage.put_bytes(storage.join(export_uri, "config.json"),
                      json.dumps({**config, "name": name, "model_id": model_id}, indent=2).encode())
    return model_id


def resolve_export(reference: str) -> tuple[str, str]:
    """A shipped model name (e.g. 'enhancer-x2'), an export folder, or a .safetensors file ->
    (weights URI, config URI)."""
    reference = str(reference)
    shipped = SHIPPED_DIR / reference
    if (shipped / "config.json").is_file():
        config = json.loads((shipped / "config.json").read_text())
        return str(shipped / f"{config['name']}.safetensors"), str(shipped / "config.json")
    if reference.endswith(".safetensors"):
        return reference, reference.rsplit("/", 1)[0] + "/config.json"
    config_uri = storage.join(reference, "config.json")
    if not storage.is_s3(reference) and not Path(storage.split_uri(config_uri)[1]).is_file():
        known = (sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())
                 if SHIPPED_DIR.is_dir() else [])
        raise FileNotFoundError(f"model {reference!r} not found: give an export folder, an s3:// URI or one of {known}")
    config = json.loads(storage.get_bytes(config_uri))
    return storage.join(reference, f"{config['name']}.safetensors"), config_uri


def load_export(reference: str, build) -> tuple[torch.nn.Module, dict]:
    """Load an exported model: `build(config) -> nn.Module` makes the empty network."""
    weights_uri, config_uri = resolve_export(reference)
    config = json.loads(storage.get_bytes(config_uri))
    model = build(config)
    load_weights_bytes(model, storage.get_bytes(weights_uri))
    return model.eval(), config


def shipped_name_of(model_id: str) -> str | None:
    """The shipped model folder whose config has `model_id`, or None."""
    if not model_id or not SHIPPED_DIR.is_dir():
        return None
    for folder in sorted(SHIPPED_DIR.iterdir()):
        config = folder / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("model_id") == model_id:
            return folder.name
    return None
