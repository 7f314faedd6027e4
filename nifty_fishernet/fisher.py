"""The Fisher-metric mathematics of the FisherNet, in one place.

Notation follows the paper (Sect. 2.4-2.6): a decoder ``f: R^d -> R^k``, its Jacobian
``J = df/dz`` (k x d), the noise covariance ``N = exp(xi_N) 1`` and the metric

    M(mu) = J(mu)^T N^{-1} J(mu) + 1                                   (Eq. 20)

whose inverse is the latent posterior covariance. Draws from ``N(mu, M^{-1})`` follow
Eq. 28-31: ``n* ~ N(0, N^{-1})``, ``eta* ~ N(0, 1)``, ``theta = J^T n* + eta*`` (whose covariance
is exactly ``M``), then ``z* = mu + M^{-1} theta``.

Everything is batched over a leading axis ``B``. Jacobians are stored *transposed*,
``jt = J^T`` with shape ``(B, d, k)``: tangent propagation produces one row per latent direction,
and both the metric ``jt @ jt^T`` and ``J^T n`` consume that layout directly.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "decoder_jacobian",
    "metric_from_jacobian",
    "draw_metric_noise",
    "inverse_metric_offsets_cholesky",
    "inverse_metric_offsets_cg",
    "principal_axes",
]


def decoder_jacobian(decoder, z):
    """Value and transposed Jacobian of a batched decoder.

    Parameters
    ----------
    decoder : callable
        Maps ``(B, d) -> (B, k)`` row by row. If it has a ``forward_with_jacobian`` method
        (as :class:`nifty_fishernet.models.MLP` does) that fused pass is used; otherwise
        ``torch.func.vmap(torch.func.jacfwd(...))``.
    z : torch.Tensor
        Latent points, shape ``(B, d)``.

    Returns
    -------
    value : torch.Tensor
        ``f(z)``, shape ``(B, k)``.
    jt : torch.Tensor
        ``J(z)^T``, shape ``(B, d, k)``. Differentiable if ``z`` or the decoder's
        parameters require gradients.
    """
    fused = getattr(decoder, "forward_with_jacobian", None)
    if fused is not None:
        return fused(z)

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
