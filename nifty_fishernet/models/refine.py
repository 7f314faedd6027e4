"""The refined latent posterior: from the encoder's guess to the model's own posterior.

An amortized posterior (the encoder's mean, with ``M(mu)^{-1}`` for the FisherNet or the
encoder's variances for a VAE) is one network's guess for every datum. The model itself
defines the exact posterior of a datum ``x``,

    p(z | x) ∝ exp(-E(z)),   E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2,

with its own decoder ``f`` and noise level. :func:`refine_posterior` starts at the encoder's
mean, reaches the MAP of ``E`` by Newton steps on the Fisher metric
(:func:`nifty_fishernet.fisher.newton_map`) and returns

- ``correction="laplace"``: ``N(MAP, M(MAP)^{-1})`` (the Fisher metric equals the Hessian of
  ``E`` at the MAP up to the residual term, which vanishes for a well-fitting decoder);
- ``correction="importance"``: the mean and covariance of ``p`` itself, estimated by
  self-normalised importance sampling with a Student-t proposal around the MAP scaled by
  ``M(MAP)^{-1}`` (heavier tails than ``p``, so the weights stay bounded), plus the weighted
  draws, their effective sample size and ``p``'s highest-density regions
  ``{z : E(z) <= t}`` (:meth:`RefinedPosterior.energy_threshold`). Where ``p`` is not
  Gaussian these, not the Gaussian of the moments, are the honest credible regions: their
  thresholds are one-dimensional quantiles, right from few draws.

Everything is batched over the data in torch, on the model's device and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..fisher import latent_energy, newton_map
from .tap_conv import TapConv2d

__all__ = ["RefineOptions", "RefinedPosterior", "refine_posterior", "CORRECTIONS",
           "importance_sample", "ImportanceSample", "student_t_draws", "student_t_log_density",
           "weighted_moments", "other_modes", "search_modes", "energy_at",
           "activation_bytes_per_row", "MAX_ACTIVATION_BYTES",
           "quasi_normals", "predictive_scale", "float32_matmul_precision",
           "MATMUL_PRECISIONS", "whiten"]

CORRECTIONS = ("laplace", "importance")
MATMUL_PRECISIONS = ("highest", "high", "medium")


@dataclass(frozen=True)
class RefineOptions:
    """How :func:`refine_posterior` refines.

    Parameters
    ----------
    correction : {"laplace", "importance"}
        The posterior at the MAP: the Laplace (Fisher-metric) Gaussian, or the exact
        posterior's moments by importance sampling.
    max_steps : int
        Newton steps at most. Ten reach the coverage of fifty on Fashion-MNIST (d = 5) at a
        fifth of the cost: later steps creep along the kinks of a ReLU decoder's energy.
    tolerance : float, optional
        Newton decrement below which a datum's MAP has converged (see
        :func:`~nifty_fishernet.fisher.newton_map`).
    n_draws : int
        Importance draws per datum and round.
    dof : int
        Degrees of freedom of the Student-t proposal (lower: heavier tails).
    scale : float
        The proposal's scale in units of the Laplace standard deviations.
    adapt_rounds : int
        Rounds that adapt the proposal to the weighted draws (see
        :func:`importance_sample`; each costs ``n_draws`` more decoder calls).
    starts : int
        Importance sampling only: further Newton runs per datum from the ``starts``
        lowest-energy of ``codebook`` prior draws; modes they find become proposal
        components (:func:`other_modes`), for posteriors with more than one mode (on
        Fashion-MNIST, d = 5, 95 % coverage 0.91 without, 0.94 with four).
    codebook : int
        Prior draws decoded once per call to choose those starts.
    quasi_random : bool
        Importance sampling only: draw the proposals by randomised quasi-Monte Carlo
        (scrambled Sobol points, :func:`quasi_normals`) instead of pseudo-random numbers. Same
        cost per draw, a smaller error of the moments: on Fashion-MNIST (FisherNet d = 5,
        64 draws x 3 rounds, no further starts, 1,000 simulated data) coverage 0.65 / 0.91
        against 0.62 / 0.89 pseudo-random.
    sample_size_correction : bool
        Importance sampling only: widen the covariance by ``(1 + 1/n) (n - 1) / (n - d)``,
        ``n`` the effective sample size (at least ``d + 2``), so that the Gaussian's region
        holds a *new* draw of the posterior with its nominal probability although its mean
        and covariance were estimated from ``n`` draws (Hotelling's prediction region for a
        Gaussian with estimated moments, approximated by one scale). It matters below a few
        hundred effective draws: on Fashion-MNIST (FisherNet d = 5, 64 quasi-random draws x
        4 rounds, effective sample size ~120, 1,000 simulated data) coverage 0.68 / 0.94
        against 0.65 / 0.93 without; at d = 15 (the paper-setting FisherNet, the default
        256 draws x 4 rounds, effective sample size median ~50, 300 simulated data) 0.66 /
        0.87 against 0.27 / 0.55 without. On by default: with a few hundred effective
        draws at small d it widens by 1-3 %, and without it the default covariance is
        overconfident at large d.
    matmul_precision : {"highest", "high", "medium"}
        Importance sampling only: the float32 matrix-product precision of the decoder calls
        that weigh the draws (``torch.set_float32_matmul_precision``; the Newton steps keep
        ``"highest"``). ``"medium"`` lets CPUs with bfloat16 units (AMX, AVX512-BF16) and
        GPUs multiply in bfloat16 with float32 sums: about 2.5x faster decoder calls on the
        Xeon here, at energy errors of ~0.1 nats per draw that change no measured coverage.
    seed : int
        Seeds the importance draws (the MAP is deterministic).
    chunk : int
        Importance draws evaluated per decoder call (memory: ``B * chunk * k`` numbers).
    """

    correction: str = "laplace"
    max_steps: int = 10
    tolerance: float | None = None
    n_draws: int = 256
    dof: int = 3
    scale: float = 1.5
    adapt_rounds: int = 3
    starts: int = 4
    codebook: int = 2048
    quasi_random: bool = False
    sample_size_correction: bool = True
    matmul_precision: str = "highest"
    seed: int = 0
    chunk: int = 64

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if (isinstance(self.adapt_rounds, bool) or not isinstance(self.adapt_rounds, int)
                or self.adapt_rounds < 0):
            raise ValueError(f"adapt_rounds must be a non-negative integer, got "
                             f"{self.adapt_rounds!r}")
        if (isinstance(self.starts, bool) or not isinstance(self.starts, int)
                or self.starts < 0):
            raise ValueError(f"starts must be a non-negative integer, got {self.starts!r}")
        for name in ("max_steps", "n_draws", "chunk", "dof", "codebook"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)
                and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        for name in ("quasi_random", "sample_size_correction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                             f"{self.matmul_precision!r}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {self.tolerance!r}")

    @classmethod
    def fast(cls, **kwargs):
        """A cheap importance-sampled setting: 64 quasi-random draws in each of 4 rounds,
        no further starts, the covariance widened for its effective sample size, the draws
        weighed with bfloat16 products where the hardware has them (keyword arguments
        override). About a quarter of the default's cost. Whether so few draws suffice
        depends on the posterior: on the quick FisherNet of ``nf.quick_fishernet(5)`` it
        covers simulated truths 0.68 / 0.94 (68 / 95 %), on another training run of the
        same recipe 0.60 / 0.83 (effective sample size median ~80), where the default
        reaches 0.66 / 0.89 and 1,024 draws x 4 rounds 0.70 / 0.92. Check
        ``RefinedPosterior.ess`` (docs/RESULTS.md, "Calibration"); a mass-covering
        ``proposal`` (:func:`refine_posterior`) buys back most of the gap on simulated
        data. The highest-density regions of the same draws
        (:meth:`RefinedPosterior.energy_threshold`) are calibrated on both: 0.67 / 0.95
        on the second model's simulations, exact mass 0.71 / 0.96 on its real test
        images, at 1/130 of MGVI's time; at d = 2 ``fast(n_draws=16)`` suffices (0.71 /
        0.94 and 0.70 / 0.96)."""
        preset = dict(correction="importance", n_draws=64, adapt_rounds=3, starts=0,
                      quasi_random=True, sample_size_correction=True,
                      matmul_precision="medium")
        return cls.from_kwargs(None, **{**preset, **kwargs})

    @classmethod
    def from_kwargs(cls, options=None, **kwargs):
        """Options from a :class:`RefineOptions` (or None) updated by keyword arguments;
        unknown names are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown refine option(s) {unknown}; known: {sorted(known)}")
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f"options must be a RefineOptions, got {type(base).__name__}")
        return dataclasses.replace(base, **kwargs)


@dataclass
class RefinedPosterior:
    """The refined posterior of B data.

    Attributes
    ----------
    mean, covariance : torch.Tensor
        ``(B, d)`` and ``(B, d, d)``: the posterior returned by ``posterior(x, refine=True)``.
    map, laplace_covariance : torch.Tensor
        The MAP ``(B, d)`` and ``M(MAP)^{-1}`` ``(B, d, d)``.
    initial : torch.Tensor
        The encoder's mean the Newton steps started from.
    energy : torch.Tensor
        ``E(MAP)`` per datum.
    steps : torch.Tensor
        Newton steps taken per datum.
    converged : torch.Tensor
        Whether each datum's Newton decrement reached the tolerance.
    draws, log_weights : torch.Tensor or None
        ``(S, B, d)`` importance draws and their normalised log weights ``(S, B)`` (None for
        the Laplace correction).
    ess : torch.Tensor or None
        Effective sample size per datum, ``1 / sum w^2`` (None for Laplace).
    draw_energy : torch.Tensor or None
        ``E`` at the draws ``(S, B)`` (None for Laplace): with the weights they give the
        posterior's highest-density regions (:meth:`energy_threshold`,
        :meth:`credible_level`).
    seconds : float
        Wall-clock time.

    Notes
    -----
    The Gaussian of ``mean`` and ``covariance`` summarises a posterior that need not be
    Gaussian; its ellipsoids then hold less (or more) than their nominal mass. The
    importance-sampled refinement also gives the posterior's own highest-density regions,
    ``{z : E(z) <= t}``, whose thresholds ``t`` are one-dimensional quantiles of the draws'
    energies, far easier to estimate from few draws than the tails of a covariance: on a
    FisherNet (d = 5) whose Gaussian regions cover its simulations 0.58 / 0.82 at
    ``RefineOptions.fast()``, these regions cover 0.67 / 0.94 (docs/RESULTS.md,
    "Calibration").
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    map: torch.Tensor
    laplace_covariance: torch.Tensor
    initial: torch.Tensor
    energy: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    draws: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    draw_energy: torch.Tensor | None = None
    seconds: float = float("nan")

    def _check_sampled(self):
        if self.draw_energy is None:
            raise ValueError("highest-density regions need the importance-sampled refinement "
                             "(correction='importance'); this posterior is the Laplace one")

    def energy_threshold(self, level):
        """``(B,)`` energies ``t`` such that the highest-density region ``{z : E(z) <= t}``
        holds a new draw of the posterior with probability ``level`` (``E`` as
        :meth:`~nifty_fishernet.models.LatentModel.energy` gives it).

        The weighted quantile of the draws' energies at ``(level (n + 1) - 1/2) / n``, ``n``
        the effective sample size: the plain ``level``-quantile of ``n`` draws is too low
        for a new draw, which exceeds all ``n`` with probability ``1 / (n + 1)`` (at ``n``
        ~ 80 the plain 95 % region held 0.933 of the truths on Fashion-MNIST, this one
        0.95). Where fewer draws cannot bound the region (that level above 1) ``t`` is
        infinite, and minus infinity for a level below the lowest possible mid-rank
        ``1 / (2 (n + 1))``. ``E(z) <= t`` exactly when ``credible_level(E(z)) < level``
        (for energies that tie with no draw's).

        Parameters
        ----------
        level : float
            In (0, 1).
        """
        self._check_sampled()
        if not 0 < float(level) < 1:
            raise ValueError(f"level must lie in (0, 1), got {level!r}")
        n = self.ess.to(self.draw_energy)
        target = (float(level) * (n + 1) - 0.5) / n
        energy, order = self.draw_energy.sort(0)
        cumulative = self.log_weights.exp().to(energy).gather(0, order).cumsum(0)
        index = (cumulative < target).sum(0, keepdim=True).clamp(max=energy.shape[0] - 1)
        threshold = energy.gather(0, index)[0]
        threshold = torch.where(target > 1, torch.full_like(threshold, float("inf")), threshold)
        # a level below the lowest possible mid-rank 1 / (2 (n + 1)): the empty region
        return torch.where(target <= 0, torch.full_like(threshold, -float("inf")), threshold)

    def credible_level(self, energy):
        """The level of the smallest highest-density region that holds a point of energy
        ``energy``: ``(..., B)`` values in (0, 1) for energies ``(..., B)`` (e.g.
        ``model.energy(x, z)``). The point's mid-rank among the weighted draws counted as
        ``n`` effective draws, ``(F n + 1/2) / (n + 1)``, ``F`` the draws' weight below it
        (as :func:`nifty_fishernet.calibration.hpd_ranks` ranks a truth): a draw of the
        exact posterior has a uniform level, and a point lies in the region of mass ``a``
        (:meth:`energy_threshold`) when its level is below ``a``."""
        self._check_sampled()
        energy = torch.as_tensor(energy).to(self.draw_energy)
        if energy.shape[-1:] != self.draw_energy.shape[-1:]:
            raise ValueError(f"energy must end in the batch size {self.draw_energy.shape[-1]}, "
                             f"got shape {tuple(energy.shape)}")
        below = self.draw_energy < energy.unsqueeze(-2)
        weight_below = (self.log_weights.exp().to(energy) * below).sum(-2)
        n = self.ess.to(energy)
        return (weight_below * n + 0.5) / (n + 1)


def student_t_log_density(points, center, chol, dof):
    """Log density ``(..., B)`` of a multivariate Student-t with location ``center`` (B, d),
    scale matrix ``chol chol^T`` and ``dof`` degrees of freedom at ``points`` (..., B, d)."""
    d = center.shape[-1]
    diff = (points - center).reshape(-1, *center.shape).permute(1, 2, 0)  # (B, d, S)
    white2 = (torch.linalg.solve_triangular(chol, diff, upper=False) ** 2).sum(-2)
    white2 = white2.permute(1, 0).reshape(points.shape[:-1])
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (math.lgamma((dof + d) / 2) - math.lgamma(dof / 2) - 0.5 * d * math.log(dof * math.pi)
            - log_det - 0.5 * (dof + d) * torch.log1p(white2 / dof))


def quasi_normals(n_draws, batch, width, generator, dtype, device):
    """``(S, B, width)`` standard normal numbers by randomised quasi-Monte Carlo: one
    scrambled Sobol point set of ``S`` points in ``width`` dimensions, given to each datum
    with its own random digital shift (an XOR of the points' 30 binary digits with random
    ones, plus uniform jitter below the last digit), then mapped by the normal quantile.
    Every point is exactly N(0, 1) distributed, so estimates stay unbiased, and the digital
    shift keeps the Sobol net's even filling of the space for every datum: a smaller error
    for smooth integrands at the same ``S`` (best for ``S`` a power of 2)."""
    bits = torch.quasirandom.SobolEngine.MAXBIT
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator, device=generator.device))
    points = torch.quasirandom.SobolEngine(width, scramble=True, seed=seed).draw(
        n_draws, dtype=torch.float64).to(device)
    digits = torch.round(points * 2 ** bits).long()  # exact: Sobol points are k / 2^bits
    shift = torch.randint(2 ** bits, (batch, width), generator=generator, device=device)
    jitter = torch.rand(n_draws, batch, width, generator=generator, dtype=torch.float64,
                        device=device)
    uniform = (torch.bitwise_xor(digits[:, None, :], shift[None]) + jitter) / 2 ** bits
    # the quantile at 0 or 1 is infinite: keep the float64 uniforms strictly inside
    uniform = uniform.clamp(1e-15, 1 - 1e-15)
    return (math.sqrt(2.0) * torch.erfinv(2.0 * uniform - 1.0)).to(dtype)


def student_t_draws(center, chol, n_draws, dof, generator, quasi=False):
    """``(S, B, d)`` draws of a multivariate Student-t (see :func:`student_t_log_density`):
    ``z = center + L eps / sqrt(u / dof)``, ``eps ~ N(0, 1)``, ``u ~ chi^2_dof``; with
    ``quasi``, ``eps`` and ``u`` from randomised quasi-Monte Carlo (:func:`quasi_normals`)."""
    batch, d = center.shape
    # chi^2 with an integer number of degrees of freedom: a sum of squared normals, so the
    # caller's generator alone decides the draws (and quasi-random draws need no chi^2
    # quantile, only d + dof normal coordinates per draw)
    if quasi:
        normals = quasi_normals(n_draws, batch, d + dof, generator, center.dtype,
                                center.device)
        eps, u = normals[..., :d], (normals[..., d:] ** 2).sum(-1)
    else:
        eps = torch.randn(n_draws, batch, d, generator=generator, dtype=center.dtype,
                          device=center.device)
        u = (torch.randn(n_draws, batch, dof, generator=generator, dtype=center.dtype,
                         device=center.device) ** 2).sum(-1)
    return center + torch.sqrt(dof / u)[..., None] * torch.einsum("bij,sbj->sbi", chol, eps)


@dataclass
class ImportanceSample:
    """Weighted draws of a posterior: ``draws`` (S, B, d), normalised ``log_weights`` (S, B),
    ``log_evidence`` (B,) of the unnormalised target, ``ess`` (B,), and ``energy`` (S, B)."""

    draws: torch.Tensor
    log_weights: torch.Tensor
    log_evidence: torch.Tensor
    ess: torch.Tensor
    energy: torch.Tensor


def weighted_moments(draws, log_weights):
    """Mean ``(B, d)`` and covariance ``(B, d, d)`` of weighted draws."""
    weights = log_weights.exp()
    mean = torch.einsum("sb,sbi->bi", weights, draws)
    centred = draws - mean
    cov = torch.einsum("sb,sbi,sbj->bij", weights, centred, centred)
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


def importance_sample(energy, components, n_draws, dof, generator, adapt_rounds=1,
                      quasi=False, min_ess=None, max_rounds=8):
    """Self-normalised adaptive multiple importance sampling of ``p(z) ∝ exp(-energy(z))``.

    Round 0 draws ``n_draws`` split evenly among Student-t ``components`` (e.g. one at each
    mode found); every further round adds a Student-t with the weighted moments of all draws
    so far (scale x 1.2, plus 5 % of the first component's scale so that a degenerate
    estimate cannot collapse) and draws ``n_draws`` from it. Every draw is kept and weighted
    by the mixture of all proposals in proportion to their draws (the balance heuristic of
    adaptive multiple importance sampling, Cornuet et al. 2012), so no decoder call is
    wasted and a poor proposal costs at most its share. A posterior wider or more curved
    than the first guess thus still gets draws where its mass is.

    Parameters
    ----------
    energy : callable
        ``(S, B, d) -> (S, B)`` the negative log target.
    components : list of (torch.Tensor, torch.Tensor)
        Centres ``(B, d)`` and scale Cholesky factors ``(B, d, d)`` of the first proposals.
    n_draws, dof : int
        Draws per round; the Student-t's degrees of freedom.
    generator : torch.Generator
    adapt_rounds : int
        Rounds after the first (0: plain importance sampling with the first proposals).
    quasi : bool
        Randomised quasi-Monte Carlo draws (:func:`quasi_normals`) instead of pseudo-random.
    min_ess : float, optional
        After ``adapt_rounds``, go on adapting while the median effective sample size of
        the B data is below ``min_ess`` (all data draw alike, so one datum's draws depend
        on the others' ESS), up to ``max_rounds`` rounds after the first. Where the median
        already reaches it the result is that of ``adapt_rounds`` alone. In high dimensions
        the first rounds' proposals are far from the posterior (d = 20: median ESS 67 of
        6,144 draws after 2 rounds, 680 of 14,336 after 6).
    max_rounds : int
        The most rounds after the first that ``min_ess`` may ask for.

    Returns
    -------
    ImportanceSample
        With about ``(rounds + 1) * n_draws`` draws.
    """
    if min_ess is not None and not (math.isfinite(min_ess) and min_ess > 0):
        raise ValueError(f"min_ess must be a positive number or None, got {min_ess!r}")
    components = list(components)
    center, chol = components[0]
    eye = torch.eye(center.shape[-1], dtype=center.dtype, device=center.device)
    base_cov = chol @ chol.transpose(-1, -2)
    share = max(1, n_draws // len(components))
    counts = [share] * len(components)
    draws = [student_t_draws(c, l, share, dof, generator, quasi) for c, l in components]
    energies = [energy(new) for new in draws]
    last = int(adapt_rounds) if min_ess is None else max(int(max_rounds), int(adapt_rounds))
    for round_ in range(last + 1):
        points, e = torch.cat(draws), torch.cat(energies)
        log_mix = torch.log(torch.tensor(counts, dtype=points.dtype, device=points.device)
                            / sum(counts))
        log_q = torch.logsumexp(torch.stack([w + student_t_log_density(points, c, l, dof)
                                             for w, (c, l) in zip(log_mix, components)]), 0)
        log_ratio = -e - log_q
        if round_ == last or (round_ >= int(adapt_rounds)
                              and float(_ess(log_ratio).median()) >= min_ess):
            break
        mean, cov = weighted_moments(points, torch.log_softmax(log_ratio, 0))
        cov = cov + 0.05 * base_cov + 1e-12 * eye
        components.append((mean, 1.2 * torch.linalg.cholesky(cov)))
        counts.append(n_draws)
        draws.append(student_t_draws(*components[-1], n_draws, dof, generator, quasi))
        energies.append(energy(draws[-1]))
    log_weights = torch.log_softmax(log_ratio, 0)
    log_evidence = torch.logsumexp(log_ratio, 0) - math.log(points.shape[0])
    return ImportanceSample(points, log_weights, log_evidence, _ess(log_ratio), e)


def _ess(log_ratio):
    """Effective sample size ``1 / sum w^2`` per datum of unnormalised log weights (S, B)."""
    return 1.0 / torch.log_softmax(log_ratio, 0).mul(2).exp().sum(0)


@contextlib.contextmanager
def float32_matmul_precision(mode):
    """Run a block at ``torch.set_float32_matmul_precision(mode)``, then restore the
    previous setting (it is global to the process)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def predictive_scale(ess, dim):
    """``(1 + 1/n) (n - 1) / (n - d)`` per datum, ``n`` the effective sample size clamped to
    at least ``d + 2``: the factor by which the covariance estimated from ``n`` draws must
    grow for its Gaussian region to hold a new draw with the nominal probability (the
    mean's error adds ``1/n``, the covariance's own error the rest; Hotelling's prediction
    region approximated by one scale)."""
    n = ess.clamp(min=dim + 2)
    return (1 + 1 / n) * (n - 1) / (n - dim)


#: The decoder activations one call of :func:`energy_at` (or one group of
#: :func:`search_modes`' Newton runs, counting their d + 1 forward-mode copies) may hold, in
#: bytes: it bounds the rows per call where the decoder is wide (a ConvVAE holds some 60 times
#: a dense decoder's values per decoded row; 2,048 draws of 200 images in one call took over
#: 20 GB).
MAX_ACTIVATION_BYTES = 4 * 2 ** 30


def activation_bytes_per_row(decoder, latent_dim, dtype, device):
    """Bytes of the outputs of all of ``decoder``'s leaf modules for one decoded row, plus
    the unfolded input of each (not transposed) convolution: an upper bound of what a
    decoder call holds per row (without autograd)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()
            if isinstance(module, TapConv2d):
                # its tap products, out_channels x taps per input pixel, and their padded copy
                total += (2 * module.out_channels * math.prod(module.kernel_size)
                          * math.prod(inputs[0].shape[2:]) * output.element_size())
            elif isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed:
                # without a fast kernel (float64 on the CPU) a convolution unfolds its
                # whole batch's input first: in_channels x taps values per output pixel,
                # the ConvVAE's last layer 9 times its input (3.3 GB measured for 2,000
                # float64 rows of the ConvVAE decoder, whose outputs are 1.6 GB)
                total += (module.in_channels * math.prod(module.kernel_size)
                          * math.prod(output.shape[2:]) * output.element_size())

    leaves = [m for m in decoder.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            decoder(torch.zeros(1, latent_dim, dtype=dtype, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return max(total, 1)


def energy_at(model, x, points, precision, chunk):
    """``E(z)`` ``(S, B)`` at points ``(S, B, d)`` for data ``x`` ``(B, k)``, at most ``chunk``
    draws per decoder call (fewer where their activations would exceed
    :data:`MAX_ACTIVATION_BYTES`), in the points' dtype (the decoder runs in its own)."""
    out = torch.empty(points.shape[:2], dtype=points.dtype, device=points.device)
    per_row = activation_bytes_per_row(model.decoder, points.shape[2], model.dtype,
                                       points.device)
    chunk = max(1, min(int(chunk), MAX_ACTIVATION_BYTES // (per_row * max(points.shape[1], 1))))
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            part = points[start:start + chunk]
            s, b, d = part.shape
            value = model.decoder(part.reshape(s * b, d).to(model.dtype)).to(points.dtype)
            out[start:start + s] = latent_energy(x.unsqueeze(0), part, value.reshape(s, b, -1),
                                                 precision)
    return out


def whiten(chol, diff):
    """``L^{-1} diff`` for Cholesky factors ``chol`` (B, d, d) and differences (B, d): a
    difference in units of the Gaussian's standard deviations."""
    return torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)


def search_modes(model, x, precision, starts, codebook, max_steps, generator):
    """Newton runs to local modes of each datum's posterior from several starts.

    ``codebook`` prior draws are decoded once for the whole batch; the ``starts`` of lowest
    energy for each datum start Newton runs (:func:`~nifty_fishernet.fisher.newton_map`), in
    groups whose Jacobians hold at most :data:`MAX_ACTIVATION_BYTES` of activations.

    Returns
    -------
    z, energy, laplace_chol : torch.Tensor
        The runs' ends ``(starts, B, d)``, ``E`` there ``(starts, B)`` and the Cholesky factor
        of the inverse metric there ``(starts, B, d, d)``.
    """
    batch, d = x.shape[0], model.latent_dim
    book = torch.randn(codebook, d, generator=generator, dtype=x.dtype, device=x.device)
    decoded = model.decoder(book)
    energy = (0.5 * (book ** 2).sum(-1)[None]
              + 0.5 * precision * ((x ** 2).sum(-1)[:, None] - 2 * x @ decoded.T
                                   + (decoded ** 2).sum(-1)[None]))
    best = energy.topk(starts, dim=1, largest=False).indices  # (B, starts)
    begin = book[best].transpose(0, 1).reshape(starts * batch, d)
    targets = x.repeat(starts, 1)
    # a run's forward-mode Jacobians hold about d + 1 rows of activations per datum: all
    # 8 x 200 runs of a ConvVAE at once would hold some 7 GB at d = 10 and 13 GB at d = 20
    # (0.83 GB per 200 runs measured at d = 10); the runs are independent, so bounded
    # groups of them give the same ends
    per_row = activation_bytes_per_row(model.decoder, d, x.dtype, x.device)
    group = max(1, MAX_ACTIVATION_BYTES // ((d + 1) * per_row))
    ends = []
    for start in range(0, starts * batch, group):
        runs = newton_map(model.decoder, targets[start:start + group],
                          begin[start:start + group], precision, max_steps=max_steps)
        ends.append((runs.z, runs.energy, runs.metric))
        del runs
    z, energies, metric = (torch.cat(parts) for parts in zip(*ends))
    laplace_chol = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(metric)))
    return (z.reshape(starts, batch, d), energies.reshape(starts, batch),
            laplace_chol.reshape(starts, batch, d, d))


def other_modes(model, x, found, map_chol, precision, starts, codebook, max_steps, generator,
                margin=20.0, separation=3.0):
    """Local modes of each datum's posterior other than ``found``'s, from several starts.

    The ends of :func:`search_modes`' runs count as other modes where their energy is
    within ``margin`` nats of the MAP's (so that they can hold posterior mass; a lower one
    holds more) and they lie more than ``separation`` Laplace sigma (``map_chol``, the
    Cholesky factor of ``M(MAP)^{-1}``) from the MAP; otherwise each is replaced by the MAP
    itself (a repeated component changes nothing).

    Returns
    -------
    list of (torch.Tensor, torch.Tensor)
        ``starts`` pairs: modes ``(B, d)`` and the Cholesky factor of the inverse metric
        there ``(B, d, d)``.
    """
    zs, energies, chols = search_modes(model, x, precision, starts, codebook, max_steps,
                                       generator)
    out = []
    for z, e, chol in zip(zs, energies, chols):
        keep = ((e < found.energy + margin)
                & (whiten(map_chol, z - found.z).norm(dim=-1) > separation))
        out.append((torch.where(keep[:, None], z, found.z),
                    torch.where(keep[:, None, None], chol, map_chol)))
    return out


def refine_posterior(model, x, options=None, proposal=None, **kwargs):
    """The refined posterior of ``x`` under the model's own decoder and noise level.

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        A trained model in eval mode (FisherNet, VAE, calibrated VAE, ConvVAE).
    x : torch.Tensor
        Data ``(B, k)`` in the model's dtype.
    options : RefineOptions, optional
    proposal : callable, optional
        Importance sampling only: ``x -> (mean (B, d), covariance (B, d, d))``, a further
        Student-t component of the first proposal beside the one at the MAP, e.g. the
        ``posterior`` of a :class:`~nifty_fishernet.models.PosteriorNetwork` fitted to the
        model's simulations (:func:`~nifty_fishernet.fit_posterior_network`). A wide,
        mass-covering guess finds the tails that the Laplace scale misses: on a FisherNet
        whose posteriors are several times wider than ``M(MAP)^{-1}`` in some direction,
        ``RefineOptions.fast()`` covers its simulations 0.66 / 0.88 with such a network
        against 0.58 / 0.82 without, at the same number of draws, and 256 draws x 4 rounds
        0.70 / 0.92. On real images a network fitted to simulations is out of distribution
        and helps little (exact mass 0.62 / 0.83 at 256 x 4; docs/RESULTS.md,
        "Calibration"). The estimate stays consistent whatever the guess: a poor one only
        costs its share of the draws.
    **kwargs
        Fields of :class:`RefineOptions` overriding ``options``.

    Returns
    -------
    RefinedPosterior
    """
    options = RefineOptions.from_kwargs(options, **kwargs)
    if proposal is not None and options.correction != "importance":
        raise ValueError(f"a proposal is used by importance sampling only; the correction "
                         f"is {options.correction!r} (pass correction='importance')")
    if proposal is not None and not callable(proposal):
        raise TypeError(f"proposal must be a callable x -> (mean, covariance), got "
                        f"{type(proposal).__name__}")
    if model.training:
        raise RuntimeError(f"{type(model).__name__} is in training mode; call model.eval() "
                           f"before refining posteriors")
    began = time.perf_counter()
    with torch.no_grad():
        initial = model.encode(x)
        precision = model.noise.precision.to(x.dtype)
        found = newton_map(model.decoder, x, initial, precision, max_steps=options.max_steps,
                           tolerance=options.tolerance)
        chol_metric = torch.linalg.cholesky(found.metric)
        laplace = torch.cholesky_inverse(chol_metric)
        result = RefinedPosterior(found.z, laplace, found.z, laplace, initial, found.energy,
                                  found.steps, found.converged)
        if options.correction == "importance":
            _importance(model, x, found, laplace, precision, options, result, proposal)
    result.seconds = time.perf_counter() - began
    return result


def _proposal_component(proposal, x, like):
    """The caller's guess ``proposal(x)`` as a (centre, Cholesky factor) pair, checked."""
    mean, covariance = proposal(x)
    mean = torch.as_tensor(mean).to(like)
    covariance = torch.as_tensor(covariance).to(like)
    batch, d = like.shape
    if mean.shape != (batch, d) or covariance.shape != (batch, d, d):
        raise ValueError(f"proposal(x) must give a mean of shape {(batch, d)} and a "
                         f"covariance of shape {(batch, d, d)}; got {tuple(mean.shape)} and "
                         f"{tuple(covariance.shape)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(covariance).all()):
        raise ValueError("proposal(x) gave a non-finite mean or covariance")
    chol, info = torch.linalg.cholesky_ex(0.5 * (covariance + covariance.transpose(-1, -2)))
    if (info != 0).any():
        raise ValueError(f"proposal(x) gave covariances that are not positive definite "
                         f"(data {torch.nonzero(info).flatten().tolist()[:5]})")
    return mean, chol


def _importance(model, x, found, laplace, precision, options, result, proposal=None):
    """Adapted importance sampling of ``p(z | x)`` around the MAP (fills ``result``)."""
    generator = torch.Generator(device=x.device).manual_seed(options.seed)
    chol = torch.linalg.cholesky(laplace)
    components = [(found.z, chol * options.scale)]
    if proposal is not None:
        components.append(_proposal_component(proposal, x, found.z))
    if options.starts:
        for mode, mode_chol in other_modes(model, x, found, chol, precision, options.starts,
                                           options.codebook, options.max_steps, generator):
            components.append((mode, mode_chol * options.scale))

    def energy(points):
        with float32_matmul_precision(options.matmul_precision):
            return energy_at(model, x, points, precision, options.chunk)

    sample = importance_sample(energy, components, options.n_draws, options.dof, generator,
                               options.adapt_rounds, options.quasi_random)
    result.mean, covariance = weighted_moments(sample.draws, sample.log_weights)
    # one pseudo-draw's worth of the Laplace covariance: where the weight collapses onto one
    # draw (effective sample size ~1: a draw in a far deeper basin than the proposals',
    # e.g. when the encoder leads to the wrong mode and no further start finds the right
    # one) the moments alone would give a zero covariance; elsewhere it moves them by
    # 1 / (n + 1), far below their Monte Carlo error
    n = sample.ess.to(covariance)[:, None, None]
    result.covariance = (n * covariance + laplace) / (n + 1)
    if options.sample_size_correction:
        scale = predictive_scale(sample.ess, found.z.shape[-1])
        result.covariance = result.covariance * scale[:, None, None]
    result.draws, result.log_weights, result.ess = (sample.draws, sample.log_weights,
                                                    sample.ess)
    result.draw_energy = sample.energy
