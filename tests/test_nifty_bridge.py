"""The NIFTy bridge: operators pass NIFTy's own checks; NIFTy's metric is the FisherNet's."""

import copy

import numpy as np
import pytest
import torch
from scipy import optimize

from conftest import random_fishernet
from nifty_fishernet.nifty import FisherNetLikelihood, TorchOperator, ift
from nifty_fishernet.nifty.compat import hamiltonian_options, values
from nifty_fishernet.nifty.blocks import BlockPreconditioner, PreconditionedHamiltonian
from nifty_fishernet.nifty.inference import latent_posterior, metric_blocks

pytestmark = pytest.mark.nifty  # CI runs these on nifty8 and on nifty.cl


@pytest.fixture(autouse=True)
def nifty_seed():
    ift.random.push_sseq_from_seed(42)
    yield
    ift.random.pop_sseq()


def test_check_operator_random_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 5)).double().eval()
    dom, tgt = ift.UnstructuredDomain((4, 3)), ift.UnstructuredDomain((4, 5))
    op = TorchOperator(dom, tgt, net)
    ift.extra.check_operator(op, ift.from_random(dom), ntries=10)


def test_check_operator_fishernet_decoder():
    model = random_fishernet(latent_dim=3, data_dim=12)
    dom, tgt = ift.UnstructuredDomain((5, 3)), ift.UnstructuredDomain((5, 12))
    ift.extra.check_operator(TorchOperator(dom, tgt, model.decoder), ift.from_random(dom),
                             ntries=10)


def test_check_operator_dict_valued_function_and_constant_keys():
    def function(x):
        return {"b": x["u"] * torch.sin(x["v"]), "a": torch.exp(0.3 * x["u"]) + x["v"] ** 2}

    dom = ift.makeDomain({"v": ift.UnstructuredDomain(4), "u": ift.UnstructuredDomain(4)})
    tgt = ift.makeDomain({"a": ift.UnstructuredDomain(4), "b": ift.UnstructuredDomain(4)})
    ift.extra.check_operator(TorchOperator(dom, tgt, function), ift.from_random(dom),
                             ntries=10)


def test_wrong_function_output_is_reported():
    dom = ift.UnstructuredDomain(3)
    op = TorchOperator(dom, ift.UnstructuredDomain(4), lambda x: x * 2)
    with pytest.raises(ValueError, match=r"returns shape \(3,\).*target has shape \(4,\)"):
        op(ift.from_random(dom))


def test_likelihood_passes_check_operator():
    model = random_fishernet(latent_dim=2, data_dim=12)
    data = np.random.default_rng(0).uniform(size=(3, 12))
    likelihood = FisherNetLikelihood(model, data)
    ift.extra.check_operator(likelihood, ift.from_random(likelihood.domain), ntries=5)


def test_nifty_metric_equals_fishernet_metric():
    model = random_fishernet(latent_dim=3, data_dim=12, xi=-1.0)
    data = np.random.default_rng(1).uniform(size=(4, 12))
    likelihood = FisherNetLikelihood(model, data)
    mu = np.random.default_rng(2).normal(size=(4, 3))
    position = ift.MultiField.from_dict(
        {"latent": ift.makeField(likelihood.domain["latent"], mu)})
    blocks = metric_blocks(likelihood, position)
    with torch.no_grad():
        reference = model.metric(torch.tensor(mu)).detach().numpy()
    np.testing.assert_allclose(blocks, reference, rtol=1e-10, atol=1e-12)


def test_nifty_inverse_metric_draws_match_sample_latent():
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=5.0)
    likelihood = FisherNetLikelihood(model, np.zeros((1, 12)))
    mu = np.array([[0.4, -0.7]])
    position = ift.MultiField.from_dict(
        {"latent": ift.makeField(likelihood.domain["latent"], mu)})
    hamiltonian = ift.StandardHamiltonian(
        likelihood, ift.AbsDeltaEnergyController(1e-14, iteration_limit=50, name=None),
        **hamiltonian_options(likelihood.domain))
    metric = hamiltonian(ift.Linearization.make_var(position, want_metric=True)).metric
    n = 3000
    nifty_draws = np.stack([values(metric.draw_sample(from_inverse=True)["latent"])[0]
                            for _ in range(n)])
    with torch.no_grad():
        torch_draws = model.sample_latent(torch.tensor(mu), n_samples=n,
                                          generator=torch.Generator().manual_seed(0))[:, 0]
        cov = model.posterior_covariance(torch.tensor(mu))[0].numpy()
    assert np.abs(cov[0, 1]) / np.sqrt(cov[0, 0] * cov[1, 1]) > 0.3  # truly correlated
    # n = 3000: relative sampling error of each entry ~sqrt(2/n) = 2.6%; allow 10%.
    for draws in (nifty_draws, torch_draws.numpy()):
        emp = np.cov(draws.T)
        assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < 0.10


def test_map_matches_scipy_minimum_of_the_same_posterior():
    """MAP through optimize_kl agrees with an independent optimiser of the same energy.

    The decoder is ReLU, so the energy has kinks; where a minimum sits on one, Newton-CG's
    common line search converges to the energy tolerance, not to a small gradient. The
    tolerance is therefore stated in posterior standard deviations (Mahalanobis distance
    under the Laplace covariance): 0.05 sigma is far below any use of the point estimate.
    """
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-1.0)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        truth = torch.from_numpy(rng.normal(size=(2, 2)))
        data = (model.decoder(truth) + 0.3 * torch.from_numpy(rng.normal(size=(2, 12)))).numpy()
    result = latent_posterior(model, data, method="map", total_iterations=3)
    precision = torch.exp(-model.xi_n).item()
    for b in range(2):
        def energy(z):
            with torch.no_grad():
                residual = data[b] - model.decoder(torch.tensor(z)[None])[0].numpy()
            return 0.5 * z @ z + 0.5 * precision * residual @ residual

        # Nelder-Mead needs no gradient, so the kinks do not stop it.
        best = optimize.minimize(energy, result.mean[b] + 0.3, method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 10000})
        assert best.success
        assert energy(result.mean[b]) - best.fun < 1e-3
        offset = result.mean[b] - best.x
        assert offset @ np.linalg.solve(result.covariance[b], offset) < 0.05 ** 2
        assert np.all(np.linalg.eigvalsh(result.covariance[b]) > 0)
    # The Laplace covariance is the inverse FisherNet metric at the MAP point.
    np.testing.assert_allclose(
        result.covariance,
        torch.linalg.inv(model.metric(torch.tensor(result.mean))).detach().numpy(),
        rtol=1e-8)


def test_inferred_noise_level_recovers_the_true_one():
    model = random_fishernet(latent_dim=2, data_dim=12, xi=0.0)  # the model's own N is wrong
    rng = np.random.default_rng(5)
    true_variance = 0.05
    with torch.no_grad():
        truth = torch.from_numpy(rng.normal(size=(20, 2)))
        data = (model.decoder(truth) + np.sqrt(true_variance)
                * torch.from_numpy(rng.normal(size=(20, 12)))).numpy()
    likelihood = FisherNetLikelihood(model, data, infer_noise=True)
    assert set(likelihood.domain.keys()) == {"latent", "xi_noise"}
    ift.extra.check_operator(likelihood, 0.1 * ift.from_random(likelihood.domain), ntries=3)
    result = latent_posterior(model, data, method="mgvi", infer_noise=True, n_samples=5,
                              total_iterations=4)
    # 240 residuals with 40 latents fitted: log(variance) is known to ~sqrt(2 / 200) = 0.1;
    # 0.35 allows 3.5 sigma.
    assert abs(np.log(result.noise_variance) - np.log(true_variance)) < 0.35
    assert np.all(np.isfinite(result.mean)) and result.covariance.shape == (20, 2, 2)


def test_bad_input_to_the_likelihood():
    model = random_fishernet(latent_dim=2, data_dim=12)
    with pytest.raises(ValueError, match=r"shape \(B, 12\).*got \(3, 11\)"):
        FisherNetLikelihood(model, np.zeros((3, 11)))
    bad = np.zeros((3, 12))
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite values in 1 of 3 rows"):
        FisherNetLikelihood(model, bad)
    mask = ift.DiagonalOperator(ift.makeField(ift.UnstructuredDomain((3, 10)), np.ones((3, 10))))
    with pytest.raises(ValueError, match=r"response's domain is .*3, 10.*decoder's target is "
                                         r".*3, 12"):
        FisherNetLikelihood(model, np.zeros((3, 10)), response=mask)
    with pytest.raises(ValueError, match="method"):
        latent_posterior(model, np.zeros((1, 12)), method="hmc")
    model.train()
    with pytest.raises(RuntimeError, match="training mode.*model.eval"):
        FisherNetLikelihood(model, np.zeros((1, 12)))


def _position(likelihood, latents, noise=None):
    fields = {"latent": ift.makeField(likelihood.domain["latent"], latents)}
    if noise is not None:
        fields["xi_noise"] = ift.full(likelihood.domain["xi_noise"], noise)
    return ift.MultiField.from_dict(fields)


@pytest.mark.parametrize("infer_noise", [False, True])
def test_block_preconditioner_is_the_exact_metric_of_independent_data(infer_noise):
    model = random_fishernet(latent_dim=3, data_dim=12, xi=-1.0, gain=3.0)
    rng = np.random.default_rng(4)
    likelihood = FisherNetLikelihood(model, rng.uniform(size=(6, 12)), infer_noise=infer_noise)
    position = _position(likelihood, rng.normal(size=(6, 3)), 0.3 if infer_noise else None)
    metric = ift.StandardHamiltonian(likelihood)(
        ift.Linearization.make_var(position, want_metric=True)).metric
    preconditioner = BlockPreconditioner(metric)
    ift.extra.check_linear_operator(preconditioner)
    x = ift.from_random(likelihood.domain)
    # Exact blocks: P^-1 M x = x, i.e. no coupling between data (or latents and noise)
    # that the blocks miss.
    for key, value in preconditioner.inverse(metric(x)).items():
        np.testing.assert_allclose(values(value), values(x[key]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(values(preconditioner(x)["latent"]), values(metric(x)["latent"]),
                               rtol=1e-10)


def test_preconditioned_draws_have_the_inverse_metric_covariance_in_few_iterations():
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-2.0, gain=5.0)
    rng = np.random.default_rng(5)
    batch = 8
    likelihood = FisherNetLikelihood(model, np.zeros((batch, 12)))
    mu = rng.normal(size=(batch, 2))
    # Two CG iterations for a 16-dimensional system: plain CG cannot converge in them, the
    # preconditioned one is exact after the first.
    controller = ift.AbsDeltaEnergyController(1e-14, iteration_limit=2, name=None)
    metric = PreconditionedHamiltonian(likelihood, controller,
                                       **hamiltonian_options(likelihood.domain))(
        ift.Linearization.make_var(_position(likelihood, mu), want_metric=True)).metric
    n = 2000
    draws = np.stack([values(metric.draw_sample(from_inverse=True)["latent"]) for _ in range(n)])
    with torch.no_grad():
        cov = model.posterior_covariance(torch.tensor(mu)).numpy()
    # n = 2000: relative error of each entry ~sqrt(2/n) = 3%; allow 10% (Frobenius).
    for b in range(batch):
        emp = np.cov(draws[:, b].T)
        assert np.linalg.norm(emp - cov[b]) / np.linalg.norm(cov[b]) < 0.10


def test_blockwise_mgvi_equals_optimize_kl():
    """Same seed, same samples: the blockwise path targets optimize_kl's result.

    Its Newton steps differ from Newton-CG's, so the two agree to the minimisers' precision:
    converged tightly (1e-8 nats per datum), the means differ by < 0.02 posterior sigma
    (measured 0.007; the ReLU decoder's kinks keep Newton-CG from converging to a point).
    """
    model = random_fishernet(latent_dim=2, data_dim=12, xi=-1.0)
    rng = np.random.default_rng(6)
    data = rng.uniform(size=(4, 12))
    runs = [latent_posterior(model, data, n_samples=3, total_iterations=2,
                             sampling_iterations=200, tolerance=1e-8, newton_iterations=100,
                             blockwise=flag)
            for flag in (True, False)]
    sigma = np.sqrt(np.diagonal(runs[1].covariance, axis1=1, axis2=2))
    assert np.max(np.abs(runs[0].mean - runs[1].mean) / sigma) < 0.02
    # Measured: 1e-3 relative on nifty8, up to 1.8e-2 on nifty.cl (its Newton-CG stops
    # elsewhere between the kinks); the samples themselves are the same draws.
    np.testing.assert_allclose(runs[0].covariance, runs[1].covariance, rtol=3e-2, atol=1e-6)


def test_torch_operator_caches_linearizations():
    calls = []
    weight = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def function(x):
        calls.append(1)
        return torch.tanh(x @ weight)

    dom, tgt = ift.UnstructuredDomain((2, 3)), ift.UnstructuredDomain((2, 5))
    op = TorchOperator(dom, tgt, function, cache_size=2)
    points = [ift.from_random(dom) for _ in range(3)]
    first = op(ift.Linearization.make_var(points[0]))
    again = op(ift.Linearization.make_var(points[0]))
    op(points[0])  # a plain evaluation at a cached point is served from the cache as well
    assert len(calls) == 1
    np.testing.assert_array_equal(values(first.val), values(again.val))
    tangent = ift.from_random(dom)
    np.testing.assert_array_equal(values(first.jac(tangent)), values(again.jac(tangent)))
    calls.clear()  # (each forward-mode Jacobian application calls the function)
    op(ift.Linearization.make_var(points[1]))
    op(ift.Linearization.make_var(points[2]))  # evicts points[0] (cache_size=2)
    op(ift.Linearization.make_var(points[0]))
    assert len(calls) == 3
    uncached = TorchOperator(dom, tgt, function, cache_size=0)
    calls.clear()
    uncached(ift.Linearization.make_var(points[0]))
    uncached(ift.Linearization.make_var(points[0]))
    assert len(calls) == 2
    with pytest.raises(ValueError, match="cache_size"):
        TorchOperator(dom, tgt, function, cache_size=-1)


def test_convolutional_decoder_operator_is_exact():
    """A decoder without a fused Jacobian (the ConvVAE's) is linearized by forward-mode
    autodiff, its last convolution summed tap by tap: NIFTy's checks pass in float64, and its
    values and Jacobian are those of torch's own convolutions."""
    import nifty_fishernet as nf
    from nifty_fishernet.nifty import decoder_operator

    torch.manual_seed(0)
    model = nf.ConvVAE(2).double().eval()
    op = decoder_operator(model, 2)
    ift.extra.check_operator(op, ift.from_random(op.domain), ntries=3)
    z = np.random.default_rng(3).normal(size=(2, 2))
    position = ift.MultiField.from_dict({"latent": ift.makeField(op.domain["latent"], z)})
    with torch.no_grad():
        np.testing.assert_allclose(values(op(position)),
                                   model.decoder(torch.tensor(z)).numpy(), rtol=1e-12,
                                   atol=1e-14)
    linear = op(ift.Linearization.make_var(position)).jac
    for row in range(2):
        reference = torch.autograd.functional.jacobian(
            lambda zi: model.decoder(zi.unsqueeze(0)).squeeze(0), torch.tensor(z[row]))
        for axis in range(2):
            tangent = np.zeros((2, 2))
            tangent[row, axis] = 1.0
            applied = values(linear(ift.MultiField.from_dict(
                {"latent": ift.makeField(op.domain["latent"], tangent)})))
            np.testing.assert_allclose(np.reshape(applied, (2, -1))[row],
                                       reference[:, axis].numpy(), rtol=1e-10, atol=1e-12)


def test_a_float32_jacobian_keeps_the_values_exact_and_the_posterior_to_its_rounding():
    """``jacobian_dtype=torch.float32``: the operator's values (and so every energy NIFTy's
    minimisers compare) are the float64 ones bit for bit; the Jacobian is torch's float64
    Jacobian to float32 rounding, its adjoint exactly its transpose; MGVI's posterior moves
    by rounding only."""
    import nifty_fishernet as nf
    from nifty_fishernet.nifty import decoder_operator

    torch.manual_seed(0)
    model = nf.ConvVAE(3).eval()  # float32 weights, as trained
    batch = 3
    exact, rounded = decoder_operator(model, batch), decoder_operator(
        model, batch, jacobian_dtype="float32")
    assert decoder_operator(model, batch, jacobian_dtype=torch.float64).domain == exact.domain
    z = np.random.default_rng(3).normal(size=(batch, 3))
    position = ift.MultiField.from_dict({"latent": ift.makeField(exact.domain["latent"], z)})
    assert np.array_equal(values(rounded(position)), values(exact(position)))
    lin = rounded(ift.Linearization.make_var(position))
    assert np.array_equal(values(lin.val), values(exact(position)))
    ift.extra.check_linear_operator(lin.jac, np.float64, np.float64)
    decoder = copy.deepcopy(model.decoder).double()
    for row in range(batch):
        reference = torch.autograd.functional.jacobian(
            lambda zi: decoder(zi.unsqueeze(0)).squeeze(0), torch.tensor(z[row])).numpy()
        for axis in range(3):
            tangent = np.zeros((batch, 3))
            tangent[row, axis] = 1.0
            applied = np.reshape(values(lin.jac(ift.MultiField.from_dict(
                {"latent": ift.makeField(exact.domain["latent"], tangent)}))), (batch, -1))
            error = np.abs(applied[row] - reference[:, axis]).max()
            assert 0 < error < 1e-5 * np.abs(reference).max()  # float32 rounding, not none
    images = model.decode(torch.tensor(z, dtype=torch.float32)).detach().numpy()
    options = dict(method="mgvi", n_samples=4, total_iterations=2)
    full, fast = (latent_posterior(model, images, **options),
                  latent_posterior(model, images, jacobian_dtype=torch.float32, **options))
    sigma = np.sqrt(np.diagonal(full.covariance, axis1=-2, axis2=-1))
    assert np.abs(fast.mean - full.mean).max() < 1e-3 * sigma.min()
    assert np.allclose(fast.covariance, full.covariance, rtol=1e-3, atol=1e-3 * sigma.min() ** 2)
    for bad, message in ((torch.int32, "floating torch dtype"), ("float33", "not a torch dtype"),
                         (3, "floating torch dtype")):
        with pytest.raises(ValueError, match=message):
            decoder_operator(model, batch, jacobian_dtype=bad)
