"""The block structure of B independent latent problems, exploited inside NIFTy.

B data points with their own latents form one NIFTy problem on ``{"latent": (B, d)}`` (plus
a shared noise parameter). Its metrics (Hamiltonian, sampled KL, geoVI's transformation) are
block-diagonal: one ``d x d`` block per datum (and a scalar for the noise parameter, whose
Fisher metric has no cross terms with the latents). NIFTy's conjugate gradients see all
``B * d`` eigenvalues at once, so their iteration counts grow with B. Here the blocks are
probed with ``d`` metric applications and solved exactly:

- :class:`BlockPreconditioner` preconditions the CG that draws MGVI samples,
- :class:`PreconditionedHamiltonian` hands it to NIFTy's sampling,
- :class:`BlockNewton` takes exact Newton steps for the KL and the MAP. (Not for geoVI's
  nonlinear sample updates: there it moved the result away from NIFTy's Newton-CG one, so
  :func:`~nifty_fishernet.nifty.infer_latents` keeps Newton-CG for them.)

Where a response couples data points the probes return sums over coupled blocks; the
preconditioner then falls back to the identity and :class:`BlockNewton` to NIFTy's
Newton-CG, so results stay correct, only the speed-up is lost.
"""

from __future__ import annotations

import numpy as np

from .compat import ift, values
from .likelihood import LATENT_KEY, NOISE_KEY

__all__ = ["BlockPreconditioner", "PreconditionedHamiltonian", "BlockNewton", "metric_blocks"]


def _probe_blocks(metric, domain):
    """Latent ``(B, d, d)`` blocks and noise diagonal of a metric on ``domain``, by probing.

    The B latent problems are independent, so applying the metric to the unit vector of
    coordinate ``j`` of *every* datum at once gives column ``j`` of all B blocks: d metric
    applications in total (one more for the noise parameter, whose Fisher metric has no
    cross terms with the latents). Where a response couples data points the probes return
    sums over the coupled blocks instead. Further keys (the user's other model parts) are
    not probed: the blocks are the latent-latent part of the metric.
    """
    batch, d = domain[LATENT_KEY].shape
    columns = []
    for j in range(d):
        unit = np.zeros((batch, d))
        unit[:, j] = 1.0
        field = ift.full(domain, 0.0).to_dict()
        field[LATENT_KEY] = ift.makeField(domain[LATENT_KEY], unit)
        columns.append(values(metric(ift.MultiField.from_dict(field))[LATENT_KEY]))
    blocks = np.stack(columns, axis=-1)
    noise = None
    if NOISE_KEY in domain.keys():
        field = ift.full(domain, 0.0).to_dict()
        field[NOISE_KEY] = ift.full(domain[NOISE_KEY], 1.0)
        noise = values(metric(ift.MultiField.from_dict(field))[NOISE_KEY])
    return blocks, noise


def metric_blocks(likelihood, position):
    """The ``(B, d, d)`` latent blocks of the Hamiltonian's metric ``J^T R^T N^{-1} R J + 1``.

    With an inferred noise level (or further keys) this is the latent-latent block (the
    metric of the latents at fixed values of everything else). See :func:`_probe_blocks`.
    """
    hamiltonian = ift.StandardHamiltonian(likelihood)
    metric = hamiltonian(ift.Linearization.make_var(position, want_metric=True)).metric
    return _probe_blocks(metric, likelihood.domain)[0]


class _BlockFactors:
    """Cholesky factors of the latent blocks (and the noise diagonal), factorised once.

    Raises ``numpy.linalg.LinAlgError`` where a block is not positive definite.
    """

    def __init__(self, blocks, noise):
        self.blocks = 0.5 * (blocks + np.swapaxes(blocks, -1, -2))
        self.cholesky = np.linalg.cholesky(self.blocks)
        if noise is not None and not np.all(noise > 0):
            raise np.linalg.LinAlgError("non-positive noise block")
        self.noise = noise

    def _map(self, x, latent, noise):
        """Apply ``latent`` to the latent key and ``noise`` to the noise key; others kept."""
        out = x.to_dict()
        out[LATENT_KEY] = ift.makeField(x.domain[LATENT_KEY], latent(values(x[LATENT_KEY])))
        if self.noise is not None:
            out[NOISE_KEY] = noise(x[NOISE_KEY])
        return ift.MultiField.from_dict(out)

    def solve(self, x):
        """``M^-1 x`` on the latent and noise keys, identity on further keys."""
        def latent(z):
            z = np.linalg.solve(self.cholesky, z[..., None])
            return np.linalg.solve(np.swapaxes(self.cholesky, -1, -2), z)[..., 0]
        return self._map(x, latent, lambda xi: xi / self.noise)

    def times(self, x):
        """``M x`` on the latent and noise keys, identity on further keys."""
        return self._map(x, lambda z: (self.blocks @ z[..., None])[..., 0],
                         lambda xi: xi * self.noise)


class BlockPreconditioner(ift.EndomorphicOperator):
    """Block-Jacobi approximation of a metric: one ``d x d`` block per datum.

    Used as the preconditioner of the conjugate gradients that draw MGVI samples
    (``SamplingEnabler``'s ``approximation``) and that find Newton steps when the problem has
    further keys. B independent data points make the latent part of the metric
    block-diagonal; unpreconditioned CG sees all ``B * d`` eigenvalues at once and its
    iteration count grows with B, while with the exact blocks it converges in one or two
    iterations for any B. The blocks are probed (``d`` metric applications) and factorised
    on first use only: the Hamiltonian is linearised with a metric far more often than
    samples are drawn. Further keys (a background, ...) are left to the CG (identity).
    Where the blocks are not positive definite (a response coupling data points) the
    operator acts as the identity, which is plain CG again.

    Parameters
    ----------
    metric : ift.LinearOperator
        The metric to approximate, on ``{"latent": (B, d)[, "xi_noise", ...]}``.
    """

    def __init__(self, metric):
        self._metric = metric
        self._domain = metric.domain
        self._capability = self._all_ops
        self._factors = None
        self._probed = False

    def factors(self):
        """The :class:`_BlockFactors`, or None where the blocks are not positive definite."""
        if not self._probed:
            self._probed = True
            try:
                self._factors = _BlockFactors(*_probe_blocks(self._metric, self._domain))
            except np.linalg.LinAlgError:
                self._factors = None
        return self._factors

    def apply(self, x, mode):
        self._check_input(x, mode)
        factors = self.factors()
        if factors is None:
            return x
        if mode in (self.INVERSE_TIMES, self.ADJOINT_INVERSE_TIMES):
            return factors.solve(x)
        return factors.times(x)


class PreconditionedHamiltonian(ift.StandardHamiltonian):
    """``ift.StandardHamiltonian`` whose sampling CG uses a :class:`BlockPreconditioner`.

    The energy, gradient, metric and the drawn samples' distribution are those of the
    standard Hamiltonian; only the conjugate gradient behind the inverse-metric draws
    converges faster (MGVI; geoVI's transformation draws its own samples inside NIFTy).
    """

    def apply(self, x):
        self._check_input(x)
        if not x.want_metric or self.iteration_controller is None:
            return super().apply(x)
        lhx, prx = self.likelihood_energy(x), self.prior_energy(x)
        metric = lhx.metric + prx.metric
        sampler = ift.SamplingEnabler(lhx.metric, prx.metric, self.iteration_controller,
                                      approximation=BlockPreconditioner(metric))
        return (lhx + prx).add_metric(sampler)


class BlockNewton(ift.DescentMinimizer):
    """Newton's method with the exact block-diagonal metric of B independent latent problems.

    Each step probes the energy's metric (``d`` applications, one more for the noise
    parameter), solves every datum's ``d x d`` system exactly and checks the result with one
    more metric application; a line search starting at the full Newton step follows. Where
    the check fails (the metric couples data points), the step is NIFTy's Newton-CG step
    instead. Compared with ``ift.NewtonCG``, whose truncated CG on the joint system needs
    more iterations, and whose Newton steps then need more line searches, as B grows, the
    number of steps here does not depend on B.

    With further keys in the domain (the user's other model parts) the Newton step solves
    the whole metric by conjugate gradients preconditioned with the latent blocks
    (:class:`BlockPreconditioner`), so the latent part still converges in a few iterations.

    Parameters
    ----------
    controller : ift.IterationController
        Decides when to stop (as for ``ift.NewtonCG``).
    check_tolerance : float
        Relative residual ``|M p + g| / |g|`` above which the block solution is rejected.
    cg_iterations : int
        At most this many preconditioned CG iterations per Newton step (further keys only).
    energy_reduction_factor : float
        Further keys only: CG stops when an iteration lowers the quadratic model by less than
        this fraction of the previous Newton step's energy decrease (as ``ift.NewtonCG``).
    """

    def __init__(self, controller, check_tolerance=1e-6, cg_iterations=200,
                 energy_reduction_factor=0.1):
        super().__init__(controller, ift.LineSearch(preferred_initial_step_size=1.0))
        self._fallback = ift.NewtonCG(controller)
        self._tolerance = float(check_tolerance)
        self._cg_iterations = int(cg_iterations)
        self._reduction = float(energy_reduction_factor)

    def get_descent_direction(self, energy, old_value=None):
        metric, gradient = energy.metric, energy.gradient
        if LATENT_KEY not in gradient.domain.keys():  # no latent blocks to use
            return self._fallback.get_descent_direction(energy, old_value)
        preconditioner = BlockPreconditioner(metric)
        factors = preconditioner.factors()
        if factors is None:
            return self._fallback.get_descent_direction(energy, old_value)
        if set(gradient.domain.keys()) <= {LATENT_KEY, NOISE_KEY}:
            step = factors.solve(-gradient)
            residual = (metric(step) + gradient).norm()
            if residual <= self._tolerance * gradient.norm():
                return step
            return self._fallback.get_descent_direction(energy, old_value)
        # Truncated as in ift.NewtonCG: a few iterations for the first step, later ones stop
        # once an iteration lowers the quadratic model by less than a fraction of what the
        # last Newton step gained; solving to full precision far from the optimum is wasted.
        if old_value is None:
            controller = ift.GradientNormController(iteration_limit=5)
        else:
            controller = ift.AbsDeltaEnergyController(
                self._reduction * (old_value - energy.value), iteration_limit=self._cg_iterations)
        newton = ift.QuadraticEnergy(ift.full(gradient.domain, 0.0), metric, -gradient)
        newton, _ = ift.ConjugateGradient(controller)(newton, preconditioner)
        return newton.position
