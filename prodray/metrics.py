"""Image-quality metrics following the published super-resolution protocol.

PSNR and SSIM on the Y channel of YCbCr (BT.601, as MATLAB's rgb2ycbcr), with `shave` pixels
cut from each border and peak 255; SSIM with an 11x11 Gaussian window, sigma 1.5 (Wang et al.).
Inputs are uint8 HWC RGB (or HW grey, which is its own Y). No Ray, no PIL.
FID and KID for the GAN work on (N, D) feature arrays (see the end of the module).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

# BT.601 Y of RGB in [0, 1], as MATLAB's rgb2ycbcr: 16 + these weights . rgb (the torch versions
# in recolour/colour_space.py and enhancer/losses.py use them too)
BT601_Y = (65.481, 128.553, 24.966)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float64 (H, W) Y in [16, 235]; a 2-D array is already Y."""
    if image.ndim == 2:
        return image.astype(np.float64)
    rgb = image.astype(np.float64)
    red, green, blue = BT601_Y
    return 16.0 + (red * rgb[..., 0] + green * rgb[..., 1] + blue * rgb[..., 2]) / 255.0


def _shave(y: np.ndarray, shave: int) -> np.ndarray:
    return y[shave:-shave, shave:-shave] if shave > 0 else y


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0, where: np.ndarray | None = None) -> float:
    """Mean SSIM of two 2-D float arrays, 'valid' filtering as in the reference MATLAB code; with
    `where` (a (H, W) bool), the mean over the windows centred on its True pixels only."""
    window = _gaussian_window()
    x = torch.from_numpy(a.astype(np.float64))[None, None]
    y = torch.from_numpy(b.astype(np.float64))[None, None]
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sigma_x = F.conv2d(x * x, window) - mu_x**2
    sigma_y = F.conv2d(y * y, window) - mu_y**2
    sigma_xy = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    if where is None:
        return float(ssim_map.mean())
    half = window.shape[-1] // 2
    centres = torch.from_numpy(where[half:where.shape[0] - half, half:where.shape[1] - half])
    return float(ssim_map[0, 0][centres].mean()) if centres.any() else float("nan")


def psnr_ssim_y(output: np.ndarray, reference: np.ndarray, shave: int) -> tuple[float, float]:
    """The protocol: both to Y, shave the border, PSNR (peak 255) and SSIM."""
    if output.shape != reference.shape:
        raise ValueError(f"shape mismatch: output {output.shape} vs reference {reference.shape}")
    y_out, y_ref = _shave(rgb_to_y(output), shave), _shave(rgb_to_y(reference), shave)
    return psnr(y_out, y_ref), ssim(y_out, y_ref)


def mean_ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference of two uint8 RGB images (sRGB, D65)."""
    return float(np.mean(ciede2000(srgb_to_lab(a), srgb_to_lab(b))))


SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ SRGB_TO_XYZ.T / D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) CIELAB (D65) -> (..., 3) uint8 sRGB, the inverse of srgb_to_lab; out-of-gamut values clipped."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * D65_WHITE
    linear = np.clip(xyz @ np.linalg.inv(SRGB_TO_XYZ).T, 0, 1)
    rgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 (Sharma, Wu, Dalal 2005) per pixel, kL = kC = kH = 1."""
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dl, dc = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    hp_bar = np.where(c1p * c2p == 0, h_sum,
                      np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                               np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dc / s_c) * (dH / s_h))


# ---------------------------------------------------------------- distribution metrics (GAN)
# FID and KID on (N, D) feature arrays (classifier or Inception embeddings). numpy only: the
# matrix square root is an eigen-decomposition, so scipy stays a dev-only dependency.

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    Tr((S1 S2)^(1/2)) = Tr((A S2 A)^(1/2)) with A = S1^(1/2): S1 S2 is similar to the symmetric
    PSD A S2 A, so the trace is the sum of the square roots of its (real, clipped) eigenvalues."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / D + 1)^3."""
    dim = x.shape[1]
    kxx = (x @ x.T / dim + 1) ** 3
    kyy = (y @ y.T / dim + 1) ** 3
    kxy = (x @ y.T / dim + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_from_features(features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased polynomial-kernel MMD^2
    averaged over `subsets` random subsets of min(subset_size, N1, N2) rows of each set, drawn
    without replacement within a subset. Returns (mean, standard deviation over subsets)."""
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N, D) features with equal D, got {x.shape} and {y.shape}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased_poly(x[rng.choice(len(x), size, replace=False)],
                                  y[rng.choice(len(y), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))
