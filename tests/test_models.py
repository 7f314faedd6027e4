"""Losses by hand, gradients, the shared interface and input validation."""

import numpy as np
import pytest
import torch

import nifty_fishernet as nf
from conftest import random_fishernet


def test_fishernet_loss_equals_hand_computation_of_eq25():
    model = random_fishernet(latent_dim=2, data_dim=6, hidden=5, layers=1, xi=0.3)
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps, eta = model.draw_noise(1, 4, generator=torch.Generator().manual_seed(1))
    p = 100
    loss = model.loss(x, n_data=p, noise=(eps, eta))

    xi = model.xi_n.item()
    total = 0.0
    for i in range(4):
        mu = model.encoder(x[i:i + 1])[0].detach()
        jac = torch.autograd.functional.jacobian(lambda z: model.decoder(z[None])[0], mu)
        metric = np.exp(-xi) * jac.T @ jac + torch.eye(2, dtype=torch.float64)
        theta = jac.T @ (np.exp(-xi / 2) * eps[0, i]) + eta[0, i]      # Eq. 28-30
        z = mu + torch.linalg.solve(metric, theta)                     # Eq. 31
        residual = x[i] - model.decoder(z[None])[0]
        total += 0.5 * (z @ z + xi ** 2 / p + 6 * xi + np.exp(-xi) * residual @ residual)
    assert loss.item() == pytest.approx(total.item() / 4, rel=1e-12)


def _variant(**options):
    """The conftest FisherNet with loss options (same weights for every variant)."""
    base = random_fishernet(latent_dim=2, data_dim=6, hidden=5, layers=1, xi=-1.0)
    model = nf.FisherNet(2, data_dim=6, hidden=5, layers=1, **options).double().eval()
    model.load_state_dict(base.state_dict())
    return model


def test_fishernet_loss_variants_equal_hand_computation():
    """S = 3 samples average the per-sample terms; log_det adds 1/2 ln|M(mu)| (Eq. 24);
    map_weight adds the encoder's M-distance to the MAP of the datum's own posterior."""
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = _variant()
    eps, eta = plain.draw_noise(3, 4, generator=torch.Generator().manual_seed(1))
    per_sample = [plain.loss(x, n_data=50, noise=(eps[s:s + 1], eta[s:s + 1])).item()
                  for s in range(3)]
    three = _variant(n_samples=3)
    assert three.loss(x, n_data=50, noise=(eps, eta)).item() == pytest.approx(
        np.mean(per_sample), rel=1e-12)

    noise = (eps[:1], eta[:1])
    with torch.no_grad():
        mu = plain.encoder(x)
    jac = [torch.autograd.functional.jacobian(lambda z: plain.decoder(z[None])[0], m)
           for m in mu]
    metrics = [np.exp(1.0) * j.T @ j + torch.eye(2, dtype=torch.float64) for j in jac]
    log_det = np.mean([0.5 * torch.logdet(m).item() for m in metrics])
    with_det = _variant(log_det=True)
    assert with_det.loss(x, n_data=50, noise=noise).item() == pytest.approx(
        per_sample[0] + log_det, rel=1e-12)
    assert with_det.config["log_det"] is True and "log_det" not in plain.config

    pulled = _variant(map_weight=2.0, map_steps=4)
    found = nf.fisher.newton_map(plain.decoder, x, mu, plain.noise.precision.detach(),
                                 max_steps=4, tolerance=0.0)
    gap = mu - found.z
    term = np.mean([(g @ m @ g).item() for g, m in zip(gap, found.metric)])
    assert pulled.loss(x, n_data=50, noise=noise).item() == pytest.approx(
        per_sample[0] + term, rel=1e-10)
    # the pull moves the encoder only: the decoder's gradients are the paper loss's
    for model in (plain, pulled):
        model.zero_grad()
        model.loss(x, n_data=50, noise=noise).backward()
    for a, b in zip(plain.decoder.parameters(), pulled.decoder.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert any(not torch.allclose(a.grad, b.grad)
               for a, b in zip(plain.encoder.parameters(), pulled.encoder.parameters()))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        nf.FisherNet(2, n_samples=0)
    with pytest.raises(ValueError, match="map_weight must be >= 0"):
        nf.FisherNet(2, map_weight=-1)


def test_fishernet_gradients_exist_for_both_settings_and_differ():
    model = random_fishernet(latent_dim=2, data_dim=6, hidden=5, layers=1, xi=-1.0)
    x = torch.rand(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = model.draw_noise(1, 8, generator=torch.Generator().manual_seed(2))
    grads, values = {}, {}
    for setting in (False, True):
        model.zero_grad()
        loss = model.loss(x, noise=noise, differentiate_metric=setting)
        loss.backward()
        values[setting] = loss.item()
        grads[setting] = {k: v.grad.clone() for k, v in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads[setting].values())
    # same noise, same draw, same value; but the metric-path gradient is extra
    assert values[False] == pytest.approx(values[True], rel=1e-12)
    key = "decoder.linears.0.weight"
    diff = torch.linalg.norm(grads[True][key] - grads[False][key])
    assert diff > 1e-3 * torch.linalg.norm(grads[False][key])
    # the encoder gradient flows through mu in both settings
    assert torch.linalg.norm(grads[False]["encoder.linears.0.weight"]) > 0


def test_differentiated_loss_gradient_matches_finite_differences():
    model = random_fishernet(latent_dim=2, data_dim=6, hidden=5, layers=1, xi=-1.0)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = model.draw_noise(1, 3, generator=torch.Generator().manual_seed(2))
    weight = model.decoder.linears[0].weight
    model.zero_grad()
    model.loss(x, noise=noise, differentiate_metric=True).backward()
    analytic = weight.grad[1, 0].item()
    h = 1e-6
    with torch.no_grad():
        weight[1, 0] += h
        up = model.loss(x, noise=noise, differentiate_metric=True).item()
        weight[1, 0] -= 2 * h
        down = model.loss(x, noise=noise, differentiate_metric=True).item()
    assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def _vae_draw_by_hand(model, x, seed=5):
    """The encoder's ``(mu, logvar)`` and the reparametrised draw ``z`` that ``model.loss``
    makes from ``torch.Generator().manual_seed(seed)``, plus the KL term per datum."""
    mu, logvar = model.encode_distribution(x)
    eps = torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)[0]
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    return mu + torch.exp(0.5 * logvar) * eps, kl


def test_vae_loss_equals_hand_computation():
    torch.manual_seed(0)
    for learn in (False, True):
        model = nf.VAE(2, data_dim=6, hidden=5, layers=1, learn_noise=learn).double()
        with torch.no_grad():
            model.noise.xi.fill_(0.4 if learn else 0.0)
        x = torch.rand(3, 6, dtype=torch.float64)
        loss = model.loss(x, n_data=50, generator=torch.Generator().manual_seed(5))
        z, kl = _vae_draw_by_hand(model, x)
        xi = 0.4 if learn else 0.0
        rec = 0.5 * (np.exp(-xi) * ((x - model.decoder(z)) ** 2).sum(1) + 6 * xi)
        expected = (rec + kl).mean() + (0.5 * xi ** 2 / 50 if learn else 0.0)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_vae_fixed_noise_variance_half_is_the_sum_of_squared_errors(tmp_path):
    """noise_variance=0.5 (the Keras convention): the likelihood term is the plain sum of
    squared errors plus a constant; the setting survives a checkpoint."""
    torch.manual_seed(0)
    model = nf.VAE(2, data_dim=6, hidden=5, layers=1, noise_variance=0.5).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    loss = model.loss(x, n_data=50, generator=torch.Generator().manual_seed(5))
    z, kl = _vae_draw_by_hand(model, x)
    sse = ((x - model.decoder(z)) ** 2).sum(1)
    expected = (sse + 3 * np.log(0.5) + kl).mean()
    # xi_N = log 0.5 is stored as a float32 buffer (like every parameter before .double())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-7)
    assert model.noise_std == pytest.approx(0.5 ** 0.5)
    assert model.config["noise_variance"] == 0.5 and "noise_variance" not in nf.VAE(2).config
    model.save(tmp_path / "vae.h5")
    assert nf.load(tmp_path / "vae.h5").noise_std == pytest.approx(0.5 ** 0.5)
    assert nf.ConvVAE(2, noise_variance=0.5).noise_std == pytest.approx(0.5 ** 0.5)
    with pytest.raises(ValueError, match="positive number"):
        nf.VAE(2, noise_variance=0.0)
    with pytest.raises(ValueError, match="exclude each other"):
        nf.VAE(2, learn_noise=True, noise_variance=0.5)


@pytest.mark.parametrize("make", [lambda: nf.FisherNet(3), lambda: nf.VAE(3),
                                  lambda: nf.VAE(3, learn_noise=True),
                                  lambda: nf.ConvVAE(3), lambda: nf.ConvVAE(3, learn_noise=True)])
def test_shared_interface_shapes(make):
    model = make()
    x = torch.rand(5, 784)
    assert model.encode(x).shape == (5, 3)
    assert model.decode(torch.randn(5, 3)).shape == (5, 784)
    assert model.reconstruct(x).shape == (5, 784)
    mu, cov = model.posterior(x)
    assert mu.shape == (5, 3) and cov.shape == (5, 3, 3)
    assert torch.all(torch.linalg.eigvalsh(cov) > 0)
    assert model.sample_posterior(x, 4).shape == (4, 5, 3)
    assert model.generate(6).shape == (6, 784)
    assert model.loss(x).ndim == 0
    assert isinstance(model.noise_std, float)


def test_conv_vae_architecture_follows_table2():
    model = nf.ConvVAE(5)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64]
    assert [c.stride[0] for c in convs] == [2, 1, 2] and all(c.kernel_size == (3, 3)
                                                             for c in convs)
    tconvs = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in tconvs] == [64, 32, 32]
    assert [c.stride[0] for c in tconvs] == [2, 1, 2]


@pytest.mark.parametrize("model", [nf.FisherNet(2), nf.VAE(2), nf.ConvVAE(2)],
                         ids=["FisherNet", "VAE", "ConvVAE"])
def test_bad_input_gives_clear_errors(model):
    with pytest.raises(ValueError, match=r"shape \(batch, 784\).*\(4, 100\)"):
        model.loss(torch.rand(4, 100))
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.rand(784))
    with pytest.raises(TypeError, match="floating point"):
        model.encode(torch.zeros(4, 784, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float64.*float32"):
        model.loss(torch.rand(4, 784, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode(np.zeros((4, 784), dtype=np.float32))
    bad = torch.rand(4, 784)
    bad[2, 17] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*1 of 4 rows"):
        model.loss(bad)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="empty"):
        model.encode(torch.zeros(0, 784))
