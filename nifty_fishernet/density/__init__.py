"""Latent density estimators for generating new samples (paper section 3.3.2).

Every estimator has the same small API (:class:`LatentDensity`): ``fit(latents)``,
``log_density(z)`` and ``sample(n, generator)``.

- :class:`MaternKDE`: the paper's Matérn kernel density estimate on NIFTy
  (``ift.density_estimator``); a grid, so for d <= 5.
- :class:`GaussianMixtureDensity`: a full-covariance Gaussian mixture sized by held-out
  likelihood; scales to high latent dimensions.
- :class:`FlowDensity`: a neural spline flow (zuko) with early stopping on held-out
  likelihood; any d.

A fitted estimator is saved with ``density.save(path)`` and read back with
:func:`load_density`.
"""

from .base import DensityFileError, LatentDensity, load_density
from .matern import GridTooLargeError, MaternKDE
from .mixture import GaussianMixtureDensity
from .flow import FlowDensity

__all__ = ["LatentDensity", "MaternKDE", "GaussianMixtureDensity", "FlowDensity",
           "GridTooLargeError",
           "load_density", "DensityFileError"]
