"""The FisherNet: an autoencoder whose latent covariance is the inverse Fisher metric."""

from __future__ import annotations

import torch

from ..fisher import (decoder_jacobian, draw_metric_noise, inverse_metric_offsets_cg,
                      inverse_metric_offsets_cholesky, metric_from_jacobian, newton_map,
                      principal_axes)
from .base import LatentModel, register_model
from .config import SOLVERS, FisherNetConfig
from .mlp import MLP
from .noise import GaussianNoise

__all__ = ["FisherNet"]

#: Above this latent dimension ``solver="auto"`` switches from Cholesky to matrix-free CG.
CHOLESKY_MAX_DIM = 64


@register_model
class FisherNet(LatentModel):
    """FisherNet (paper Sect. 2): encoder for ``mu`` only, covariance ``M(mu)^{-1}``.

    Parameters
    ----------
    latent_dim : int
        ``d``.
    data_dim : int
        ``k`` (784 for 28x28 images).
    hidden, layers : int
        Width and number of hidden dense ReLU layers of encoder and decoder (Table 2).
    solver : {"auto", "cholesky", "cg"}
        How :meth:`sample_latent` and :meth:`loss` solve ``M z = theta``: batched Cholesky
        (``auto`` for ``d <= 64``) or matrix-free conjugate gradients (``auto`` above).
    differentiate_metric : bool
        Default for :meth:`loss`. False (default) holds the sample offset ``z* - mu``
        constant, as MGVI does; True lets gradients flow through ``J`` and the solve.
    n_samples : int
        ``S``, samples per datum in the loss (Eq. 22-23; the paper uses 1).
    log_det : bool
        Keep the term ``1/2 ln |M(mu)|`` of Eq. 24 that the paper drops for Eq. 25 (the
        entropy of the latent posterior), with its gradients through ``J``.
    map_weight : float
        Weight of an encoder term ``1/2 (mu - z_MAP)^T M (mu - z_MAP)`` that pulls the
        encoder's mean towards the MAP of each datum's own posterior (found by
        ``map_steps`` Newton steps from ``mu``, held constant); 0 (default) is the paper's
        loss. It aims at the amortization gap: the encoder's mean lies several posterior
        sigma from the MAP.
    map_steps : int
        Newton steps per batch for that MAP.
    jacobian : {"auto", "fused", "autodiff"}
        How the decoder's Jacobian is computed: the MLP decoder's fused forward pass
        (``auto``, the same numbers as autodiff), or forward-mode autodiff.

    Notes
    -----
    ``N = exp(xi_N) 1`` (Eq. 5) with a learnable scalar ``xi_N`` initialised at 0 and a
    standard-normal prior.
    """

    Config = FisherNetConfig

    def __init__(self, latent_dim, data_dim=784, hidden=448, layers=3, solver="auto",
                 differentiate_metric=False, n_samples=1, log_det=False, map_weight=0.0,
                 map_steps=3, jacobian="auto"):
        super().__init__()
        self._set_config(FisherNetConfig(
            latent_dim=latent_dim, data_dim=data_dim, hidden=hidden, layers=layers,
            solver=solver, differentiate_metric=differentiate_metric, n_samples=n_samples,
            log_det=log_det, map_weight=map_weight, map_steps=map_steps, jacobian=jacobian))
        c = self.model_config
        self.n_samples, self.log_det = c.n_samples, c.log_det
        self.map_weight, self.map_steps = c.map_weight, c.map_steps
        self.solver, self.differentiate_metric = c.solver, c.differentiate_metric
        self.jacobian = c.jacobian
        self.encoder = MLP(c.data_dim, c.latent_dim, c.hidden, c.layers)
        self.decoder = MLP(c.latent_dim, c.data_dim, c.hidden, c.layers,
                           output_activation="sigmoid")
        self.noise = GaussianNoise(learn=True)

    @property
    def xi_n(self):
        """The noise parameter ``xi_N`` (a scalar tensor)."""
        return self.noise.xi

    def encode(self, x):
        self._check_data(x)
        return self.encoder(x)

    def decode(self, z):
        self._check_latent(z)
        return self.decoder(z)

    def resolve_solver(self, solver):
        """The solver that ``solver`` (None: the model's own) means at this ``d``."""
        solver = self.solver if solver is None else solver
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver == "auto":
            return "cholesky" if self.latent_dim <= CHOLESKY_MAX_DIM else "cg"
        return solver

    def metric(self, mu):
        """``M(mu) = J^T exp(-xi_N) J + 1`` (Eq. 20), shape ``(B, d, d)``."""
        self._check_latent(mu, "mu")
        _, jt = decoder_jacobian(self.decoder, mu, self.jacobian)
        return metric_from_jacobian(jt, self.noise.precision)

    def posterior_covariance(self, mu):
        """``M(mu)^{-1}``, shape ``(B, d, d)``."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.metric(mu)))

    def posterior_axes(self, mu):
        """Standard deviations ``(B, d)`` and axes ``(B, d, d)`` of ``M(mu)^{-1}``, largest
        first: the uncertainty ellipses of the paper's Fig. 5."""
        return principal_axes(self.posterior_covariance(mu))

    def amortized_posterior(self, x):
        mu = self.encode(x)
        return mu, self.posterior_covariance(mu)

    def draw_noise(self, n_samples, batch, generator=None):
        """Standard-normal noise ``(eps, eta*)`` of shapes ``(S, B, k)``, ``(S, B, d)``;
        :meth:`sample_latent` uses ``n* = exp(-xi_N / 2) eps`` (Eq. 28) and ``eta*`` (Eq. 29)."""
        return draw_metric_noise(n_samples, batch, self.latent_dim, self.data_dim,
                                 generator=generator, dtype=self.dtype, device=self.device)

    def _offsets(self, mu, n_samples, generator, solver, noise, jt=None):
        """``z* - mu`` (Eq. 28-31); ``jt``, if given, is ``J(mu)^T`` already computed."""
        solver = self.resolve_solver(solver)
        eps, eta = noise if noise is not None else self.draw_noise(n_samples, mu.shape[0],
                                                                   generator)
        precision = self.noise.precision
        n_star = torch.sqrt(precision) * eps
        if solver == "cholesky":
            if jt is None:
                _, jt = decoder_jacobian(self.decoder, mu, self.jacobian)
            return inverse_metric_offsets_cholesky(jt, precision, n_star, eta)
        return inverse_metric_offsets_cg(self.decoder, mu, precision, n_star, eta)

    def encode_posterior(self, x):
        """``{"mu": mu}``: the FisherNet's encoder gives the mean only; the covariance is
        ``M(mu)^{-1}``."""
        return {"mu": self.encode(x)}

    def sample_latent(self, mu, n_samples=1, generator=None, *, solver=None, noise=None):
        """Draw ``z* ~ N(mu, M(mu)^{-1})`` as in Eq. 28-31.

        Parameters
        ----------
        mu : torch.Tensor
            Latent means, shape ``(B, d)``.
        n_samples : int
            Draws per mean.
        generator : torch.Generator, optional
            Source of the noise.
        solver : {None, "auto", "cholesky", "cg"}
            Overrides the model's solver. Both give the same draw for the same noise, within
            the CG tolerance.
        noise : tuple of torch.Tensor, optional
            ``(eps, eta)`` from :meth:`draw_noise`, to reuse the same standard noise.

        Returns
        -------
        torch.Tensor
            Shape ``(n_samples, B, d)``.
        """
        self._check_latent(mu, "mu")
        return mu + self._offsets(mu, n_samples, generator, solver, noise)

    def loss(self, x, n_data=None, generator=None, differentiate_metric=None, noise=None):
        """Eq. 25 with ``S`` samples per datum (``n_samples``; the paper: 1), divided by the
        batch size.

        Per datum ``i``::

            l_i = 1/2 [ mean_s (|z*_is|^2 + exp(-xi_N) |d_i - f(z*_is)|^2) + k xi_N
                        + xi_N^2 / p ]
                  [+ 1/2 ln |M(mu_i)|                               with log_det]
                  [+ map_weight/2 (mu_i - z_MAP)^T M (mu_i - z_MAP)  with map_weight]

        with ``z*_is ~ N(mu_i, M(mu_i)^{-1})`` and ``p = n_data``. The prior term
        ``xi_N^2 / 2`` of the whole data set is shared equally by its ``p`` data, so the
        returned batch mean times ``p`` is an unbiased estimate of Eq. 25 over all ``p`` data
        for any batch size. ``n_data`` defaults to the batch size (the batch is the data set);
        :func:`nifty_fishernet.train` passes the training-set size.

        Parameters
        ----------
        x : torch.Tensor
            Data batch ``(B, k)``.
        n_data : int, optional
            ``p``, the number of data the prior term is shared by.
        generator : torch.Generator, optional
            Source of the sampling noise.
        differentiate_metric : bool, optional
            Overrides the model default: whether gradients flow through ``z* - mu``.
        noise : tuple of torch.Tensor, optional
            ``(eps, eta)`` from :meth:`draw_noise` with ``S`` draws, to reproduce a loss.
        """
        differentiate = (self.differentiate_metric if differentiate_metric is None
                         else differentiate_metric)
        mu = self.encode(x)
        # the log-det term needs J(mu) with gradients; the sampling reuses it
        jt = decoder_jacobian(self.decoder, mu, self.jacobian)[1] if self.log_det else None
        if differentiate:
            offset = self._offsets(mu, self.n_samples, generator, None, noise, jt)
        else:
            with torch.no_grad():
                offset = self._offsets(mu.detach(), self.n_samples, generator, None, noise,
                                       None if jt is None else jt.detach())
        # one decoder call per sample: with S = 1 exactly the paper's loss as before
        per_datum = torch.stack([0.5 * (z ** 2).sum(-1)
                                 + self.noise.neg_log_likelihood(x, self.decoder(z))
                                 for z in mu + offset]).mean(0)
        if self.log_det:
            chol = torch.linalg.cholesky(metric_from_jacobian(jt, self.noise.precision))
            per_datum = per_datum + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        if self.map_weight:
            with torch.no_grad():
                found = newton_map(self.decoder, x, mu.detach(), self.noise.precision.detach(),
                                   max_steps=self.map_steps, tolerance=0.0)
            gap = mu - found.z
            per_datum = per_datum + 0.5 * self.map_weight * (
                gap * (found.metric @ gap.unsqueeze(-1)).squeeze(-1)).sum(-1)
        p = x.shape[0] if n_data is None else n_data
        return per_datum.mean() + self.noise.prior_term(p)
