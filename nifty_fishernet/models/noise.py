"""The decoder's Gaussian noise model, fixed or learned (Eq. 4-5)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GaussianNoise"]


class GaussianNoise(nn.Module):
    """``N = exp(xi_N) 1`` with a standard-normal prior on ``xi_N`` when learned.

    Parameters
    ----------
    learn : bool
        If True, ``xi_N`` is a trainable parameter (FisherNet, "calibrated" VAE), starting at
        0. If False it is a buffer fixed at ``log(variance)``: the plain VAE's Gaussian
        likelihood of fixed variance.
    variance : float
        The fixed variance (``learn=False`` only): 1 is the paper's VAE; 0.5 makes the
        negative log-likelihood the plain sum of squared errors, the common Keras convention.
    """

    def __init__(self, learn=True, variance=1.0):
        super().__init__()
        variance = float(variance)
        if not (math.isfinite(variance) and variance > 0):
            raise ValueError(f"the noise variance must be a positive number, got {variance!r}")
        if learn and variance != 1.0:
            raise ValueError("a fixed noise variance and a learned noise level exclude each "
                             "other: pass learn=False with variance, or learn=True alone")
        self.learn = learn
        if learn:
            self.xi = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("xi", torch.tensor(math.log(variance)))

    @property
    def precision(self):
        """``exp(-xi_N)``, a scalar tensor."""
        return torch.exp(-self.xi)

    @property
    def std(self):
        """Noise standard deviation ``sqrt(exp(xi_N))`` as a float."""
        return math.exp(0.5 * self.xi.item())

    def neg_log_likelihood(self, x, x_hat):
        """Per-datum ``1/2 [exp(-xi_N) |x - x_hat|^2 + k xi_N]`` (Eq. 25, constants dropped).

        Returns
        -------
        torch.Tensor
            Shape ``(B,)``.
        """
        k = x.shape[-1]
        return 0.5 * (self.precision * ((x - x_hat) ** 2).sum(-1) + k * self.xi)

    def prior_term(self, n_data):
        """Per-datum share ``xi_N^2 / (2 p)`` of the prior (Eq. 25); zero if not learned."""
        if not self.learn:
            return torch.zeros((), dtype=self.xi.dtype, device=self.xi.device)
        return 0.5 * self.xi ** 2 / n_data
