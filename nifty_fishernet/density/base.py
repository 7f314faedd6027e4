"""The interface every latent density estimator shares, and its input checks."""

from __future__ import annotations

import numpy as np

__all__ = ["LatentDensity", "as_latents", "as_generator"]


def as_latents(latents, name="latents", latent_dim=None):
    """``latents`` as a finite float64 ``(n, d)`` array with ``n >= 1``, or a clear error."""
    if hasattr(latents, "detach"):  # a torch tensor, on whatever device
        latents = latents.detach().cpu().numpy()
    array = np.asarray(latents)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n, latent_dim), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if latent_dim is not None and array.shape[1] != latent_dim:
        raise ValueError(f"{name} have latent dimension {array.shape[1]}, the estimator was "
                         f"fitted in {latent_dim}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain non-finite values")
    return array


def as_generator(generator):
    """A ``numpy.random.Generator`` from None, a seed or a generator."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


class LatentDensity:
    """A density in latent space, fitted to latent vectors, to score and to sample from.

    Subclasses implement :meth:`_fit`, :meth:`_log_density` and :meth:`_sample` on checked
    float64 arrays; this class does the checks and keeps ``latent_dim``.

    Use (any estimator)::

        density = GaussianMixtureDensity().fit(train_latents)
        density.log_density(test_latents)      # (n,) natural-log densities
        z = density.sample(10_000, generator=0)
        images = model.decode(torch.as_tensor(z, dtype=torch.float32))
    """

    latent_dim = None

    def fit(self, latents):
        """Fit to ``(n, d)`` latent vectors (e.g. encoder means of the training set).

        Returns
        -------
        self
        """
        latents = as_latents(latents)
        self.latent_dim = latents.shape[1]
        self._fit(latents)
        return self

    def log_density(self, latents):
        """Natural-log density at ``(n, d)`` points, shape ``(n,)``."""
        self._require_fitted()
        return self._log_density(as_latents(latents, "points", self.latent_dim))

    def sample(self, n, generator=None):
        """``(n, d)`` draws; ``generator``: None, a seed or a ``numpy.random.Generator``."""
        self._require_fitted()
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        return self._sample(int(n), as_generator(generator))

    def _require_fitted(self):
        if self.latent_dim is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(latents) first")

    def _fit(self, latents):
        raise NotImplementedError

    def _log_density(self, latents):
        raise NotImplementedError

    def _sample(self, n, rng):
        raise NotImplementedError
