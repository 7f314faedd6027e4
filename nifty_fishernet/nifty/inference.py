"""Latent posteriors with NIFTy's MGVI, geoVI or MAP (``ift.optimize_kl``)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import nifty8 as ift
import numpy as np
import torch

from .blocks import BlockNewton, PreconditionedHamiltonian, metric_blocks
from .likelihood import LATENT_KEY, NOISE_KEY, FisherNetLikelihood, as_data_batch

__all__ = ["latent_posterior", "infer_latents", "LatentPosterior", "metric_blocks"]

METHODS = ("mgvi", "geovi", "map")


@dataclass
class LatentPosterior:
    """Result of :func:`latent_posterior` / :func:`infer_latents` for B data points.

    Attributes
    ----------
    mean : numpy.ndarray
        ``(B, d)`` posterior mean (the MAP point for ``method="map"``).
    covariance : numpy.ndarray
        ``(B, d, d)``: sample covariance for MGVI/geoVI; for MAP the Laplace covariance, the
        inverse of the metric's latent block at the MAP point.
    samples : ift.ResidualSampleList or None
        NIFTy's sample list (None for MAP).
    position : ift.MultiField
        Final expansion point (latent mean and, if inferred, noise parameter).
    noise_variance : float or None
        Posterior mean of the noise variance when it was inferred (its MAP value for MAP).
    seconds : float
        Wall-clock time of the inference.
    """

    mean: np.ndarray
    covariance: np.ndarray
    samples: object
    position: object
    noise_variance: float | None = None
    seconds: float = float("nan")

    def latent_draws(self):
        """The NIFTy samples' latents as an ``(S, B, d)`` array (MAP: only the point)."""
        if self.samples is None:
            return self.mean[None]
        return np.stack([s[LATENT_KEY].val for s in self.samples.iterator()])


@contextlib.contextmanager
def _torch_threads(threads):
    """Run with ``threads`` intra-op torch threads (None: leave as is)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_nifty(verbose):
    if verbose:
        yield
        return
    logger = ift.logger
    level = logger.level
    # Iteration limits are reached by design; their warnings would drown the output.
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_likelihood(likelihood):
    domain = getattr(likelihood, "domain", None)
    if not isinstance(domain, ift.MultiDomain) or LATENT_KEY not in domain.keys():
        raise TypeError(f"the likelihood's domain must be a MultiDomain with key "
                        f"{LATENT_KEY!r} (as FisherNetLikelihood / decoder_likelihood build)")
    extra = set(domain.keys()) - {LATENT_KEY, NOISE_KEY}
    if extra:
        raise ValueError(f"the likelihood has unknown domain keys {sorted(extra)}")
    if len(domain[LATENT_KEY].shape) != 2:
        raise ValueError(f"the latent domain must have shape (batch, latent_dim), got "
                         f"{domain[LATENT_KEY].shape}")


def infer_latents(likelihood, initial, method="mgvi", n_samples=20, total_iterations=6,
                  seed=0, sampling_iterations=100, newton_iterations=20,
                  nonlinear_iterations=10, tolerance=1e-4, threads=1, verbose=False,
                  blockwise=True):
    """Run NIFTy's MGVI/geoVI/MAP on a latent likelihood and summarise the posterior.

    Parameters
    ----------
    likelihood : ift.LikelihoodEnergyOperator
        On ``{"latent": (B, d)}`` (plus ``"xi_noise"`` for an inferred noise level), e.g.
        from :func:`FisherNetLikelihood` or :func:`decoder_likelihood`. NIFTy adds the
        standard-normal prior on every key.
    initial : array-like
        ``(B, d)`` starting latents (the noise parameter starts at 0).
    method : {"mgvi", "geovi", "map"}
        Metric Gaussian VI, geometric VI, or maximum a posteriori with a Laplace covariance.
    n_samples : int
        Number of antithetic sample pairs: NIFTy draws ``2 * n_samples`` mirrored samples.
    total_iterations : int
        Global KL iterations of ``optimize_kl`` (new samples each).
    seed : int
        NIFTy's random seed for the samples.
    sampling_iterations, newton_iterations : int
        Iteration limits of the sampling CG and of the KL's Newton-CG minimiser.
    nonlinear_iterations : int
        geoVI only: Newton-CG iterations of each nonlinear sample update, most of geoVI's
        cost. On the banana toy problem (30 data) 10 came as close to the grid posterior as
        20 (mean KL(p||q) 0.56 vs 0.58) in half the time; 5 did not (0.92).
    tolerance : float
        Energy change, in nats per datum, below which the minimisers (KL, geoVI samples) and
        the sampling CG count an iteration as converged; NIFTy's absolute criteria get
        ``tolerance * B`` (``/ 10`` for the sampling CG), so the precision per datum does
        not depend on the batch size.
    threads : int or None
        Intra-op torch threads during the inference (None: unchanged). NIFTy calls the
        network thousands of times on small inputs, between numpy operations; with several
        OpenMP threads each call pays for waking them (MGVI on one Fashion-MNIST image, 2-core
        CPU: 36 s with 2 threads, 8 s with 1). Raise it for large batches or a big network.
    verbose : bool
        Let NIFTy log its iterations and minisanity tables.
    blockwise : bool
        Exploit that the B data points are independent problems (:mod:`.blocks`): exact
        per-datum Newton steps (:class:`BlockNewton`) for the KL and the MAP, and a
        block-preconditioned CG for the MGVI samples
        (:class:`PreconditionedHamiltonian`, run through :func:`_sampled_kl_loop`). False
        runs ``ift.optimize_kl`` with ``ift.NewtonCG`` unchanged. Both target the same
        posterior approximation; the blockwise steps need as many iterations for any B,
        NIFTy's plain CGs more with every datum (and the sampling CG stops at
        ``sampling_iterations`` with inexact samples). Even for one datum the exact Newton
        steps pay off (MGVI, Fashion-MNIST d = 5, 16 single images: 2.3 s per image
        blockwise, 3.2 s with ``optimize_kl``'s Newton-CG).

    Returns
    -------
    LatentPosterior

    Notes
    -----
    The B problems share NIFTy's line searches. For a ReLU decoder the energy has kinks, and
    where one datum's minimum sits on a kink the common step length shrinks, so convergence
    is to the energy tolerance, not to a small gradient.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_likelihood(likelihood)
    domain = likelihood.domain[LATENT_KEY]
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != domain.shape:
        raise ValueError(f"initial latents have shape {initial.shape}, expected {domain.shape}")
    if not np.all(np.isfinite(initial)):
        raise ValueError("initial latents contain non-finite values")
    start = ift.full(likelihood.domain, 0.0).to_dict()
    start[LATENT_KEY] = ift.makeField(domain, initial)
    position = ift.MultiField.from_dict(start)

    delta = float(tolerance) * domain.shape[0]
    if not delta > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    kl_minimizer = (BlockNewton if blockwise else ift.NewtonCG)(ift.AbsDeltaEnergyController(
        delta, convergence_level=2, iteration_limit=newton_iterations, name=None))
    if method == "map":
        n_samples, sampling, nonlinear = 0, None, None
    else:
        if n_samples < 1:
            raise ValueError(f"{method} needs n_samples >= 1, got {n_samples}")
        sampling = ift.AbsDeltaEnergyController(delta / 10, iteration_limit=sampling_iterations,
                                                name=None)
        # geoVI's nonlinear sample updates keep NIFTy's Newton-CG on either path: exact
        # block Newton steps there moved geoVI away from optimize_kl's result (0.3-1.5 sigma
        # on the banana toy, KL(p||q) to the grid posterior 45 % worse; see the test
        # test_blockwise_inference_equals_optimize_kl_on_the_banana).
        nonlinear = None if method == "mgvi" else ift.NewtonCG(ift.AbsDeltaEnergyController(
            delta, convergence_level=2, iteration_limit=nonlinear_iterations, name=None))
    began = time.perf_counter()
    with ift.random.Context(seed), _quiet_nifty(verbose), _torch_threads(threads):
        if blockwise and method != "map":
            samples, point = _sampled_kl_loop(likelihood, position, total_iterations,
                                              n_samples, kl_minimizer, sampling, nonlinear)
        else:
            samples, point = ift.optimize_kl(
                likelihood, total_iterations, n_samples, kl_minimizer, sampling, nonlinear,
                initial_position=position, output_directory=None, plot_energy_history=False,
                plot_minisanity_history=False, return_final_position=True)
    inferred = NOISE_KEY in likelihood.domain.keys()
    if method == "map":
        covariance = np.linalg.inv(metric_blocks(likelihood, point))
        noise = float(np.exp(point[NOISE_KEY].val)) if inferred else None
        return LatentPosterior(point[LATENT_KEY].val.copy(), covariance, None, point, noise,
                               time.perf_counter() - began)
    result = LatentPosterior(None, None, samples, point, None, 0.0)
    draws = result.latent_draws()
    result.mean = draws.mean(axis=0)
    centred = draws - result.mean
    result.covariance = np.einsum("sbi,sbj->bij", centred, centred) / (draws.shape[0] - 1)
    if inferred:
        result.noise_variance = float(np.mean([np.exp(s[NOISE_KEY].val)
                                                for s in samples.iterator()]))
    result.seconds = time.perf_counter() - began
    return result


def _sampled_kl_loop(likelihood, position, total_iterations, n_samples, kl_minimizer,
                     sampling, nonlinear):
    """``ift.optimize_kl``'s inference steps with a :class:`PreconditionedHamiltonian`.

    Each global iteration draws new samples at the current mean (``ift.SampledKLEnergy``,
    mirrored) and minimises the sampled KL, as ``optimize_kl`` does; ``optimize_kl`` builds
    its ``StandardHamiltonian`` itself, so the preconditioned one cannot be passed to it.
    """
    hamiltonian = PreconditionedHamiltonian(likelihood, sampling)
    samples = None
    for _ in range(total_iterations):
        energy = ift.SampledKLEnergy(position, hamiltonian, n_samples, nonlinear,
                                     mirror_samples=True)
        energy, _ = kl_minimizer(energy)
        position = energy.position
        samples = energy.samples
    return samples, position


def encoder_initial(model, data, response=None):
    """The encoder's mean of ``data`` (of ``R^dagger d``, hidden pixels 0, with a response)."""
    image = (as_data_batch(data, model.data_dim) if response is None
             else response.adjoint(ift.makeField(response.target, np.asarray(data))).val)
    with torch.no_grad():
        # a copy: NIFTy's field arrays are read-only
        x = torch.tensor(image, dtype=model.dtype, device=model.device)
        return model.encode(x).cpu().double().numpy()


def latent_posterior(model, data, method="mgvi", n_samples=20, response=None, noise=None,
                     infer_noise=False, total_iterations=6, initial=None, dtype=torch.float64,
                     seed=0, sampling_iterations=100, newton_iterations=20,
                     nonlinear_iterations=10, tolerance=1e-4, threads=1, verbose=False,
                     blockwise=True):
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
        Number of antithetic sample pairs: NIFTy draws ``2 * n_samples`` mirrored samples.
    response, noise, infer_noise : optional
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
    sampling_iterations, newton_iterations, nonlinear_iterations : int
        As for :func:`infer_latents`.
    tolerance, threads, blockwise
        As for :func:`infer_latents`.
    verbose : bool
        Let NIFTy log its iterations and minisanity tables.

    Returns
    -------
    LatentPosterior
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    likelihood = FisherNetLikelihood(model, data, response=response, noise=noise, dtype=dtype,
                                     infer_noise=infer_noise)
    if initial is None:
        initial = encoder_initial(model, data, response)
    return infer_latents(likelihood, initial, method, n_samples, total_iterations, seed,
                         sampling_iterations, newton_iterations, nonlinear_iterations,
                         tolerance, threads, verbose, blockwise)
