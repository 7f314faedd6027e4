"""Latent posteriors of a trained decoder with NIFTy's MGVI, geoVI or MAP."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import nifty8 as ift
import numpy as np
import torch

from .likelihood import LATENT_KEY, FisherNetLikelihood, as_data_batch

__all__ = ["latent_posterior", "LatentPosterior", "metric_blocks"]

_METHODS = ("mgvi", "geovi", "map")


@dataclass
class LatentPosterior:
    """Result of :func:`latent_posterior` for B data points.

    Attributes
    ----------
    mean : numpy.ndarray
        ``(B, d)`` posterior mean (the MAP point for ``method="map"``).
    covariance : numpy.ndarray
        ``(B, d, d)``: sample covariance for MGVI/geoVI; for MAP the Laplace covariance, the
        inverse metric at the MAP point.
    samples : ift.ResidualSampleList or None
        NIFTy's sample list (None for MAP).
    position : ift.MultiField
        Final latent position (the expansion point).
    """

    mean: np.ndarray
    covariance: np.ndarray
    samples: object
    position: object


@contextlib.contextmanager
def _quiet_nifty(verbose):
    if verbose:
        yield
        return
    logger = ift.logger
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def metric_blocks(likelihood, position):
    """The ``(B, d, d)`` blocks of the Hamiltonian's metric ``J^T R^T N^{-1} R J + 1``.

    The B latent problems are independent, so applying the metric to the unit vector of
    coordinate ``j`` of *every* datum at once gives column ``j`` of all B blocks: d metric
    applications in total.
    """
    hamiltonian = ift.StandardHamiltonian(likelihood)
    metric = hamiltonian(ift.Linearization.make_var(position, want_metric=True)).metric
    domain = likelihood.domain[LATENT_KEY]
    batch, d = domain.shape
    columns = []
    for j in range(d):
        unit = np.zeros((batch, d))
        unit[:, j] = 1.0
        field = ift.MultiField.from_dict({LATENT_KEY: ift.makeField(domain, unit)})
        columns.append(metric(field)[LATENT_KEY].val)
    return np.stack(columns, axis=-1)


def latent_posterior(model, data, method="mgvi", n_samples=20, response=None, noise=None,
                     total_iterations=6, initial=None, dtype=torch.float64, seed=0,
                     sampling_iterations=100, newton_iterations=20, verbose=False):
    """Latent posterior of ``d = R(f(z)) + n`` under ``z ~ N(0, 1)`` by ``ift.optimize_kl``.

    All B data points form one NIFTy problem (latent field ``(B, d)``), so each energy or
    metric evaluation calls the network once per batch.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained model in eval mode.
    data : array-like
        As for :func:`FisherNetLikelihood`.
    method : {"mgvi", "geovi", "map"}
        Metric Gaussian VI, geometric VI, or maximum a posteriori with a Laplace covariance.
    n_samples : int
        Number of (antithetic) sample pairs: NIFTy draws ``2 * n_samples`` mirrored samples.
    response, noise : optional
        As for :func:`FisherNetLikelihood`.
    total_iterations : int
        Global KL iterations of ``optimize_kl``.
    initial : array-like, optional
        ``(B, d)`` starting latents; default the model's encoder mean of ``data`` (of
        ``R^dagger d``, hidden pixels at 0, when a response is given).
    dtype : torch.dtype
        Precision of the decoder evaluations.
    seed : int
        NIFTy's random seed for the samples.
    sampling_iterations, newton_iterations : int
        Iteration limits of the sampling CG and the Newton-CG minimisers.
    verbose : bool
        Let NIFTy log its iterations and minisanity tables.

    Returns
    -------
    LatentPosterior
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    likelihood = FisherNetLikelihood(model, data, response=response, noise=noise, dtype=dtype)
    domain = likelihood.domain[LATENT_KEY]
    if initial is None:
        image = (as_data_batch(data, model.data_dim) if response is None
                 else response.adjoint(ift.makeField(response.target, np.asarray(data))).val)
        with torch.no_grad():
            x = torch.as_tensor(np.ascontiguousarray(image), dtype=model.dtype,
                                device=model.device)
            initial = model.encode(x).cpu().double().numpy()
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != domain.shape:
        raise ValueError(f"initial latents have shape {initial.shape}, expected {domain.shape}")
    position = ift.MultiField.from_dict({LATENT_KEY: ift.makeField(domain, initial)})

    kl_minimizer = ift.NewtonCG(ift.AbsDeltaEnergyController(
        1e-6, convergence_level=2, iteration_limit=newton_iterations, name=None))
    if method == "map":
        n_samples, sampling, nonlinear = 0, None, None
    else:
        sampling = ift.AbsDeltaEnergyController(1e-8, iteration_limit=sampling_iterations,
                                                name=None)
        nonlinear = None if method == "mgvi" else ift.NewtonCG(ift.AbsDeltaEnergyController(
            1e-6, convergence_level=2, iteration_limit=newton_iterations, name=None))
    with ift.random.Context(seed), _quiet_nifty(verbose):
        samples = ift.optimize_kl(
            likelihood, total_iterations, n_samples, kl_minimizer, sampling, nonlinear,
            initial_position=position, output_directory=None, plot_energy_history=False,
            plot_minisanity_history=False, return_final_position=False)
    if method == "map":
        point = next(iter(samples.iterator()))  # MAP: the list holds the one position
        mean = point[LATENT_KEY].val
        covariance = np.linalg.inv(metric_blocks(likelihood, point))
        return LatentPosterior(mean, covariance, None, point)
    draws = np.stack([s[LATENT_KEY].val for s in samples.iterator()])
    mean = draws.mean(axis=0)
    centred = draws - mean
    covariance = np.einsum("sbi,sbj->bij", centred, centred) / (draws.shape[0] - 1)
    return LatentPosterior(mean, covariance, samples, samples.sample_stat()[0])
