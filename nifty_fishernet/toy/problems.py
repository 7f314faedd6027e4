"""Generative processes with a 2-D latent, for checks against exact (grid) posteriors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ToyProblem", "BananaDecoder", "RandomMLPDecoder", "banana_problem",
           "random_mlp_problem"]


class BananaDecoder(nn.Module):
    """``f(z) = sigmoid(A u(z) + c)`` with banana coordinates ``u = (z1, z2 - b (z1^2 - 1))``.

    The data see ``u2`` sharply and ``u1`` only weakly, so the posterior is spread along the
    parabola ``z2 = u2 + b (z1^2 - 1)``: strongly curved, far from any Gaussian.
    """

    def __init__(self, data_dim=16, bend=1.0, weak=0.15, strong=2.0, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        weights = torch.randn(data_dim, 2, generator=gen, dtype=torch.float64)
        weights[:, 0] *= weak
        weights[:, 1] *= strong
        self.register_buffer("weights", weights)
        self.register_buffer("offset", 0.5 * torch.randn(data_dim, generator=gen,
                                                         dtype=torch.float64))
        self.bend = float(bend)

    def forward(self, z):
        u = torch.stack([z[..., 0], z[..., 1] - self.bend * (z[..., 0] ** 2 - 1.0)], dim=-1)
        return torch.sigmoid(u @ self.weights.T + self.offset)


class RandomMLPDecoder(nn.Module):
    """``sigmoid(W2 tanh(W1 z + b1) + b2)`` with fixed Gaussian weights (variance ``gain^2 /
    fan_in``): a smooth, mildly nonlinear map."""

    def __init__(self, data_dim=16, hidden=32, gain=1.5, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w1", gain * torch.randn(hidden, 2, generator=gen,
                                                      dtype=torch.float64) / 2 ** 0.5)
        self.register_buffer("b1", 0.5 * torch.randn(hidden, generator=gen, dtype=torch.float64))
        self.register_buffer("w2", gain * torch.randn(data_dim, hidden, generator=gen,
                                                      dtype=torch.float64) / hidden ** 0.5)
        self.register_buffer("b2", 0.5 * torch.randn(data_dim, generator=gen,
                                                     dtype=torch.float64))

    def forward(self, z):
        return torch.sigmoid(torch.tanh(z @ self.w1.T + self.b1) @ self.w2.T + self.b2)


@dataclass
class ToyProblem:
    """``z ~ N(0, 1_2)``, ``x = f(z) + n``, ``n ~ N(0, noise_variance 1_k)``.

    Attributes
    ----------
    name : str
    decoder : torch.nn.Module
        The true map ``f`` (float64, no trainable parameters).
    noise_variance : float
    """

    name: str
    decoder: nn.Module
    noise_variance: float
    latent_dim: int = 2

    @property
    def data_dim(self):
        return int(self.decoder(torch.zeros(1, self.latent_dim, dtype=torch.float64)).shape[1])

    @torch.no_grad()
    def sample(self, n, seed=0):
        """``n`` draws ``(z, x)`` as float64 tensors, reproducible from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=gen, dtype=torch.float64)
        clean = self.decoder(z)
        return z, clean + self.noise_variance ** 0.5 * torch.randn(
            clean.shape, generator=gen, dtype=torch.float64)


def banana_problem(data_dim=16, noise_std=0.1, seed=0, **kw):
    """Toy problem (a): the analytic banana map, strongly non-Gaussian posteriors."""
    return ToyProblem("banana", BananaDecoder(data_dim, seed=seed, **kw).eval(), noise_std ** 2)


def random_mlp_problem(data_dim=16, noise_std=0.1, seed=0, **kw):
    """Toy problem (b): a small random-weight MLP decoder."""
    return ToyProblem("random_mlp", RandomMLPDecoder(data_dim, seed=seed, **kw).eval(),
                      noise_std ** 2)
