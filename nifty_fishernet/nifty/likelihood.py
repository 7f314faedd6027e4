"""The FisherNet's Gaussian likelihood (Eq. 9) as a NIFTy likelihood energy."""

from __future__ import annotations

import copy
import functools
import numbers

import numpy as np
import torch

from ..fisher import decoder_jacobian
from ..models.tap_conv import tap_convolutions
from .compat import describe, ift, is_field, values
from .noise import noise_inverse_covariance
from .operator import TorchOperator

__all__ = ["LATENT_KEY", "NOISE_KEY", "LIKELIHOOD_NAME", "decoder_operator",
           "decoder_likelihood", "FisherNetLikelihood", "noise_variance_operator",
           "check_batch", "decoder_target", "as_data"]

#: Key of the latent field in every likelihood's MultiDomain.
LATENT_KEY = "latent"
#: Key of the standard-normal noise parameter ``xi_N`` when the noise level is inferred.
NOISE_KEY = "xi_noise"
#: The likelihood's name in NIFTy's minisanity tables.
LIKELIHOOD_NAME = "FisherNet"


def _require_eval(model):
    if model.training:
        raise RuntimeError(f"the {type(model).__name__} is in training mode; call model.eval() "
                           f"so that its decoder is a fixed function during inference")


def _frozen(decoder, dtype, device):
    """A copy of ``decoder`` in ``dtype`` with gradients off.

    A copy, so that the caller's model keeps its dtype and trainability, and the NIFTy
    operator (which caches linearizations) sees fixed weights. In float64 on the CPU the
    copy sums its convolutions to few channels tap by tap
    (:func:`~nifty_fishernet.models.tap_convolutions`: the same sums, without torch's slow
    float64 fallback).
    """
    if isinstance(decoder, torch.nn.Module):
        parameters = list(decoder.parameters())
        if dtype == torch.float64 and torch.device(device).type == "cpu":
            decoder = tap_convolutions(decoder)
        else:
            decoder = copy.deepcopy(decoder)
        if parameters and parameters[0].dtype != dtype:
            decoder = decoder.to(dtype)
        for p in decoder.parameters():
            p.requires_grad_(False)
    return decoder


def _jacobian_precision(jacobian_dtype, dtype):
    """``jacobian_dtype`` (a torch floating dtype or its name, e.g. ``"float32"``; None:
    ``dtype``) as a torch dtype, with a clear error for anything else."""
    if jacobian_dtype is None:
        return dtype
    if isinstance(jacobian_dtype, str):
        candidate = getattr(torch, jacobian_dtype, None)
        if not isinstance(candidate, torch.dtype):
            raise ValueError(f"jacobian_dtype {jacobian_dtype!r} is not a torch dtype")
        jacobian_dtype = candidate
    if not isinstance(jacobian_dtype, torch.dtype) or not jacobian_dtype.is_floating_point:
        raise ValueError(f"jacobian_dtype must be a floating torch dtype (or its name), got "
                         f"{jacobian_dtype!r}")
    return jacobian_dtype


def _row_jacobian(decoder, dtype, device, jacobian_dtype):
    """``z -> (f(z), J(z)^T)`` per row, the Jacobian formed in ``jacobian_dtype``.

    In float32 on the CPU a ConvVAE decoder's Jacobian at d = 10 and its float64 values take
    1.4 s instead of 4.1 s for 200 rows (torch's float32 convolutions have fast kernels,
    float64 ones have not; ``benchmarks/nifty_jacobian.py``); the Jacobian differs by ~5e-7
    of its largest entry. The values stay in ``dtype``: every energy, and so every
    acceptance test of NIFTy's minimisers, is exact; what the Jacobian enters carries its
    rounding: gradients, metrics (MGVI's sample covariance) and geoVI's expansion of the
    coordinate transformation, each ~1e-7 relative.
    """
    value_decoder = _frozen(decoder, dtype, device)
    if jacobian_dtype == dtype:
        return value_decoder, functools.partial(decoder_jacobian, value_decoder)
    jacobian_decoder = _frozen(decoder, jacobian_dtype, device)

    def row_jacobian(z):
        _, jt = decoder_jacobian(jacobian_decoder, z.to(jacobian_dtype))
        return value_decoder(z), jt.to(dtype)

    return value_decoder, row_jacobian


def check_batch(batch):
    """``batch`` as a positive int; a clear error for 0, negatives, fractions and bools."""
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"the batch size B must be a positive integer, got {batch!r}")
    return int(batch)


def decoder_target(batch, data_dim, image_shape=None):
    """The decoder's NIFTy target: ``UnstructuredDomain((B, k))``, or with ``image_shape``
    ``(UnstructuredDomain(B), RGSpace(image_shape, distances=1.0))`` (lengths in pixels)."""
    batch = check_batch(batch)
    if image_shape is None:
        return ift.makeDomain(ift.UnstructuredDomain((batch, int(data_dim))))
    image_shape = tuple(int(n) for n in image_shape)
    if int(np.prod(image_shape)) != int(data_dim) or min(image_shape) < 1:
        raise ValueError(f"image_shape {image_shape} does not hold the decoder's {data_dim} "
                         f"outputs")
    return ift.makeDomain((ift.UnstructuredDomain(batch),
                           ift.RGSpace(image_shape, distances=1.0)))


def as_data(data, shape=None):
    """``data`` (numpy, torch, ``ift.Field`` or nested lists) as a finite float64 array.

    With ``shape``, the data must have it (or hold exactly its values, e.g. ``(B, 784)`` for
    ``(B, 28, 28)``, and are reshaped).
    """
    if is_field(data):
        data = values(data)
    elif isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype,
                                                                           np.integer):
        raise TypeError(f"data must be numbers, got dtype {data.dtype}")
    if shape is not None and data.shape != tuple(shape):
        if data.size != int(np.prod(shape)):
            raise ValueError(f"data have shape {data.shape}, expected {tuple(shape)}")
        data = data.reshape(shape)
    if not np.all(np.isfinite(data)):
        bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1) if data.ndim else [True]
        raise ValueError(f"data contain non-finite values in {int(np.sum(bad))} of "
                         f"{len(bad)} rows")
    return data.astype(np.float64)


def _batch_of(data, data_dim, image_shape):
    """B of decoder-space data: ``(B, k)``, ``(B,) + image_shape``, or one datum."""
    data = as_data(data)
    shapes = [(data_dim,)] + ([tuple(image_shape)] if image_shape is not None else [])
    if data.shape in shapes:
        return 1
    if data.ndim >= 2 and data.shape[1:] in shapes:
        return data.shape[0]
    expected = " or ".join(f"(B, {', '.join(map(str, s))})" for s in shapes)
    raise ValueError(f"data must have shape {expected} (one datum: without B), got "
                     f"{data.shape}")


def decoder_operator(model, batch, dtype=torch.float64, image_shape=None,
                     jacobian_dtype=None):
    """The decoder of a trained model as a NIFTy operator ``{latent: (B, d)} -> images``.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        A trained model in eval mode. Its parameters are not changed; the computation runs on
        the model's device in ``dtype`` (a float32 network is evaluated in float64 by a
        float64 copy of its decoder when ``dtype`` is float64).
    batch : int
        Number of data points ``B`` inferred jointly (one decoder call per evaluation).
    dtype : torch.dtype
        Computation precision.
    image_shape : tuple of int, optional
        E.g. ``(28, 28)``: the target is ``(UnstructuredDomain(B), RGSpace(image_shape,
        distances=1.0))``, so responses written on images (blurs in pixels, masks of
        image shape) apply directly. Default: the flat ``UnstructuredDomain((B, k))``.
    jacobian_dtype : torch.dtype or str, optional
        Precision of the decoder's Jacobian (default ``dtype``). ``torch.float32`` with a
        float64 ``dtype`` keeps the values exact and forms the Jacobian 3-4x faster for a
        convolutional decoder on the CPU (relative error ~1e-7; ``ift.extra.check_operator``
        then holds only to that precision).
    """
    _require_eval(model)
    return _latent_operator(model.decoder, batch, model.latent_dim, model.data_dim, dtype,
                            model.device, image_shape, jacobian_dtype)


def _latent_operator(decoder, batch, latent_dim, data_dim, dtype, device, image_shape=None,
                     jacobian_dtype=None):
    batch = check_batch(batch)
    latent = ift.UnstructuredDomain((batch, int(latent_dim)))
    flat = decoder_target(batch, data_dim)
    # Per-datum Jacobians once per point, d x k each: in one fused pass where the decoder has
    # one (this package's MLPs), else by forward-mode autodiff (a ConvVAE's); every Jacobian
    # product MGVI and geoVI apply at the point is then a batched matrix product, not a pass
    # through the decoder.
    decoder, row_jacobian = _row_jacobian(decoder, dtype, device,
                                          _jacobian_precision(jacobian_dtype, dtype))
    signal = TorchOperator(latent, flat, decoder, dtype=dtype, device=device,
                           row_jacobian=row_jacobian).ducktape(LATENT_KEY)
    if image_shape is None:
        return signal
    return ift.DomainChangerAndReshaper(flat, decoder_target(batch, data_dim,
                                                             image_shape)) @ signal


def noise_variance_operator(domain, mean=0.0, std=1.0):
    """``exp(mean + std * xi)`` broadcast over ``domain``, ``xi`` standard normal (key
    :data:`NOISE_KEY`): a log-normal noise variance as a NIFTy model.

    With ``mean=0, std=1`` the prior is the FisherNet's own prior on ``xi_N`` (Eq. 5).
    """
    domain = ift.makeDomain(domain)
    scalar = ift.DomainTuple.scalar_domain()
    log_variance = (ift.Adder(ift.full(scalar, float(mean)))
                    @ ift.ScalingOperator(scalar, float(std)).ducktape(NOISE_KEY))
    broadcast = ift.ContractionOperator(domain, None).adjoint
    return broadcast @ log_variance.exp()


def _signal(decoder, latent_dim, data_dim, data, response, dtype, device, image_shape,
            jacobian_dtype):
    """The model ``R f`` and the data on its target."""
    decoder_target(1, data_dim, image_shape)  # a clear error for a wrong image_shape first
    if response is None:
        batch = _batch_of(data, data_dim, image_shape)
        signal = _latent_operator(decoder, batch, latent_dim, data_dim, dtype, device,
                                  image_shape, jacobian_dtype)
        return signal, as_data(data, signal.target.shape)
    if not isinstance(response, ift.LinearOperator):
        raise TypeError(f"response must be an ift.LinearOperator, got "
                        f"{type(response).__name__}")
    shape = response.domain.shape
    if not shape or not isinstance(response.domain, ift.DomainTuple):
        raise ValueError(f"the response's domain {describe(response.domain)} is not a decoder output")
    expected = decoder_target(shape[0], data_dim, image_shape)
    if response.domain != expected:
        hint = ("" if image_shape is not None else
                "; for a response written on images pass image_shape=")
        raise ValueError(f"the response's domain is {describe(response.domain)}, but the "
                         f"decoder's target is {describe(expected)}{hint}")
    signal = response @ _latent_operator(decoder, shape[0], latent_dim, data_dim, dtype,
                                         device, image_shape, jacobian_dtype)
    return signal, as_data(data, signal.target.shape)


def decoder_likelihood(decoder, latent_dim, data, noise=1.0, response=None,
                       dtype=torch.float64, device="cpu", infer_noise=False,
                       noise_prior=(0.0, 1.0), image_shape=None, misfit=None,
                       data_dim=None, jacobian_dtype=None):
    """Gaussian likelihood ``d = R(f(z) + m) + n`` for any torch decoder.

    The building block of :func:`FisherNetLikelihood`; use it directly for a decoder that is
    not a trained model of this package (e.g. a known generative process).

    Parameters
    ----------
    decoder : callable
        Torch module or function ``(B, d) -> (B, k)``.
    latent_dim : int
        ``d``.
    data : array-like or ift.Field
        Without a response ``(B, k)``, ``(B,) + image_shape`` or one datum; with one, of the
        response target's shape.
    noise : float, array-like or ift.LinearOperator, optional
        The measurement noise ``n``: variance, per-pixel variance (the data's shape), or an
        inverse covariance operator on the data domain. None: none (then give ``misfit``).
        Ignored when ``infer_noise``.
    response : ift.LinearOperator, optional
        Linear map from the decoder's target (:func:`decoder_target`) to the data domain.
        Default identity.
    dtype, device
        Precision and device of the decoder evaluation.
    infer_noise : bool
        Infer one noise variance in data space as well: ``exp(mean + std * xi)`` with ``xi``
        standard normal under key :data:`NOISE_KEY` (``noise_prior = (mean, std)``), through
        ``ift.VariableCovarianceGaussianEnergy``.
    image_shape : tuple of int, optional
        The decoder's target on images (see :func:`decoder_operator`).
    misfit : float, optional
        Variance of the misfit ``m ~ N(0, misfit 1)`` on the decoder output, which the data
        see through the response (:mod:`.noise`).
    data_dim : int, optional
        ``k``; default: from ``image_shape``, the response's domain or the data.
    jacobian_dtype : torch.dtype or str, optional
        Precision of the decoder's Jacobian (see :func:`decoder_operator`).

    Returns
    -------
    ift.LikelihoodEnergyOperator
        Named :data:`LIKELIHOOD_NAME`.
    """
    if data_dim is None:
        if image_shape is not None:
            data_dim = int(np.prod(image_shape))
        elif response is not None and isinstance(response, ift.LinearOperator):
            data_dim = int(np.prod(response.domain.shape[1:]))
        else:
            shape = as_data(data).shape
            data_dim = shape[-1] if shape else 0
    signal, data = _signal(decoder, latent_dim, data_dim, data, response, dtype, device,
                           image_shape, jacobian_dtype)
    data_field = ift.makeField(signal.target, data)
    if infer_noise:
        mean, std = noise_prior
        residual = (ift.Adder(data_field, neg=True) @ signal).ducktape_left("residual")
        # exp(-(mean + std xi)): the inverse variance, with the same xi.
        precision = (noise_variance_operator(signal.target, -mean, -std)
                     .ducktape_left("inverse_covariance"))
        energy = ift.VariableCovarianceGaussianEnergy(signal.target, "residual",
                                                      "inverse_covariance", np.float64)
        likelihood = energy @ (residual + precision)
    else:
        inverse_covariance = noise_inverse_covariance(signal.target, noise, misfit, response)
        likelihood = (ift.GaussianEnergy(data_field, inverse_covariance=inverse_covariance)
                      @ signal)
    likelihood.name = LIKELIHOOD_NAME
    return likelihood


def FisherNetLikelihood(model, data, response=None, noise=None, dtype=torch.float64,
                        infer_noise=False, image_shape=None, misfit=True, jacobian_dtype=None):
    """Gaussian likelihood ``d = R(f_theta(z) + m) + n`` of a trained decoder, for NIFTy.

    The latent prior is NIFTy's standard one (``ift.StandardHamiltonian`` adds ``|z|^2 / 2``),
    so with ``R = 1`` the Hamiltonian's metric is the FisherNet metric
    ``J^T N^{-1} J + 1`` (Eq. 20) and MGVI, geoVI and ``ift.optimize_kl`` give latent
    posteriors directly.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained model in eval mode (FisherNet or a VAE baseline).
    data : array-like or ift.Field
        Without a response: ``(B, k)``, ``(B,) + image_shape`` or one datum; with a
        response, of its target's shape. B data are inferred jointly.
    response : ift.LinearOperator, optional
        Maps the decoder's target (flat ``(B, k)``, or images with ``image_shape``) to the
        data domain (a mask, a blur, ...). Default: identity.
    noise : float, array-like or ift.LinearOperator, optional
        A measurement noise on top of the model's misfit: a variance, per-pixel variances
        of the data's shape, or an inverse covariance operator on the data domain.
    dtype : torch.dtype
        Precision of the decoder evaluation.
    infer_noise : bool
        Infer the noise variance instead, as ``exp(xi_N)`` with the FisherNet's
        standard-normal prior on ``xi_N`` (a second key, :data:`NOISE_KEY`), one variance in
        data space.
    image_shape : tuple of int, optional
        The decoder's target on images (see :func:`decoder_operator`).
    misfit : bool or float
        The model's own misfit ``m ~ N(0, s 1)`` on the decoder output: True uses the
        learned ``s = exp(xi_N)``, a float another variance, False none (then ``noise`` is
        the whole noise). Through a response the data see ``R s R^T + N`` (:mod:`.noise`).
    jacobian_dtype : torch.dtype or str, optional
        Precision of the decoder's Jacobian (see :func:`decoder_operator`).

    Returns
    -------
    ift.LikelihoodEnergyOperator
        Domain ``MultiDomain({"latent": UnstructuredDomain((B, d))})`` (plus ``"xi_noise"``
        when inferring the noise), named :data:`LIKELIHOOD_NAME`; it provides
        ``get_transformation`` (geoVI) and normalized residuals.
    """
    _require_eval(model)
    if isinstance(misfit, bool):
        misfit = float(np.exp(model.noise.xi.item())) if misfit else None
    if infer_noise and noise is not None:
        raise ValueError("infer_noise infers the noise variance: do not also give noise=")
    return decoder_likelihood(model.decoder, model.latent_dim, data, noise, response,
                              dtype=dtype, device=model.device, infer_noise=infer_noise,
                              image_shape=image_shape, misfit=misfit,
                              data_dim=model.data_dim, jacobian_dtype=jacobian_dtype)
