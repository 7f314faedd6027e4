"""The refined posterior and the calibration harness, checked against closed forms, scipy
and each other."""

import copy
import dataclasses

import h5py
import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal
from nifty_fishernet.cache import ResultCache, fingerprint
from nifty_fishernet.errors import FileFormatError
from nifty_fishernet.io import jsonable
from nifty_fishernet.models import GaussianNoise
from conftest import random_fishernet


class LinearGaussianModel(nf.LatentModel):
    """``x = A z + b + n``: the posterior is Gaussian in closed form."""

    def __init__(self, latent_dim=2, data_dim=6, noise_std=0.3, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.config = {}
        self.decoder = nn.Linear(latent_dim, data_dim).double()
        self.encoder = nn.Linear(data_dim, latent_dim).double()
        with torch.no_grad():
            self.decoder.weight.copy_(torch.randn(data_dim, latent_dim, generator=gen,
                                                  dtype=torch.float64))
            self.decoder.bias.copy_(torch.randn(data_dim, generator=gen, dtype=torch.float64))
        self.noise = GaussianNoise(learn=True).double()
        with torch.no_grad():
            self.noise.xi.fill_(2 * np.log(noise_std))
        self.eval()

    def encode(self, x):
        self._check_data(x)
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def amortized_posterior(self, x):
        mu = self.encode(x)
        return mu, 0.01 * torch.eye(self.latent_dim, dtype=mu.dtype).expand(len(mu), -1, -1)

    @torch.no_grad()
    def exact(self, x):
        a, b = self.decoder.weight, self.decoder.bias
        precision = float(self.noise.precision)
        cov = torch.linalg.inv(precision * a.T @ a + torch.eye(self.latent_dim,
                                                                  dtype=torch.float64))
        mean = precision * (x - b) @ a @ cov
        return mean, cov.expand(len(x), -1, -1)


def test_refined_posterior_is_exact_for_a_linear_decoder():
    model = LinearGaussianModel(latent_dim=3)
    _, x = cal.simulate(model, 20, seed=1)
    mean, cov = model.posterior(x, refine=True)
    exact_mean, exact_cov = model.exact(x)
    torch.testing.assert_close(mean, exact_mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(cov, exact_cov, rtol=1e-10, atol=1e-12)
    # importance sampling: 4096 draws of a 3-D Gaussian, ESS ~ 2000: moments to a few 1 %
    mean, cov = model.posterior(x, refine=True, correction="importance", n_draws=4096)
    sigma = torch.diagonal(exact_cov, dim1=-2, dim2=-1).sqrt()
    assert float(((mean - exact_mean) / sigma).abs().max()) < 0.15
    ratio = torch.diagonal(cov, dim1=-2, dim2=-1) / torch.diagonal(exact_cov, dim1=-2, dim2=-1)
    assert float((ratio - 1).abs().max()) < 0.15


def test_harness_reports_nominal_coverage_for_the_exact_posterior():
    """On a linear decoder the refined posterior is exact: its coverage is nominal within
    sampling error (2,000 simulations: 4 standard errors are 0.042 at 68 %, 0.020 at 95 %),
    and so is that of exact draws ranked by distance (199 draws, the ranks' own noise
    adds < 0.01); the amortized posterior (a fixed 0.1 sigma) is far off."""
    model = LinearGaussianModel(latent_dim=2)
    result = cal.calibrate(model, np.zeros((1, model.data_dim)), n_simulated=2000, n_real=0,
                           methods={"amortized": dict(refine=False),
                                    "refined": dict(refine=True),
                                    "sampled": dict(refine=True, correction="importance",
                                                    starts=0)}, progress=False)
    # the importance-sampled refinement also has its highest-density regions judged
    assert set(result["simulated"]) == {"amortized", "refined", "sampled",
                                        "sampled" + cal.HPD_SUFFIX}
    for name in ("refined", "sampled", "sampled" + cal.HPD_SUFFIX):
        for level, tol in (("68", 0.042), ("95", 0.020)):
            assert abs(result["simulated"][name]["coverage"][level] - int(level) / 100) < tol
    hpd_counts = np.asarray(result["simulated"]["sampled" + cal.HPD_SUFFIX]["rank_histogram"])
    assert hpd_counts.shape == (1, 10)
    assert ((hpd_counts - 200) ** 2 / 200).sum() < 30  # flat: chi^2_9, p = 4e-4
    assert result["simulated"]["amortized"]["coverage"]["68"] < 0.3
    # SBC ranks of the calibrated posterior: flat histogram (chi-square, 10 bins, 2 dims)
    counts = np.asarray(result["simulated"]["refined"]["rank_histogram"])
    expected = counts.sum(1, keepdims=True) / counts.shape[1]
    statistic = ((counts - expected) ** 2 / expected).sum(1)
    assert (statistic < 30).all()  # chi^2_9: p = 4e-4
    truth, x = cal.simulate(model, 2000, seed=3)
    mean, cov = model.exact(x)
    draws = mean + torch.einsum("bij,sbj->sbi", torch.linalg.cholesky(cov),
                                torch.randn(199, *mean.shape, generator=torch.Generator()
                                            .manual_seed(0), dtype=torch.float64))
    coverage = cal.sample_coverage(draws, truth).mean(0)
    assert abs(coverage[0] - 0.68) < 0.045 and abs(coverage[1] - 0.95) < 0.022


def test_model_energy_is_the_negative_log_posterior_and_checks_its_input():
    model = random_fishernet(latent_dim=3, data_dim=12)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 12, generator=generator, dtype=torch.float64)
    z = torch.randn(7, 5, 3, generator=generator, dtype=torch.float64)
    precision = float(torch.exp(-model.xi_n.detach()))
    with torch.no_grad():
        expected = 0.5 * (z ** 2).sum(-1) + 0.5 * precision * (
            (x - model.decode(z.reshape(-1, 3)).reshape(7, 5, 12)) ** 2).sum(-1)
        torch.testing.assert_close(model.energy(x, z), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.energy(x, z[0]), expected[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"z must have shape \(B, d\) or \(S, B, d\)"):
        model.energy(x, z[:, :4])
    with pytest.raises(TypeError, match="dtype"):
        model.energy(x, z.float())
    with pytest.raises(ValueError, match="non-finite"):
        model.energy(torch.full_like(x, float("nan")), z[0])


def test_highest_density_regions_of_a_gaussian_posterior_are_its_chi_square_regions():
    """Linear decoder, d = 3: the posterior is Gaussian, so its region of mass a is
    E <= E(MAP) + chi2_3(a) / 2. With ~2,000 effective draws a quantile of E / 2 ... has a
    standard error of 0.05 nats at 68 % and 0.13 at 95 % (sqrt(a (1 - a) / n) / density);
    the tolerances are 5 of them (the maximum over 20 data). The exact posterior's mass below
    each threshold (grid) is the level, and exact draws have uniform credible levels."""
    from scipy.stats import chi2

    model = LinearGaussianModel(latent_dim=3)
    _, x = cal.simulate(model, 20, seed=1)
    refined = model.refined_posterior(x, correction="importance", n_draws=1024, starts=0)
    assert refined.draw_energy.shape == refined.log_weights.shape
    with torch.no_grad():
        e_map = model.energy(x, refined.map)
    for level, tol in ((0.68, 0.26), (0.95, 0.63)):
        threshold = refined.energy_threshold(level)
        expected = e_map + 0.5 * chi2.ppf(level, 3)
        assert float((threshold - expected).abs().max()) < tol, (level, threshold - expected)
    # a fine grid (81 nodes per axis, at most 0.3 sigma apart: the default 31 leave the
    # level set's mass a few % off, depending on how far the encoder's mean is)
    exact = cal.exact_posterior(model, x[:4], method="grid", grid_points=81)
    for level in (0.68, 0.95):
        mass = cal.exact_mass_below(exact, e_map[:4] + 0.5 * chi2.ppf(level, 3))
        assert np.allclose(mass, level, atol=0.01), (level, mass)
    mean, cov = model.exact(x)
    draws = mean + torch.einsum("bij,sbj->sbi", torch.linalg.cholesky(cov), torch.randn(
        200, 20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    with torch.no_grad():
        levels = refined.credible_level(model.energy(x, draws)).flatten().numpy()
    # 4,000 levels: each decile holds 10 % +- 1.9 % (4 standard errors)
    counts = np.histogram(levels, bins=10, range=(0, 1))[0] / levels.size
    assert np.abs(counts - 0.1).max() < 0.019, counts
    # the region of mass a holds exactly the points whose credible level is below a, and
    # the level is the truth's rank of cal.hpd_ranks
    with torch.no_grad():
        energies = model.energy(x, draws[:50])
    for level in (0.05, 0.68, 0.95):
        inside = energies <= refined.energy_threshold(level)
        assert torch.equal(inside, refined.credible_level(energies) < level)
    np.testing.assert_allclose(refined.credible_level(energies[0]).numpy(), cal.hpd_ranks(
        refined.draw_energy, energies[0], refined.log_weights.exp()), rtol=1e-12)
    with pytest.raises(ValueError, match="correction='importance'"):
        model.refined_posterior(x).energy_threshold(0.5)
    with pytest.raises(ValueError, match="level must lie in"):
        refined.energy_threshold(1.0)
    with pytest.raises(ValueError, match="batch size 20"):
        refined.credible_level(torch.zeros(3))
    with pytest.raises(ValueError, match="thresholds must have shape"):
        cal.exact_mass_below(exact, torch.zeros(3))


def test_highest_density_coverage_is_nominal_for_a_non_gaussian_posterior():
    """A random ReLU FisherNet (d = 2, gain 2), a nonlinear decoder: ranked by
    the model's energy, the importance-sampled refinement's weighted draws (256 x 4, ESS
    several hundred) cover 1,000 simulated truths with the nominal 68 / 95 %, within 4
    standard errors (0.059 / 0.028). A rank that left out the weights or compared the
    wrong energies would fail this."""
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=2.0, seed=3)
    truth, x = cal.simulate(model, 1000, seed=4)
    ranks = []
    with torch.no_grad():
        for start in range(0, 1000, 250):
            part = slice(start, start + 250)
            refined = model.refined_posterior(x[part], correction="importance")
            ranks.append(cal.hpd_ranks(refined.draw_energy, model.energy(x[part], truth[part]),
                                       refined.log_weights.exp()))
    ranks = np.concatenate(ranks)
    assert abs(np.mean(ranks < 0.68) - 0.68) < 0.059 and abs(np.mean(ranks < 0.95) - 0.95) < 0.028
    with pytest.raises(ValueError, match=r"draw_energy must be \(S, B\)"):
        cal.hpd_ranks(torch.zeros(4, 3), torch.zeros(2))


@pytest.mark.parametrize("d, n_draws", [(2, 20), (10, 24)])
def test_sample_coverage_is_nominal_for_few_exact_draws(d, n_draws):
    """S exact posterior draws (here N(0, 1)) and a truth from the same posterior: the
    truth's mid-rank k is uniform on 0..S, so the 68 / 95 % coverage is exactly
    #{k: k + 1/2 < level (S + 1)} / (S + 1) (0.667 / 0.952 for S = 20, 0.68 / 0.96 for
    S = 24), whatever d. 4,000 data: 4 standard errors are <= 0.030 / 0.014. Measuring the
    truth in the draws' own moments gave 0.26 / 0.41 at d = 10 (harness version 4)."""
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(4000, d, generator=generator, dtype=torch.float64)
    draws = torch.randn(n_draws, 4000, d, generator=generator, dtype=torch.float64)
    coverage = cal.sample_coverage(draws, truth).mean(0)
    for got, level, tol in zip(coverage, (0.68, 0.95), (0.030, 0.014)):
        expected = np.ceil(level * (n_draws + 1) - 0.5) / (n_draws + 1)
        assert abs(got - expected) < tol, (got, expected)
    # SBC ranks of 19 draws: 20 equally likely mid-ranks, two in each of 10 bins, so a
    # flat histogram (chi^2_9 < 30: p = 4e-4 per dimension)
    counts = cal.rank_histogram(cal.sbc_ranks(draws[:19], truth))
    statistic = ((counts - 400) ** 2 / 400).sum(1)
    assert (statistic < 30).all()


def test_weighted_sample_coverage_is_nominal_with_many_effective_draws():
    """Importance-weighted draws of N(0, 1) from N(0, 1.2^2) (ESS ~1,000 of 2,048): the
    weighted mid-ranks give nominal coverage within 4 standard errors of 4,000 data."""
    generator = torch.Generator().manual_seed(1)
    truth = torch.randn(4000, 5, generator=generator, dtype=torch.float64)
    draws = 1.2 * torch.randn(2048, 4000, 5, generator=generator, dtype=torch.float64)
    weights = torch.softmax(-0.5 * (draws ** 2).sum(-1) * (1 - 1 / 1.44), 0)
    assert float((1 / (weights ** 2).sum(0)).median()) > 800
    coverage = cal.sample_coverage(draws, truth, weights=weights).mean(0)
    assert abs(coverage[0] - 0.68) < 0.030 and abs(coverage[1] - 0.95) < 0.014


@pytest.mark.parametrize("method", ["grid", "importance"])
def test_exact_posterior_matches_the_closed_form(method):
    model = LinearGaussianModel(latent_dim=2)
    _, x = cal.simulate(model, 10, seed=2)
    exact = cal.exact_posterior(model, x, method=method)
    mean, cov = model.exact(x)
    sigma = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    tol = 0.01 if method == "grid" else 0.1
    assert float(((exact.mean - mean) / sigma).abs().max()) < tol
    ratio = torch.diagonal(exact.covariance, dim1=-2, dim2=-1) / sigma ** 2
    assert float((ratio - 1).abs().max()) < 2 * tol
    metrics = cal.compare_to_exact(model, x, exact, mean, cov)
    assert np.allclose(metrics["mass_68"], 0.68, atol=3 * tol)
    assert np.allclose(metrics["mass_95"], 0.95, atol=tol)
    assert np.abs(metrics["kl_pq"]).max() < 2 * tol and np.abs(metrics["kl_qp"]).max() < 0.02
    # an approximation shifted by one sigma along z1: error 1 sigma in that direction
    shifted = mean.clone()
    shifted[:, 0] += sigma[:, 0]
    error = cal.compare_to_exact(model, x, exact, shifted, cov)["mean_error_sigma"]
    assert np.all(error > 0.9) and np.all(error < 1.5)
    # the exact covariance equals M^{-1} here: every generalised eigenvalue is 1
    eigenvalues = cal.lower_bound_eigenvalues(exact.covariance, exact.laplace_covariance)
    assert np.allclose(eigenvalues, 1, atol=2 * tol)


@pytest.mark.parametrize("method", ["grid", "importance"])
def test_exact_posterior_round_trips_through_its_file_and_a_bad_file_is_named(tmp_path,
                                                                               method):
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=2.0, seed=1)
    _, x = cal.simulate(model, 5, seed=0)
    exact = cal.exact_posterior(model, x, method=method, grid_points=21, n_draws=256)
    path = tmp_path / "exact.h5"
    cal.save_exact_posterior(path, exact, key="model and images")
    for key in (None, "model and images"):
        back = cal.load_exact_posterior(path, key=key)
        for field in dataclasses.fields(cal.ExactPosterior):
            want, got = getattr(exact, field.name), getattr(back, field.name)
            if isinstance(want, torch.Tensor):
                assert got.dtype == want.dtype and torch.equal(got, want), field.name
            else:
                assert got == want, field.name
    assert (back.edge_mass is None) == (method == "importance")
    assert (back.ess is None) == (method == "grid")
    with pytest.raises(FileFormatError, match="exact posterior of other data"):
        cal.load_exact_posterior(path, key="another model")
    with pytest.raises(FileNotFoundError, match="no exact posterior file"):
        cal.load_exact_posterior(tmp_path / "missing.h5")
    with pytest.raises(TypeError, match="must be an ExactPosterior"):
        cal.save_exact_posterior(path, {"points": exact.points})
    with h5py.File(path, "r+") as f:  # one weight changed after writing
        f["tensors/log_weights"][0] += 1.0
    with pytest.raises(FileFormatError, match="does not match its integrity hash"):
        cal.load_exact_posterior(path)
    nf.save(tmp_path / "model.h5", model)
    with pytest.raises(FileFormatError, match="not a nifty_fishernet exact posterior file"):
        cal.load_exact_posterior(tmp_path / "model.h5")
    # tensors that do not fit together (written as a file of this format would be)
    exact.covariance = exact.covariance[:-1]
    cal.save_exact_posterior(path, exact)
    with pytest.raises(FileFormatError, match=r"covariance \(4, 2, 2\) \(expected \(5, 2, 2\)\)"):
        cal.load_exact_posterior(path)


def test_a_resumed_calibration_reads_the_exact_reference_of_the_real_images_back(tmp_path):
    model = random_fishernet(latent_dim=4, data_dim=12, xi=-2.0, gain=2.0, seed=3)
    _, images = cal.simulate(model, 8, seed=9)
    options = dict(n_simulated=40, n_real=8, n_reference=0, progress=False,
                   exact_options=dict(n_draws=512))
    calls = []
    model.decoder.register_forward_hook(lambda module, args, out: calls.append(len(out)))

    def run(**kw):
        calls.clear()
        return _without_seconds(cal.calibrate(model, images.numpy(), **options, **kw)), sum(calls)

    plain, rows_plain = run()
    path = tmp_path / "reference.h5"
    first, rows_first = run(reference_file=path)
    assert path.is_file() and first == plain and rows_first == rows_plain
    kept = cal.load_exact_posterior(path)
    assert kept.method == "importance" and kept.points.shape[1:] == (8, 4)
    again, rows_again = run(reference_file=path)
    # the same result, without the reference's decoder calls (512 draws per image per round)
    assert again == plain and rows_again < rows_plain - 8 * 512
    # another model's file, or a damaged one, is computed again (with a warning) and replaced
    other = random_fishernet(latent_dim=4, data_dim=12, xi=-2.0, gain=2.0, seed=4)
    with pytest.warns(RuntimeWarning, match="exact posterior of other data"):
        cal.calibrate(other, images.numpy(), **options, reference_file=path)
    with pytest.warns(RuntimeWarning, match="exact posterior of other data"):
        assert run(reference_file=path) == (plain, rows_plain)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="truncated or corrupt"):
        assert run(reference_file=path) == (plain, rows_plain)
    assert run(reference_file=path) == (plain, rows_again)


def test_importance_sampling_matches_the_grid_on_a_nonlinear_decoder():
    """A random ReLU FisherNet, d = 2: the adapted importance sampler (4,096 draws per round)
    and a 161 x 161 grid (10 Laplace sigma each way) give the same posterior moments and
    evidence."""
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=2.0, seed=1)
    _, x = cal.simulate(model, 12, seed=0)
    grid = cal.exact_posterior(model, x, method="grid", grid_points=161, min_extent=10)
    assert float(grid.edge_mass.max()) < 1e-4
    sampled = cal.exact_posterior(model, x, method="importance")
    assert float(sampled.ess.min()) > 200
    error = cal.mahalanobis2(sampled.mean[None], grid.mean, grid.covariance)[0].sqrt()
    assert float(error.max()) < 0.1
    ratio = (torch.diagonal(sampled.covariance, dim1=-2, dim2=-1)
             / torch.diagonal(grid.covariance, dim1=-2, dim2=-1))
    assert float((ratio - 1).abs().max()) < 0.1
    assert float((sampled.log_evidence - grid.log_evidence).abs().max()) < 0.05


def test_quasi_random_normals_are_normal_and_have_a_smaller_error():
    """Each datum's randomised Sobol points are N(0, 1) in every coordinate (Kolmogorov-
    Smirnov on 4,096 points), independent between data, and estimate E[g(eps)] with a much
    smaller error than pseudo-random draws: over 200 replications of 256 points, the RMS
    error of the mean of a smooth g is at least 4x smaller (measured ~9x; pseudo-random
    error ~1/16 of g's std)."""
    from scipy import stats
    from nifty_fishernet.models.refine import quasi_normals

    gen = torch.Generator().manual_seed(0)
    eps = quasi_normals(4096, 3, 5, gen, torch.float64, "cpu")
    assert eps.shape == (4096, 3, 5)
    for b in range(3):
        for i in range(5):
            assert stats.kstest(eps[:, b, i].numpy(), "norm").pvalue > 0.01
    assert float((eps[:, 0] - eps[:, 1]).abs().max()) > 1  # each datum its own shift

    def g(e):  # smooth; E[g] = E[exp(eps_1 / 2)] E[cos(eps_2)] = exp(1/8) exp(-1/2)
        return torch.exp(0.5 * e[..., 0]) * torch.cos(e[..., 1])

    truth = np.exp(0.125) * np.exp(-0.5)
    quasi = quasi_normals(256, 200, 2, gen, torch.float64, "cpu")
    plain = torch.randn(256, 200, 2, generator=gen, dtype=torch.float64)
    rms_quasi = float(((g(quasi).mean(0) - truth) ** 2).mean().sqrt())
    rms_plain = float(((g(plain).mean(0) - truth) ** 2).mean().sqrt())
    assert rms_quasi < rms_plain / 4


def test_importance_sampling_adapts_on_until_the_median_ess_is_reached():
    """A standard Gaussian target in d = 12 from a first proposal 3x too wide: two rounds
    leave the median ESS below 300, and min_ess=300 adds rounds until it is reached (each of
    n_draws draws); where the two rounds already reach the target (min_ess=2) the result is
    theirs exactly; max_rounds caps the rounds; the moments stay those of N(0, 1)."""
    from nifty_fishernet.models.refine import importance_sample, weighted_moments

    d, batch, n = 12, 16, 512
    centre = torch.zeros(batch, d, dtype=torch.float64)
    chol = 3 * torch.eye(d, dtype=torch.float64).expand(batch, d, d)

    def energy(points):
        return 0.5 * points.pow(2).sum(-1)

    def run(**kwargs):
        return importance_sample(energy, [(centre, chol)], n, 3, torch.Generator().manual_seed(4),
                                 adapt_rounds=2, **kwargs)

    plain = run()
    assert float(plain.ess.median()) < 300
    adapted = run(min_ess=300)
    rounds = adapted.draws.shape[0] // n
    assert 3 < rounds <= 9 and adapted.draws.shape[0] == rounds * n
    assert float(adapted.ess.median()) >= 300
    mean, cov = weighted_moments(adapted.draws, adapted.log_weights)
    # ~300 effective draws: the mean's error ~1/sqrt(300) = 0.06 per coordinate
    assert float(mean.abs().max()) < 0.35
    assert float((torch.diagonal(cov, dim1=-2, dim2=-1) - 1).abs().median()) < 0.2
    same = run(min_ess=2)
    torch.testing.assert_close(same.draws, plain.draws, rtol=0, atol=0)
    torch.testing.assert_close(same.log_weights, plain.log_weights, rtol=0, atol=0)
    capped = run(min_ess=1e9, max_rounds=4)
    assert capped.draws.shape[0] == 5 * n
    with pytest.raises(ValueError, match="min_ess must be a positive number"):
        run(min_ess=0)


def test_quasi_random_student_t_draws_have_the_student_t_distribution():
    """The squared Mahalanobis distance / d of a d-dimensional Student-t is F(d, dof)
    distributed: Kolmogorov-Smirnov on 4,096 quasi-random draws of one datum."""
    from scipy import stats
    from nifty_fishernet.models.refine import student_t_draws

    d, dof = 4, 3
    gen = torch.Generator().manual_seed(1)
    center = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.tensor([[[2.0, 0.3, 0.0, 0.1], [0.3, 1.0, 0.2, 0.0],
                                                [0.0, 0.2, 0.5, 0.0], [0.1, 0.0, 0.0, 1.5]]],
                                              dtype=torch.float64))
    draws = student_t_draws(center, chol, 4096, dof, gen, quasi=True)[:, 0]
    white = torch.linalg.solve_triangular(chol[0], (draws - center).T, upper=False)
    f_values = ((white ** 2).sum(0) / d).numpy()
    assert stats.kstest(f_values, stats.f(d, dof).cdf).pvalue > 0.01
    # the direction is uniform too: each whitened coordinate is symmetric about 0
    assert float((white > 0).double().mean(1).sub(0.5).abs().max()) < 0.02


def test_quasi_random_importance_correction_matches_the_grid():
    """The refined posterior with quasi-random importance draws (64 x 3 rounds) has the
    moments of the exact posterior on a 161 x 161 grid to within 0.15 sigma (mean) and 15 %
    (variances) on a nonlinear ReLU decoder, d = 2."""
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=2.0, seed=1)
    _, x = cal.simulate(model, 12, seed=0)
    grid = cal.exact_posterior(model, x, method="grid", grid_points=161, min_extent=10)
    refined = model.refined_posterior(x, correction="importance", quasi_random=True,
                                      n_draws=64, adapt_rounds=2, starts=0)
    error = cal.mahalanobis2(refined.mean[None], grid.mean, grid.covariance)[0].sqrt()
    assert float(error.max()) < 0.15
    ratio = (torch.diagonal(refined.covariance, dim1=-2, dim2=-1)
             / torch.diagonal(grid.covariance, dim1=-2, dim2=-1))
    assert float((ratio - 1).abs().max()) < 0.15


def test_sample_size_correction_restores_coverage_of_few_draws():
    """With ~38 effective draws (32 x 2 rounds, d = 3) the importance moments are noisy and
    their Gaussian covers the truth too rarely (4,000 simulations of a linear-Gaussian model,
    standard error 0.7 / 0.35 points); widening by Hotelling's factor brings both levels to
    nominal within 3 / 2 points (at this size a single scale leaves ~1 point at 95 %)."""
    model = LinearGaussianModel(latent_dim=3)
    truth, x = cal.simulate(model, 4000, seed=5)
    coverage, refined = {}, {}
    for corrected in (False, True):
        refined[corrected] = model.refined_posterior(x, correction="importance", n_draws=32,
                                                     adapt_rounds=1, starts=0,
                                                     sample_size_correction=corrected)
        coverage[corrected] = cal.gaussian_coverage(refined[corrected].mean,
                                                    refined[corrected].covariance,
                                                    truth).mean(0)
    assert abs(coverage[True][0] - 0.68) < 0.03 and abs(coverage[True][1] - 0.95) < 0.02
    assert coverage[False][0] < 0.68 - 0.03
    # the same draws, each datum's covariance widened by its own effective sample size
    n = refined[False].ess
    torch.testing.assert_close(refined[True].mean, refined[False].mean)
    torch.testing.assert_close(refined[True].covariance, refined[False].covariance
                               * ((1 + 1 / n) * (n - 1) / (n - 3))[:, None, None])


def test_fast_preset_is_the_cheap_calibrated_setting():
    fast = nf.RefineOptions.fast()
    assert (fast.correction, fast.n_draws, fast.adapt_rounds, fast.starts) == (
        "importance", 64, 3, 0)
    assert fast.quasi_random and fast.sample_size_correction
    # the default widens too: without it the covariance is overconfident at large d
    assert nf.RefineOptions().sample_size_correction
    assert fast.matmul_precision == "medium"
    assert nf.RefineOptions.fast(starts=2).starts == 2
    with pytest.raises(ValueError, match="unknown refine option"):
        nf.RefineOptions.fast(draws=3)
    model = LinearGaussianModel(latent_dim=2)
    _, x = cal.simulate(model, 8, seed=0)
    # on a Gaussian posterior (effective sample size ~180 of 256 draws) the moments are the
    # exact ones within their Monte Carlo error (~0.1 sigma for the mean in 2-D, ~10 % for
    # a variance), widened by the sample-size factor (~3 %)
    mean, cov = model.posterior(x, refine=fast)
    exact_mean, exact_cov = model.exact(x)
    assert float(cal.mahalanobis2(mean[None], exact_mean, exact_cov).max()) < 0.25 ** 2
    ratio = torch.diagonal(cov, dim1=-2, dim2=-1) / torch.diagonal(exact_cov, dim1=-2, dim2=-1)
    assert float((ratio - 1).abs().max()) < 0.25


def test_bfloat16_matrix_products_keep_the_importance_moments():
    """``matmul_precision="medium"`` (bfloat16 products where the CPU has them) changes the
    importance moments of a float32 model by far less than their Monte Carlo error, and
    leaves the process's matmul precision as it found it."""
    model = random_fishernet(latent_dim=2, data_dim=64, xi=-3.0, gain=2.0, seed=1).float()
    _, x = cal.simulate(model, 32, seed=0)
    before = torch.get_float32_matmul_precision()
    refined = {mode: model.refined_posterior(x, correction="importance",
                                             matmul_precision=mode, starts=0)
               for mode in ("highest", "medium")}
    assert torch.get_float32_matmul_precision() == before
    exact, fast = refined["highest"], refined["medium"]
    shift = cal.mahalanobis2(fast.mean[None].double(), exact.mean.double(),
                             exact.covariance.double())[0].sqrt()
    assert float(shift.max()) < 0.05
    ratio = (torch.diagonal(fast.covariance, dim1=-2, dim2=-1)
             / torch.diagonal(exact.covariance, dim1=-2, dim2=-1))
    assert float((ratio - 1).abs().max()) < 0.05


class SmoothModel(LinearGaussianModel):
    """A tanh decoder: a smooth energy, so a quasi-Newton optimiser can find the MAP too
    (the Jacobian comes from torch.func's fallback, not the MLP's fused pass)."""

    def __init__(self, latent_dim=3, data_dim=12, noise_std=0.15, seed=2):
        super().__init__(latent_dim, data_dim, noise_std, seed)
        torch.manual_seed(seed)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(),
                                     nn.Linear(16, data_dim), nn.Sigmoid()).double()
        with torch.no_grad():
            self.decoder[0].weight.mul_(2.0)
        self.eval()


def test_refined_map_equals_scipys_optimiser():
    model = SmoothModel()
    _, x = cal.simulate(model, 6, seed=4)
    # Gauss-Newton converges linearly where the residual curvature matters: 93 steps here
    result = model.refined_posterior(x, max_steps=200)
    assert bool(result.converged.all())
    precision = float(model.noise.precision.detach())
    for b in range(x.shape[0]):
        def energy(z):
            zt = torch.tensor(z, requires_grad=True)
            value = 0.5 * (zt ** 2).sum() + 0.5 * precision * (
                (x[b] - model.decoder(zt[None])[0]) ** 2).sum()
            value.backward()
            return float(value.detach()), zt.grad.numpy()

        start = result.initial[b].detach().numpy()
        found = minimize(energy, start, jac=True, method="BFGS", options=dict(gtol=1e-10))
        assert found.fun >= float(result.energy[b]) - 1e-9
        np.testing.assert_allclose(result.map[b].numpy(), found.x, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nf.VAE(2, data_dim=784, hidden=32, layers=1),
                                  lambda: nf.VAE(2, data_dim=784, hidden=32, layers=1,
                                                 learn_noise=True),
                                  lambda: nf.ConvVAE(2, hidden=16, filters=(4, 4, 8))])
def test_every_model_has_a_refined_posterior(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(5, 784)
    mean, cov = model.posterior(x, refine=True)
    assert mean.shape == (5, 2) and cov.shape == (5, 2, 2)
    assert bool(torch.isfinite(mean).all())
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    draws = model.sample_posterior(x, 3, refine=True)
    assert draws.shape == (3, 5, 2)
    # the MAP is a local minimum of the model's own energy (ReLU decoders have kinks, where
    # a gradient need not vanish): lower than at the encoder mean and at points around it
    result = model.refined_posterior(x)
    precision = model.noise.precision.detach()

    def energy(z):
        return 0.5 * (z ** 2).sum(-1) + 0.5 * precision * ((x - model.decoder(z)) ** 2).sum(-1)

    with torch.no_grad():
        at_map = energy(result.map)
        assert bool((at_map <= energy(result.initial) + 1e-4).all())
        sigma = torch.diagonal(result.laplace_covariance, dim1=-2, dim2=-1).sqrt()
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            nearby = result.map + 0.3 * sigma * torch.randn(result.map.shape, generator=gen)
            assert bool((energy(nearby) >= at_map - 1e-4).all())


def test_refined_posterior_errors_name_the_problem():
    model = random_fishernet(latent_dim=2, data_dim=12)
    x = torch.rand(4, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite"):
        model.posterior(torch.full((2, 12), float("nan"), dtype=torch.float64), refine=True)
    with pytest.raises(ValueError, match=r"shape \(batch, 12\)"):
        model.posterior(torch.rand(4, 11, dtype=torch.float64), refine=True)
    with pytest.raises(ValueError, match="unknown refine option.*'steps'"):
        model.posterior(x, refine=True, steps=3)
    with pytest.raises(ValueError, match="correction must be one of"):
        model.posterior(x, refine=True, correction="magic")
    with pytest.raises(ValueError, match="without refine=True"):
        model.posterior(x, correction="importance")
    with pytest.raises(ValueError, match="n_draws must be a positive integer"):
        model.posterior(x, refine=True, correction="importance", n_draws=0)
    with pytest.raises(ValueError, match="quasi_random must be True or False"):
        model.posterior(x, refine=True, correction="importance", quasi_random="yes")
    with pytest.raises(ValueError, match="sample_size_correction must be True or False"):
        model.posterior(x, refine=True, correction="importance", sample_size_correction=1)
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        model.posterior(x, refine=True, correction="importance", matmul_precision="low")
    with pytest.raises(TypeError, match="refine must be"):
        model.posterior(x, refine="yes")
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        model.posterior(x, refine=True)
    with pytest.raises(ValueError, match="positive integer"):
        cal.simulate(model, 0)
    model.eval()
    with pytest.raises(ValueError, match="too large"):
        cal.exact_posterior(random_fishernet(latent_dim=4, data_dim=12), x, method="grid")
    with pytest.raises(ValueError, match="unknown NIFTy methods"):
        cal.calibrate(model, x.numpy(), nifty=("hmc",), n_simulated=5, n_real=0)
    with pytest.raises(ValueError, match="span only 1 of the 2 latent directions"):
        cal.calibrate(model, x.numpy(), nifty=("mgvi",), n_simulated=5, n_real=2,
                      nifty_options=dict(n_samples=1))


@pytest.mark.slow
def test_harness_runs_every_part_on_a_small_model():
    model = random_fishernet(latent_dim=4, data_dim=12, xi=-2.0, gain=2.0, seed=3)
    _, images = cal.simulate(model, 8, seed=9)
    result = cal.calibrate(model, images.numpy(), nifty=("mgvi",), n_simulated=40, n_real=8,
                           n_nifty=8, exact_options=dict(n_draws=512), progress=False,
                           nifty_options=dict(n_samples=4, total_iterations=2))
    hpd = "refined (importance)" + cal.HPD_SUFFIX
    assert set(result["simulated"]) == {"amortized", "refined (Laplace)",
                                        "refined (importance)", hpd, "mgvi", "exact reference"}
    for name, entry in result["simulated"].items():
        assert set(entry["coverage"]) == {"68", "95"}
        assert np.asarray(entry["rank_histogram"]).shape == ((1, 10) if name == hpd else (4, 10))
    # the importance-sampled refinement reports its draws' effective sample size (at most
    # the 256 x 4 draws it has); Gaussian methods have none
    ess = result["simulated"]["refined (importance)"]["ess"]
    assert 1 <= ess["q10"] <= ess["median"] <= ess["q90"] <= 4 * 256
    assert "ess" not in result["simulated"]["refined (Laplace)"]
    assert "ess" not in result["simulated"]["amortized"]
    assert result["real"]["exact"]["method"] == "importance"
    for name in ("amortized", "refined (Laplace)", "refined (importance)", "mgvi"):
        assert set(result["real"][name]) == {"mass_68", "mass_95", "kl_pq", "kl_qp",
                                             "mean_error_sigma"}
    assert set(result["real"][hpd]) == {"mass_68", "mass_95"}
    assert 0 <= result["real"][hpd]["mass_68"]["mean"] <= result["real"][hpd]["mass_95"]["mean"]
    assert 0 <= result["lower_bound"]["fraction_below_1"] <= 1

    # an entry of an older harness (no HPD rows, other Gaussian rows, marked NIFTy and
    # reference rows) brought up to date: the Gaussian methods' rows equal the full run's
    # (the same random numbers), the NIFTy and reference rows are the stored ones
    stale = copy.deepcopy(result)
    for part in ("simulated", "real"):
        del stale[part][hpd]
        stale[part]["refined (importance)"] = {"stale": True}
        stale[part]["mgvi"]["marker"] = 1
    stale["simulated"]["exact reference"]["marker"] = 1
    kept = copy.deepcopy(stale)
    updated = cal.recalibrate(model, images.numpy(), stale, n_simulated=40, n_real=8,
                              exact_options=dict(n_draws=512), progress=False)
    assert stale == kept  # not modified
    assert _without_seconds(updated) == _without_seconds(
        {**result, "simulated": {**result["simulated"], "mgvi": stale["simulated"]["mgvi"],
                                 "exact reference": stale["simulated"]["exact reference"]},
         "real": {**result["real"], "mgvi": stale["real"]["mgvi"]}})
    with pytest.raises(ValueError, match="n_simulated = 40, not 30"):
        cal.recalibrate(model, images.numpy(), stale, n_simulated=30, n_real=8)
    with pytest.raises(ValueError, match="'nifty' is not an option here"):
        cal.recalibrate(model, images.numpy(), stale, nifty=("mgvi",))


@pytest.fixture(scope="module")
def staged():
    """A small calibration with every kind of stage, and the result of one run of it."""
    model = random_fishernet(latent_dim=4, data_dim=12, xi=-2.0, gain=2.0, seed=3)
    _, images = cal.simulate(model, 8, seed=9)
    options = dict(nifty=("mgvi",), n_simulated=40, n_real=8, n_nifty=8, progress=False,
                   exact_options=dict(n_draws=512),
                   nifty_options=dict(n_samples=4, total_iterations=2))
    return model, images, options, cal.calibrate(model, images.numpy(), **options)


def test_a_killed_calibration_resumes_after_its_last_finished_stage(staged, tmp_path):
    model, images, options, whole = staged
    records = ResultCache(tmp_path).stages("calibration", fingerprint("this model"))

    class Killed(Exception):
        pass

    class KilledAfterTwoStages(dict):
        def __setitem__(self, name, value):
            records[name] = value
            super().__setitem__(name, value)
            if len(self) == 2:
                raise Killed(name)

    with pytest.raises(Killed, match="simulated mgvi"):
        cal.calibrate(model, images.numpy(), finished=KilledAfterTwoStages(), **options)
    assert "simulated gaussian" in records and "simulated mgvi" in records
    assert "simulated exact reference" not in records and "real mgvi" not in records
    kept = records["simulated mgvi"]
    resumed = cal.calibrate(model, images.numpy(), finished=records, **options)
    # the finished stage is read back (its wall time is the killed run's), the rest run
    # on: the result of one uninterrupted run
    assert resumed["simulated"]["mgvi"] == kept
    assert _without_seconds(resumed) == _without_seconds(jsonable(whole))
    assert "simulated exact reference" in records and "real mgvi" in records


def test_a_nifty_stage_killed_midway_resumes_after_its_last_global_iteration(staged,
                                                                              tmp_path):
    """A NIFTy stage of hours loses at most one global KL iteration to a killed part."""
    from nifty_fishernet.nifty.kl_state import kl_progress

    model, images, options, whole = staged
    records = ResultCache(tmp_path).stages("calibration", fingerprint("this model"))
    folder = tmp_path / "nifty-progress"

    class Killed(Exception):
        pass

    def kill_after_the_first_iteration():
        raise Killed

    killed = dict(options, nifty_options=dict(options["nifty_options"],
                                              callback=kill_after_the_first_iteration))
    with pytest.raises(Killed):
        cal.calibrate(model, images.numpy(), finished=records, nifty_checkpoints=folder,
                      only={"simulated mgvi"}, **killed)
    assert "simulated mgvi" not in records
    assert kl_progress(folder / "simulated-mgvi.h5")[0] == 1  # of its 2 iterations
    with pytest.raises(FileFormatError, match="another KL minimisation"):  # it is read
        cal.calibrate(model, images.numpy(), finished=records, nifty_checkpoints=folder,
                      only={"simulated mgvi"}, seed=1, **options)
    cal.calibrate(model, images.numpy(), finished=records, nifty_checkpoints=folder,
                  only={"simulated mgvi"}, **options)
    assert not (folder / "simulated-mgvi.h5").exists()
    # the resumed stage's rows are those of one uninterrupted run, its time both runs'
    assert _without_seconds(records["simulated mgvi"]) == _without_seconds(
        jsonable(whole["simulated"]["mgvi"]))


def test_a_calibrations_stages_run_apart_give_the_result_of_one_run(staged, tmp_path):
    """Stages measured by separate calls (as by processes on separate cores) in another order
    than one run's: a final call reads them all back, measures nothing, and returns the
    single run's result."""
    model, images, options, whole = staged
    stages = cal.calibration_stages(("mgvi",))
    assert stages == ["simulated gaussian", "simulated mgvi", "simulated exact reference",
                      "real exact reference", "real gaussian", "real mgvi"]
    records = ResultCache(tmp_path).stages("calibration", fingerprint("this model"))
    reference = records.file("real exact reference", ".h5")
    apart = dict(finished=records, reference_file=reference, **options)
    assert cal.calibrate(model, images.numpy(), only={"real mgvi", "real gaussian"},
                         **apart) is None
    assert set(records.names()) == {"real exact reference", "real gaussian", "real mgvi"}
    assert cal.calibrate(model, images.numpy(), only="simulated exact reference",
                         **apart) is None
    cal.calibrate(model, images.numpy(), only=stages[:2], **apart)
    assert set(records.names()) == set(stages)

    class ReadOnly(dict):
        def get(self, name):
            return records.get(name)

        def __setitem__(self, name, value):
            raise AssertionError(f"stage {name!r} measured again")

    read_back = cal.calibrate(model, images.numpy(), finished=ReadOnly(),
                              reference_file=reference, **options)
    assert _without_seconds(read_back) == _without_seconds(jsonable(whole))
    with pytest.raises(ValueError, match=r"unknown calibration stages \['real geovi'\]"):
        cal.calibrate(model, images.numpy(), only={"real geovi"}, **apart)
    with pytest.raises(ValueError, match="pass the finished mapping"):
        cal.calibrate(model, images.numpy(), only={"real mgvi"}, **options)
    with pytest.raises(ValueError, match="kept in reference_file"):
        cal.calibrate(model, images.numpy(), only={"real exact reference"},
                      finished=records, **options)


def _without_seconds(value):
    """A calibration result without its wall times (they differ between runs)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds_per_datum"}
    return value


def test_newton_stops_cleanly_when_the_last_active_datum_reaches_the_step_limit():
    """One datum starts at its MAP (converged at once), the other needs many steps: with a
    limit of one step the second stops there, and each datum's steps are counted apart."""
    model = SmoothModel()
    _, x = cal.simulate(model, 2, seed=5)
    precision = model.noise.precision.detach()

    decoder = model.decoder
    with torch.no_grad():
        maps = nf.fisher.newton_map(decoder, x, torch.zeros(2, 3, dtype=torch.float64),
                                    precision, max_steps=300).z
        start = torch.stack([maps[0], torch.full((3,), 2.0, dtype=torch.float64)])
        result = nf.fisher.newton_map(decoder, x, start, precision, max_steps=1)
    assert result.steps.tolist() == [0, 1]
    assert result.converged.tolist() == [True, False]


class Square(nn.Module):
    """``f(z) = a z^2 + b``: the sign of z is invisible, so each posterior has two modes."""

    def __init__(self, data_dim=4):
        super().__init__()
        self.register_buffer("a", torch.linspace(0.5, 1.0, data_dim, dtype=torch.float64))
        self.register_buffer("b", torch.linspace(-0.2, 0.2, data_dim, dtype=torch.float64))

    def forward(self, z):
        return (z ** 2) * self.a + self.b


def test_importance_correction_finds_a_second_mode_from_further_starts():
    """x from z = 1.5 under f(z) = a z^2 + b: modes at +-1.5 of equal height. The encoder
    points at +1.4. With further starts the importance-sampled posterior holds both modes
    (by symmetry mean 0 and variance the second moment of one mode, ~2.25); without them it
    holds one."""
    model, x = _two_mode_model(Square(), truth=1.5)
    one = model.refined_posterior(x, correction="importance", starts=0)
    both = model.refined_posterior(x, correction="importance", starts=4)
    assert float(one.mean[0, 0]) > 1.0  # one mode only
    assert abs(float(both.mean[0, 0])) < 0.15
    second_moment = float(one.mean[0, 0] ** 2 + one.covariance[0, 0, 0])
    assert abs(float(both.covariance[0, 0, 0]) / second_moment - 1) < 0.1


def test_importance_covariance_stays_positive_definite_when_the_weights_collapse():
    """The encoder leads to the mode ~45 nats above the true one and no further start looks
    for it; one Cauchy draw (seed 8) lands in the true basin and takes all the weight (ESS
    1). The moments alone are then a point (variance ~1e-9); the returned covariance keeps
    one pseudo-draw's worth of M(MAP)^{-1}, so it stays positive definite, and the HPD
    threshold is that draw's energy. (The sample-size correction, which would widen both
    by its own factor, is off here.)"""
    model, x = _two_mode_model(TiltedSquare())
    collapsed = model.refined_posterior(x, correction="importance", starts=0, n_draws=64,
                                        dof=1, adapt_rounds=0, seed=8,
                                        sample_size_correction=False)
    assert float(collapsed.ess[0]) < 1.01
    laplace = float(collapsed.laplace_covariance[0, 0, 0])
    assert 0.49 * laplace < float(collapsed.covariance[0, 0, 0]) < 0.51 * laplace
    torch.linalg.cholesky(collapsed.covariance)
    heaviest = collapsed.log_weights[:, 0].argmax()
    assert float(collapsed.energy_threshold(0.68)[0]) == float(collapsed.draw_energy[heaviest, 0])
    # one effective draw cannot bound a 95 % region ((0.95 * 2 - 1/2) / 1 > 1), nor hold a
    # 10 % one (below the lowest mid-rank 1/4)
    assert float(collapsed.energy_threshold(0.95)[0]) == float("inf")
    assert float(collapsed.energy_threshold(0.1)[0]) == -float("inf")
    # with many effective draws the pseudo-draw changes the moments by ~1 / ESS only
    from nifty_fishernet.models.refine import weighted_moments

    fine = model.refined_posterior(x, correction="importance", starts=0, n_draws=1024,
                                   sample_size_correction=False)
    moments = weighted_moments(fine.draws, fine.log_weights)[1]
    assert abs(float(fine.covariance[0, 0, 0] / moments[0, 0, 0]) - 1) < 2 / float(fine.ess[0])


def test_a_proposal_finds_mass_the_laplace_scale_misses_and_a_poor_one_costs_nothing():
    """The symmetric two-mode posterior above, without further starts: a caller's proposal
    (a Gaussian over both modes, as a posterior network fitted to simulations would give)
    lets importance sampling hold both modes (brute-force moments on a fine grid: mean 0
    by symmetry). On the linear model a proposal 5 sigma off and 3x too wide leaves the
    moments where they were (it only takes its share of the draws): 1,024 x 4 draws, ESS
    several hundred, so a few % of sigma."""
    model, x = _two_mode_model(Square(), truth=1.5)

    def wide(data):
        return (torch.zeros(len(data), 1, dtype=torch.float64),
                torch.full((len(data), 1, 1), 2.5, dtype=torch.float64))

    found = model.refined_posterior(x, correction="importance", starts=0, n_draws=1024,
                                    proposal=wide)
    mean, variance = _brute_force_moments(model, x)
    assert abs(float(found.mean[0, 0]) - mean) < 0.15 * variance ** 0.5
    assert abs(float(found.covariance[0, 0, 0]) / variance - 1) < 0.1

    linear = LinearGaussianModel(latent_dim=3)
    _, x = cal.simulate(linear, 20, seed=1)
    exact_mean, exact_cov = linear.exact(x)

    def off(data):
        return exact_mean + 5 * exact_cov.diagonal(dim1=-2, dim2=-1).sqrt(), 9 * exact_cov

    found = linear.refined_posterior(x, correction="importance", n_draws=1024, starts=0,
                                     proposal=off)
    sigma = exact_cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert float(((found.mean - exact_mean) / sigma).abs().max()) < 0.15
    ratio = found.covariance.diagonal(dim1=-2, dim2=-1) / sigma ** 2
    assert float((ratio - 1).abs().max()) < 0.2
    # errors name the problem
    with pytest.raises(ValueError, match="importance sampling only"):
        linear.posterior(x, refine=True, proposal=off)
    with pytest.raises(TypeError, match="proposal must be a callable"):
        linear.posterior(x, refine=True, correction="importance", proposal=exact_mean)
    with pytest.raises(ValueError, match=r"covariance of shape \(20, 3, 3\)"):
        linear.posterior(x, refine=True, correction="importance",
                         proposal=lambda data: (exact_mean, exact_cov[:, 0]))
    with pytest.raises(ValueError, match="not positive definite"):
        linear.posterior(x, refine=True, correction="importance",
                         proposal=lambda data: (exact_mean, -exact_cov))
    with pytest.raises(ValueError, match="without refine=True"):
        linear.posterior(x, proposal=off)


class TiltedSquare(Square):
    """``f(z) = a z^2 + c z + b``: the mirror mode of each posterior is ~45 nats higher."""

    def __init__(self, data_dim=4):
        super().__init__(data_dim)
        self.register_buffer("c", 0.15 * (-1.0) ** torch.arange(data_dim, dtype=torch.float64))

    def forward(self, z):
        return super().forward(z) + z * self.c


def _two_mode_model(decoder, truth=-1.5):
    """The encoder points at +1.4; the data come from z = ``truth``."""
    model = LinearGaussianModel(latent_dim=1, data_dim=4, noise_std=0.1)
    model.decoder = decoder
    with torch.no_grad():
        model.encoder.weight.zero_()
        model.encoder.bias.fill_(1.4)
        x = model.decoder(torch.tensor([[truth]], dtype=torch.float64))
        x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64)
    return model, x


def _brute_force_moments(model, x):
    """Mean and variance of p(z | x) on a fine grid over the whole prior range."""
    z = torch.linspace(-5, 5, 400001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        energy = 0.5 * z[:, 0] ** 2 + 0.5 * float(model.noise.precision) * (
            (x - model.decoder(z)) ** 2).sum(-1)
    w = torch.softmax(-energy, 0)
    mean = (w * z[:, 0]).sum()
    return float(mean), float((w * (z[:, 0] - mean) ** 2).sum())


@pytest.mark.parametrize("method", ["grid", "importance"])
def test_exact_posterior_is_centred_on_the_lowest_mode_not_the_encoders(method):
    """The encoder leads Newton to the mirror mode, ~45 nats above the true one: the exact
    reference must still find the posterior (against a brute-force grid over the prior
    range), and flag that its mode is not the encoder's; without the search for further
    modes it cannot."""
    model, x = _two_mode_model(TiltedSquare())
    mean, var = _brute_force_moments(model, x)
    assert mean < -1.0
    refined = model.refined_posterior(x)
    assert float(refined.map[0, 0]) > 1.0  # the encoder's mode
    exact = cal.exact_posterior(model, x, method=method)
    assert exact.lower_mode.tolist() == [True] and exact.other_modes.tolist() == [0]
    assert abs(float(exact.mean[0, 0]) - mean) < 0.05 * var ** 0.5
    assert abs(float(exact.covariance[0, 0, 0]) / var - 1) < 0.05
    # the approximation at the encoder's mode holds none of the posterior's mass
    metrics = cal.compare_to_exact(model, x, exact, refined.mean, refined.covariance)
    assert float(metrics["mass_95"][0]) < 1e-6
    blind = cal.exact_posterior(model, x, method=method, starts=0)
    assert float(blind.mean[0, 0]) > 1.0 and blind.lower_mode.tolist() == [False]
    if method == "grid":
        assert float(exact.off_grid_mass[0]) < 1e-6


def test_exact_posterior_reports_modes_it_cannot_hold():
    """Two modes of equal height: importance sampling holds both (mean ~0, as the brute-force
    grid says); the grid, centred on one, reports about half the mass outside it."""
    model, x = _two_mode_model(Square())
    mean, var = _brute_force_moments(model, x)
    sampled = cal.exact_posterior(model, x, method="importance")
    assert sampled.other_modes.tolist() == [1]
    assert abs(float(sampled.mean[0, 0]) - mean) < 0.05 * var ** 0.5
    assert abs(float(sampled.covariance[0, 0, 0]) / var - 1) < 0.05
    grid = cal.exact_posterior(model, x, method="grid")
    assert grid.other_modes.tolist() == [1]
    assert 0.3 < float(grid.off_grid_mass[0]) < 0.7


@pytest.mark.parametrize("wake", [False, True], ids=["sleep", "sleep+wake"])
def test_posterior_network_learns_the_closed_form_posterior(wake):
    """Fitted to a linear-Gaussian model's own simulations (and, with the wake phase, to
    importance-weighted draws for 2,000 "real" data of the same process), the network's
    Gaussian is the exact posterior up to the fit's error (measured: median mean error
    0.03-0.04 sigma, variance ratios 0.68-1.18 at the extremes of 500 data), so the harness
    sees nominal coverage within 4 standard errors of 2,000 simulations."""
    model = LinearGaussianModel(latent_dim=2)
    _, real = cal.simulate(model, 2000, seed=7)
    network = nf.fit_posterior_network(model, steps=5000, batch_size=128, hidden=64,
                                       real_images=real if wake else None, progress=False)
    _, x = cal.simulate(model, 500, seed=1)
    with torch.no_grad():
        mean, cov = network.posterior(x)
    exact_mean, exact_cov = model.exact(x)
    sigma = torch.diagonal(exact_cov, dim1=-2, dim2=-1).sqrt()
    error = ((mean - exact_mean) / sigma).abs()
    assert float(error.median()) < 0.1 and float(error.max()) < 1.0
    ratio = torch.diagonal(cov, dim1=-2, dim2=-1) / torch.diagonal(exact_cov, dim1=-2, dim2=-1)
    assert float(ratio.median() - 1).__abs__() < 0.1
    result = cal.calibrate(model, np.zeros((1, model.data_dim)), n_simulated=2000, n_real=0,
                           methods={"network": network.posterior}, progress=False)
    coverage = result["simulated"]["network"]["coverage"]
    assert abs(coverage["68"] - 0.68) < 0.042 and abs(coverage["95"] - 0.95) < 0.020
    assert len(network.history) == 50 and network.history[-1] < network.history[0]


def test_posterior_network_errors_name_the_problem():
    model = LinearGaussianModel(latent_dim=2)
    # fitted inside a caller's no_grad block it still learns, and learns the same
    plain = nf.fit_posterior_network(model, steps=3, batch_size=8, hidden=8, progress=False)
    with torch.no_grad():
        quiet = nf.fit_posterior_network(model, steps=3, batch_size=8, hidden=8,
                                         progress=False)
    for a, b in zip(plain.parameters(), quiet.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        nf.fit_posterior_network(model, steps=0)
    with pytest.raises(ValueError, match="real_images"):
        nf.fit_posterior_network(model, steps=1, real_images=np.zeros((3, 5)))
    with pytest.raises(TypeError, match="callable"):
        cal.calibrate(model, np.zeros((1, 6)), methods={"bad": 3}, n_simulated=5, n_real=0,
                      progress=False)


def test_the_mode_search_runs_newton_in_groups_bounded_in_memory(monkeypatch):
    """All starts x B Newton runs of a wide decoder at once held 7 GB at d = 10: they run in
    groups of at most MAX_ACTIVATION_BYTES of forward-mode activations, with the same ends."""
    from nifty_fishernet.models import refine

    torch.manual_seed(0)
    model = nf.ConvVAE(2).double().eval()
    x = model.decode(torch.randn(3, 2, dtype=torch.float64)).detach()
    precision = torch.tensor(4.0, dtype=torch.float64)

    def search():
        return refine.search_modes(model, x, precision, starts=4, codebook=64, max_steps=5,
                                   generator=torch.Generator().manual_seed(1))

    whole = search()
    groups = []
    newton_map = refine.newton_map

    def recording(decoder, targets, begin, *args, **kwargs):
        groups.append(begin.shape[0])
        return newton_map(decoder, targets, begin, *args, **kwargs)

    monkeypatch.setattr(refine, "newton_map", recording)
    search()
    assert groups == [12]  # 4 starts x 3 images in one group by default
    per_row = refine.activation_bytes_per_row(model.decoder, 2, torch.float64, "cpu")
    monkeypatch.setattr(refine, "MAX_ACTIVATION_BYTES", 5 * 3 * per_row)  # 5 runs of d + 1
    groups.clear()
    grouped = search()
    assert groups == [5, 5, 2]
    for got, want in zip(grouped, whole):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_energy_at_bounds_the_decoder_activations_per_call(monkeypatch):
    """A wide decoder (a ConvVAE's) gets fewer draws per call where 2,048 draws of many
    images would hold tens of GB: the energies stay those of unbounded calls."""
    from nifty_fishernet.models import refine

    torch.manual_seed(0)
    model = nf.ConvVAE(2).double().eval()
    per_row = refine.activation_bytes_per_row(model.decoder, 2, torch.float64, "cpu")
    # the leaf outputs of one row: 448 + 3136 (twice, ReLU) + 64x14x14 (twice) + 32x14x14
    # (twice) + 32x28x28 (twice) + 784 (three times) values of 8 bytes, and the last
    # (plain) convolution's unfolded input, 32 channels x 3x3 taps per output pixel
    assert per_row == 8 * (448 * 2 + 3136 * 2 + 3136 + 2 * 12544 + 2 * 6272 + 2 * 25088
                           + 3 * 784 + 32 * 9 * 784)
    # summed tap by tap, that convolution holds 1 channel x 3x3 taps per pixel, twice
    tapped = nf.models.tap_convolutions(model.decoder)
    assert isinstance(tapped[11], nf.models.TapConv2d)
    assert (refine.activation_bytes_per_row(tapped, 2, torch.float64, "cpu")
            == per_row - 8 * 32 * 9 * 784 + 8 * 2 * 9 * 784)
    x = torch.rand(3, 784, dtype=torch.float64)
    points = torch.randn(50, 3, 2, dtype=torch.float64)
    unbounded = refine.energy_at(model, x, points, 1.0, chunk=2048)
    rows = []
    hook = model.decoder.register_forward_hook(
        lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    monkeypatch.setattr(refine, "MAX_ACTIVATION_BYTES", 7 * 3 * per_row)
    bounded = refine.energy_at(model, x, points, 1.0, chunk=2048)
    hook.remove()
    assert rows[0] == 1  # the size probe
    assert rows[1:] == [7 * 3] * 7 + [1 * 3]  # 50 draws of 3 images, 7 draws per call
    torch.testing.assert_close(bounded, unbounded, rtol=1e-13, atol=1e-10)
