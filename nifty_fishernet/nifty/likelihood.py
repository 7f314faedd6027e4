"""The FisherNet's Gaussian likelihood (Eq. 9) as a NIFTy likelihood energy."""

from __future__ import annotations

import copy

import nifty8 as ift
import numpy as np
import torch

from .operator import TorchOperator

__all__ = ["LATENT_KEY", "NOISE_KEY", "decoder_operator", "decoder_likelihood",
           "FisherNetLikelihood", "as_data_batch", "noise_variance_operator"]

#: Key of the latent field in every likelihood's MultiDomain.
LATENT_KEY = "latent"
#: Key of the standard-normal noise parameter ``xi_N`` when the noise level is inferred.
NOISE_KEY = "xi_noise"


def as_data_batch(data, data_dim):
    """``data`` as a finite float64 array of shape ``(B, data_dim)`` (a single datum is B=1)."""
    data = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"data must be floating point, got dtype {data.dtype}")
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[1] != data_dim:
        raise ValueError(f"data must have shape (batch, {data_dim}) or ({data_dim},), got "
                         f"{data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"data contain non-finite values in "
                         f"{int((~np.isfinite(data)).any(axis=1).sum())} of {data.shape[0]} rows")
    return data.astype(np.float64)


def _require_eval(model):
    if model.training:
        raise RuntimeError(f"the {type(model).__name__} is in training mode; call model.eval() "
                           f"so that its decoder is a fixed function during inference")


def _frozen(decoder, dtype):
    """A copy of ``decoder`` in ``dtype`` with gradients off.

    A copy, so that the caller's model keeps its dtype and trainability, and the NIFTy
    operator (which caches linearizations) sees fixed weights.
    """
    if isinstance(decoder, torch.nn.Module):
        parameters = list(decoder.parameters())
        decoder = copy.deepcopy(decoder)
        if parameters and parameters[0].dtype != dtype:
            decoder = decoder.to(dtype)
        for p in decoder.parameters():
            p.requires_grad_(False)
    return decoder


def decoder_operator(model, batch, dtype=torch.float64):
    """The decoder of a trained model as a NIFTy operator ``{latent: (B, d)} -> (B, k)``.

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
    """
    _require_eval(model)
    return _latent_operator(model.decoder, batch, model.latent_dim, model.data_dim, dtype,
                            model.device)


def _latent_operator(decoder, batch, latent_dim, data_dim, dtype, device):
    latent = ift.UnstructuredDomain((batch, latent_dim))
    output = ift.UnstructuredDomain((batch, data_dim))
    decoder = _frozen(decoder, dtype)
    # Decoders of this package form their per-datum Jacobians in one fused pass.
    row_jacobian = getattr(decoder, "forward_with_jacobian", None)
    return TorchOperator(latent, output, decoder, dtype=dtype, device=device,
                         row_jacobian=row_jacobian).ducktape(LATENT_KEY)


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


def decoder_likelihood(decoder, latent_dim, data, noise=1.0, response=None,
                       dtype=torch.float64, device="cpu", infer_noise=False,
                       noise_prior=(0.0, 1.0)):
    """Gaussian likelihood ``d = R(f(z)) + n``, ``n ~ N(0, noise)``, for any torch decoder.

    The building block of :func:`FisherNetLikelihood`; use it directly for a decoder that is
    not a trained model of this package (e.g. a known generative process).

    Parameters
    ----------
    decoder : callable
        Torch module or function ``(B, d) -> (B, k)``.
    latent_dim : int
        ``d``.
    data : array-like
        ``(B, k)`` without a response, else of the response target's shape.
    noise : float
        Noise variance (ignored when ``infer_noise``).
    response : ift.LinearOperator, optional
        Linear map from ``UnstructuredDomain((B, k))`` to the data domain. Default identity.
    dtype, device
        Precision and device of the decoder evaluation.
    infer_noise : bool
        Infer the noise variance as well: ``exp(mean + std * xi)`` with ``xi`` standard
        normal under key :data:`NOISE_KEY` (``noise_prior = (mean, std)``), through
        ``ift.VariableCovarianceGaussianEnergy``.
    """
    data = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
    if response is None:
        if data.ndim != 2:
            raise ValueError(f"data must have shape (batch, data_dim), got {data.shape}")
        data = as_data_batch(data, data.shape[1])
        batch, data_dim = data.shape
        signal = _latent_operator(decoder, batch, latent_dim, data_dim, dtype, device)
    else:
        if not isinstance(response, ift.LinearOperator):
            raise TypeError(f"response must be an ift.LinearOperator, got "
                            f"{type(response).__name__}")
        shape = response.domain.shape
        if len(shape) != 2:
            raise ValueError(f"the response's domain has shape {shape}; it must be the decoder "
                             f"output (batch, data_dim)")
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"data must be floating point, got dtype {data.dtype}")
        if data.shape != response.target.shape:
            raise ValueError(f"data have shape {data.shape}, the response's target has shape "
                             f"{response.target.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("data contain non-finite values")
        data = data.astype(np.float64)
        signal = response @ _latent_operator(decoder, shape[0], latent_dim, shape[1], dtype,
                                             device)
    data_field = ift.makeField(signal.target, data)
    if infer_noise:
        mean, std = noise_prior
        residual = (ift.Adder(data_field, neg=True) @ signal).ducktape_left("residual")
        # exp(-(mean + std xi)): the inverse variance, with the same xi.
        precision = (noise_variance_operator(signal.target, -mean, -std)
                     .ducktape_left("inverse_covariance"))
        energy = ift.VariableCovarianceGaussianEnergy(signal.target, "residual",
                                                      "inverse_covariance", np.float64)
        return energy @ (residual + precision)
    noise = float(noise)
    if not noise > 0 or not np.isfinite(noise):
        raise ValueError(f"noise variance must be positive and finite, got {noise}")
    inverse_covariance = ift.ScalingOperator(signal.target, noise, np.float64).inverse
    return ift.GaussianEnergy(data_field, inverse_covariance=inverse_covariance) @ signal


def FisherNetLikelihood(model, data, response=None, noise=None, dtype=torch.float64,
                        infer_noise=False):
    """Gaussian likelihood ``d = R(f_theta(z)) + n`` of a trained decoder, for NIFTy.

    The latent prior is NIFTy's standard one (``ift.StandardHamiltonian`` adds ``|z|^2 / 2``),
    so with ``R = 1`` the Hamiltonian's metric is the FisherNet metric
    ``J^T N^{-1} J + 1`` (Eq. 20) and MGVI, geoVI and ``ift.optimize_kl`` give latent
    posteriors directly.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Trained model in eval mode (FisherNet or a VAE baseline).
    data : array-like
        ``(B, k)`` data for ``R = 1``, else ``(B,) + response.target.shape`` flattened as the
        response's target; a single datum may be 1-D. B data are inferred jointly.
    response : ift.LinearOperator, optional
        Maps the decoder output domain ``UnstructuredDomain((B, k))`` to the data domain
        (a mask, a blur, ...). Default: identity.
    noise : float, optional
        Noise variance; default the model's learned ``exp(xi_N)``.
    dtype : torch.dtype
        Precision of the decoder evaluation.
    infer_noise : bool
        Infer the noise variance too, as ``exp(xi_N)`` with the FisherNet's standard-normal
        prior on ``xi_N`` (a second key, :data:`NOISE_KEY`, in the domain).

    Returns
    -------
    ift.LikelihoodEnergyOperator
        Domain ``MultiDomain({"latent": UnstructuredDomain((B, d))})`` (plus ``"xi_noise"``
        when inferring the noise); it provides ``get_transformation`` (geoVI) and normalized
        residuals.
    """
    _require_eval(model)
    if response is None:
        data = as_data_batch(data, model.data_dim)
    elif isinstance(response, ift.LinearOperator) and (
            len(response.domain.shape) != 2 or response.domain.shape[1] != model.data_dim):
        raise ValueError(f"the response's domain has shape {response.domain.shape}; it must "
                         f"be the decoder output (batch, {model.data_dim})")
    variance = float(np.exp(model.noise.xi.item())) if noise is None else noise
    return decoder_likelihood(model.decoder, model.latent_dim, data, variance, response,
                              dtype=dtype, device=model.device, infer_noise=infer_noise)
