"""Latent posteriors with NIFTy's MGVI, geoVI or MAP (through :mod:`.vi`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .blocks import metric_blocks
from .compat import ift, is_field, values
from .likelihood import LATENT_KEY, NOISE_KEY, FisherNetLikelihood, as_data, check_batch
from .vi import METHODS, check_iterations, default_minimizers, variational_inference

__all__ = ["latent_posterior", "infer_latents", "LatentPosterior", "metric_blocks",
           "encoder_position"]


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
        NIFTy's sample list (None for MAP); ``samples.sample_stat(op)`` gives the posterior
        mean and variance of any other model part.
    position : ift.MultiField
        Final expansion point (latent mean and every other key).
    noise_variance : float or None
        Posterior mean of the noise variance when it was inferred (its MAP value for MAP).
    seconds : float
        Wall-clock time of the inference.
    model : LatentModel or None
        The model whose decoder :meth:`images` and :meth:`predictive` use.
    misfit_variance : float or None
        The model's misfit variance on the decoder output (``e^{xi_N}``, or the inferred
        noise variance), which :meth:`predictive` adds with ``include_noise``.
    image_shape : tuple or None
        Shape of one decoded image in :meth:`images` / :meth:`predictive`; default the
        decoder's flat output.
    """

    mean: np.ndarray
    covariance: np.ndarray
    samples: object
    position: object
    noise_variance: float | None = None
    seconds: float = float("nan")
    model: object = None
    misfit_variance: float | None = None
    image_shape: tuple | None = None

    def latent_draws(self):
        """The NIFTy samples' latents as an ``(S, B, d)`` array (MAP: only the point)."""
        if self.samples is None:
            return self.mean[None]
        return np.stack([values(s[LATENT_KEY]) for s in self.samples.iterator()])

    def images(self):
        """The decoded draws ``f(z_s)``: ``(S, B) + image shape`` (MAP: the MAP's image)."""
        if self.model is None:
            raise ValueError("this posterior has no decoder: pass model= to infer_latents "
                             "(latent_posterior sets it)")
        draws = self.latent_draws()
        with torch.no_grad():
            z = torch.tensor(draws.reshape(-1, draws.shape[-1]), dtype=self.model.dtype,
                             device=self.model.device)
            decoded = self.model.decoder(z).cpu().double().numpy()
        shape = self.image_shape or (decoded.shape[-1],)
        return decoded.reshape(draws.shape[:2] + tuple(shape))

    def predictive(self, include_noise=True):
        """Mean and standard deviation of the decoded images over the posterior samples.

        Parameters
        ----------
        include_noise : bool
            Add the model's own misfit variance (:attr:`misfit_variance`) to the samples'
            variance: the predictive distribution of the image ``x = f(z) + m`` rather than
            of the decoder output ``f(z)``.

        Returns
        -------
        mean, std : numpy.ndarray
            ``(B,) + image shape`` each.

        Notes
        -----
        Every pixel is treated alike, observed or hidden: the std describes ``f(z) + m``
        under the latent posterior, and the misfit ``m`` keeps its prior variance. Where a
        pixel was observed with little noise, the data also inform its misfit, so there the
        std is conservative (too large); on hidden pixels it is the full predictive
        uncertainty. For MAP (a single point) the std is the misfit alone.
        """
        images = self.images()
        mean = images.mean(axis=0)
        variance = images.var(axis=0) if len(images) > 1 else np.zeros_like(mean)
        if include_noise:
            if self.misfit_variance is None:
                raise ValueError("no misfit variance is known for this posterior: pass "
                                 "include_noise=False, or misfit_variance= to infer_latents")
            variance = variance + self.misfit_variance
        return mean, np.sqrt(variance)


def _initial_position(domain, initial):
    """``initial`` (latent array, dict or MultiField) on ``domain``; other keys at 0."""
    start = ift.full(domain, 0.0).to_dict()
    if initial is None:
        given = {}
    elif isinstance(initial, ift.MultiField):
        given = dict(initial.items())
    elif isinstance(initial, dict):
        given = dict(initial)
    else:
        given = {LATENT_KEY: initial}
    unknown = set(given) - set(domain.keys())
    if unknown:
        raise ValueError(f"the initial position has keys {sorted(unknown)} that the "
                         f"likelihood does not have (it has {sorted(domain.keys())})")
    for key, value in given.items():
        value = values(value) if is_field(value) else np.asarray(value, dtype=np.float64)
        if value.shape != domain[key].shape:
            raise ValueError(f"the initial {key!r} has shape {value.shape}, expected "
                             f"{domain[key].shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"the initial {key!r} contains non-finite values")
        start[key] = ift.makeField(domain[key], value)
    return ift.MultiField.from_dict(start)


def _check_likelihood(likelihood):
    domain = getattr(likelihood, "domain", None)
    if not isinstance(domain, ift.MultiDomain) or LATENT_KEY not in domain.keys():
        raise TypeError(f"the likelihood's domain must be a MultiDomain with key "
                        f"{LATENT_KEY!r} (as FisherNetLikelihood / decoder_likelihood build)")
    if len(domain[LATENT_KEY].shape) != 2:
        raise ValueError(f"the latent domain must have shape (batch, latent_dim), got "
                         f"{domain[LATENT_KEY].shape}")


def infer_latents(likelihood, initial=None, method="mgvi", n_samples=20, total_iterations=6,
                  *, kl_minimizer=None, sampling_iteration_controller=None,
                  nonlinear_sampling_minimizer=None, seed=0, threads=1, verbose=False,
                  model=None, misfit_variance=None, image_shape=None, checkpoint=None,
                  callback=None):
    """Run NIFTy's MGVI/geoVI/MAP on a latent likelihood and summarise the latent posterior.

    Parameters
    ----------
    likelihood : ift.LikelihoodEnergyOperator
        On a MultiDomain with the key ``"latent"`` of shape ``(B, d)``, e.g. from
        :func:`FisherNetLikelihood`, maybe plus ``"xi_noise"`` and any further keys of the
        user's other model parts (a background, an exposure, ...). NIFTy adds the
        standard-normal prior on every key.
    initial : array-like, dict or ift.MultiField, optional
        The start: a ``(B, d)`` latent array, or a position with some or all keys (e.g.
        :func:`encoder_position`). Keys not given start at 0.
    method : {"mgvi", "geovi", "map"}
        Metric Gaussian VI, geometric VI, or maximum a posteriori with a Laplace covariance.
    n_samples : int
        Number of antithetic sample pairs: NIFTy draws ``2 * n_samples`` mirrored samples.
    total_iterations : int
        Global KL iterations (new samples each), at least 1.
    kl_minimizer, sampling_iteration_controller, nonlinear_sampling_minimizer : optional
        NIFTy's minimizers and controllers, as for ``ift.optimize_kl``. Missing ones come
        from :func:`~nifty_fishernet.nifty.default_minimizers` for this method and B (a
        :class:`~nifty_fishernet.nifty.blocks.BlockNewton` exploits that the B latent
        problems are independent; pass ``ift.NewtonCG(...)`` to run ``ift.optimize_kl``
        unchanged).
    seed : int
        NIFTy's random seed for the samples.
    threads : int or None
        Intra-op torch threads during the inference (see
        :func:`~nifty_fishernet.nifty.variational_inference`).
    verbose : bool
        Let NIFTy log its iterations and minisanity tables.
    model, misfit_variance, image_shape : optional
        For :meth:`LatentPosterior.images` and :meth:`LatentPosterior.predictive`: the model
        whose decoder made the likelihood, its misfit variance, and the image shape.
    checkpoint : path-like, optional
        A file that keeps the state after each global iteration, so that a run stopped
        midway resumes there with the same result (MGVI and geoVI with the default
        minimizers; see :func:`~nifty_fishernet.nifty.variational_inference`).
    callback : callable, optional
        Called after every global iteration (e.g. a progress bar's update).

    Returns
    -------
    LatentPosterior
        Its ``seconds`` are this call's; a resumed run's earlier iterations are not in them
        (:func:`~nifty_fishernet.nifty.kl_state.kl_progress` reads theirs beforehand).

    Notes
    -----
    The B problems share NIFTy's line searches. For a ReLU decoder the energy has kinks, and
    where one datum's minimum sits on a kink the common step length shrinks, so convergence
    is to the energy tolerance, not to a small gradient.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_likelihood(likelihood)
    total_iterations = check_iterations(total_iterations)
    position = _initial_position(likelihood.domain, initial)
    defaults = default_minimizers(method, batch=likelihood.domain[LATENT_KEY].shape[0])
    given = {"kl_minimizer": kl_minimizer,
             "sampling_iteration_controller": sampling_iteration_controller,
             "nonlinear_sampling_minimizer": nonlinear_sampling_minimizer}
    minimizers = {key: defaults[key] if value is None else value
                  for key, value in given.items()}
    began = time.perf_counter()
    samples, point = variational_inference(likelihood, position, method, n_samples,
                                           total_iterations, seed=seed, threads=threads,
                                           verbose=verbose, checkpoint=checkpoint,
                                           callback=callback, **minimizers)
    inferred = NOISE_KEY in likelihood.domain.keys()
    result = LatentPosterior(None, None, samples, point, None, 0.0, model, misfit_variance,
                             None if image_shape is None else tuple(image_shape))
    if method == "map":
        result.mean = values(point[LATENT_KEY]).copy()
        result.covariance = np.linalg.inv(metric_blocks(likelihood, point))
        if inferred:
            result.noise_variance = float(np.exp(values(point[NOISE_KEY])))
    else:
        draws = result.latent_draws()
        result.mean = draws.mean(axis=0)
        centred = draws - result.mean
        result.covariance = np.einsum("sbi,sbj->bij", centred, centred) / (draws.shape[0] - 1)
        if inferred:
            result.noise_variance = float(np.mean([np.exp(values(s[NOISE_KEY]))
                                                    for s in samples.iterator()]))
    if inferred and result.misfit_variance is None:
        result.misfit_variance = result.noise_variance
    result.seconds = time.perf_counter() - began
    return result


def encoder_position(model, data, response=None, domain=None):
    """The encoder's latent mean of ``data`` as a NIFTy MultiField: the usual start.

    Parameters
    ----------
    model : LatentModel
        Trained model in eval mode.
    data : array-like or ift.Field
        Without a response the images (``(B, k)``, ``(B,) + image shape`` or one image);
        with one, data on its target: the encoder then sees ``R^T d`` (hidden pixels 0).
    response : ift.LinearOperator, optional
        As for :func:`FisherNetLikelihood`.
    domain : ift.MultiDomain, optional
        The position's domain, e.g. ``likelihood.domain``: keys other than ``"latent"``
        are 0. Default ``{"latent": (B, d)}``.

    Returns
    -------
    ift.MultiField
    """
    if response is None:
        images = as_data(data)
        images = images.reshape(-1, model.data_dim) if images.size % model.data_dim == 0 \
            else images
    else:
        back = response.adjoint(ift.makeField(response.target, as_data(data,
                                                                       response.target.shape)))
        images = values(back).reshape(response.domain.shape[0], -1)
    if images.ndim != 2 or images.shape[1] != model.data_dim:
        raise ValueError(f"data must hold images of {model.data_dim} pixels, got shape "
                         f"{np.shape(data)}")
    batch = check_batch(images.shape[0])
    with torch.no_grad():
        x = torch.tensor(images, dtype=model.dtype, device=model.device)
        mean = model.encode(x).cpu().double().numpy()
    if domain is None:
        domain = ift.makeDomain({LATENT_KEY: ift.UnstructuredDomain((batch, model.latent_dim))})
    return _initial_position(domain, {LATENT_KEY: mean})


def latent_posterior(model, data, method="mgvi", n_samples=20, response=None, noise=None,
                     infer_noise=False, total_iterations=6, initial=None, dtype=torch.float64,
                     seed=0, sampling_iterations=100, newton_iterations=20,
                     nonlinear_iterations=10, tolerance=1e-4, threads=1, verbose=False,
                     blockwise=True, image_shape=None, misfit=True, jacobian_dtype=None,
                     checkpoint=None, callback=None):
    """Latent posterior of ``d = R(f(z) + m) + n`` under ``z ~ N(0, 1)`` with NIFTy.

    All B data points form one NIFTy problem (latent field ``(B, d)``), so each energy or
    metric evaluation calls the network once per batch. For a likelihood with further model
    parts build it yourself and call :func:`infer_latents`.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained model in eval mode.
    data : array-like or ift.Field
        As for :func:`FisherNetLikelihood`.
    method : {"mgvi", "geovi", "map"}
        Metric Gaussian VI, geometric VI, or maximum a posteriori with a Laplace covariance.
    n_samples : int
        Number of antithetic sample pairs: NIFTy draws ``2 * n_samples`` mirrored samples.
    response, noise, infer_noise, image_shape, misfit : optional
        As for :func:`FisherNetLikelihood`.
    total_iterations : int
        Global KL iterations, at least 1.
    initial : array-like or ift.MultiField, optional
        Start; default the model's encoder mean (:func:`encoder_position`).
    dtype : torch.dtype
        Precision of the decoder evaluations.
    jacobian_dtype : torch.dtype or str, optional
        Precision of the decoder's Jacobian (default ``dtype``): ``torch.float32`` forms a
        convolutional decoder's Jacobian 3-4x faster on the CPU while every energy stays in
        ``dtype`` (:func:`~nifty_fishernet.nifty.decoder_operator`).
    seed : int
        NIFTy's random seed for the samples.
    sampling_iterations, newton_iterations, nonlinear_iterations, tolerance, blockwise
        Settings of :func:`~nifty_fishernet.nifty.default_minimizers`.
    threads, verbose, checkpoint, callback
        As for :func:`infer_latents`: ``checkpoint`` keeps a long run's state after each
        global iteration, so that it resumes there (MGVI and geoVI, ``blockwise``).

    Returns
    -------
    LatentPosterior
        With the model attached, so :meth:`LatentPosterior.predictive` and
        :meth:`LatentPosterior.images` work.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    likelihood = FisherNetLikelihood(model, data, response=response, noise=noise, dtype=dtype,
                                     infer_noise=infer_noise, image_shape=image_shape,
                                     misfit=misfit, jacobian_dtype=jacobian_dtype)
    if initial is None:
        initial = encoder_position(model, data, response)
    minimizers = default_minimizers(method, likelihood.domain[LATENT_KEY].shape[0], tolerance,
                                    newton_iterations, sampling_iterations,
                                    nonlinear_iterations, blockwise)
    if misfit is True:
        misfit = float(np.exp(model.noise.xi.item()))
    misfit_variance = None if infer_noise else (misfit or 0.0)
    return infer_latents(likelihood, initial, method, n_samples, total_iterations, seed=seed,
                         threads=threads, verbose=verbose, model=model,
                         misfit_variance=misfit_variance, image_shape=image_shape,
                         checkpoint=checkpoint, callback=callback, **minimizers)
