"""Weight-space interpolation of two enhancer networks of one shape: start + t * (end - start).

Strength uses it between a restoration model and its clean partner (enhancer/strength.py); it also
makes one model out of two restoration models fine-tuned from the same start on different damage
chains (a "model soup"), which keeps much of each one's gain at the cost of a single network.
"""

import torch

from prodray.enhancer.model import build_enhancer
from prodray.io.artifacts import export_model, load_export

SHAPE_FIELDS = ("arch", "scale", "channels", "blocks", "kind")


def check_same_network(start: dict, end: dict) -> None:
    """Two state dicts with the same keys and shapes, else a ValueError naming the first difference."""
    if start.keys() != end.keys():
        raise ValueError(f"the networks differ in their layers: {sorted(start.keys() ^ end.keys())[:3]}")
    for key, value in start.items():
        if value.shape != end[key].shape:
            raise ValueError(f"the networks differ at {key}: {tuple(value.shape)} vs {tuple(end[key].shape)}")


def blend_states(start: dict, end: dict, t: float) -> dict:
    """start + t * (end - start) for floating-point tensors; the others (counters) from `start`."""
    check_same_network(start, end)
    return {k: v + t * (end[k] - v) if v.is_floating_point() else v for k, v in start.items()}


def interpolate_exports(start_ref: str, end_ref: str, t: float, export_uri: str) -> str:
    """Export (1 - t) * start + t * end (enhancer exports: shipped names, folders or s3:// URIs) with
    `start`'s config, which keeps its clean partner for strength; returns the new model id."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    start, start_config = load_export(start_ref, build_enhancer)
    end, end_config = load_export(end_ref, build_enhancer)
    for field in SHAPE_FIELDS:
        if start_config.get(field) != end_config.get(field):
            raise ValueError(f"the exports differ in {field}: {start_config.get(field)!r} vs {end_config.get(field)!r}")
    with torch.no_grad():
        start.load_state_dict(blend_states(start.state_dict(), end.state_dict(), t))
    config = {k: v for k, v in start_config.items() if k not in ("name", "model_id")}
    config["interpolated"] = {"start": start_config.get("model_id"), "end": end_config.get("model_id"), "t": t}
    return export_model(export_uri, start_config["name"], start, config)
