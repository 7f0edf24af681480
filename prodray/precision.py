"""The one precision setting (`auto | fp32 | bf16 | fp16`) every model path uses, resolved for the
device it runs on, and the autocast context that applies it.

`auto` is bf16 on CPUs with AMX-BF16 or AVX512-BF16 and on GPUs that support bf16, fp16 on other
GPUs, fp32 otherwise. Networks keep float32 weights; autocast runs the convolutions in the lower
precision and the rest (skips, losses, the output) in float32.
"""

import contextlib
import functools
from pathlib import Path

import torch

from prodray.config import PRECISIONS

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def resolve(setting: str, device) -> str:
    """`setting` for `device` -> "fp32", "bf16" or "fp16"; an explicit setting the device cannot
    run is an error naming it."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {setting!r}")
    device = torch.device(device)
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if setting == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 runs on GPUs only; use bf16 or fp32 on a CPU")
    return setting


def autocast(precision: str, device):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
