"""Simulation-based calibration on a model's own generative process.

Draw ``z ~ N(0, 1)`` and ``x = f(z) + n``, ``n ~ N(0, exp(xi_N) 1)`` from a trained model; a
posterior approximation is calibrated when its credible regions of mass ``a`` contain the
true ``z`` a fraction ``a`` of the time, and when the rank of the true ``z_i`` among the
posterior's draws is uniform in every latent dimension (Talts et al. 2018).

Gaussian approximations are judged by their chi-square (highest-density) regions;
sampled ones, whose shape is unknown, by the rank of the truth's Mahalanobis distance (from
the draws' mean, in the draws' covariance) among the draws' own distances: any function of
``(z, x)`` has a uniform rank under the exact posterior, so this is a proper SBC statistic
and its rank below ``a`` defines a region of mass ``a``. Samplers of a posterior whose
energy ``E`` (negative log density up to a constant) is known can also be judged by the
truth's rank by ``E`` among the draws (:func:`hpd_ranks`): the highest-density regions,
which follow the posterior's own shape.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

from ..models.refine import weighted_moments

__all__ = ["LEVELS", "simulate", "gaussian_coverage", "sample_coverage", "sbc_ranks",
           "hpd_ranks", "rank_histogram", "mahalanobis2"]

#: Nominal masses of the credible regions every coverage is measured for.
LEVELS = (0.68, 0.95)


def simulate(model, n, seed=0):
    """``n`` draws ``(z, x)`` of the model's generative process, in its dtype and device.

    ``z ~ N(0, 1_d)``, ``x = f(z) + exp(xi_N / 2) eps`` with the model's decoder mean
    ``f`` and noise level (1 for a VAE with fixed noise). The images are not clipped to
    [0, 1]: the likelihood the model's posterior refers to is this Gaussian.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    with torch.no_grad():
        z = torch.randn(int(n), model.latent_dim, generator=generator, dtype=model.dtype,
                        device=model.device)
        value = model.decoder(z)
        x = value + model.noise_std * torch.randn(value.shape, generator=generator,
                                                  dtype=model.dtype, device=model.device)
    return z, x


def mahalanobis2(points, mean, covariance):
    """Squared Mahalanobis distances ``(..., B)`` of points ``(..., B, d)`` from ``mean``
    ``(B, d)`` in ``covariance`` ``(B, d, d)``, in float64."""
    chol = torch.linalg.cholesky(torch.as_tensor(covariance).detach().double())
    diff = torch.as_tensor(points).detach().double() - torch.as_tensor(mean).detach().double()
    flat = diff.reshape(-1, *diff.shape[-2:]).permute(1, 2, 0)  # (B, d, S)
    white = torch.linalg.solve_triangular(chol, flat, upper=False)
    return (white ** 2).sum(-2).permute(1, 0).reshape(diff.shape[:-1])


def gaussian_coverage(mean, covariance, truth, levels=LEVELS):
    """``(B, L)`` bool: whether ``truth`` lies in ``N(mean, covariance)``'s region of mass
    ``levels`` (squared Mahalanobis distance below the chi-square quantile)."""
    d = truth.shape[-1]
    m2 = mahalanobis2(truth, mean, covariance)
    limits = torch.tensor(chi2.ppf(levels, d), dtype=torch.float64)
    return (m2[:, None] <= limits).numpy()


def _truth_rank(values, truth_value, weights):
    """The truth's mid-rank among the draws, ``(B, ...)`` in (0, 1); draws axis first.

    With ``S`` equal-weight draws and ``k`` of them below the truth: ``(k + 1/2) / (S + 1)``,
    the middle of the truth's slot among all ``S + 1`` points. When the truth is one more
    draw of the posterior the ``S + 1`` points are exchangeable, ``k`` is uniform on
    ``0 … S`` and so ``P(rank < level)`` is within ``1 / (2 (S + 1))`` of ``level`` (the
    plain fraction ``k / S`` is off by up to ``1 / (S + 1)``: 0.905 instead of 0.95 with 20
    draws). Importance weights count as ``n = 1 / sum w^2`` draws.
    """
    if weights is None:
        n = values.shape[0]
        below = (values < truth_value).double().sum(0) / n
    else:
        n = 1.0 / (weights ** 2).sum(0)
        below = (weights * (values < truth_value)).sum(0)
    return (below * n + 0.5) / (n + 1)


def sample_coverage(draws, truth, levels=LEVELS, weights=None):
    """``(B, L)`` bool: whether the truth's Mahalanobis distance ranks below ``level`` among
    the draws' distances.

    The distances are measured in the moments of the draws *and the truth* (the truth
    counting as one more draw, ``1 / (n + 1)`` of the weight for ``n`` effective draws), so
    that under calibration the truth and the draws are exchangeable. Moments of the draws
    alone would measure the draws in-sample and the truth out-of-sample: with ``S`` exact
    posterior draws in ``d`` dimensions the truth then looks too far, and the coverage comes
    out far below nominal (20 draws, d = 5: 0.47 / 0.68 instead of 0.68 / 0.95; 24 draws,
    d = 10: 0.26 / 0.41), which made MGVI and geoVI look worse than they are before
    harness version 5.

    Parameters
    ----------
    draws : torch.Tensor
        ``(S, B, d)`` posterior draws.
    truth : torch.Tensor
        ``(B, d)``.
    weights : torch.Tensor, optional
        ``(S, B)`` normalised importance weights of the draws.
    """
    draws = torch.as_tensor(draws).detach().double()
    truth = torch.as_tensor(truth).detach().double()
    w = None if weights is None else torch.as_tensor(weights).detach().double()
    n = (torch.full(draws.shape[1:2], float(draws.shape[0]), dtype=torch.float64)
         if w is None else 1.0 / (w ** 2).sum(0))
    share = (torch.full(draws.shape[:2], 1.0 / draws.shape[0], dtype=torch.float64)
             if w is None else w)
    pooled = torch.cat([share * n / (n + 1), (1 / (n + 1))[None]])
    points = torch.cat([draws, truth[None]])
    mean, cov = weighted_moments(points, torch.log(pooled))
    # the ranks do not depend on the covariance's overall scale
    cov = cov + 1e-12 * torch.eye(draws.shape[-1], dtype=torch.float64)
    rank = _truth_rank(mahalanobis2(draws, mean, cov), mahalanobis2(truth[None], mean,
                                                                    cov)[0], w)
    return (rank[:, None] < torch.tensor(levels, dtype=torch.float64)).numpy()


def hpd_ranks(draw_energy, truth_energy, weights=None):
    """The truth's mid-rank ``(B,)`` in (0, 1) among the draws by the posterior's own energy
    ``E`` (the negative log density up to a constant): the estimated mass of the smallest
    highest-density region that holds the truth. Uniform when calibrated, and the truth lies
    in the region of mass ``a`` when its rank is below ``a``.

    Unlike the Mahalanobis rank of :func:`sample_coverage` this needs ``E`` itself, so it
    judges samplers of a posterior whose density is known up to its normaliser (here the
    importance-sampled refinement), and its regions follow the posterior's shape.

    Parameters
    ----------
    draw_energy : torch.Tensor
        ``(S, B)`` ``E`` at the draws.
    truth_energy : torch.Tensor
        ``(B,)`` ``E`` at the truth.
    weights : torch.Tensor, optional
        ``(S, B)`` normalised importance weights of the draws.
    """
    values = torch.as_tensor(draw_energy).detach().double()
    truth_value = torch.as_tensor(truth_energy).detach().double()
    w = None if weights is None else torch.as_tensor(weights).detach().double()
    if values.dim() != 2 or truth_value.shape != values.shape[1:]:
        raise ValueError(f"draw_energy must be (S, B) and truth_energy (B,), got "
                         f"{tuple(values.shape)} and {tuple(truth_value.shape)}")
    return _truth_rank(values, truth_value, w).numpy()


def sbc_ranks(draws, truth, weights=None):
    """Normalised SBC ranks ``(B, d)`` in (0, 1): per latent dimension, the truth's
    mid-rank among the posterior's (weighted) draws (see :func:`_truth_rank`). Uniform when
    calibrated."""
    draws = torch.as_tensor(draws).detach().double()
    truth = torch.as_tensor(truth).detach().double()
    w = None if weights is None else torch.as_tensor(weights).detach().double()[..., None]
    return _truth_rank(draws, truth[None], w).numpy()


def rank_histogram(ranks, bins=10):
    """Counts ``(d, bins)`` of normalised ranks ``(B, d)`` in ``bins`` equal bins of [0, 1]."""
    ranks = np.asarray(ranks)
    index = np.clip((ranks * bins).astype(int), 0, bins - 1)
    return np.stack([np.bincount(index[:, i], minlength=bins) for i in range(ranks.shape[1])])
