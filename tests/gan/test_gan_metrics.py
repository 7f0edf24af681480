"""FID and KID (prodray.metrics) against hand computations; the attribute classifier's plumbing."""

import numpy as np
import pytest

from prodray.metrics import feature_statistics, fid_from_features, frechet_distance, kid_from_features


def _features(n, dim, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(123).normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features
    return rng.normal(size=(n, dim)) @ mixing * scale + shift


def _fid_scipy(a, b):
    linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [1, 5, 16])
def test_fid_matches_scipy_sqrtm(dim):
    a = _features(200, dim, seed=1)
    b = _features(150, dim, seed=2, shift=0.3, scale=1.4)
    assert fid_from_features(a, b) == pytest.approx(_fid_scipy(a, b), rel=1e-6, abs=1e-9)


def test_fid_hand_computation_diagonal():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_fid_identical_sets_near_zero_and_grows_with_shift():
    a = _features(500, 16, seed=3)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    same = fid_from_features(a, _features(500, 16, seed=4))
    shifted = [fid_from_features(a, _features(500, 16, seed=4, shift=s)) for s in (0.5, 1.0, 2.0)]
    assert same < shifted[0] < shifted[1] < shifted[2]
    assert shifted[1] > 10 * same


def test_fid_singular_covariance():
    # Fewer samples than dimensions: rank-deficient covariances must still give a finite, >= 0 value.
    a, b = _features(10, 32, seed=5), _features(10, 32, seed=6, shift=1.0)
    value = fid_from_features(a, b)
    assert np.isfinite(value) and value > 0
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_shapes_and_errors():
    mu, sigma = feature_statistics(_features(50, 4, seed=0))
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 4)))


def test_kid_hand_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.5
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - np.trace(kxx)) / 20 + (kyy.sum() - np.trace(kyy)) / 20 - 2 * kxy.mean()
    # A subset of all 5 rows is a permutation of each set, which leaves the unbiased MMD unchanged.
    mean, std = kid_from_features(x, y, subsets=3, subset_size=5)
    assert mean == pytest.approx(expected) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_near_zero_shifted_larger():
    a, b = _features(600, 16, seed=7), _features(600, 16, seed=8)
    same, same_std = kid_from_features(a, b, subsets=20, subset_size=300)
    shifted, _ = kid_from_features(a, _features(600, 16, seed=8, shift=1.0), subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.1 and shifted > 20 * abs(same)
