"""The interface every latent-variable model of the package shares."""

from __future__ import annotations

import torch
from torch import nn

from ..fisher import latent_energy
from ..io.registry import MODEL_TYPES
from ..validation import check_batch as check_data
from .config import ModelConfig

__all__ = ["LatentModel", "MODEL_TYPES", "register_model", "check_data"]


def register_model(cls):
    """Class decorator adding a model to :data:`MODEL_TYPES` (checkpoints name their class
    there, so loading never imports or unpickles anything a file asks for)."""
    return MODEL_TYPES.register(cls)


class LatentModel(nn.Module):
    """Base class: an autoencoder with a Gaussian latent posterior per datum.

    Subclasses build their settings dataclass (:attr:`Config`) and pass it to
    :meth:`_set_config` (which sets ``latent_dim``, ``data_dim``, ``model_config`` and its
    stored form ``config``, all a checkpoint needs to rebuild the model), hold ``decoder``
    (the network ``f``) and ``noise`` (:class:`~nifty_fishernet.models.noise.GaussianNoise`),
    and implement :meth:`encode`, :meth:`decode`, :meth:`loss`, :meth:`amortized_posterior`,
    :meth:`encode_posterior` and :meth:`sample_latent` (one signature for all models).
    :meth:`posterior` and :meth:`sample_posterior` add the refined posterior
    (:func:`~nifty_fishernet.models.refine.refine_posterior`) for every model.
    """

    latent_dim: int
    data_dim: int
    config: dict

    #: The settings dataclass of this model class (:mod:`nifty_fishernet.models.config`).
    Config = ModelConfig
    #: The network ``f`` from latents ``(B, d)`` to data means ``(B, k)``.
    decoder: nn.Module
    #: The Gaussian likelihood's noise ``N = exp(xi_N) 1``, fixed or learned.
    noise: nn.Module

    def _set_config(self, config):
        """Keep the validated settings (``model_config``), their stored form (``config``) and
        the sizes every model has."""
        self.model_config = config
        self.config = config.to_dict()
        self.latent_dim = config.latent_dim
        if hasattr(config, "data_dim"):
            self.data_dim = config.data_dim

    @classmethod
    def check_config(cls, config):
        """Raise a clear error unless ``config`` (e.g. read from a checkpoint) is a dict of
        this class's settings with valid values; called before building.

        Raises
        ------
        TypeError
            Not a dict, or a key the class does not take.
        ValueError
            An invalid value (e.g. a size that is not a positive integer).
        """
        cls.Config.from_dict(config)

    @property
    def noise_variance(self):
        """Decoder noise variance ``exp(xi_N)`` as a float (1.0 for the paper's VAE)."""
        return float(self.noise.std) ** 2

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def noise_std(self):
        """Decoder noise standard deviation ``sqrt(exp(xi_N))`` (1.0 when fixed)."""
        return self.noise.std

    def _check_data(self, x, name="x"):
        check_data(x, self.data_dim, self.dtype, name)

    def _check_latent(self, z, name="z"):
        check_data(z, self.latent_dim, self.dtype, name)

    def encode(self, x):
        """Latent mean ``mu`` of shape ``(B, d)`` for data ``x`` of shape ``(B, k)``."""
        raise NotImplementedError

    def decode(self, z):
        """Decoder mean ``f(z)`` of shape ``(B, k)`` for latents of shape ``(B, d)``."""
        raise NotImplementedError

    def energy(self, x, z):
        """The latent energy ``E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2`` of data ``x``
        (the negative log posterior of the model's own decoder and noise, up to a constant).

        Parameters
        ----------
        x : torch.Tensor
            Data ``(B, k)``.
        z : torch.Tensor
            Latents ``(B, d)`` or ``(S, B, d)`` (e.g. S points per datum).

        Returns
        -------
        torch.Tensor
            ``(B,)`` or ``(S, B)``, in the model's dtype; differentiable.
        """
        self._check_data(x)
        z = torch.as_tensor(z)
        if z.dim() not in (2, 3) or z.shape[-2:] != (x.shape[0], self.latent_dim):
            raise ValueError(f"z must have shape (B, d) or (S, B, d) with B = {x.shape[0]} "
                             f"data and d = {self.latent_dim}, got {tuple(z.shape)}")
        if z.dtype != self.dtype:
            raise TypeError(f"z must have the model's dtype {self.dtype}, got {z.dtype}")
        flat = z.reshape(-1, self.latent_dim)
        value = self.decoder(flat).reshape(*z.shape[:-1], -1)
        return latent_energy(x, z, value, self.noise.precision.to(x.dtype))

    def loss(self, x, n_data=None, generator=None):
        """Training loss: mean over the batch of each datum's share of the objective."""
        raise NotImplementedError

    def amortized_posterior(self, x):
        """The encoder's posterior approximation ``(mu (B, d), covariance (B, d, d))``."""
        raise NotImplementedError

    def encode_posterior(self, x):
        """The amortized posterior's parameters, ``{"mu": (B, d), ...}``: exactly the keyword
        arguments :meth:`sample_latent` takes besides ``n_samples`` and ``generator``."""
        raise NotImplementedError

    def sample_latent(self, mu, n_samples=1, generator=None, **parameters):
        """Draws ``(n_samples, B, d)`` from the amortized posterior with mean ``mu`` and the
        further ``parameters`` of :meth:`encode_posterior` (none for the FisherNet, whose
        covariance follows from ``mu``; ``logvar`` for the VAEs). Every model has this
        signature, so ``model.sample_latent(**model.encode_posterior(x), n_samples=S)``
        works for all."""
        raise NotImplementedError

    def sample_amortized(self, x, n_samples=1, generator=None):
        """Draws from :meth:`amortized_posterior`: ``(n_samples, B, d)``."""
        return self.sample_latent(n_samples=n_samples, generator=generator,
                                  **self.encode_posterior(x))

    def posterior(self, x, refine=False, **options):
        """Latent posterior ``(mean (B, d), covariance (B, d, d))`` of data ``x``.

        Parameters
        ----------
        x : torch.Tensor
            Data ``(B, k)``.
        refine : bool or RefineOptions
            False (default): the amortized posterior, one encoder pass. True (or a
            :class:`~nifty_fishernet.models.refine.RefineOptions`): Newton steps from the
            encoder's mean to the MAP of the model's own posterior, then its Laplace
            covariance or importance-sampled moments
            (:func:`~nifty_fishernet.models.refine.refine_posterior`).
        **options
            Fields of ``RefineOptions`` (e.g. ``correction="importance"``), or
            ``proposal`` (see :func:`~nifty_fishernet.models.refine.refine_posterior`);
            only with ``refine``.
        """
        if refine is False:
            if options:
                raise ValueError(f"refine options {sorted(options)} given without refine=True")
            return self.amortized_posterior(x)
        result = self.refined_posterior(x, refine, **options)
        return result.mean, result.covariance

    def refined_posterior(self, x, refine=True, proposal=None, **options):
        """The full :class:`~nifty_fishernet.models.refine.RefinedPosterior` of ``x`` (MAP,
        Laplace covariance, Newton steps, importance draws and their effective size);
        ``proposal`` as in :func:`~nifty_fishernet.models.refine.refine_posterior`."""
        from .refine import RefineOptions, refine_posterior

        if refine is True:
            refine = None
        elif not isinstance(refine, RefineOptions):
            raise TypeError(f"refine must be False, True or a RefineOptions, got {refine!r}")
        return refine_posterior(self, x, refine, proposal=proposal, **options)

    def sample_posterior(self, x, n_samples=1, generator=None, refine=False, **options):
        """Draws from :meth:`posterior` for ``x``: ``(n_samples, B, d)``.

        The refined posterior is sampled as the Gaussian of its mean and covariance.
        """
        if refine is False:
            if options:
                raise ValueError(f"refine options {sorted(options)} given without refine=True")
            return self.sample_amortized(x, n_samples, generator)
        mean, covariance = self.posterior(x, refine, **options)
        chol = torch.linalg.cholesky(covariance)
        eps = torch.randn((n_samples,) + tuple(mean.shape), generator=generator,
                          dtype=mean.dtype, device=mean.device)
        return mean + torch.einsum("bij,sbj->sbi", chol, eps)

    def reconstruct(self, x):
        """``decode(encode(x))``: the reconstruction from the latent mean (Eq. 32-33)."""
        return self.decode(self.encode(x))

    def generate(self, n, generator=None):
        """Decode ``n`` draws from the standard-normal latent prior: ``(n, k)``."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.dtype,
                        device=self.device)
        return self.decode(z)

    def save(self, path, optimizer=None, history=None, training_state=None):
        """Write an HDF5 checkpoint atomically; see :func:`nifty_fishernet.save`."""
        from ..checkpoint import save

        save(path, self, optimizer=optimizer, history=history, training_state=training_state)

    @classmethod
    def load(cls, path, device="cpu"):
        """Load a checkpoint that must hold a model of this class."""
        from ..checkpoint import load

        return load(path, device=device, model_type=cls)
