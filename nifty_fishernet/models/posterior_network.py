"""An amortized posterior fitted to a trained model's own generative process (a sleep phase).

A model's encoder is trained for reconstruction: its mean is not the posterior's, and the
FisherNet's ``M(mu)^{-1}`` is not the posterior's spread (docs/RESULTS.md, Calibration). The
posterior the model itself defines, ``p(z | x) ∝ N(z; 0, 1) N(x; f(z), exp(xi_N))``, can
instead be learned from simulations, as the sleep phase of the wake-sleep algorithm and
neural posterior estimation do: draw ``z ~ N(0, 1)``, ``x = f(z) + sigma_N eps`` with the
decoder fixed, and maximise ``log q(z | x)`` for a Gaussian ``q`` with a full covariance.
This minimises ``E_x KL(p(z | x) || q(z | x))``: ``q`` covers the posterior's mass instead of
hugging a mode, which is what coverage asks for. One network pass per datum, no decoder
calls at inference; the model's own encoder and reconstructions stay as they are.

Real images are not draws of the model's generative process (the decoder cannot make them
exactly), so a network fitted to simulations alone meets them out of distribution. With
``real_images``, every step adds the wake-phase update of reweighted wake-sleep
(Bornschein & Bengio 2015): ``K`` draws from ``q`` for a batch of real images, weighted by
``p(z, x) / q(z | x)`` (self-normalised), and ``log q`` raised at them. Its optimum is the
same forward KL, now over the real images.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..fisher import latent_energy
from ..validation import check_batch
from .mlp import MLP

__all__ = ["PosteriorNetwork", "fit_posterior_network"]


class PosteriorNetwork(nn.Module):
    """``q(z | x) = N(m(x), L(x) L(x)^T)`` from the data and the model's encoder mean.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        The trained model whose posterior is learned; its encoder mean is an input (a good
        first guess), its weights are not changed and not part of this module.
    hidden, layers : int
        Width and depth of the MLP ``(x, mu_enc(x)) -> (m, L)``.
    """

    def __init__(self, model, hidden=512, layers=2):
        super().__init__()
        self.latent_dim = d = int(model.latent_dim)
        self.data_dim = int(model.data_dim)
        self._model = [model]  # a plain reference: not a submodule, not trained or saved
        self.net = MLP(self.data_dim + d, d + d * (d + 1) // 2, hidden=hidden, layers=layers)
        rows, cols = torch.tril_indices(d, d)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        with torch.no_grad():  # start at the encoder mean with a unit scale
            self.net.linears[-1].weight.mul_(0.01)
            self.net.linears[-1].bias.zero_()

    @property
    def model(self):
        return self._model[0]

    def forward(self, x):
        """Mean ``(B, d)`` and the Cholesky factor ``(B, d, d)`` of the covariance."""
        d = self.latent_dim
        with torch.no_grad():
            guess = self.model.encode(x)
        out = self.net(torch.cat([x, guess], dim=-1))
        mean = guess + out[:, :d]
        entries = out[:, d:]
        chol = torch.zeros(x.shape[0], d, d, dtype=out.dtype, device=out.device)
        chol[:, self.rows, self.cols] = entries
        diagonal = torch.diagonal(chol, dim1=-2, dim2=-1)
        # a positive diagonal through softplus, 1 at initialisation, never below 1e-4
        chol = chol - torch.diag_embed(diagonal) + torch.diag_embed(
            nn.functional.softplus(diagonal + math.log(math.e - 1)) + 1e-4)
        return mean, chol

    def posterior(self, x):
        """``(mean (B, d), covariance (B, d, d))`` of ``q(z | x)``."""
        mean, chol = self(x)
        return mean, chol @ chol.transpose(-1, -2)

    def log_prob(self, z, x):
        """``log q(z | x)`` per datum ``(B,)``."""
        return _gaussian_log_prob(z, *self(x))


def _gaussian_log_prob(z, mean, chol):
    """``log N(z; mean, chol chol^T)`` for ``z`` of shape ``(..., B, d)``: ``(..., B)``."""
    diff = (z - mean).reshape(-1, *mean.shape).permute(1, 2, 0)  # (B, d, S)
    white = torch.linalg.solve_triangular(chol, diff, upper=False)
    squares = (white ** 2).sum(-2).permute(1, 0).reshape(z.shape[:-1])
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * squares - log_det - 0.5 * mean.shape[-1] * math.log(2 * math.pi)


def fit_posterior_network(model, steps=4000, batch_size=256, lr=1e-3, hidden=512, layers=2,
                          real_images=None, wake_draws=16, wake_batch=64, seed=0,
                          progress=True):
    """Fit a :class:`PosteriorNetwork` to ``model``'s own simulations (the sleep phase).

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        A trained model; it is put in eval mode and left unchanged.
    steps, batch_size : int
        Adam steps, each on ``batch_size`` fresh simulations ``z ~ N(0, 1)``,
        ``x = f(z) + sigma_N eps`` (no simulation is seen twice, so no overfitting).
    lr : float
        Adam's learning rate (cosine-decayed to 0 over the steps).
    hidden, layers : int
        The network's size.
    real_images : array-like, optional
        ``(n, k)`` images (e.g. training images) for the wake phase: each step then also
        takes ``wake_batch`` of them and ``wake_draws`` importance draws from ``q`` for each.
    wake_draws, wake_batch : int
        Draws per image and images per step of the wake phase.
    seed : int
        Seeds the initial weights, the simulations and the wake phase's batches and draws.
    progress : bool
        Show a tqdm bar with the running loss.

    Returns
    -------
    PosteriorNetwork
        In eval mode; ``history`` holds the mean loss (negative log q, nats) per 100 steps.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size),
                        ("wake_draws", wake_draws), ("wake_batch", wake_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model.eval()
    if real_images is not None:
        real_images = torch.as_tensor(real_images, dtype=model.dtype, device=model.device)
        check_batch(real_images, model.data_dim, model.dtype, "real_images")
    torch.manual_seed(seed)
    network = PosteriorNetwork(model, hidden, layers).to(model.device, model.dtype)
    generator = torch.Generator(device=model.device).manual_seed(int(seed) + 1)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    network.history = []
    running = []
    for step in tqdm(range(steps), desc="posterior network", disable=not progress):
        with torch.no_grad():
            z = torch.randn(batch_size, network.latent_dim, generator=generator,
                            dtype=model.dtype, device=model.device)
            value = model.decoder(z)
            x = value + model.noise_std * torch.randn(value.shape, generator=generator,
                                                      dtype=model.dtype, device=model.device)
        # a caller's torch.no_grad() block must not silently switch the fit off
        with torch.enable_grad():
            loss = -network.log_prob(z, x).mean()
            if real_images is not None:
                loss = loss + _wake_loss(network, model, real_images, wake_draws, wake_batch,
                                         generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"posterior network loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if len(running) == 100:
            network.history.append(sum(running) / 100)
            running = []
    return network.eval()


def _wake_loss(network, model, images, draws, batch, generator):
    """Reweighted wake-sleep's q update on a batch of real images (see the module doc)."""
    index = torch.randint(0, images.shape[0], (batch,), generator=generator,
                          device=images.device)
    x = images[index]
    mean, chol = network(x)  # one pass: the draws use it detached, the loss with gradients
    with torch.no_grad():
        eps = torch.randn(draws, batch, network.latent_dim, generator=generator,
                          dtype=mean.dtype, device=mean.device)
        z = mean + torch.einsum("bij,sbj->sbi", chol, eps)
        value = model.decoder(z.reshape(-1, network.latent_dim)).reshape(draws, batch, -1)
        energy = latent_energy(x.unsqueeze(0), z, value, model.noise.precision.to(x.dtype))
        weights = torch.softmax(-energy - _gaussian_log_prob(z, mean, chol), dim=0)
    return -(weights * _gaussian_log_prob(z, mean, chol)).sum(0).mean()
