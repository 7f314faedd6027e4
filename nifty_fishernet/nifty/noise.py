"""The noise of ``d = R(f(z) + m) + n``: the model's own misfit ``m`` and the measurement ``n``.

A trained decoder does not reproduce an image exactly: the FisherNet learns the variance of
its misfit, ``m ~ N(0, e^{xi_N} 1)`` on the decoder's output. A measurement ``d = R x + n`` of
an image ``x = f(z) + m`` through a linear response ``R`` sees that misfit through ``R``; with a
measurement noise ``n ~ N(0, N)`` the data's covariance is

    C = R (e^{xi_N} 1) R^T + N.

:func:`noise_inverse_covariance` builds ``C^{-1}`` as a NIFTy operator that draws samples and
has a square root, so MGVI and geoVI work with it. Where ``R R^T = 1`` (no response, a pixel
mask) and ``N`` is diagonal, ``C`` is diagonal; otherwise (a blur, a NIFTy covariance)
:class:`MarginalInverseCovariance` applies ``C^{-1}`` by conjugate gradients.
"""

from __future__ import annotations

import numpy as np

from .compat import describe, ift, is_field, values

__all__ = ["noise_inverse_covariance", "MarginalInverseCovariance", "is_co_isometry"]

def _positive_variance(variance, domain, what):
    """A scalar or an array of ``domain``'s shape, positive and finite, as float or array."""
    if is_field(variance):
        variance = values(variance)
    variance = np.asarray(variance, dtype=np.float64)
    if variance.ndim and variance.shape != domain.shape:
        raise ValueError(f"the {what} variance has shape {variance.shape}; give a scalar or "
                         f"an array of the data's shape {domain.shape}")
    if not (np.all(np.isfinite(variance)) and np.all(variance > 0)):
        raise ValueError(f"the {what} variance must be positive and finite everywhere")
    return float(variance) if variance.ndim == 0 else variance


def is_co_isometry(response, tolerance=1e-10, seed=0):
    """Whether ``R R^T = 1`` (a mask or any selection of pixels), by one random probe.

    A random vector has a component in every eigenspace of ``R R^T``, so one probe tells
    ``R R^T = 1`` from any other operator (up to a set of probability zero).
    """
    probe = np.random.default_rng(seed).normal(size=response.target.shape)
    probe = ift.makeField(response.target, probe)
    again = response(response.adjoint(probe))
    return (again - probe).norm() <= tolerance * probe.norm()


def _measurement_inverse(noise, domain):
    """``N^{-1}`` from a scalar or per-pixel variance, or a given inverse covariance."""
    if isinstance(noise, ift.LinearOperator):
        if noise.domain != domain or noise.target != domain:
            raise ValueError(f"the noise's inverse covariance acts on {describe(noise.domain)}; "
                             f"the data domain is {describe(domain)}")
        if noise.sampling_dtype is None:
            raise ValueError("the noise's inverse covariance has no sampling dtype, so NIFTy "
                             "cannot draw from it: build it with sampling_dtype=np.float64")
        return noise
    variance = _positive_variance(noise, domain, "noise")
    if np.ndim(variance) == 0:
        return ift.ScalingOperator(domain, 1.0 / variance, np.float64)
    return ift.makeOp(ift.makeField(domain, 1.0 / variance), sampling_dtype=np.float64)


def noise_inverse_covariance(domain, noise=None, misfit=None, response=None,
                             controller=None):
    """``C^{-1}`` for ``C = R (misfit 1) R^T + N`` on the data ``domain``.

    Parameters
    ----------
    domain : DomainTuple
        The data domain (the response's target, or the decoder's target without one).
    noise : float, array-like or ift.LinearOperator, optional
        The measurement noise ``N``: a variance, an array of the data's shape (per-pixel
        variance), or an inverse covariance operator on ``domain`` with a sampling dtype.
        None: no measurement noise (``misfit`` alone).
    misfit : float, optional
        Variance of the model's own misfit on the decoder output (a FisherNet's
        ``e^{xi_N}``); passes through the response. None: no misfit term.
    response : ift.LinearOperator, optional
        ``R`` from the decoder's target to ``domain``. None: identity.
    controller : ift.IterationController, optional
        For the conjugate gradients of a non-diagonal ``C``; default relative residual
        ``1e-12``, at most 2,000 iterations.

    Returns
    -------
    ift.EndomorphicOperator
        ``C^{-1}`` with ``sampling_dtype`` float64, ``draw_sample`` and ``get_sqrt``.
    """
    domain = ift.makeDomain(domain)
    if noise is None and misfit is None:
        raise ValueError("give a measurement noise, a model misfit, or both")
    if misfit is None:
        return _measurement_inverse(noise, domain)
    misfit = _positive_variance(misfit, ift.DomainTuple.scalar_domain(), "misfit")
    simple = response is None or is_co_isometry(response)
    if simple and not isinstance(noise, ift.LinearOperator):
        # R R^T = 1: C = (misfit + N) 1, diagonal.
        variance = misfit if noise is None else misfit + _positive_variance(noise, domain,
                                                                            "noise")
        return _measurement_inverse(variance, domain)
    if noise is None:
        raise ValueError("this response has R R^T != 1 (it mixes pixels, e.g. a blur): the "
                         "covariance R (misfit) R^T of the misfit alone is singular, so a "
                         "measurement noise is needed; pass noise=")
    return MarginalInverseCovariance(response, misfit, _measurement_inverse(noise, domain),
                                     controller)


class MarginalInverseCovariance(ift.EndomorphicOperator):
    """``C^{-1}`` with ``C = R (s 1) R^T + N``: per image exactly, else by conjugate gradients.

    Parameters
    ----------
    response : ift.LinearOperator or None
        ``R`` (None: identity on the domain of ``noise_inverse``).
    misfit : float
        ``s``, the variance of the misfit on ``R``'s domain.
    noise_inverse : ift.EndomorphicOperator
        ``N^{-1}`` on the data domain, with a sampling dtype and an invertible square root.
    controller : ift.IterationController, optional
        For the conjugate gradients.

    Notes
    -----
    Samples: ``s ~ N(0, C)`` is ``R (sqrt(s) xi) + n`` with ``n ~ N(0, N)``, and ``C^{-1} s``
    has covariance ``C^{-1}``. The square root (geoVI's transformation, normalised residuals)
    is the symmetric ``C^{-1/2}``. Where ``C`` acts on each image alone (a blur per image,
    per-pixel noise; checked by probing), both come from per-image eigen-decompositions,
    exact; otherwise ``C^{-1}`` is applied by conjugate gradients and ``C^{-1/2}`` by the
    Lanczos method, to ``controller``'s precision.
    """

    def __init__(self, response, misfit, noise_inverse, controller=None):
        self._domain = noise_inverse.domain
        if response is None:
            response = ift.ScalingOperator(self._domain, 1.0)
        if response.target != self._domain:
            raise ValueError(f"the response's target {describe(response.target)} is not the "
                             f"noise's domain {describe(self._domain)}")
        self._response, self._misfit = response, float(misfit)
        self._noise_inverse = noise_inverse
        self._capability = self._all_ops
        self._dtype = np.float64
        if controller is None:
            controller = ift.GradientNormController(tol_rel_gradnorm=1e-12,
                                                    iteration_limit=2000)
        self._controller = controller
        self._blocks = _image_blocks(self._covariance, self._domain)

    def _covariance(self, x):
        misfit = self._misfit * self._response(self._response.adjoint(x))
        return misfit + self._noise_inverse.inverse(x)

    def _power(self, x, power):
        """``C^power x`` from the per-image eigen-decompositions."""
        eigenvalues, eigenvectors = self._blocks
        shape = self._domain.shape
        x = values(x).reshape(shape[0], -1, 1)
        rotated = np.swapaxes(eigenvectors, -1, -2) @ x
        result = eigenvectors @ (eigenvalues[..., None] ** power * rotated)
        return ift.makeField(self._domain, result.reshape(shape))

    def _solve(self, x):
        if self._blocks is not None:
            return self._power(x, -1.0)
        covariance = _Endomorphism(self._domain, self._covariance)
        energy = ift.QuadraticEnergy(ift.full(self._domain, 0.0), covariance, x)
        energy, _ = ift.ConjugateGradient(self._controller)(energy)
        return energy.position

    def apply(self, x, mode):
        self._check_input(x, mode)
        if mode in (self.TIMES, self.ADJOINT_TIMES):
            return self._solve(x)
        return self._covariance(x)

    def draw_sample(self, from_inverse=False, device_id=-1):
        # device_id: nifty.cl's GPU placement; this operator computes on the host.
        white = ift.from_random(self._response.domain)
        sample = (np.sqrt(self._misfit) * self._response(white)
                  + self._noise_inverse.draw_sample(from_inverse=True))
        return sample if from_inverse else self._solve(sample)

    def get_sqrt(self):
        return _InverseSqrt(self)


def _image_blocks(covariance, domain, largest=4096):
    """Per-image eigen-decompositions of ``C``, or None.

    Where the data domain has a leading batch axis and ``C`` acts on each of the B images
    alone (a blur applied per image, per-pixel noise), ``C`` is block-diagonal: ``m`` probes
    (the unit vector of pixel ``j`` in every image at once) give all B ``m x m`` blocks,
    checked by one random probe; then ``C^{-1}`` and ``C^{-1/2}`` are exact and cheap.
    Otherwise (coupled images, more than ``largest`` values per image) None: conjugate
    gradients and Lanczos instead.
    """
    shape = domain.shape
    if len(domain) < 1 or len(shape) < 2 or int(np.prod(shape[1:])) > largest:
        return None
    batch, pixels = shape[0], int(np.prod(shape[1:]))
    columns = []
    for j in range(pixels):
        unit = np.zeros((batch, pixels))
        unit[:, j] = 1.0
        probe = ift.makeField(domain, unit.reshape(shape))
        columns.append(values(covariance(probe)).reshape(batch, pixels))
    blocks = np.stack(columns, axis=-1)
    probe = np.random.default_rng(0).normal(size=(batch, pixels, 1))
    expected = values(covariance(ift.makeField(domain, probe.reshape(shape))))
    if not np.allclose((blocks @ probe).reshape(shape), expected, rtol=1e-10,
                       atol=1e-12 * np.abs(expected).max()):
        return None  # the images are coupled
    blocks = 0.5 * (blocks + np.swapaxes(blocks, -1, -2))
    if np.all(blocks == blocks[:1]):  # one response and noise for all: decompose once
        eigenvalues, eigenvectors = np.linalg.eigh(blocks[0])
        return (np.broadcast_to(eigenvalues, (batch, pixels)),
                np.broadcast_to(eigenvectors, (batch, pixels, pixels)))
    return np.linalg.eigh(blocks)


class _Endomorphism(ift.EndomorphicOperator):
    """A symmetric linear map given as a function (for the conjugate gradients)."""

    def __init__(self, domain, function):
        self._domain = ift.makeDomain(domain)
        self._function = function
        self._capability = self.TIMES | self.ADJOINT_TIMES

    def apply(self, x, mode):
        self._check_input(x, mode)
        return self._function(x)


class _InverseSqrt(ift.EndomorphicOperator):
    """``C^{-1/2}`` of a :class:`MarginalInverseCovariance`, by the Lanczos method.

    Symmetric, so ``S^T S = C^{-1}``. ``C^{-1/2} x`` is approximated in the Krylov space of
    ``C`` and ``x`` (``|x| V_k T_k^{-1/2} e_1``, fully reorthogonalised), grown until the
    result changes by less than ``tolerance`` relative: as exact as the conjugate gradients
    behind ``C^{-1}``.
    """

    def __init__(self, inverse, tolerance=1e-12, iteration_limit=500):
        self._inverse = inverse
        self._domain = inverse.domain
        self._capability = self._all_ops
        self._tolerance, self._limit = float(tolerance), int(iteration_limit)

    def apply(self, x, mode):
        self._check_input(x, mode)
        power = -0.5 if mode in (self.TIMES, self.ADJOINT_TIMES) else 0.5
        if self._inverse._blocks is not None:
            return self._inverse._power(x, power)
        return ift.makeField(self._domain, self._matrix_power(values(x), power))

    def _matrix_power(self, x, power):
        shape, x = x.shape, x.ravel()
        norm = np.linalg.norm(x)
        if norm == 0:
            return np.zeros(shape)
        basis, alphas, betas = [x / norm], [], []
        previous = None
        for k in range(min(self._limit, x.size)):
            w = values(self._inverse._covariance(
                ift.makeField(self._domain, basis[k].reshape(shape)))).ravel()
            alphas.append(float(basis[k] @ w))
            for vector in basis:  # full reorthogonalisation
                w = w - (vector @ w) * vector
            tridiagonal = (np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
            eigenvalues, eigenvectors = np.linalg.eigh(tridiagonal)
            coefficients = eigenvectors @ (eigenvalues ** power * eigenvectors[0])
            result = norm * np.stack(basis, axis=1) @ coefficients
            beta = float(np.linalg.norm(w))
            converged = previous is not None and (np.linalg.norm(result - previous)
                                                  <= self._tolerance * np.linalg.norm(result))
            # The whole space spanned (exact), or an invariant subspace reached (exact too).
            if converged or k + 1 == x.size or beta <= 1e-14 * abs(alphas[0]):
                return result.reshape(shape)
            previous = result
            betas.append(beta)
            basis.append(w / beta)
        raise RuntimeError(f"the Lanczos iteration for C^{power} did not converge in "
                           f"{self._limit} steps")
