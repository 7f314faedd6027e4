"""The Fisher metric and the inverse-metric sampler against independent computations."""

import pytest
import torch
from scipy import stats

import nifty_fishernet as nf
from conftest import random_fishernet


def reference_metric(model, mu):
    """M_b = J_b^T exp(-xi) J_b + 1 with J from torch.autograd.functional.jacobian, per b."""
    out = []
    for m in mu:
        jac = torch.autograd.functional.jacobian(lambda z: model.decoder(z[None])[0], m)
        out.append(torch.exp(-model.xi_n) * jac.T @ jac + torch.eye(mu.shape[1],
                                                                    dtype=mu.dtype))
    return torch.stack(out)


@pytest.mark.parametrize("latent_dim,layers", [(1, 1), (3, 2), (7, 3)])
def test_metric_equals_autograd_jacobian_form(latent_dim, layers):
    model = random_fishernet(latent_dim=latent_dim, layers=layers)
    mu = torch.randn(6, latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        metric = model.metric(mu)
    ref = reference_metric(model, mu)
    for b in range(mu.shape[0]):
        rel = torch.linalg.norm(metric[b] - ref[b]) / torch.linalg.norm(ref[b])
        assert rel < 1e-6, (b, float(rel))


def test_fused_jacobian_matches_generic_jacfwd_path():
    model = random_fishernet(latent_dim=4, layers=3)
    mu = torch.randn(5, 4, dtype=torch.float64)
    value, jt = nf.decoder_jacobian(model.decoder, mu)
    generic_value, generic_jt = nf.decoder_jacobian(lambda z: model.decoder(z), mu)
    torch.testing.assert_close(value, generic_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jt, generic_jt, rtol=1e-10, atol=1e-12)


def test_draws_have_mean_mu_and_covariance_inverse_metric():
    model = random_fishernet(latent_dim=3, layers=2, xi=-2.0, gain=5.0)
    mu = torch.tensor([[0.3, -0.5, 1.2]], dtype=torch.float64)
    n = 20000
    with torch.no_grad():
        z = model.sample_latent(mu, n_samples=n, generator=torch.Generator().manual_seed(7))[:, 0]
        metric = model.metric(mu)[0]
    cov = torch.linalg.inv(metric)
    # The test is only meaningful if the posterior is far from the prior and correlated.
    corr = cov / torch.sqrt(torch.outer(cov.diagonal(), cov.diagonal()))
    assert cov.diagonal().min() < 0.3 and corr.fill_diagonal_(0).abs().max() > 0.5
    # Mean: n (m - mu)^T M (m - mu) ~ chi2(d); 99.9% quantile.
    err = z.mean(0) - mu[0]
    assert float(n * err @ metric @ err) < stats.chi2.ppf(0.999, df=3)
    # Covariance: each entry's relative sampling error is ~sqrt(2/n) = 1%; 5% is > 3 sigma.
    emp = torch.cov(z.T)
    assert float(torch.linalg.norm(emp - cov) / torch.linalg.norm(cov)) < 0.05


@pytest.mark.parametrize("latent_dim", [2, 6])
def test_cholesky_and_cg_give_same_draw_for_same_noise(latent_dim):
    model = random_fishernet(latent_dim=latent_dim, layers=2, xi=-3.0)
    mu = torch.randn(4, latent_dim, dtype=torch.float64)
    noise = model.draw_noise(5, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        chol = model.sample_latent(mu, 5, solver="cholesky", noise=noise)
        cg = model.sample_latent(mu, 5, solver="cg", noise=noise)
    assert chol.shape == (5, 4, latent_dim)
    torch.testing.assert_close(cg, chol, rtol=1e-8, atol=1e-8)
    # and the offsets really are M^{-1} theta, not something close to zero
    assert float((chol - mu).abs().max()) > 1e-2


def test_auto_solver_switches_to_cg_for_large_latent_dim():
    model = random_fishernet(latent_dim=3)
    assert model.resolve_solver("auto") == "cholesky"
    big = nf.FisherNet(65, data_dim=8, hidden=4, layers=1)
    assert big.resolve_solver(None) == "cg"
    with pytest.raises(ValueError, match="solver"):
        model.sample_latent(torch.zeros(1, 3, dtype=torch.float64), solver="lu")


def test_posterior_covariance_and_axes():
    model = random_fishernet(latent_dim=3)
    mu = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        cov = model.posterior_covariance(mu)
        std, axes = model.posterior_axes(mu)
    torch.testing.assert_close(cov @ model.metric(mu).detach(),
                               torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    assert bool((std[:, :-1] >= std[:, 1:]).all())
    rebuilt = axes @ torch.diag_embed(std ** 2) @ axes.transpose(1, 2)
    torch.testing.assert_close(rebuilt, cov)
