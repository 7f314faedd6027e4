"""The interface every latent density estimator shares, its input checks and its files.

A fitted estimator is saved to HDF5 (:meth:`LatentDensity.save`) and read back with
:func:`load_density`, without pickle: the class is looked up in :data:`DENSITY_TYPES`, the
settings and scalars are JSON, every array a checksummed dataset, the whole file under an
integrity hash (:mod:`nifty_fishernet.io`); the write is atomic.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import FileFormatError
from ..io import read_hdf5, write_hdf5
from ..io.registry import DENSITY_TYPES
from ..validation import as_latents

__all__ = ["LatentDensity", "as_latents", "as_generator", "load_density", "DENSITY_TYPES",
           "DensityFileError"]

FORMAT = "nifty_fishernet.density"
#: 2: the integrity hash over every attribute and dataset (version 1 files read with a warning)
FORMAT_VERSION = 2


class DensityFileError(FileFormatError):
    """A density file is corrupt, truncated, edited, or not a density written by this
    package."""


def register_density(cls):
    """Class decorator: make ``cls`` loadable by :func:`load_density`."""
    return DENSITY_TYPES.register(cls)


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

    def save(self, path):
        """Write the fitted estimator to an HDF5 file (replaced atomically); returns ``path``.

        :func:`load_density` reads it back: same densities and, for the same generator, the
        same draws.
        """
        self._require_fitted()
        settings, scalars, arrays = self._state()
        with write_hdf5(path, FORMAT, FORMAT_VERSION) as f:
            f.attrs["density_type"] = type(self).__name__
            f.attrs["settings"] = json.dumps(settings)
            f.attrs["fitted"] = json.dumps(dict(scalars, latent_dim=int(self.latent_dim)))
            group = f.create_group("arrays")
            for key, value in arrays.items():
                value = np.ascontiguousarray(value)
                group.create_dataset(key, data=value, fletcher32=value.size > 0,
                                     chunks=value.shape if value.size > 0 else None)
        return path

    def _state(self):
        """``(settings, fitted scalars, fitted arrays)``: JSON, JSON and numpy arrays."""
        raise NotImplementedError

    def _restore(self, scalars, arrays):
        """Set the fitted state from what :meth:`_state` returned."""
        raise NotImplementedError

    def _require_fitted(self):
        if self.latent_dim is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(latents) first")

    def _fit(self, latents):
        raise NotImplementedError

    def _log_density(self, latents):
        raise NotImplementedError

    def _sample(self, n, rng):
        raise NotImplementedError


def load_density(path):
    """Read an estimator written by :meth:`LatentDensity.save`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    DensityFileError
        The file is truncated, corrupt or edited (checksums and the integrity hash are
        verified), or not a density file.
    """
    with read_hdf5(path, FORMAT, FORMAT_VERSION, DensityFileError, "density file",
                   hashed_since=2) as f:
        cls = DENSITY_TYPES.lookup(str(f.attrs["density_type"]), path, DensityFileError)
        settings = json.loads(f.attrs["settings"])
        scalars = json.loads(f.attrs["fitted"])
        arrays = {key: np.asarray(ds[()]) for key, ds in f["arrays"].items()}
    density = cls(**settings)
    density.latent_dim = int(scalars.pop("latent_dim"))
    density._restore(scalars, arrays)
    return density
