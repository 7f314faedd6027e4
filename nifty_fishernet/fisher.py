"""The Fisher-metric mathematics of the FisherNet, in one place.

Notation follows the paper (Sect. 2.4-2.6): a decoder ``f: R^d -> R^k``, its Jacobian
``J = df/dz`` (k x d), the noise covariance ``N = exp(xi_N) 1`` and the metric

    M(mu) = J(mu)^T N^{-1} J(mu) + 1                                   (Eq. 20)

whose inverse is the latent posterior covariance. Draws from ``N(mu, M^{-1})`` follow
Eq. 28-31: ``n* ~ N(0, N^{-1})``, ``eta* ~ N(0, 1)``, ``theta = J^T n* + eta*`` (whose covariance
is exactly ``M``), then ``z* = mu + M^{-1} theta``.

The same metric drives the MAP of a datum's own posterior: the energy
``E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2`` has gradient ``z - J^T N^{-1} (x - f(z))``
and Gauss-Newton (Fisher) curvature ``M(z)``, so :func:`newton_map` takes Newton steps on it.

Everything is batched over a leading axis ``B``. Jacobians are stored *transposed*,
``jt = J^T`` with shape ``(B, d, k)``: tangent propagation produces one row per latent direction,
and both the metric ``jt @ jt^T`` and ``J^T n`` consume that layout directly.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "FusedJacobian",
    "decoder_jacobian",
    "metric_from_jacobian",
    "draw_metric_noise",
    "inverse_metric_offsets_cholesky",
    "inverse_metric_offsets_cg",
    "principal_axes",
    "latent_energy",
    "newton_map",
    "NewtonResult",
]


class FusedJacobian(abc.ABC):
    """A decoder that computes its value and transposed Jacobian in one forward pass (as
    :class:`nifty_fishernet.models.MLP` does): what :func:`decoder_jacobian` uses for
    ``method="fused"`` (and ``"auto"``)."""

    @abc.abstractmethod
    def forward_with_jacobian(self, z):
        """``(f(z) (B, k), J(z)^T (B, d, k))``."""


#: The ways :func:`decoder_jacobian` computes a Jacobian.
JACOBIAN_METHODS = ("auto", "fused", "autodiff")


def decoder_jacobian(decoder, z, method="auto"):
    """Value and transposed Jacobian of a batched decoder.

    Parameters
    ----------
    decoder : callable
        Maps ``(B, d) -> (B, k)`` row by row.
    z : torch.Tensor
        Latent points, shape ``(B, d)``.
    method : {"auto", "fused", "autodiff"}
        ``"fused"``: the decoder's own pass (it must be a :class:`FusedJacobian`);
        ``"autodiff"``: ``torch.func.vmap(torch.func.jacfwd(...))``, for any decoder;
        ``"auto"``: fused where the decoder is a :class:`FusedJacobian`, else autodiff.

    Returns
    -------
    value : torch.Tensor
        ``f(z)``, shape ``(B, k)``.
    jt : torch.Tensor
        ``J(z)^T``, shape ``(B, d, k)``. Differentiable if ``z`` or the decoder's
        parameters require gradients.
    """
    if method not in JACOBIAN_METHODS:
        raise ValueError(f"method must be one of {JACOBIAN_METHODS}, got {method!r}")
    fused = isinstance(decoder, FusedJacobian)
    if method == "fused" and not fused:
        raise TypeError(f"method='fused' needs a FusedJacobian decoder, got "
                        f"{type(decoder).__name__}; use method='autodiff'")
    if method != "autodiff" and fused:
        return decoder.forward_with_jacobian(z)

    def single(zi):
        y = decoder(zi.unsqueeze(0)).squeeze(0)
        return y, y

    jac, value = torch.func.vmap(torch.func.jacfwd(single, has_aux=True))(z)
    return value, jac.transpose(1, 2)


def metric_from_jacobian(jt, noise_precision):
    """``M = J^T N^{-1} J + 1`` (Eq. 20) for ``N^{-1} = noise_precision * 1``.

    Parameters
    ----------
    jt : torch.Tensor
        Transposed Jacobians, shape ``(B, d, k)``.
    noise_precision : torch.Tensor or float
        Scalar ``exp(-xi_N)``.

    Returns
    -------
    torch.Tensor
        Shape ``(B, d, d)``, symmetric positive definite.
    """
    d = jt.shape[-2]
    eye = torch.eye(d, dtype=jt.dtype, device=jt.device)
    return noise_precision * (jt @ jt.transpose(-1, -2)) + eye


def draw_metric_noise(n_samples, batch, latent_dim, data_dim, *, generator=None, dtype=None,
                      device=None):
    """Standard-normal noise for Eq. 28-29, drawn data part first.

    Scale the first part by ``sqrt(N^{-1})`` to get ``n*``; the second part is ``eta*``.

    Returns
    -------
    eps_data : torch.Tensor
        Shape ``(S, B, k)``.
    eta : torch.Tensor
        Shape ``(S, B, d)``.
    """
    eps_data = torch.randn(n_samples, batch, data_dim, generator=generator, dtype=dtype,
                           device=device)
    eta = torch.randn(n_samples, batch, latent_dim, generator=generator, dtype=dtype,
                      device=device)
    return eps_data, eta


def inverse_metric_offsets_cholesky(jt, noise_precision, n_star, eta):
    """Offsets ``z* - mu = M^{-1}(J^T n* + eta*)`` by a batched Cholesky solve (Eq. 30-31).

    Parameters
    ----------
    jt : torch.Tensor
        ``J^T`` at ``mu``, shape ``(B, d, k)``.
    noise_precision : torch.Tensor or float
        Scalar ``exp(-xi_N)``.
    n_star, eta : torch.Tensor
        ``n* ~ N(0, N^{-1})`` and ``eta* ~ N(0, 1)``, shapes ``(S, B, k)`` and ``(S, B, d)``.

    Returns
    -------
    torch.Tensor
        Shape ``(S, B, d)``.
    """
    theta = torch.einsum("bdk,sbk->bds", jt, n_star) + eta.permute(1, 2, 0)
    chol = torch.linalg.cholesky(metric_from_jacobian(jt, noise_precision))
    return torch.cholesky_solve(theta, chol).permute(2, 0, 1)


def inverse_metric_offsets_cg(decoder, mu, noise_precision, n_star, eta, *, rtol=None,
                              maxiter=None):
    """Offsets ``M^{-1}(J^T n* + eta*)`` by matrix-free conjugate gradients.

    ``J`` is never formed: ``J v`` is a forward-mode product (``torch.func.jvp``) and
    ``J^T u`` the vector-Jacobian product of one linearisation (``torch.func.vjp``), so memory
    stays ``O(S B (d + k))`` for any latent dimension. All ``S * B`` systems are solved
    together; each stops updating once its residual is below ``rtol * |theta|``.

    Parameters
    ----------
    decoder : callable
        ``(B, d) -> (B, k)``.
    mu : torch.Tensor
        Shape ``(B, d)``.
    noise_precision : torch.Tensor or float
        Scalar ``exp(-xi_N)``.
    n_star, eta : torch.Tensor
        Shapes ``(S, B, k)`` and ``(S, B, d)``.
    rtol : float, optional
        Relative residual tolerance; default 1e-10 in float64, 1e-5 in float32.
    maxiter : int, optional
        Default ``10 * d + 50``. A warning names the residual if it is not reached.

    Returns
    -------
    torch.Tensor
        Shape ``(S, B, d)``.
    """
    n_samples, batch, d = eta.shape
    if rtol is None:
        rtol = 1e-10 if mu.dtype == torch.float64 else 1e-5
    if maxiter is None:
        maxiter = 10 * d + 50
    # Stack the S draws along the batch so every product is one decoder call.
    mu_rep = mu.unsqueeze(0).expand(n_samples, batch, d).reshape(n_samples * batch, d)
    _, vjp_fn = torch.func.vjp(decoder, mu_rep)

    def jac_t(u):
        return vjp_fn(u)[0]

    def apply_metric(v):
        jv = torch.func.jvp(decoder, (mu_rep,), (v,))[1]
        return noise_precision * jac_t(jv) + v

    b = jac_t(n_star.reshape(n_samples * batch, -1)) + eta.reshape(n_samples * batch, d)
    x = torch.zeros_like(b)
    r = b
    p = r
    rs = (r * r).sum(-1)
    threshold = (rtol ** 2) * rs
    for _ in range(maxiter):
        active = rs > threshold
        if not bool(active.any()):
            break
        ap = apply_metric(p)
        curvature = (p * ap).sum(-1)
        alpha = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(rs)),
                            torch.zeros_like(rs))
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * ap
        rs_new = (r * r).sum(-1)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + beta.unsqueeze(-1) * p
        rs = rs_new
    else:
        worst = torch.sqrt((rs / threshold.clamp_min(torch.finfo(rs.dtype).tiny)).max())
        if bool(worst > 1):
            warnings.warn(f"conjugate gradients did not reach rtol={rtol:g} in {maxiter} "
                          f"iterations (worst residual {float(worst):.3g} x the target)",
                          RuntimeWarning, stacklevel=2)
    return x.reshape(n_samples, batch, d)


def principal_axes(cov):
    """Eigen-decomposition of covariances for uncertainty ellipses (the paper's Fig. 5).

    Parameters
    ----------
    cov : torch.Tensor
        Covariances, shape ``(..., d, d)``.

    Returns
    -------
    std : torch.Tensor
        Standard deviations along the principal axes, largest first, shape ``(..., d)``.
    axes : torch.Tensor
        Unit eigenvectors as columns, in the same order, shape ``(..., d, d)``.
    """
    eigval, eigvec = torch.linalg.eigh(cov)
    return torch.sqrt(eigval.clamp_min(0)).flip(-1), eigvec.flip(-1)


def latent_energy(x, z, value, noise_precision):
    """``E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2`` per datum (the negative log
    posterior up to a constant).

    Parameters
    ----------
    x, z, value : torch.Tensor
        Data ``(B, k)``, latents ``(B, d)`` and ``f(z)`` ``(B, k)``.
    noise_precision : torch.Tensor or float
        Scalar ``exp(-xi_N)``.

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``.
    """
    return 0.5 * (z ** 2).sum(-1) + 0.5 * noise_precision * ((x - value) ** 2).sum(-1)


@dataclass
class NewtonResult:
    """What :func:`newton_map` found, per datum.

    Attributes
    ----------
    z : torch.Tensor
        ``(B, d)`` the MAP estimates.
    value, jt : torch.Tensor
        ``f(z)`` ``(B, k)`` and ``J(z)^T`` ``(B, d, k)`` there.
    metric : torch.Tensor
        ``M(z)`` ``(B, d, d)``: the inverse is the Laplace covariance.
    energy : torch.Tensor
        ``E(z)`` ``(B,)``.
    decrement : torch.Tensor
        ``g^T M^{-1} g`` ``(B,)`` at ``z``: twice the energy the next Newton step would gain.
    steps : torch.Tensor
        Accepted Newton steps per datum ``(B,)``.
    converged : torch.Tensor
        ``(B,)`` bool: the decrement fell below the tolerance.
    """

    z: torch.Tensor
    value: torch.Tensor
    jt: torch.Tensor
    metric: torch.Tensor
    energy: torch.Tensor
    decrement: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor


def newton_map(decoder, x, z0, noise_precision, *, max_steps=50, tolerance=None,
               max_halvings=30, armijo=1e-4):
    """MAP of ``E(z) = 1/2 |z|^2 + 1/2 exp(-xi_N) |x - f(z)|^2`` for each datum, by Newton
    steps on the Fisher metric with a per-datum backtracking line search.

    Each step solves ``M(z) p = -g`` with ``g = z - J^T N^{-1} (x - f(z))`` by batched
    Cholesky (``M`` from one fused value-and-Jacobian pass), then halves the step of every
    datum whose energy does not fall by Armijo's criterion, independently of the others: a
    ReLU decoder's energy has kinks, and one datum's short step must not shorten the
    others'. A datum stops when its Newton decrement ``g^T M^{-1} g`` (twice the predicted
    gain) is below ``tolerance``, or when no step length lowers its energy.

    Parameters
    ----------
    decoder : callable
        ``(B, d) -> (B, k)``; see :func:`decoder_jacobian`.
    x : torch.Tensor
        Data ``(B, k)``.
    z0 : torch.Tensor
        Starting latents ``(B, d)``, e.g. the encoder's mean.
    noise_precision : torch.Tensor or float
        Scalar ``exp(-xi_N)``.
    max_steps : int
        Newton steps at most.
    tolerance : float, optional
        Decrement (in nats, ``2 x`` the predicted gain) below which a datum has converged;
        default 1e-10 in float64 and 1e-5 in float32, where the energy itself is only
        known to ~1e-7 of its size.
    max_halvings : int
        Step halvings per line search.
    armijo : float
        Sufficient-decrease constant.

    Returns
    -------
    NewtonResult
    """
    if tolerance is None:
        tolerance = 1e-10 if x.dtype == torch.float64 else 1e-5
    with torch.no_grad():
        z = z0.clone()
        value, jt = decoder_jacobian(decoder, z)
        energy = latent_energy(x, z, value, noise_precision)
        batch = z.shape[0]
        steps = torch.zeros(batch, dtype=torch.long, device=z.device)
        stalled = torch.zeros(batch, dtype=torch.bool, device=z.device)
        # The energy is a sum of ~k terms: changes below this are rounding, not progress.
        slack = 16 * torch.finfo(x.dtype).eps
        # every pass either advances or stalls each active datum, so this ends within
        # max_steps + 1 passes, and at its end metric and decrement belong to the final z
        while True:
            metric = metric_from_jacobian(jt, noise_precision)
            grad = z - noise_precision * (jt @ (x - value).unsqueeze(-1)).squeeze(-1)
            chol = torch.linalg.cholesky(metric)
            direction = -torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
            slope = (grad * direction).sum(-1)  # = -decrement
            decrement = -slope
            active = (decrement > tolerance) & ~stalled & (steps < max_steps)
            if not bool(active.any()):
                break
            alpha = torch.where(active, torch.ones_like(energy), torch.zeros_like(energy))
            pending = active.clone()
            for _ in range(max_halvings + 1):
                rows = pending.nonzero().squeeze(-1)
                trial = z[rows] + alpha[rows, None] * direction[rows]
                # a trial needs only the energy; the Jacobian (d + 1 times the cost on a
                # fused pass) only where it is accepted: about half the trials are not
                t_energy = latent_energy(x[rows], trial, decoder(trial), noise_precision)
                bound = (energy[rows] + armijo * alpha[rows] * slope[rows]
                         + slack * energy[rows].abs())
                ok = t_energy <= bound
                done = rows[ok]
                if done.numel():
                    z[done] = trial[ok]
                    value[done], jt[done] = decoder_jacobian(decoder, z[done])
                    energy[done] = t_energy[ok]
                steps[done] += 1
                pending[done] = False
                if not bool(pending.any()):
                    break
                alpha = torch.where(pending, 0.5 * alpha, alpha)
            stalled |= pending  # no step length lowered the energy: a kink or rounding
        return NewtonResult(z, value, jt, metric, energy, decrement, steps,
                            decrement <= tolerance)
