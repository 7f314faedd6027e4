"""A two-sample test: energy distance with a permutation p-value."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["energy_distance_test"]


def _energy(distances, first):
    second = ~first
    return (2.0 * distances[np.ix_(first, second)].mean()
            - distances[np.ix_(first, first)].mean()
            - distances[np.ix_(second, second)].mean())


def energy_distance_test(x, y, permutations=500, seed=0):
    """Energy distance between two samples and its permutation p-value.

    ``E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Székely & Rizzo) is zero iff the
    distributions agree; the p-value is the fraction of random relabellings of the pooled
    points whose statistic reaches the observed one (with the usual +1 correction).

    Parameters
    ----------
    x, y : array-like
        ``(n, d)`` and ``(m, d)`` samples.
    permutations : int
        Number of relabellings.
    seed : int
        Seeds the relabellings.

    Returns
    -------
    statistic : float
    p_value : float
    """
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"need two samples of >= 2 points in the same dimension, got "
                         f"{x.shape} and {y.shape}")
    pooled = np.concatenate([x, y])
    distances = cdist(pooled, pooled)
    first = np.zeros(len(pooled), bool)
    first[:len(x)] = True
    observed = _energy(distances, first)
    rng = np.random.default_rng(seed)
    exceed = sum(_energy(distances, rng.permutation(first)) >= observed
                 for _ in range(int(permutations)))
    return float(observed), (exceed + 1) / (int(permutations) + 1)
