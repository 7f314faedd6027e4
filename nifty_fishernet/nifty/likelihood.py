"""The FisherNet's Gaussian likelihood (Eq. 9) as a NIFTy likelihood energy."""

from __future__ import annotations

import copy

import nifty8 as ift
import numpy as np
import torch

from .operator import TorchOperator

__all__ = ["LATENT_KEY", "decoder_operator", "FisherNetLikelihood", "as_data_batch"]

#: Key of the latent field in every likelihood's MultiDomain.
LATENT_KEY = "latent"


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


def decoder_operator(model, batch, dtype=torch.float64):
    """The decoder as a NIFTy operator ``{latent: (B, d)} -> (B, k)``.

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
    decoder = model.decoder
    if next(decoder.parameters()).dtype != dtype:
        decoder = copy.deepcopy(decoder).to(dtype)
    for p in decoder.parameters():
        p.requires_grad_(False)
    latent = ift.UnstructuredDomain((batch, model.latent_dim))
    output = ift.UnstructuredDomain((batch, model.data_dim))
    return TorchOperator(latent, output, decoder, dtype=dtype).ducktape(LATENT_KEY)


def FisherNetLikelihood(model, data, response=None, noise=None, dtype=torch.float64):
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

    Returns
    -------
    ift.LikelihoodEnergyOperator
        Domain ``MultiDomain({"latent": UnstructuredDomain((B, d))})``; it provides
        ``get_transformation`` (geoVI) and normalized residuals.
    """
    _require_eval(model)
    if response is None:
        data = as_data_batch(data, model.data_dim)
        batch = data.shape[0]
        signal = decoder_operator(model, batch, dtype)
        data_domain = signal.target
    else:
        if not isinstance(response, ift.LinearOperator):
            raise TypeError(f"response must be an ift.LinearOperator, got "
                            f"{type(response).__name__}")
        shape = response.domain.shape
        if len(shape) != 2 or shape[1] != model.data_dim:
            raise ValueError(f"the response's domain has shape {shape}; it must be the decoder "
                             f"output (batch, {model.data_dim})")
        batch = shape[0]
        data_domain = response.target
        data = np.asarray(data, dtype=np.float64)
        if data.shape != data_domain.shape:
            raise ValueError(f"data have shape {data.shape}, the response's target has shape "
                             f"{data_domain.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("data contain non-finite values")
        signal = decoder_operator(model, batch, dtype)
        if signal.target != response.domain:
            raise ValueError(f"the response's domain {response.domain} does not match the "
                             f"decoder output {signal.target}")
        signal = response @ signal
    variance = float(np.exp(model.noise.xi.item())) if noise is None else float(noise)
    if not variance > 0 or not np.isfinite(variance):
        raise ValueError(f"noise variance must be positive and finite, got {variance}")
    inverse_covariance = ift.ScalingOperator(data_domain, variance, np.float64).inverse
    return ift.GaussianEnergy(ift.makeField(data_domain, data),
                              inverse_covariance=inverse_covariance) @ signal
