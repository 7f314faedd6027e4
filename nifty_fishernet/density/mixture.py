"""A full-covariance Gaussian mixture in latent space, sized by held-out likelihood."""

from __future__ import annotations

import warnings

import numpy as np

from .base import LatentDensity, register_density

__all__ = ["GaussianMixtureDensity"]


@register_density
class GaussianMixtureDensity(LatentDensity):
    """Gaussian mixture (scikit-learn's ``GaussianMixture``) with its size chosen on held-out data.

    Unlike the grid of :class:`MaternKDE`, its cost grows with the number of components and
    ``d^2``, not exponentially in ``d``: the estimator for latent dimensions 5 to 20 (and
    beyond).

    Parameters
    ----------
    components : sequence of int
        Candidate numbers of components. Each is fitted on ``1 - held_out`` of the data and
        scored by the mean log-density of the rest; the best is refitted on all data.
        Candidates above a tenth of the training points are skipped, and the search stops
        two candidates after the best so far.
    held_out : float
        Fraction of the latents kept for choosing the number of components.
    covariance_type : {"full", "diag", "tied", "spherical"}
        As in scikit-learn; "full" captures correlated latents.
    reg_covar : float
        Added to the covariances' diagonals (scikit-learn's regulariser).
    n_init : int
        k-means initialisations per fit; the best is kept.
    seed : int
        Seeds the split and scikit-learn's initialisation.
    extend : bool
        While the largest candidate scores best, keep doubling it (up to a tenth of the
        search points), so that the selection ends at an interior peak of the held-out
        score instead of at the edge of ``components``.
    search_size : int, optional
        Choose the number of components on a random subset of this many latents (its
        ``held_out`` fraction scoring), then refit the chosen size on all of them: a
        cheaper search for large data sets. The held-out optimum grows with the number of
        points, so the chosen size is the optimum for ``search_size`` points. None: all.

    Attributes
    ----------
    n_components : int
        The chosen number of components.
    selection : dict
        Held-out mean log-density per candidate.
    at_limit : bool
        The largest candidate won: more components might fit better (widen ``components``).
    """

    def __init__(self, components=(1, 2, 4, 8, 16, 32, 64, 128), held_out=0.2,
                 covariance_type="full", reg_covar=1e-6, n_init=1, seed=0, extend=False,
                 search_size=None):
        if not components or any(int(k) < 1 for k in components):
            raise ValueError(f"components must be positive integers, got {components}")
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        self.components = sorted({int(k) for k in components})
        self.held_out = float(held_out)
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        self.n_init = int(n_init)
        self.seed = int(seed)
        self.extend = bool(extend)
        if search_size is not None and int(search_size) < 3:
            raise ValueError(f"search_size must be at least 3 or None, got {search_size}")
        self.search_size = None if search_size is None else int(search_size)
        self.selection = {}
        self.n_components = None
        self.at_limit = False
        self.mixture = None

    def _mixture(self, k):
        from sklearn.mixture import GaussianMixture

        return GaussianMixture(k, covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                               n_init=self.n_init, max_iter=500, random_state=self.seed)

    def _fit(self, latents):
        n = latents.shape[0]
        order = np.random.default_rng(self.seed).permutation(n)
        if self.search_size is not None and self.search_size < n:
            order, n = order[:self.search_size], self.search_size
        n_val = int(round(self.held_out * n))
        if n_val < 1 or n - n_val < 2:
            raise ValueError(f"need at least 3 latents to fit and choose a mixture, got {n}")
        fit_part, val_part = latents[order[n_val:]], latents[order[:n_val]]
        candidates = [k for k in self.components if k == 1 or k <= fit_part.shape[0] // 10]
        self.selection = {}
        with warnings.catch_warnings():
            # EM hitting max_iter is reported by the held-out score, not by a warning flood.
            warnings.filterwarnings("ignore", message=".*converge.*")
            worse, index = 0, 0
            limit = max(1, fit_part.shape[0] // 10)
            while index < len(candidates):
                k = candidates[index]
                self.selection[k] = float(self._mixture(k).fit(fit_part).score(val_part))
                # Held-out scores rise, peak and fall with k: stop two candidates past the peak.
                worse = worse + 1 if self.selection[k] < max(self.selection.values()) else 0
                if worse == 2:
                    break
                index += 1
                if (self.extend and index == len(candidates) and worse == 0
                        and 2 * k <= limit):
                    candidates.append(2 * k)  # still rising at the edge: look further
            self.n_components = max(self.selection, key=self.selection.get)
            self.at_limit = len(candidates) > 1 and self.n_components == candidates[-1]
            self.mixture = self._mixture(self.n_components).fit(latents)

    def _log_density(self, latents):
        return self.mixture.score_samples(latents)

    # scikit-learn's fitted attributes that define the mixture (no pickle in the file)
    _MIXTURE_ARRAYS = ("weights_", "means_", "covariances_", "precisions_cholesky_",
                       "precisions_")

    def _state(self):
        settings = dict(components=self.components, held_out=self.held_out,
                        covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                        n_init=self.n_init, seed=self.seed, extend=self.extend,
                        search_size=self.search_size)
        scalars = dict(selection=[[k, v] for k, v in self.selection.items()],
                       n_components=int(self.n_components), at_limit=bool(self.at_limit))
        return settings, scalars, {key: getattr(self.mixture, key)
                                   for key in self._MIXTURE_ARRAYS}

    def _restore(self, scalars, arrays):
        self.selection = {int(k): float(v) for k, v in scalars["selection"]}
        self.n_components = int(scalars["n_components"])
        self.at_limit = bool(scalars["at_limit"])
        self.mixture = self._mixture(self.n_components)
        for key in self._MIXTURE_ARRAYS:
            setattr(self.mixture, key, arrays[key])
        self.mixture.n_features_in_ = self.latent_dim
        self.mixture.converged_ = True

    def _sample(self, n, rng):
        # Own draws from the fitted parameters, so that the caller's generator decides them.
        weights = self.mixture.weights_ / self.mixture.weights_.sum()
        component = rng.choice(len(weights), size=n, p=weights)
        cholesky = _covariance_cholesky(self.mixture)
        noise = rng.standard_normal((n, self.latent_dim))
        return self.mixture.means_[component] + np.einsum("nij,nj->ni", cholesky[component],
                                                          noise)


def _covariance_cholesky(mixture):
    """``(K, d, d)`` Cholesky factors of the components' covariances, any covariance type."""
    k, d = mixture.means_.shape
    cov = mixture.covariances_
    if mixture.covariance_type == "full":
        full = cov
    elif mixture.covariance_type == "tied":
        full = np.broadcast_to(cov, (k, d, d))
    elif mixture.covariance_type == "diag":
        full = np.stack([np.diag(c) for c in cov])
    else:  # spherical
        full = cov[:, None, None] * np.eye(d)
    return np.linalg.cholesky(full)
