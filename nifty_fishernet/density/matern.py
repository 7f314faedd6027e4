"""Matérn kernel density estimation (the paper's MKDE) with NIFTy's ``density_estimator``."""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..nifty.compat import ift, values
from ..nifty.vi import variational_inference

from .base import LatentDensity, register_density
from ..errors import NiftyFishernetError

__all__ = ["MaternKDE", "GridTooLargeError"]

#: Cells per axis used when none are given: ~4,000-33,000 cells up to d = 5.
DEFAULT_CELLS = {1: 256, 2: 64, 3: 24, 4: 12, 5: 8}


class GridTooLargeError(NiftyFishernetError, ValueError):
    """The MKDE grid for this latent dimension would not fit the memory budget."""


@register_density
class MaternKDE(LatentDensity):
    """Matérn kernel density estimate on a grid, fitted with NIFTy's MGVI or geoVI.

    The latents are binned on a regular grid spanning their range plus a margin; the counts
    are Poisson draws of ``exp(s)``, ``s`` a correlated field with a Matérn power spectrum
    per axis on a periodic grid padded by ``pad`` (``ift.density_estimator``); NIFTy infers
    the posterior of ``s`` with ``ift.optimize_kl``. The density is the posterior mean of the
    normalised intensity, constant within each cell.

    Parameters
    ----------
    cells_per_axis : int, sequence of int or dict, optional
        Grid resolution; a dict maps latent dimensions to resolutions (missing ones take
        the default), so one configuration serves several d. Default from
        :data:`DEFAULT_CELLS` (64 cells per axis in 2-D, 8 in 5-D).
    pad : float, optional
        Relative padding of the periodic field (1.0 doubles every axis), as in
        ``ift.density_estimator``; it keeps the field from wrapping around. The padded grid
        has ``prod((1 + pad) * cells)`` pixels, so padding costs ``(1 + pad)^d``; default
        1.0 up to d = 3 and 0.5 above (MGVI fit of a 5-D Gaussian, 6 cells per axis: the
        same held-out log-density, 57 s instead of 204 s).
    margin : float
        The grid extends this fraction of the data range beyond the extreme latents.
    method : {"mgvi", "geovi"}
        NIFTy's variational method for the field.
    n_samples : int
        Antithetic sample pairs per KL iteration.
    iterations : int
        Global KL iterations of ``ift.optimize_kl``.
    newton_iterations, sampling_iterations : int
        Iteration limits of the KL's Newton-CG and of the sampling CG.
    tolerance : float
        Absolute energy change (nats) below which the minimisers count as converged.
    sample_density : {"mean", "posterior"}
        What :meth:`sample` draws cells from: the posterior mean density, or for every call
        one posterior sample of the density (carrying its uncertainty into the draws).
    memory_budget_mib : float
        Refuse (:class:`GridTooLargeError`) grids whose estimated memory exceeds this.
    cf_fluctuations, cf_azm_uniform : optional
        Priors of the field, passed to ``ift.density_estimator`` (NIFTy's defaults if None).
    seed : int
        NIFTy's random seed for the fit.
    progress : bool
        A progress bar over the KL iterations.

    Attributes
    ----------
    cells : tuple of int
        Cells per axis.
    lower, upper : numpy.ndarray
        Grid bounds per axis.
    density_grid : numpy.ndarray
        Posterior mean density per cell (integrates to 1 over the grid).
    seconds : float
        Wall-clock time of the fit.
    """

    #: Padded-grid fields alive at once during MGVI besides the samples (measured, with a
    #: safety factor: FFTs, CG vectors, line search, KL gradient of every sample).
    FIELDS_IN_FLIGHT = 40

    def __init__(self, cells_per_axis=None, pad=None, margin=0.05, method="mgvi", n_samples=5,
                 iterations=4, newton_iterations=15, sampling_iterations=100, tolerance=0.01,
                 sample_density="mean", memory_budget_mib=4096.0, cf_fluctuations=None,
                 cf_azm_uniform=None, seed=0, progress=False):
        if method not in ("mgvi", "geovi"):
            raise ValueError(f"method must be 'mgvi' or 'geovi', got {method!r}")
        if sample_density not in ("mean", "posterior"):
            raise ValueError(f"sample_density must be 'mean' or 'posterior', "
                             f"got {sample_density!r}")
        if (pad is not None and pad < 0) or margin < 0:
            raise ValueError(f"pad and margin must be >= 0, got {pad}, {margin}")
        if n_samples < 1 or iterations < 1:
            raise ValueError(f"need n_samples >= 1 and iterations >= 1, got {n_samples}, "
                             f"{iterations}")
        self.cells_per_axis = cells_per_axis
        self.pad = None if pad is None else float(pad)
        self.margin = float(margin)
        self.method = method
        self.n_samples = int(n_samples)
        self.iterations = int(iterations)
        self.newton_iterations = int(newton_iterations)
        self.sampling_iterations = int(sampling_iterations)
        self.tolerance = float(tolerance)
        self.sample_density = sample_density
        self.memory_budget_mib = float(memory_budget_mib)
        self.cf_fluctuations = cf_fluctuations
        self.cf_azm_uniform = cf_azm_uniform
        self.seed = int(seed)
        self.progress = bool(progress)
        self.cells = None
        self.seconds = float("nan")

    # -- grid ---------------------------------------------------------------------------
    def grid_cells(self, latent_dim):
        """Cells per axis for ``latent_dim`` (raises :class:`GridTooLargeError` if none)."""
        cells = self.cells_per_axis
        if isinstance(cells, dict):
            cells = cells.get(latent_dim)
        if cells is None:
            if latent_dim not in DEFAULT_CELLS:
                raise GridTooLargeError(
                    f"MaternKDE has no default grid for latent dimension {latent_dim}: a grid "
                    f"grows exponentially with d. Use GaussianMixtureDensity for d > 5, or "
                    f"pass cells_per_axis explicitly")
            cells = DEFAULT_CELLS[latent_dim]
        cells = tuple(int(c) for c in np.broadcast_to(cells, (latent_dim,)))
        if min(cells) < 2:
            raise ValueError(f"need at least 2 cells per axis, got {cells}")
        return cells

    def grid_pad(self, latent_dim):
        """The padding used for ``latent_dim``."""
        if self.pad is not None:
            return self.pad
        return 1.0 if latent_dim <= 3 else 0.5

    def padded_cells(self, latent_dim):
        """Pixels of the padded field (as ``ift.density_estimator`` builds it)."""
        pad = self.grid_pad(latent_dim)
        return math.prod(int((1.0 + pad) * c) for c in self.grid_cells(latent_dim))

    def memory_mib(self, latent_dim):
        """Estimated peak memory of the fit in MiB (float64 padded fields)."""
        fields = 2 * self.n_samples + self.FIELDS_IN_FLIGHT
        return fields * 8 * self.padded_cells(latent_dim) / 2 ** 20

    def check_grid(self, latent_dim):
        """Raise :class:`GridTooLargeError` if there is no grid for ``latent_dim`` or it would
        exceed the memory budget (what :meth:`fit` checks first)."""
        need = self.memory_mib(latent_dim)
        if need > self.memory_budget_mib:
            cells = self.grid_cells(latent_dim)
            raise GridTooLargeError(
                f"MaternKDE grid {'x'.join(map(str, cells))} in d={latent_dim} (padded "
                f"{self.padded_cells(latent_dim):,} pixels) needs ~{need:,.0f} MiB, above the "
                f"budget of {self.memory_budget_mib:,.0f} MiB. Use GaussianMixtureDensity, "
                f"which scales to high latent dimensions, or fewer cells_per_axis / less pad")

    # -- fit ----------------------------------------------------------------------------
    def _fit(self, latents):
        began = time.perf_counter()
        d = latents.shape[1]
        self.check_grid(d)
        self.cells = self.grid_cells(d)
        low, high = latents.min(axis=0), latents.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        self.lower = low - self.margin * span
        self.upper = high + self.margin * span
        self.widths = (self.upper - self.lower) / np.asarray(self.cells)
        counts, _ = np.histogramdd(latents, bins=self.cells,
                                   range=list(zip(self.lower, self.upper)))
        # Unit box per axis: NIFTy's default Matérn priors are scaled for it.
        domain = ift.DomainTuple.make([ift.RGSpace(c) for c in self.cells])
        signal, _ = ift.density_estimator(domain, pad=self.grid_pad(d),
                                          cf_fluctuations=self.cf_fluctuations,
                                          cf_azm_uniform=self.cf_azm_uniform)
        data = ift.makeField(signal.target, counts.astype(np.int64))
        likelihood = ift.PoissonianEnergy(data) @ signal
        newton = ift.NewtonCG(ift.AbsDeltaEnergyController(
            self.tolerance, iteration_limit=self.newton_iterations, name=None))
        sampling = ift.AbsDeltaEnergyController(self.tolerance, name=None,
                                                iteration_limit=self.sampling_iterations)
        nonlinear = None if self.method == "mgvi" else ift.NewtonCG(
            ift.AbsDeltaEnergyController(self.tolerance, iteration_limit=5, name=None))
        bar = tqdm(total=self.iterations, desc=f"MaternKDE d={d} ({self.method})",
                   disable=not self.progress, leave=False)
        try:
            # One random context for the start and the samples (seed=None below).
            with ift.random.Context(self.seed):
                initial = 1e-2 * ift.from_random(likelihood.domain)
                samples, _ = variational_inference(
                    likelihood, initial, self.method, self.n_samples, self.iterations, newton,
                    sampling, nonlinear, seed=None, callback=bar.update)
        finally:
            bar.close()
        intensities = np.stack([values(signal.force(s)) for s in samples.iterator()])
        probabilities = intensities / intensities.sum(axis=tuple(range(1, d + 1)),
                                                      keepdims=True)
        self.cell_volume = float(np.prod(self.widths))
        self._probability_samples = probabilities
        self._probabilities = probabilities.mean(axis=0)
        self.density_grid = self._probabilities / self.cell_volume
        self.counts = counts
        self.seconds = time.perf_counter() - began

    # -- use ----------------------------------------------------------------------------
    def cell_index(self, latents):
        """Grid cell of each point; points outside the grid get the nearest boundary cell."""
        index = np.floor((latents - self.lower) / self.widths).astype(np.int64)
        return np.clip(index, 0, np.asarray(self.cells) - 1)

    def _log_density(self, latents):
        index = tuple(self.cell_index(latents).T)
        return np.log(self._probabilities[index]) - np.log(self.cell_volume)

    def _sample(self, n, rng):
        if self.sample_density == "posterior":
            probabilities = self._probability_samples[rng.integers(
                len(self._probability_samples))]
        else:
            probabilities = self._probabilities
        flat = probabilities.ravel()
        cells = rng.choice(flat.size, size=n, p=flat / flat.sum())
        index = np.stack(np.unravel_index(cells, self.cells), axis=-1)
        return self.lower + (index + rng.uniform(size=index.shape)) * self.widths

    # -- files --------------------------------------------------------------------------
    _FITTED_ARRAYS = ("lower", "upper", "widths", "counts", "_probabilities",
                      "_probability_samples")

    def _state(self):
        settings = dict(cells_per_axis=list(self.cells), pad=self.pad, margin=self.margin,
                        method=self.method, n_samples=self.n_samples,
                        iterations=self.iterations, newton_iterations=self.newton_iterations,
                        sampling_iterations=self.sampling_iterations,
                        tolerance=self.tolerance, sample_density=self.sample_density,
                        memory_budget_mib=self.memory_budget_mib,
                        cf_fluctuations=self.cf_fluctuations,
                        cf_azm_uniform=self.cf_azm_uniform, seed=self.seed,
                        progress=self.progress)
        scalars = dict(cells=list(self.cells), cell_volume=self.cell_volume,
                       seconds=self.seconds)
        return settings, scalars, {key: getattr(self, key) for key in self._FITTED_ARRAYS}

    def _restore(self, scalars, arrays):
        self.cells = tuple(int(c) for c in scalars["cells"])
        self.cell_volume = float(scalars["cell_volume"])
        self.seconds = float(scalars["seconds"])
        for key in self._FITTED_ARRAYS:
            setattr(self, key, arrays[key])
        self.density_grid = self._probabilities / self.cell_volume

    @property
    def edges(self):
        """Cell edges per axis (a list of ``cells + 1`` arrays), e.g. for plotting."""
        self._require_fitted()
        return [np.linspace(lo, hi, c + 1)
                for lo, hi, c in zip(self.lower, self.upper, self.cells)]
