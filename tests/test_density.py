"""Latent density estimators against known densities: held-out likelihood and two-sample tests."""

import numpy as np
import pytest
from scipy import stats

import nifty_fishernet as nf
from nifty_fishernet.density import GridTooLargeError
from nifty_fishernet.metrics import energy_distance_test

# The Matérn KDE runs on NIFTy: its tests carry the marker ``nifty``, so CI runs them on nifty8
# and on nifty.cl (the 5-D one on nifty8 only: it adds no code path to the 2-D ones).
nifty = pytest.mark.nifty
ESTIMATORS = [pytest.param("MaternKDE", marks=nifty), "GaussianMixtureDensity", "FlowDensity"]

MEANS = np.array([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]])
WEIGHTS = np.array([0.4, 0.35, 0.25])
COVS = [np.array([[0.5, 0.3], [0.3, 0.6]]), np.array([[0.3, -0.1], [-0.1, 0.4]]),
        np.array([[0.8, 0.0], [0.0, 0.2]])]


def draw_mixture(n, rng):
    component = rng.choice(3, size=n, p=WEIGHTS)
    noise = rng.standard_normal((n, 2))
    chol = np.stack([np.linalg.cholesky(c) for c in COVS])
    return MEANS[component] + np.einsum("nij,nj->ni", chol[component], noise)


def mixture_log_density(x):
    return np.log(sum(w * stats.multivariate_normal(m, c).pdf(x)
                      for w, m, c in zip(WEIGHTS, MEANS, COVS)))


@pytest.fixture(scope="module")
def mixture_data():
    rng = np.random.default_rng(0)
    return draw_mixture(4000, rng), draw_mixture(2000, rng), draw_mixture(400, rng)


class _FittedOnFirstUse(dict):
    """Each estimator fitted when a test first asks for it (``-m nifty`` needs the KDE only)."""

    def __init__(self, train):
        super().__init__()
        self.train = train

    def __missing__(self, name):
        options = {"MaternKDE": dict(cells_per_axis=40)}.get(name, {})
        self[name] = getattr(nf, name)(**options).fit(self.train)
        return self[name]


@pytest.fixture(scope="module")
def fitted(mixture_data):
    return _FittedOnFirstUse(mixture_data[0])


@pytest.mark.parametrize("name", ESTIMATORS)
def test_heldout_log_density_is_close_to_the_true_one(fitted, mixture_data, name):
    """Mean held-out log-density within 0.15 nats of the true density's.

    2,000 held-out points: the standard error of the mean difference is ~0.01 nats, so the
    0.15 tolerance measures the estimator (for the KDE its smoothing and 40 x 40 cells of
    ~0.2 sigma: a binning loss of ~0.01 nats), not noise.
    """
    test = mixture_data[1]
    gap = mixture_log_density(test).mean() - fitted[name].log_density(test).mean()
    assert abs(gap) < 0.15, gap


@pytest.mark.parametrize("name", ESTIMATORS)
def test_samples_pass_a_two_sample_test_against_true_draws(fitted, mixture_data, name):
    """400 draws vs 400 true draws: energy-distance permutation p-value above 0.01.

    At a fixed seed; for a correct sampler p is uniform, so this fails by chance 1% of the
    time at most, for a wrong one (e.g. a single Gaussian, checked below) p ~ 0.
    """
    draws = fitted[name].sample(400, generator=0)
    assert energy_distance_test(draws, mixture_data[2], permutations=300)[1] > 0.01
    single = np.random.default_rng(2).multivariate_normal(
        mixture_data[0].mean(0), np.cov(mixture_data[0].T), size=400)
    assert energy_distance_test(single, mixture_data[2], permutations=300)[1] < 0.01


def test_flow_keeps_its_best_heldout_epoch(fitted):
    flow = fitted["FlowDensity"]
    assert flow.history[flow.best_epoch] == max(flow.history)
    assert len(flow.history) <= flow.best_epoch + flow.patience + 1
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        nf.FlowDensity(hidden=0)
    with pytest.raises(ValueError, match="held_out"):
        nf.FlowDensity(held_out=1.0)


def test_mixture_size_is_chosen_by_heldout_likelihood(fitted):
    gmm = fitted["GaussianMixtureDensity"]
    assert gmm.n_components == max(gmm.selection, key=gmm.selection.get)
    assert gmm.n_components >= 3  # three clusters; a single Gaussian scores far worse
    assert gmm.selection[gmm.n_components] > gmm.selection[1] + 0.3


@nifty
def test_matern_kde_density_integrates_to_one_and_extends_outside(fitted):
    kde = fitted["MaternKDE"]
    assert np.isclose(kde.density_grid.sum() * kde.cell_volume, 1.0)
    far = np.array([[50.0, -50.0], [-1e6, 0.0]])
    assert np.all(np.isfinite(kde.log_density(far)))
    corner = np.array([[kde.upper[0] - 1e-9, kde.lower[1]]])
    assert np.allclose(kde.log_density(far[:1]), kde.log_density(corner))


@nifty
def test_matern_kde_samples_stay_in_the_grid_and_follow_a_generator(fitted):
    kde = fitted["MaternKDE"]
    draws = kde.sample(1000, generator=5)
    assert np.all(draws >= kde.lower) and np.all(draws <= kde.upper)
    np.testing.assert_array_equal(draws, kde.sample(1000, generator=5))
    kde.sample_density = "posterior"
    try:
        assert kde.sample(10, generator=np.random.default_rng(0)).shape == (10, 2)
    finally:
        kde.sample_density = "mean"


def test_matern_kde_in_five_dimensions():
    """A 5-D Gaussian: the KDE's cell probabilities against the true ones on the same grid.

    With 5 cells per axis a cell is ~1.5 sigma wide, so any piecewise-constant density loses
    ~0.1 nats per axis against the smooth truth; comparing with the truth *binned on the
    same grid* (exact for a diagonal covariance: products of normal CDF differences, boundary
    cells extended to infinity like the estimator's) measures the estimation alone. 10,000
    points in 3,125 cells; tolerance 0.15 nats on 2,000 held-out points.
    """
    rng = np.random.default_rng(3)
    sigma = np.array([1.0, 0.5, 2.0, 1.5, 0.8])
    train = rng.standard_normal((10_000, 5)) * sigma
    test = rng.standard_normal((2000, 5)) * sigma
    kde = nf.MaternKDE(cells_per_axis=5, n_samples=3, iterations=3).fit(train)
    assert kde.cells == (5,) * 5 and kde.grid_pad(5) == 0.5
    mass = []
    for axis, edges in enumerate(kde.edges):
        cdf = stats.norm.cdf(edges / sigma[axis])
        cdf[0], cdf[-1] = 0.0, 1.0
        mass.append(np.diff(cdf))
    index = kde.cell_index(test)
    binned_truth = np.sum([np.log(mass[a][index[:, a]]) for a in range(5)], axis=0) \
        - np.log(kde.cell_volume)
    gap = binned_truth.mean() - kde.log_density(test).mean()
    assert abs(gap) < 0.15, gap


@nifty
def test_grid_budget_and_dimension_errors():
    latents = np.random.default_rng(0).normal(size=(100, 5))
    with pytest.raises(GridTooLargeError, match="GaussianMixtureDensity"):
        nf.MaternKDE(cells_per_axis=16, memory_budget_mib=100).fit(latents)
    with pytest.raises(GridTooLargeError, match="GaussianMixtureDensity"):
        nf.MaternKDE().fit(np.zeros((100, 8)))
    assert nf.MaternKDE().memory_mib(5) < nf.MaternKDE().memory_budget_mib


@pytest.mark.parametrize("estimator", [pytest.param(lambda: nf.MaternKDE(
                                           cells_per_axis=8, n_samples=1, iterations=1),
                                           marks=nifty),
                                       lambda: nf.GaussianMixtureDensity(),
                                       lambda: nf.FlowDensity(epochs=3)])
def test_bad_input(estimator):
    density = estimator()
    with pytest.raises(RuntimeError, match="not fitted"):
        density.sample(3)
    with pytest.raises(ValueError, match="empty"):
        density.fit(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="shape"):
        density.fit(np.zeros(10))
    bad = np.random.default_rng(0).normal(size=(50, 2))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        density.fit(bad)
    with pytest.raises(TypeError, match="real numbers"):
        density.fit(np.array([["a", "b"]]))
    good = np.random.default_rng(0).normal(size=(200, 2))
    density = estimator()
    density.progress = False
    density.fit(good)
    with pytest.raises(ValueError, match="latent dimension 3"):
        density.log_density(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="positive integer"):
        density.sample(0)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_saved_density_reads_back_identical(fitted, mixture_data, name, tmp_path):
    from nifty_fishernet.density import DensityFileError, load_density

    density = fitted[name]
    path = density.save(tmp_path / "density.h5")
    loaded = load_density(path)
    assert type(loaded) is type(density) and loaded.latent_dim == 2
    test = mixture_data[1][:500]
    np.testing.assert_array_equal(loaded.log_density(test), density.log_density(test))
    np.testing.assert_array_equal(loaded.sample(50, generator=3), density.sample(50, generator=3))
    # a flipped byte in the arrays is caught by the checksum, a cut file by HDF5
    import h5py

    with h5py.File(path, "r") as f:
        largest = max(f["arrays"].values(), key=lambda ds: ds.size)
        offset = largest.id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 8] ^= 0xFF
    (tmp_path / "flipped.h5").write_bytes(bytes(data))
    (tmp_path / "cut.h5").write_bytes(path.read_bytes()[:len(data) // 2])
    for bad in ("flipped.h5", "cut.h5"):
        with pytest.raises(DensityFileError):
            load_density(tmp_path / bad)
    with pytest.raises(FileNotFoundError):
        load_density(tmp_path / "missing.h5")
    with pytest.raises(RuntimeError, match="not fitted"):
        nf.GaussianMixtureDensity().save(tmp_path / "unfitted.h5")


def test_mixture_selection_extends_to_an_interior_peak():
    """40 well-separated clusters: with candidates 1, 2, 4 the plain search ends at its edge
    (at_limit), ``extend=True`` keeps doubling until the held-out score falls again, and
    ``search_size`` chooses on a subset and refits the chosen size on all points."""
    rng = np.random.default_rng(4)
    centres = rng.uniform(-40, 40, size=(40, 2))
    latents = centres[rng.integers(0, 40, 6000)] + 0.5 * rng.standard_normal((6000, 2))
    plain = nf.GaussianMixtureDensity(components=(1, 2, 4)).fit(latents)
    assert plain.at_limit and plain.n_components == 4
    extended = nf.GaussianMixtureDensity(components=(1, 2, 4), extend=True,
                                         search_size=3000).fit(latents)
    chosen = extended.n_components
    assert not extended.at_limit and chosen >= 32
    assert max(extended.selection) > chosen  # a larger candidate scored worse: a peak
    assert extended.mixture.n_components == chosen
    assert np.mean(extended.log_density(latents)) > np.mean(plain.log_density(latents)) + 1
    with pytest.raises(ValueError, match="search_size"):
        nf.GaussianMixtureDensity(search_size=2)
