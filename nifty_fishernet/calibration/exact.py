"""Exact latent posteriors of a model's own decoder, and how far approximations are from them.

For a datum ``x`` the model defines ``p(z | x) ∝ exp(-E(z))`` with
``E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2``. It is represented here by weighted points:

- ``d <= 3``: the nodes of a grid centred at the mode in the coordinates of its Laplace
  covariance (so it resolves the posterior whatever its scale), wide enough to hold the
  encoder's mean (up to ``max_extent`` Laplace standard deviations), with the mass in its
  outermost layer reported (``edge_mass``, want << 1 %) and the Laplace mass of other modes
  found outside it (``off_grid_mass``, want << 1 %);
- any ``d``: self-normalised importance sampling with heavy-tailed Student-t proposals
  around the mode and every other mode found, with the effective sample size reported
  (``ess``).

The mode is the lowest-energy one found, not the one the encoder's mean leads to: Newton
runs from the ``starts`` lowest-energy of ``codebook`` prior draws search for others
(:func:`~nifty_fishernet.models.refine.search_modes`). Centred on the encoder's mode alone,
the reference missed lower modes (a FisherNet of d = 2 after 50 epochs on Fashion-MNIST: 13
of 200 test images, up to 120 nats lower), and judged every approximation against a local
mode that held none of the posterior's mass.

Both give the evidence, so normalised log densities, KL divergences both ways and the exact
mass inside an approximation's credible regions follow.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
from scipy.stats import chi2

from ..errors import FileFormatError
from ..io.hdf5 import read_hdf5, read_tensors, write_hdf5, write_tensors
from ..models.refine import (energy_at, importance_sample, refine_posterior, search_modes,
                             weighted_moments, whiten)
from .sbc import LEVELS, mahalanobis2

__all__ = ["ExactPosterior", "save_exact_posterior", "load_exact_posterior", "exact_posterior",
           "compare_to_exact", "exact_mass_below", "lower_bound_eigenvalues", "GRID_MAX_DIM"]

#: Above this latent dimension the exact posterior is importance-sampled.
GRID_MAX_DIM = 3
#: Grid nodes per axis by latent dimension (the grid costs points^d decoder calls per datum).
GRID_POINTS = {1: 401, 2: 81, 3: 31}


@dataclass
class ExactPosterior:
    """The exact posterior of B data as weighted points.

    Attributes
    ----------
    points : torch.Tensor
        ``(P, B, d)`` latent points (grid nodes or importance draws), float64.
    log_weights : torch.Tensor
        ``(P, B)`` normalised log weights (the posterior mass each point stands for).
    energy : torch.Tensor
        ``(P, B)`` ``E`` at the points.
    log_evidence : torch.Tensor
        ``(B,)`` ``log integral exp(-E(z)) dz``.
    mean, covariance : torch.Tensor
        ``(B, d)``, ``(B, d, d)`` its moments.
    method : str
        ``"grid"`` or ``"importance"``.
    edge_mass : torch.Tensor or None
        Grid only: mass in the grid's outermost layer per datum.
    spacing : float or None
        Grid only: node spacing in Laplace standard deviations.
    ess : torch.Tensor or None
        Importance sampling only: effective sample size per datum.
    map, laplace_covariance, initial : torch.Tensor
        The mode the reference is centred on (the lowest-energy mode found), ``M^{-1}``
        there and the encoder's mean, float64.
    other_modes : torch.Tensor
        Per datum, how many further modes within ``margin`` nats of the mode's energy were
        found (more than 3 Laplace sigma from it); importance sampling draws around them.
    lower_mode : torch.Tensor
        Per datum, whether the mode is not the one refined from the encoder's mean (a mode
        more than 3 Laplace sigma away with lower energy was found).
    off_grid_mass : torch.Tensor or None
        Grid only: the Laplace estimate of the posterior mass in the further modes outside
        the grid, per datum (such a datum's reference is incomplete).
    """

    points: torch.Tensor
    log_weights: torch.Tensor
    energy: torch.Tensor
    log_evidence: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor
    method: str
    edge_mass: torch.Tensor | None
    spacing: float | None
    ess: torch.Tensor | None
    map: torch.Tensor
    laplace_covariance: torch.Tensor
    initial: torch.Tensor
    other_modes: torch.Tensor
    lower_mode: torch.Tensor
    off_grid_mass: torch.Tensor | None = None

    def log_density(self, energy):
        """Normalised log density from energies ``E(z)`` ``(..., B)``."""
        return -energy - self.log_evidence


_FORMAT, _VERSION = "nifty_fishernet.exact_posterior", 1
_TEXT_FIELDS = ("method",)
_NUMBER_FIELDS = ("spacing",)


def save_exact_posterior(path, exact, key=""):
    """Write ``exact`` to the HDF5 file ``path`` (atomically, with an integrity hash).

    The reference of the ConvVAE's 200 real test images takes 20 minutes or more to compute;
    kept in a file, a resumed calibration reads it back (:func:`load_exact_posterior`).

    Parameters
    ----------
    path : path-like
    exact : ExactPosterior
    key : str
        What the posterior belongs to (e.g. a fingerprint of the model, the data and the
        options), checked by :func:`load_exact_posterior`.
    """
    if not isinstance(exact, ExactPosterior):
        raise TypeError(f"exact must be an ExactPosterior, got {type(exact).__name__}")
    fields = {field.name: getattr(exact, field.name) for field in dataclasses.fields(exact)}
    with write_hdf5(path, _FORMAT, _VERSION) as f:
        f.attrs["key"] = str(key)
        for name in _TEXT_FIELDS:
            f.attrs[name] = str(fields.pop(name))
        for name in _NUMBER_FIELDS:
            value = fields.pop(name)
            if value is not None:
                f.attrs[name] = float(value)
        write_tensors(f.create_group("tensors"),
                      {name: value for name, value in fields.items() if value is not None})


def load_exact_posterior(path, key=None):
    """The :class:`ExactPosterior` that :func:`save_exact_posterior` wrote to ``path``.

    Parameters
    ----------
    path : path-like
    key : str, optional
        The key it must have been saved with (None: any).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FileFormatError
        Truncated, corrupt or edited, another kind of file, saved under another ``key``, or
        tensors of shapes that do not fit together.
    """
    with read_hdf5(path, _FORMAT, _VERSION, what="exact posterior file") as f:
        stored_key = str(f.attrs["key"])
        if key is not None and stored_key != str(key):
            raise FileFormatError(f"{path} holds the exact posterior of other data, model or "
                                  f"options (key {stored_key[:16]!r}, expected "
                                  f"{str(key)[:16]!r})")
        fields = read_tensors(f["tensors"])
        fields.update({name: str(f.attrs[name]) for name in _TEXT_FIELDS})
        fields.update({name: float(f.attrs[name]) if name in f.attrs else None
                       for name in _NUMBER_FIELDS})
    names = {field.name for field in dataclasses.fields(ExactPosterior)}
    unknown = set(fields) - names
    if unknown:
        raise FileFormatError(f"{path} holds fields an exact posterior does not have: "
                              f"{sorted(unknown)}")
    fields.update({name: None for name in names - set(fields)
                   if name in ("edge_mass", "ess", "off_grid_mass")})
    try:
        exact = ExactPosterior(**fields)
    except TypeError as err:
        raise FileFormatError(f"{path} lacks fields of an exact posterior ({err})") from err
    n_points, batch, dim = exact.points.shape
    shapes = {"log_weights": (n_points, batch), "energy": (n_points, batch),
              "log_evidence": (batch,), "mean": (batch, dim), "covariance": (batch, dim, dim),
              "map": (batch, dim), "laplace_covariance": (batch, dim, dim),
              "initial": (batch, dim), "other_modes": (batch,), "lower_mode": (batch,),
              "edge_mass": (batch,), "ess": (batch,), "off_grid_mass": (batch,)}
    wrong = [f"{name} {tuple(getattr(exact, name).shape)} (expected {shape})"
             for name, shape in shapes.items()
             if getattr(exact, name) is not None and tuple(getattr(exact, name).shape) != shape]
    if wrong:
        raise FileFormatError(f"{path}: the tensors do not fit {n_points} points of {batch} "
                              f"data in d = {dim}: {', '.join(wrong)}")
    return exact


def _energy(model, x, points, chunk):
    """``E(z)`` ``(P, B)`` of points ``(P, B, d)`` for data ``x`` ``(B, k)``, in float64."""
    return energy_at(model, x.double(), points, model.noise.precision.detach().double(), chunk)


def exact_posterior(model, x, method="auto", grid_points=None, min_extent=6.0, max_extent=12.0,
                    n_draws=2048, dof=3, scale=1.5, adapt_rounds=2, seed=0, chunk=None,
                    refined=None, starts=8, codebook=4096, max_steps=50, margin=20.0,
                    separation=3.0, min_ess=300.0, max_rounds=8):
    """The exact posterior of each datum ``x`` under ``model``'s decoder and noise level.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        In eval mode.
    x : torch.Tensor
        ``(B, k)`` data in the model's dtype.
    method : {"auto", "grid", "importance"}
        ``auto``: the grid for ``d <= 3``, importance sampling above.
    grid_points : int, optional
        Grid nodes per axis (default 401 / 81 / 31 for d = 1 / 2 / 3).
    min_extent, max_extent : float
        The grid's half-width in Laplace standard deviations: at least ``min_extent``,
        extended to hold the encoder's mean plus 3, at most ``max_extent``.
    n_draws, dof, scale, adapt_rounds, seed : optional
        Importance sampling: draws per datum (per round), the first Student-t proposal's
        degrees of freedom and scale (in Laplace standard deviations), the adaptation rounds
        (:func:`~nifty_fishernet.models.refine.importance_sample`), and the seed.
    min_ess, max_rounds : optional
        Importance sampling: further adaptation rounds, up to ``max_rounds`` after the
        first, while the median effective sample size of the B data is below ``min_ess``
        (None: exactly ``adapt_rounds``). Up to d = 15 on Fashion-MNIST two rounds reach medians of
        400-3,000 and none is added; at d = 20 they reach 67, and the reference's own SBC
        reads 0.80 / 0.99 instead of 0.68 / 0.95 (six rounds: 680, 0.66 / 0.95).
    chunk : int, optional
        Points per datum evaluated per decoder call.
    refined : RefinedPosterior, optional
        The MAP refined from the encoder's mean, and its Laplace covariance (default:
        refined here with the Laplace correction).
    starts, codebook, max_steps : int
        The search for further modes: Newton runs of at most ``max_steps`` steps from the
        ``starts`` lowest-energy of ``codebook`` prior draws per datum (``starts=0``: none;
        the reference is then centred on ``refined``'s MAP alone).
    margin, separation : float
        A mode found counts as another mode where its energy is within ``margin`` nats of
        the lowest and it lies more than ``separation`` Laplace sigma from the lowest.

    Returns
    -------
    ExactPosterior
    """
    with torch.no_grad():
        return _exact_posterior(model, x, method, grid_points, min_extent, max_extent, n_draws,
                                dof, scale, adapt_rounds, seed, chunk, refined, starts,
                                codebook, max_steps, margin, separation, min_ess, max_rounds)


def _modes(model, x, refined, starts, codebook, max_steps, margin, separation, generator,
           chunk):
    """The lowest-energy mode of each datum among ``refined``'s MAP and the ends of
    :func:`search_modes`' runs, and the others within ``margin`` nats of it.

    Returns
    -------
    centre (B, d), chol (B, d, d), others [(z (B, d), chol (B, d, d), log_mass (B,), keep (B,))],
    lower (B,), centre_log_mass (B,): float64; a mode's Laplace log mass is
    ``-E + log det L`` (the constants cancel between modes).
    """
    z = [refined.map.double().cpu()]
    chol = [torch.linalg.cholesky(refined.laplace_covariance.double().cpu())]
    if starts:
        precision = model.noise.precision.detach().to(x.dtype)
        found, _, chols = search_modes(model, x, precision, int(starts), int(codebook),
                                       int(max_steps), generator)
        z += list(found.double().cpu())
        chol += list(chols.double().cpu())
    z, chol = torch.stack(z), torch.stack(chol)  # (1 + starts, B, d), (1 + starts, B, d, d)
    energy = _energy(model, x.double().cpu(), z, chunk or 2048)  # float64, comparable
    log_mass = -energy + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    best = energy.argmin(0)  # (B,)
    rows = torch.arange(z.shape[1])
    centre, centre_chol = z[best, rows], chol[best, rows]
    distance = [whiten(centre_chol, z_k - centre).norm(dim=-1) for z_k in z]
    others = []
    for k in range(z.shape[0]):
        keep = (energy[k] < energy[best, rows] + margin) & (distance[k] > separation)
        for earlier_z, _, _, earlier_keep in others:  # a mode found twice counts once
            same = whiten(centre_chol, z[k] - earlier_z).norm(dim=-1) <= separation
            keep &= ~(same & earlier_keep)
        others.append((z[k], chol[k], log_mass[k], keep))
    # distance[0]: the encoder's MAP from the centre
    return centre, centre_chol, others, distance[0] > separation, log_mass[best, rows]


def _exact_posterior(model, x, method, grid_points, min_extent, max_extent, n_draws, dof, scale,
                     adapt_rounds, seed, chunk, refined, starts, codebook, max_steps, margin,
                     separation, min_ess, max_rounds):
    d = model.latent_dim
    if method == "auto":
        method = "grid" if d <= GRID_MAX_DIM else "importance"
    if method not in ("grid", "importance"):
        raise ValueError(f"method must be 'auto', 'grid' or 'importance', got {method!r}")
    if method == "grid" and d > GRID_MAX_DIM:
        raise ValueError(f"a grid over d = {d} latent dimensions is too large; use "
                         f"method='importance' (grids up to d = {GRID_MAX_DIM})")
    if refined is None:
        refined = refine_posterior(model, x)
    centre, chol, others, lower, centre_log_mass = _modes(
        model, x, refined, starts, codebook, max_steps, margin, separation,
        torch.Generator(device=x.device).manual_seed(int(seed)), chunk)
    laplace = chol @ chol.transpose(-1, -2)
    initial = refined.initial.double().cpu()
    n_others = sum(keep.long() for _, _, _, keep in others)
    xd = x.double().cpu()
    if method == "grid":
        n = int(grid_points or GRID_POINTS[d])
        offset = whiten(chol, initial - centre)
        extent = (offset.abs().amax(-1) + 3).clamp(min=min_extent, max=max_extent)  # (B,)
        axis = torch.linspace(-1, 1, n, dtype=torch.float64)
        unit = torch.tensor(list(itertools.product(axis.tolist(), repeat=d)),
                            dtype=torch.float64)  # (P, d) in [-1, 1]^d
        white = unit[:, None, :] * extent[None, :, None]  # (P, B, d)
        points = centre + torch.einsum("bij,pbj->pbi", chol, white)
        energy = _energy(model, xd, points, chunk or 2048)
        # cell volume in z: (2 extent / (n - 1))^d det L
        log_cell = (d * torch.log(2 * extent / (n - 1))
                    + torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))
        log_norm = torch.logsumexp(-energy, 0)
        log_weights = -energy - log_norm
        log_evidence = log_norm + log_cell
        edge = (unit.abs() == 1).any(-1)
        edge_mass = log_weights[edge].exp().sum(0)
        # further modes outside the grid: their Laplace mass against the centre's
        outside = [torch.where(keep & (whiten(chol, z - centre).abs().amax(-1) > extent),
                               log_mass, torch.full_like(log_mass, -math.inf))
                   for z, _, log_mass, keep in others]
        log_outside = torch.logsumexp(torch.stack(outside), 0)
        off_grid = torch.exp(log_outside - torch.logaddexp(log_outside, centre_log_mass))
        mean, cov = weighted_moments(points, log_weights)
        return ExactPosterior(points, log_weights, energy, log_evidence, mean, cov, "grid",
                              edge_mass, float(2 * extent.max() / (n - 1)), None, centre,
                              laplace, initial, n_others, lower, off_grid)
    components = [(centre, chol * scale)] + [
        (torch.where(keep[:, None], z, centre),
         torch.where(keep[:, None, None], mode_chol, chol) * scale)
        for z, mode_chol, _, keep in others if bool(keep.any())]
    generator = torch.Generator().manual_seed(int(seed))  # the draws live on the CPU
    sample = importance_sample(lambda points: _energy(model, xd, points, chunk or 256),
                               components, int(n_draws), int(dof), generator, adapt_rounds,
                               min_ess=min_ess, max_rounds=max_rounds)
    mean, cov = weighted_moments(sample.draws, sample.log_weights)
    return ExactPosterior(sample.draws, sample.log_weights, sample.energy, sample.log_evidence,
                          mean, cov, "importance", None, None, sample.ess, centre, laplace,
                          initial, n_others, lower)


def _gaussian_log_density(points, mean, covariance):
    d = mean.shape[-1]
    log_det = torch.logdet(covariance)
    return (-0.5 * mahalanobis2(points, mean, covariance) - 0.5 * log_det
            - 0.5 * d * math.log(2 * math.pi))


def compare_to_exact(model, x, exact, mean, covariance, levels=LEVELS, n_draws=512, seed=0):
    """Per-datum metrics of ``N(mean, covariance)`` against the exact posterior.

    Parameters
    ----------
    model, x : as for :func:`exact_posterior`.
    exact : ExactPosterior
    mean, covariance : torch.Tensor
        The approximation, ``(B, d)`` and ``(B, d, d)``.
    levels : sequence of float
        Masses of the approximation's credible regions.
    n_draws : int
        Draws from the approximation for KL(q||p).

    Returns
    -------
    dict of numpy.ndarray
        ``mass_<level>``: the exact posterior mass inside q's region of that mass (``(B,)``,
        ideal: the level); ``kl_pq``, ``kl_qp``: KL(p||q) and KL(q||p) in nats;
        ``mean_error_sigma``: the Mahalanobis distance of q's mean from p's mean in p's
        covariance.
    """
    mean = torch.as_tensor(mean).detach().double().cpu()
    covariance = torch.as_tensor(covariance).detach().double().cpu()
    d = mean.shape[-1]
    weights = exact.log_weights.exp()
    m2 = mahalanobis2(exact.points, mean, covariance)  # (P, B)
    out = {}
    for level in levels:
        inside = m2 <= float(chi2.ppf(level, d))
        out[f"mass_{round(100 * level)}"] = (weights * inside).sum(0).numpy()
    log_q = _gaussian_log_density(exact.points, mean, covariance)
    log_p_nodes = exact.log_density(exact.energy)
    out["kl_pq"] = (weights * (log_p_nodes - log_q)).sum(0).numpy()
    generator = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(n_draws, *mean.shape, generator=generator, dtype=torch.float64)
    draws = mean + torch.einsum("bij,sbj->sbi", torch.linalg.cholesky(covariance), eps)
    log_p = exact.log_density(_energy(model, x.double().cpu(), draws, 256))
    out["kl_qp"] = (_gaussian_log_density(draws, mean, covariance) - log_p).mean(0).numpy()
    out["mean_error_sigma"] = mahalanobis2(mean[None], exact.mean,
                                           exact.covariance)[0].sqrt().numpy()
    return out


def exact_mass_below(exact, thresholds):
    """The exact posterior's mass in ``{z : E(z) <= t}`` per datum, ``(B,)`` numpy, for
    energy thresholds ``t`` ``(B,)`` (e.g. an approximation's highest-density region of
    some nominal mass, :meth:`~nifty_fishernet.models.refine.RefinedPosterior.energy_threshold`;
    ideal: that mass)."""
    thresholds = torch.as_tensor(thresholds).detach().double().cpu()
    if thresholds.shape != exact.energy.shape[1:]:
        raise ValueError(f"thresholds must have shape {tuple(exact.energy.shape[1:])}, got "
                         f"{tuple(thresholds.shape)}")
    inside = exact.energy <= thresholds
    return (exact.log_weights.exp() * inside).sum(0).numpy()


def lower_bound_eigenvalues(exact_covariance, laplace_covariance):
    """Generalised eigenvalues ``(B, d)`` of the exact covariance against ``M^{-1}``.

    All >= 1 would make ``M^{-1}`` a lower bound of the posterior uncertainty (the paper's
    Sect. 2.4 claim); they are the eigenvalues of ``L^{-1} C L^{-T}`` with ``L L^T = M^{-1}``.
    """
    chol = torch.linalg.cholesky(torch.as_tensor(laplace_covariance).detach().double())
    c = torch.as_tensor(exact_covariance).detach().double()
    left = torch.linalg.solve_triangular(chol, c, upper=False)
    white = torch.linalg.solve_triangular(chol, left.transpose(-1, -2), upper=False)
    return torch.linalg.eigvalsh(0.5 * (white + white.transpose(-1, -2))).numpy()
