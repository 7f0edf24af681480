"""MATLAB bicubic resize: the dense and the taps path agree, and the weights cache stays bounded."""

import numpy as np
import pytest
import torch

from prodray.io import images
from prodray.io.images import imresize, imresize_uint8


@pytest.mark.parametrize("scale", [0.5, 0.25, 2, 4, 1 / 3])
def test_taps_path_equals_the_dense_path(scale, monkeypatch):
    x = torch.rand(2, 3, 37, 29, dtype=torch.float64)
    dense = imresize(x, scale)
    monkeypatch.setattr(images, "DENSE_LIMIT", 0)
    monkeypatch.setattr(images, "_CACHE", type(images._CACHE)())
    taps = imresize(x, scale)
    assert taps.shape == dense.shape
    assert torch.allclose(taps, dense, atol=1e-12)


def test_large_axes_never_build_a_dense_matrix(monkeypatch):
    """An axis of 2,000 px at x4 would need a 8,000 x 2,000 float matrix; the taps need 8,000 x 6."""
    monkeypatch.setattr(images, "_CACHE", type(images._CACHE)())
    monkeypatch.setattr(images, "_cache_bytes", 0)
    alpha = np.random.default_rng(0).integers(0, 256, (40, 2000), dtype=np.uint8)
    out = imresize_uint8(alpha, 4, dtype=torch.float32)
    assert out.shape == (160, 8000)
    kinds = {key[:3]: sum(t.numel() for t in value) for key, value in images._CACHE.items()}
    assert kinds[("taps", 2000, 8000)] <= 8000 * 2 * 8  # indices + weights, a few taps per pixel
    assert ("dense", 2000, 8000) not in kinds
    assert np.abs(out.astype(int) - imresize_uint8(alpha, 4).astype(int)).max() <= 1  # float32 vs float64


def test_weights_cache_is_bounded_in_bytes(monkeypatch):
    monkeypatch.setattr(images, "_CACHE", type(images._CACHE)())
    monkeypatch.setattr(images, "_cache_bytes", 0)
    monkeypatch.setattr(images, "CACHE_BYTES", 2**20)
    for size in range(100, 400, 7):  # many image sizes, as a long-lived actor sees
        imresize(torch.rand(1, 1, size, size + 1), 2)
    held = sum(t.numel() * t.element_size() for value in images._CACHE.values() for t in value)
    assert held == images.cache_bytes() <= 2**20
    assert len(images._CACHE) > 0




def test_a_read_only_array_is_copied_before_torch_sees_it(monkeypatch):
    # torch warns (once per process) and leaves undefined behaviour on read-only memory
    seen = []
    real = torch.from_numpy
    monkeypatch.setattr(images.torch, "from_numpy", lambda a: seen.append(a.flags.writeable) or real(a))
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    array.flags.writeable = False  # as Ray Data hands Arrow-backed images over
    tensor = images.from_uint8_hwc(array)
    assert seen == [True] and np.array_equal(images.to_uint8_hwc(tensor), array)
    seen.clear()
    assert images.imresize_uint8(array, 1).shape == array.shape and seen == [True]
