"""Exact 2-D latent posteriors on a grid, and how far an approximation is from them.

Every density here is a function ``log_density(points, rows=slice(None))`` for the data
``rows`` (b of them) of latent points, shape ``(P, 2)`` (shared by those data) or
``(b, P, 2)`` (one set per datum), returning ``(b, P)`` log densities up to a per-datum
constant. The grid normalises them, so exact posteriors (known
only up to the evidence) and approximations are treated alike.
"""

from __future__ import annotations

import math

import torch
from scipy import ndimage

from ..fisher import decoder_jacobian, metric_from_jacobian

__all__ = ["LatentGrid", "exact_log_posterior", "gaussian_log_density", "geovi_log_density",
           "compare_on_grid", "in_hpd_region", "GRID_METRICS"]

#: Keys of the per-datum metrics returned by :func:`compare_on_grid`.
GRID_METRICS = ("kl_pq", "kl_qp", "mean_error_sigma", "std_ratio", "covered_68", "covered_95",
                "mass_68", "mass_95")


class LatentGrid:
    """A square grid ``[-limit, limit]^2`` with ``points`` nodes per axis.

    Parameters
    ----------
    limit : float
        Half-width; the standard-normal prior puts ``< 1e-6`` of its mass beyond 5.
    points : int
        Nodes per axis. The spacing must resolve the narrowest posterior (check with
        :meth:`resolution`).
    """

    def __init__(self, limit=4.5, points=401):
        self.limit, self.n = float(limit), int(points)
        self.axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
        zz1, zz2 = torch.meshgrid(self.axis, self.axis, indexing="ij")
        self.points = torch.stack([zz1.reshape(-1), zz2.reshape(-1)], dim=-1)
        self.spacing = float(self.axis[1] - self.axis[0])

    def nearest(self, points):
        """Flat index of the grid node nearest to each point (clamped to the grid)."""
        index = torch.round((points + self.limit) / self.spacing).long().clamp(0, self.n - 1)
        return index[..., 0] * self.n + index[..., 1]

    def moments(self, log_density):
        """Normalised weights ``(B, G)``, means ``(B, 2)`` and covariances ``(B, 2, 2)``."""
        weights = torch.softmax(log_density, dim=-1)
        mean = weights @ self.points
        centred = self.points[None] - mean[:, None]
        cov = torch.einsum("bg,bgi,bgj->bij", weights, centred, centred)
        return weights, mean, cov

    def resolution(self, log_density):
        """Smallest posterior standard deviation in grid spacings (want >= 4)."""
        _, _, cov = self.moments(log_density)
        return float(torch.linalg.eigvalsh(cov)[:, 0].clamp_min(0).sqrt().min()) / self.spacing


def _decoder_at(decoder, points):
    flat = points.reshape(-1, points.shape[-1])
    return decoder(flat).reshape(*points.shape[:-1], -1)


def _value_and_jacobian_at(decoder, points):
    """``f`` of shape ``(..., k)`` and ``J`` of shape ``(..., k, d)`` at ``points`` ``(..., d)``,
    in one pass of :func:`~nifty_fishernet.fisher.decoder_jacobian`."""
    flat = points.reshape(-1, points.shape[-1])
    with torch.no_grad():
        value, jt = decoder_jacobian(decoder, flat)
    return (value.reshape(*points.shape[:-1], -1),
            jt.transpose(-1, -2).reshape(*points.shape[:-1], -1, points.shape[-1]))


def exact_log_posterior(decoder, noise_variance, data):
    """``log N(z; 0, 1) + log N(x; f(z), noise_variance 1)`` for each datum ``x`` of ``data``.

    Parameters
    ----------
    decoder : callable
        ``(n, 2) -> (n, k)`` float64.
    noise_variance : float
    data : torch.Tensor
        ``(B, k)``.
    """
    def log_density(points, rows=slice(None)):
        x = data[rows]
        with torch.no_grad():
            f = _decoder_at(decoder, points)
            if f.ndim == 2:  # shared points: |x - f|^2 by one matrix product
                sq = ((x ** 2).sum(-1)[:, None] - 2 * x @ f.T + (f ** 2).sum(-1)[None])
            else:
                sq = ((x[:, None, :] - f) ** 2).sum(-1)
            return -0.5 * (points ** 2).sum(-1) - 0.5 * sq / noise_variance
    return log_density


def gaussian_log_density(mean, covariance):
    """``N(z; mean_b, covariance_b)`` for ``(B, 2)`` means and ``(B, 2, 2)`` covariances."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    covariance = torch.as_tensor(covariance, dtype=torch.float64)
    chol = torch.linalg.cholesky(covariance)
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    def log_density(points, rows=slice(None)):
        centred = (points if points.ndim == 3 else points[None]) - mean[rows, None]
        white = torch.linalg.solve_triangular(chol[rows], centred.transpose(-1, -2),
                                              upper=False)
        return (-0.5 * (white ** 2).sum(-2) - 0.5 * log_det[rows, None]
                - 0.5 * mean.shape[-1] * math.log(2 * math.pi))
    return log_density


def geovi_log_density(decoder, noise_variance, expansion, grid):
    """Density of geoVI's approximation expanded at ``expansion`` (B, 2).

    geoVI (Frank et al. 2021) draws ``xi ~ N(0, 1)`` and maps it to ``z`` solving
    ``g(z) = Mbar^{1/2} xi`` with ``g(z) = z - zbar + Jbar^T N^{-1} (f(z) - f(zbar))`` and
    ``Mbar = Jbar^T N^{-1} Jbar + 1`` at the expansion point. Hence
    ``q(z) = N(xi(z); 0, 1) |det d xi / dz|`` with ``d xi / dz = Mbar^{-1/2}
    (1 + Jbar^T N^{-1} J(z))``: ``-1/2 g^T Mbar^{-1} g - 1/2 log det Mbar +
    log |det(1 + Jbar^T N^{-1} J(z))|`` up to the Gaussian constant.

    Where the map ``z -> xi`` folds over (``det(1 + Jbar^T N^{-1} J) <= 0`` somewhere), a
    ``xi`` has several preimages. NIFTy's sampler solves for ``z`` by Newton steps from the
    linear (MGVI) sample, staying on the branch through ``zbar``; so ``q`` is restricted to
    the connected region of positive determinant that contains ``zbar``, found on ``grid``
    (points off it take the branch of their nearest node).
    """
    expansion = torch.as_tensor(expansion, dtype=torch.float64)
    f_bar, j_bar = _value_and_jacobian_at(decoder, expansion)     # (B, k), (B, k, 2)
    metric = metric_from_jacobian(j_bar.transpose(-1, -2), 1.0 / noise_variance)
    log_det = torch.logdet(metric)
    f_grid, j_grid = _value_and_jacobian_at(decoder, grid.points)
    branch = _geovi_branches(j_grid, noise_variance, expansion, j_bar, grid)
    # f and J at the points of the last call: the metrics evaluate chunk after chunk of data
    # on the same points.
    cache = {"points": grid.points, "f": f_grid, "jac": j_grid}

    def log_density(points, rows=slice(None)):
        jb, fb, mb, ld = j_bar[rows], f_bar[rows], metric[rows], log_det[rows]
        with torch.no_grad():
            if points is not cache["points"]:
                cache["points"] = points
                cache["f"], cache["jac"] = _value_and_jacobian_at(decoder, points)
            f, jac = cache["f"], cache["jac"]
            if f.ndim == 2:  # shared points: broadcast views, no copies
                f = f.expand(jb.shape[0], *f.shape)
                jac = jac.expand(jb.shape[0], *jac.shape)
            # (b, P, 2): Jbar^T N^-1 (f(z) - f(zbar)) for every point.
            pulled = (torch.einsum("bki,bpk->bpi", jb, f)
                      - torch.einsum("bki,bk->bi", jb, fb)[:, None])
            g = ((points if points.ndim == 3 else points[None]) - expansion[rows, None]
                 + pulled / noise_variance)
            a = torch.eye(2, dtype=torch.float64) + torch.einsum(
                "bki,bpkj->bpij", jb, jac) / noise_variance
            quad = (g * torch.linalg.solve(mb[:, None], g[..., None])[..., 0]).sum(-1)
            log_q = (-0.5 * quad - 0.5 * ld[:, None] + torch.linalg.slogdet(a)[1]
                     - math.log(2 * math.pi))
            on_branch = branch[rows].gather(-1, grid.nearest(points).expand(log_q.shape))
            return torch.where(on_branch, log_q, -math.inf)
    return log_density


def _geovi_branches(jac, noise_variance, expansion, j_bar, grid, chunk=16):
    """``(B, G)`` masks: the positive-determinant region of grid nodes connected to zbar."""
    home = grid.nearest(expansion)
    masks = []
    for start in range(0, expansion.shape[0], chunk):
        a = torch.eye(2, dtype=torch.float64) + torch.einsum(
            "bki,pkj->bpij", j_bar[start:start + chunk], jac) / noise_variance
        positive = (torch.linalg.det(a) > 0).reshape(-1, grid.n, grid.n).numpy()
        for b, mask in enumerate(positive):
            labels, _ = ndimage.label(mask)
            own = labels.reshape(-1)[int(home[start + b])]
            masks.append(torch.from_numpy(labels.reshape(-1) == own) if own else
                         torch.zeros(grid.n ** 2, dtype=torch.bool))
    return torch.stack(masks)


def _hpd_level(log_density, mass):
    """Per datum, the log density above which the highest-density region holds ``mass``."""
    order = torch.sort(log_density, dim=-1, descending=True).values
    cumulative = torch.cumsum(torch.softmax(order, dim=-1), dim=-1)
    index = torch.searchsorted(cumulative, torch.full((order.shape[0], 1), mass,
                                                      dtype=order.dtype))
    return order.gather(-1, index.clamp_max(order.shape[1] - 1))[:, 0]


def in_hpd_region(grid, log_density, points, mass=0.95, chunk=16):
    """``(B,)`` bool: whether each datum's point ``(B, 2)`` lies in the highest-density
    region of ``log_density`` (see module docstring) holding ``mass``, found on ``grid``."""
    inside = []
    for start in range(0, points.shape[0], chunk):
        rows = slice(start, min(start + chunk, points.shape[0]))
        level = _hpd_level(log_density(grid.points, rows), mass)
        inside.append(log_density(points[rows, None, :], rows)[:, 0] >= level)
    return torch.cat(inside)


def compare_on_grid(grid, log_p, log_q, truth, chunk=16, defensive=1e-3):
    """Per-datum metrics of an approximation ``q`` against the exact posterior ``p``.

    Parameters
    ----------
    grid : LatentGrid
    log_p, log_q : callable
        Log densities (see module docstring) of the exact posterior and the approximation.
    truth : torch.Tensor or None
        ``(B, 2)`` latents that generated the data (for the coverage of q's credible
        regions); None where they are unknown in these coordinates (coverage is NaN then).
    chunk : int
        Data per batch of grid evaluations (memory).
    defensive : float
        For KL(p||q), ``q`` is mixed with this fraction of the prior ``N(0, 1)`` (a
        "defensive" mixture), so that it stays finite where an approximation has no
        support (off geoVI's branch) and is not dominated by Gaussian tails far out in p's
        tail. It caps KL(p||q) at about ``-log(defensive) + KL(p||prior)``; KL(q||p) uses
        q itself.

    Returns
    -------
    dict of numpy.ndarray
        ``kl_pq`` = KL(p||q) and ``kl_qp`` = KL(q||p) in nats; ``mean_error_sigma``: the
        Mahalanobis distance of q's mean from p's under p's covariance; ``std_ratio``: q's
        over p's standard deviations along both axes, ``(B, 2)``; ``covered_68``,
        ``covered_95``: whether the truth lies in q's highest-density region of that mass;
        ``mass_68``, ``mass_95``: the exact posterior mass inside those regions of q.
    """
    out = {key: [] for key in GRID_METRICS}
    n_data = len(log_p(grid.points[:1]))
    for start in range(0, n_data, chunk):
        stop = min(start + chunk, n_data)
        rows = slice(start, stop)
        # Normalised on the grid (the cell area cancels in every ratio below).
        lp = log_p(grid.points, rows)
        lq_raw = log_q(grid.points, rows)
        lp = lp - torch.logsumexp(lp, -1, keepdim=True)
        lq = lq_raw - torch.logsumexp(lq_raw, -1, keepdim=True)
        prior = -0.5 * (grid.points ** 2).sum(-1)
        prior = prior - torch.logsumexp(prior, -1)
        lq_kl = torch.logaddexp(lq + math.log1p(-defensive), prior + math.log(defensive))
        p, q = lp.exp(), lq.exp()
        out["kl_pq"].append((p * (lp - lq_kl)).sum(-1))
        # Where q = 0 (off geoVI's branch) it contributes nothing to KL(q||p).
        out["kl_qp"].append(torch.where(q > 0, q * (lq - lp), 0.0).sum(-1))
        _, mean_p, cov_p = grid.moments(lp)
        _, mean_q, cov_q = grid.moments(lq)
        diff = mean_q - mean_p
        out["mean_error_sigma"].append(
            (diff * torch.linalg.solve(cov_p, diff[..., None])[..., 0]).sum(-1).sqrt())
        out["std_ratio"].append((torch.diagonal(cov_q, dim1=-2, dim2=-1)
                                 / torch.diagonal(cov_p, dim1=-2, dim2=-1)).sqrt())
        at_truth = None if truth is None else log_q(truth[rows, None, :], rows)[:, 0]
        for mass, key in ((0.68, "68"), (0.95, "95")):
            level = _hpd_level(lq_raw, mass)
            out[f"covered_{key}"].append(
                torch.full((stop - start,), math.nan, dtype=torch.float64) if truth is None
                else (at_truth >= level).double())
            out[f"mass_{key}"].append(torch.where(lq_raw >= level[:, None], p, 0.0).sum(-1))
    return {key: torch.cat(val).numpy() for key, val in out.items()}
