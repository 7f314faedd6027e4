"""Variational autoencoders, the paper's baselines: dense (VAE) and convolutional (ConvVAE)."""

from __future__ import annotations

import torch
from torch import nn

from .base import LatentModel, register_model
from .config import ConvVAEConfig, VAEConfig
from .mlp import MLP
from .noise import GaussianNoise

__all__ = ["VAE", "ConvVAE"]


class _GaussianEncoderVAE(LatentModel):
    """A VAE with a diagonal-Gaussian encoder ``(mu, log sigma^2)`` and Gaussian decoder.

    Subclasses build ``self.encoder`` (data -> ``2 d`` numbers) and ``self.decoder``
    (latent -> data means in ``[0, 1]``). ``learn_noise=False`` is the paper's fixed unit
    variance; ``learn_noise=True`` learns ``xi_N`` exactly as the FisherNet does (the
    "calibrated decoder" ablation).
    """

    def _init_noise(self):
        self.learn_noise = self.model_config.learn_noise
        self.noise = GaussianNoise(learn=self.learn_noise,
                                   variance=self.model_config.noise_variance)

    def encode_distribution(self, x):
        """Encoder mean and log-variance, each ``(B, d)``."""
        self._check_data(x)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def encode(self, x):
        return self.encode_distribution(x)[0]

    def decode(self, z):
        self._check_latent(z)
        return self.decoder(z)

    def encode_posterior(self, x):
        """``{"mu": mu, "logvar": log sigma^2}``, the encoder's diagonal Gaussian."""
        mu, logvar = self.encode_distribution(x)
        return {"mu": mu, "logvar": logvar}

    def sample_latent(self, mu, n_samples=1, generator=None, *, logvar):
        """Draw ``z ~ N(mu, diag(exp(logvar)))``: ``(n_samples, B, d)``."""
        self._check_latent(mu, "mu")
        self._check_latent(logvar, "logvar")
        eps = torch.randn((n_samples,) + tuple(mu.shape), generator=generator,
                          dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def amortized_posterior(self, x):
        mu, logvar = self.encode_distribution(x)
        return mu, torch.diag_embed(torch.exp(logvar))

    def loss(self, x, n_data=None, generator=None):
        """Negative ELBO per datum, averaged over the batch (one reparametrised sample)::

            l_i = 1/2 [exp(-xi_N) |d_i - f(z_i)|^2 + k xi_N] + KL(N(mu_i, sigma_i^2) || N(0, 1))
                  [+ xi_N^2 / (2 p) when the noise is learned]

        With the fixed unit noise (``xi_N = 0``) this is the paper's VAE loss up to constants;
        ``noise_variance=0.5`` makes the first term the plain sum of squared errors.
        ``n_data`` (``p``) has the same meaning as in :meth:`FisherNet.loss`.
        """
        mu, logvar = self.encode_distribution(x)
        z = self.sample_latent(mu, 1, generator, logvar=logvar)[0]
        kl = 0.5 * (mu ** 2 + torch.exp(logvar) - 1 - logvar).sum(-1)
        per_datum = self.noise.neg_log_likelihood(x, self.decoder(z)) + kl
        p = x.shape[0] if n_data is None else n_data
        return per_datum.mean() + self.noise.prior_term(p)


@register_model
class VAE(_GaussianEncoderVAE):
    """Dense VAE with the FisherNet's layout (Table 2).

    Parameters
    ----------
    latent_dim : int
        ``d``.
    data_dim : int
        ``k``.
    hidden, layers : int
        Width and number of hidden dense ReLU layers of encoder and decoder.
    learn_noise : bool
        Learn the decoder noise level ``xi_N`` (calibrated decoder) instead of fixing it.
    noise_variance : float
        The fixed decoder variance (1: the paper's VAE; 0.5: the plain sum of squared errors);
        not with ``learn_noise``.
    """

    Config = VAEConfig

    def __init__(self, latent_dim, data_dim=784, hidden=448, layers=3, learn_noise=False,
                 noise_variance=1.0):
        super().__init__()
        self._set_config(VAEConfig(latent_dim=latent_dim, data_dim=data_dim, hidden=hidden,
                                   layers=layers, learn_noise=learn_noise,
                                   noise_variance=noise_variance))
        c = self.model_config
        self.encoder = MLP(c.data_dim, 2 * c.latent_dim, c.hidden, c.layers)
        self.decoder = MLP(c.latent_dim, c.data_dim, c.hidden, c.layers,
                           output_activation="sigmoid")
        self._init_noise()


class _Unflatten(nn.Module):
    """(B, C*H*W) <-> (B, C, H, W) at the edges of the convolutional stacks."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


@register_model
class ConvVAE(_GaussianEncoderVAE):
    """Convolutional VAE of Table 2 and Appendix A.

    Encoder: convolutions with ``filters`` (32, 32, 64), kernel 3, ``strides`` (2, 1, 2),
    ReLU, then a dense ReLU layer of ``hidden`` (448) units and a dense layer to
    ``(mu, log sigma^2)``. Decoder: dense ``d -> hidden -> 64 x 7 x 7`` (the extra dense layers
    of Appendix A), transposed convolutions with filters (64, 32, 32) and the strides reversed,
    and a final 3x3 convolution to one channel with a sigmoid. Data are flat ``(B, 784)``
    images like for the dense models.

    Parameters
    ----------
    latent_dim : int
        ``d``.
    learn_noise : bool
        Learn the decoder noise level (calibrated decoder).
    noise_variance : float
        The fixed decoder variance, as for :class:`VAE`.
    hidden : int
        Width of the dense layers between the convolutions and the latent space.
    image_shape : tuple of int
        ``(channels, height, width)``; height and width divisible by the product of strides.
    """

    Config = ConvVAEConfig

    def __init__(self, latent_dim, learn_noise=False, hidden=448, filters=(32, 32, 64),
                 kernel_size=3, strides=(2, 1, 2), image_shape=(1, 28, 28), noise_variance=1.0):
        super().__init__()
        self._set_config(ConvVAEConfig(
            latent_dim=latent_dim, learn_noise=learn_noise, hidden=hidden, filters=filters,
            kernel_size=kernel_size, strides=strides, image_shape=image_shape,
            noise_variance=noise_variance))
        c = self.model_config
        channels, height, width = image_shape = c.image_shape
        filters, strides, kernel_size, hidden = c.filters, c.strides, c.kernel_size, c.hidden
        reduction = 1
        for s in strides:
            reduction *= s
        self.data_dim = channels * height * width
        pad = kernel_size // 2
        small = (filters[-1], height // reduction, width // reduction)
        n_small = small[0] * small[1] * small[2]

        enc = [_Unflatten(image_shape)]
        c_in = channels
        for c_out, s in zip(filters, strides):
            enc += [nn.Conv2d(c_in, c_out, kernel_size, stride=s, padding=pad), nn.ReLU()]
            c_in = c_out
        enc += [nn.Flatten(), nn.Linear(n_small, hidden), nn.ReLU(),
                nn.Linear(hidden, 2 * latent_dim)]
        self.encoder = nn.Sequential(*enc)

        dec = [nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_small), nn.ReLU(),
               _Unflatten(small)]
        c_in = small[0]
        for c_out, s in zip(reversed(filters), reversed(strides)):
            dec += [nn.ConvTranspose2d(c_in, c_out, kernel_size, stride=s, padding=pad,
                                       output_padding=s - 1), nn.ReLU()]
            c_in = c_out
        dec += [nn.Conv2d(c_in, channels, kernel_size, padding=pad), nn.Flatten(), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        self._init_noise()
