"""A trained decoder inside bigger NIFTy models: image domains, noise, further keys, images."""

import numpy as np
import pytest
import torch

import nifty_fishernet as nf
from conftest import random_fishernet
from nifty_fishernet.nifty import (LIKELIHOOD_NAME, FisherNetLikelihood,
                                   MarginalInverseCovariance, TorchOperator, decoder_operator,
                                   decoder_target, default_minimizers, encoder_position,
                                   gaussian_blur, ift, infer_latents, latent_posterior,
                                   noise_inverse_covariance, pixel_mask)
from nifty_fishernet.nifty.compat import values

pytestmark = pytest.mark.nifty  # CI runs these on nifty8 and on nifty.cl

IMAGE = (3, 4)


@pytest.fixture(autouse=True)
def nifty_seed():
    ift.random.push_sseq_from_seed(42)
    yield
    ift.random.pop_sseq()


def _model(**kw):
    return random_fishernet(latent_dim=2, data_dim=12, xi=-1.5, **kw)


def test_decoder_operator_on_images_passes_check_operator():
    model = _model()
    op = decoder_operator(model, 3, image_shape=IMAGE)
    target = op.target
    assert isinstance(target[0], ift.UnstructuredDomain) and target[0].shape == (3,)
    assert isinstance(target[1], ift.RGSpace) and target[1].shape == IMAGE
    assert np.allclose(target[1].distances, 1.0)  # lengths in pixels
    ift.extra.check_operator(op, ift.from_random(op.domain), ntries=5)
    flat = decoder_operator(model, 3)
    position = ift.from_random(op.domain)
    np.testing.assert_array_equal(values(op(position)).reshape(3, 12), values(flat(position)))


def _likelihood_forms(model, rng):
    """Likelihoods of every new form, with their data."""
    batch = 2
    target = decoder_target(batch, 12, IMAGE)
    smoothing = ift.HarmonicSmoothingOperator(target, sigma=0.7, space=1)
    blur = gaussian_blur(batch, IMAGE, sigma=0.8, on_images=True)
    images = rng.uniform(size=(batch,) + IMAGE)
    per_pixel = rng.uniform(0.05, 0.2, size=(batch,) + IMAGE)
    operator_noise = ift.makeOp(ift.makeField(target, 1 / per_pixel), sampling_dtype=np.float64)
    return {
        "images": FisherNetLikelihood(model, images, image_shape=IMAGE),
        "per-pixel noise": FisherNetLikelihood(model, images, image_shape=IMAGE,
                                               noise=per_pixel, misfit=False),
        "NIFTy inverse covariance": FisherNetLikelihood(model, images, image_shape=IMAGE,
                                                        noise=operator_noise),
        "smoothing response + noise": FisherNetLikelihood(
            model, images, response=smoothing, noise=0.05, image_shape=IMAGE),
        "blur + per-pixel noise": FisherNetLikelihood(
            model, images, response=blur, noise=per_pixel, image_shape=IMAGE),
        "mixing response + noise (conjugate gradients)": FisherNetLikelihood(
            model, rng.uniform(size=7), response=_Mixing(batch), noise=0.05),
        "mask + noise": FisherNetLikelihood(
            model, images[:, :2].reshape(-1), noise=0.01, image_shape=IMAGE,
            response=pixel_mask(np.arange(12).reshape(IMAGE) >= 8, batch=batch,
                                image_shape=IMAGE)),
    }


def test_every_likelihood_form_passes_check_operator():
    model = _model()
    for name, likelihood in _likelihood_forms(model, np.random.default_rng(0)).items():
        assert likelihood.name == LIKELIHOOD_NAME, name
        ift.extra.check_operator(likelihood, ift.from_random(likelihood.domain), ntries=3)


def _dense(operator):
    """The matrix of a linear operator on a small flat domain, by unit vectors."""
    n = operator.domain.size
    columns = []
    for i in range(n):
        unit = np.zeros(n)
        unit[i] = 1.0
        columns.append(values(operator(ift.makeField(operator.domain,
                                                       unit.reshape(operator.domain.shape))))
                       .ravel())
    return np.stack(columns, axis=1)


class _Mixing(ift.LinearOperator):
    """A dense random response from the flat decoder target to ``rows`` values (no batch
    axis, so the covariance is not per image: the conjugate-gradient path)."""

    def __init__(self, batch=1, rows=7):
        self._domain = decoder_target(batch, 12)
        self._target = ift.makeDomain(ift.UnstructuredDomain(rows))
        self._matrix = np.random.default_rng(5).normal(size=(rows, batch * 12)) / 4
        self._capability = self.TIMES | self.ADJOINT_TIMES

    def apply(self, x, mode):
        self._check_input(x, mode)
        if mode == self.TIMES:
            return ift.makeField(self._target, self._matrix @ values(x).ravel())
        return ift.makeField(self._domain, (self._matrix.T @ values(x)).reshape(
            self._domain.shape))


@pytest.mark.parametrize("kind", ["per-image blur", "mixing matrix"])
def test_marginal_covariance_is_response_misfit_plus_noise(kind):
    """C^{-1} of C = R s R^T + N: its matrix, its draws' covariance and its square root,
    exact per image (blur) or by conjugate gradients and Lanczos (mixing)."""
    response = gaussian_blur(1, IMAGE, sigma=0.8) if kind == "per-image blur" else _Mixing()
    noise = np.random.default_rng(1).uniform(0.02, 0.1, size=response.target.shape)
    inverse = noise_inverse_covariance(response.target, noise, misfit=0.3, response=response)
    assert isinstance(inverse, MarginalInverseCovariance)
    # NIFTy's own check of get_sqrt demands 1e-15, beyond iterative solvers (CG and Lanczos
    # agree to ~1e-13 here); chained with a scaling, the operator is checked without it, and the
    # square root is checked against the dense C^{-1} below.
    ift.extra.check_linear_operator(inverse @ ift.ScalingOperator(inverse.domain, 2.0),
                                    atol=1e-10, rtol=1e-10)
    matrix = _dense(response)
    covariance = 0.3 * matrix @ matrix.T + np.diag(noise.ravel())
    np.testing.assert_allclose(_dense(inverse), np.linalg.inv(covariance), rtol=1e-8,
                               atol=1e-8)
    root = inverse.get_sqrt()
    x = ift.from_random(inverse.domain)
    np.testing.assert_allclose(values(root.adjoint(root(x))), values(inverse(x)), rtol=1e-8)
    np.testing.assert_allclose(_dense(root) @ _dense(root), np.linalg.inv(covariance),
                               rtol=1e-8, atol=1e-8)
    # Draws from C^{-1}: n = 4000, entries' relative error ~ sqrt(2 / n) = 2 %; allow 8 %
    # (Frobenius, relative to the whole matrix).
    draws = np.stack([values(inverse.draw_sample()).ravel() for _ in range(4000)])
    target = np.linalg.inv(covariance)
    assert np.linalg.norm(np.cov(draws.T) - target) < 0.08 * np.linalg.norm(target)


def test_misfit_alone_through_a_blur_is_refused():
    blur = gaussian_blur(1, IMAGE, sigma=0.8)
    with pytest.raises(ValueError, match="R R\\^T != 1.*noise="):
        noise_inverse_covariance(blur.target, None, misfit=0.3, response=blur)
    mask = pixel_mask(np.arange(12) >= 6, batch=1)  # R R^T = 1: the misfit alone is fine
    inverse = noise_inverse_covariance(mask.target, None, misfit=0.3, response=mask)
    np.testing.assert_allclose(_dense(inverse), np.eye(6) / 0.3)


def test_image_data_fields_and_mismatched_domains():
    model = _model()
    images = np.random.default_rng(2).uniform(size=(3,) + IMAGE)
    reference = FisherNetLikelihood(model, images.reshape(3, 12))
    position = ift.from_random(reference.domain)
    for data in (images, images.reshape(3, 12),
                 ift.makeField(decoder_target(3, 12, IMAGE), images)):
        likelihood = FisherNetLikelihood(model, data, image_shape=IMAGE)
        assert likelihood(position).val == pytest.approx(reference(position).val, rel=1e-12)
    flat_mask = pixel_mask(np.arange(12) >= 8, batch=3)
    with pytest.raises(ValueError, match=r"response's domain is .*UnstructuredDomain.*"
                                         r"decoder's target is .*RGSpace"):
        FisherNetLikelihood(model, np.zeros(12), response=flat_mask, image_shape=IMAGE)
    other = ift.makeDomain((ift.UnstructuredDomain(3), ift.RGSpace(IMAGE)))  # distances 1/n
    smoothing = ift.HarmonicSmoothingOperator(other, sigma=0.1, space=1)
    with pytest.raises(ValueError, match="response's domain is .*decoder's target is"):
        FisherNetLikelihood(model, images, response=smoothing, noise=0.1, image_shape=IMAGE)
    with pytest.raises(ValueError, match=r"image_shape \(5, 5\) does not hold .* 12"):
        FisherNetLikelihood(model, images, image_shape=(5, 5))


@pytest.mark.parametrize("batch", [0, -2, 2.5, True, "3"])
def test_batch_must_be_a_positive_integer(batch):
    with pytest.raises(ValueError, match="positive integer"):
        decoder_operator(_model(), batch)


def test_bad_noise_and_iterations():
    model = _model()
    data = np.zeros((2, 12))
    with pytest.raises(ValueError, match=r"noise variance has shape \(3,\)"):
        FisherNetLikelihood(model, data, noise=np.ones(3))
    with pytest.raises(ValueError, match="positive and finite"):
        FisherNetLikelihood(model, data, noise=-1.0)
    unsampled = ift.ScalingOperator(decoder_target(2, 12), 2.0)
    with pytest.raises(ValueError, match="sampling dtype"):
        FisherNetLikelihood(model, data, noise=unsampled)
    with pytest.raises(ValueError, match="total_iterations must be an integer >= 1"):
        latent_posterior(model, data, total_iterations=0)
    likelihood = FisherNetLikelihood(model, data)
    with pytest.raises(ValueError, match="initial position has keys \\['sky'\\]"):
        infer_latents(likelihood, {"sky": np.zeros(3)}, "map")
    with pytest.raises(ValueError, match="MGVI has none"):
        infer_latents(likelihood, None, "mgvi", nonlinear_sampling_minimizer=ift.NewtonCG(
            ift.AbsDeltaEnergyController(1e-3, iteration_limit=2)))


def _with_background(decoder, rng, batch=3):
    """d = f(z) + 0.3 b + n: a decoder component plus a white background (key "sky")."""
    target = decoder_target(batch, 12)
    if isinstance(decoder, nf.LatentModel):
        decoder = decoder_operator(decoder, batch)
    signal = decoder + 0.3 * ift.FieldAdapter(target, "sky")
    truth = ift.from_random(signal.domain)
    data = values(signal(truth)) + 0.1 * rng.normal(size=target.shape)
    energy = ift.GaussianEnergy(ift.makeField(target, data),
                                ift.ScalingOperator(target, 0.01, np.float64).inverse)
    return energy @ signal


def _smooth_model_with_background():
    """A tanh decoder (B = 3, d = 2, 12 pixels) plus a background field under key "sky"."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, 12)).double().eval()
    decoder = TorchOperator(ift.UnstructuredDomain((3, 2)), decoder_target(3, 12),
                            network).ducktape("latent")
    return _with_background(decoder, np.random.default_rng(3))


def test_further_keys_agree_with_optimize_kl():
    """The blockwise path (block-preconditioned CGs on the latent key) reaches what NIFTy's
    own optimize_kl reaches on a model with a further part, from the same start and seed.
    A smooth (tanh) decoder, so that both minimisers converge to one point: a ReLU decoder's
    kinks stop NIFTy's line searches at different places."""
    likelihood = _smooth_model_with_background()
    start = ift.MultiField.from_dict({"latent": ift.full(likelihood.domain["latent"], 0.1),
                                      "sky": ift.full(likelihood.domain["sky"], 0.0)})
    ours = infer_latents(likelihood, start, "mgvi", n_samples=3, total_iterations=2,
                         **default_minimizers("mgvi", 3, tolerance=1e-9, newton_iterations=60,
                                              sampling_iterations=300))
    controllers = default_minimizers("mgvi", 3, tolerance=1e-9, newton_iterations=60,
                                     sampling_iterations=300, blockwise=False)
    with ift.random.Context(0):
        samples = ift.optimize_kl(likelihood, 2, 3, controllers["kl_minimizer"],
                                  controllers["sampling_iteration_controller"],
                                  nonlinear_sampling_minimizer=None, initial_position=start,
                                  output_directory=None, plot_energy_history=False,
                                  plot_minisanity_history=False)
    for key in ("latent", "sky"):
        reference, variance = samples.sample_stat(ift.FieldAdapter(likelihood.domain[key],
                                                                   key))
        mine, _ = ours.samples.sample_stat(ift.FieldAdapter(likelihood.domain[key], key))
        error = np.abs(values(mine) - values(reference)) / np.sqrt(values(variance))
        assert error.max() < 1e-3, (key, error.max())  # measured 8e-6 sigma


def test_kl_metric_linearised_once_equals_nifty_s():
    """The sampled KL whose metric is linearised once per position applies the same metric
    as NIFTy's, which re-linearises at every application (float64: to rounding)."""
    from nifty_fishernet.nifty.blocks import PreconditionedHamiltonian
    from nifty_fishernet.nifty.compat import hamiltonian_options
    from nifty_fishernet.nifty.vi import LinearizedOnceKL

    likelihood = _smooth_model_with_background()
    hamiltonian = PreconditionedHamiltonian(likelihood, ift.GradientNormController(
        iteration_limit=50), **hamiltonian_options(likelihood.domain))
    position = ift.from_random(likelihood.domain)
    with ift.random.Context(5):
        energy = ift.SampledKLEnergy(position, hamiltonian, 2, None, mirror_samples=True)
    once = LinearizedOnceKL(energy, hamiltonian)
    assert once.value == energy.value
    for _ in range(3):
        probe = ift.from_random(likelihood.domain)
        expected, got = energy.metric(probe), once.metric(probe)
        assert (got - expected).norm() <= 1e-12 * expected.norm()
    moved = once.at(position + 0.1 * ift.from_random(likelihood.domain))
    assert isinstance(moved, LinearizedOnceKL) and moved.value != once.value


def test_encoder_position_is_the_encoder_mean_as_a_multifield():
    model = _model()
    images = np.random.default_rng(4).uniform(size=(3, 12))
    likelihood = _with_background(model, np.random.default_rng(4))
    position = encoder_position(model, images, domain=likelihood.domain)
    assert position.domain == likelihood.domain
    with torch.no_grad():
        expected = model.encode(torch.tensor(images)).numpy()
    np.testing.assert_allclose(values(position["latent"]), expected)
    assert not values(position["sky"]).any()
    with pytest.raises(ValueError, match="images of 12 pixels"):
        encoder_position(model, np.zeros((3, 5)))


def test_predictive_std_matches_the_error_on_hidden_pixels(fmnist_small):
    """Inpainting the lower half of real test images: the predictive std with the model's
    misfit is within a factor 1.5 of the actual RMS error there (without it, far below)."""
    train_x, test_x, _ = fmnist_small
    torch.manual_seed(0)
    model = nf.FisherNet(5)
    nf.train(model, train_x, test_x[:200], epochs=8, lr=1e-3, noise_lr=3e-2, seed=0,
             progress=False)
    model.eval()
    batch, image = 16, (28, 28)
    truth = test_x[200:200 + batch].astype(np.float64).reshape((batch,) + image)
    hidden = np.zeros(image, dtype=bool)
    hidden[14:] = True
    mask = pixel_mask(hidden, batch=batch, image_shape=image)
    rng = np.random.default_rng(0)
    data = values(mask(ift.makeField(mask.domain, truth))) + 0.05 * rng.normal(
        size=mask.target.shape)
    result = latent_posterior(model, data, "mgvi", n_samples=5, response=mask,
                              noise=0.05 ** 2, total_iterations=3, image_shape=image)
    mean, std = result.predictive()
    assert mean.shape == std.shape == (batch,) + image
    assert result.images().shape == (10, batch) + image
    where = np.broadcast_to(hidden, mean.shape)
    rms_error = np.sqrt(np.mean((mean - truth)[where] ** 2))
    rms_std = np.sqrt(np.mean(std[where] ** 2))
    assert 1 / 1.5 < rms_std / rms_error < 1.5, (rms_std, rms_error)
    _, latent_only = result.predictive(include_noise=False)
    assert np.sqrt(np.mean(latent_only[where] ** 2)) < rms_error / 1.5
