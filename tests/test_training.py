"""Training on real Fashion-MNIST subsets: learning, reproducibility, resuming, divergence."""

import numpy as np
import pytest
import torch

import nifty_fishernet as nf

MODELS = {
    "FisherNet": lambda: nf.FisherNet(2),
    "VAE": lambda: nf.VAE(2),
    "CalibratedVAE": lambda: nf.VAE(2, learn_noise=True),
    "ConvVAE": lambda: nf.ConvVAE(2),
}


@pytest.mark.parametrize("name", MODELS)
def test_a_few_hundred_steps_lower_the_test_mse(fmnist_small, name):
    train_x, test_x, _ = fmnist_small
    torch.manual_seed(0)
    model = MODELS[name]()
    before = nf.reconstruction_mse(model, torch.from_numpy(test_x))
    history = nf.train(model, train_x, test_x, epochs=5, batch_size=32, lr=1e-3, seed=0,
                       progress=False)  # 5 x 63 = 315 steps
    assert len(history["test_mse"]) == 5
    assert all(np.isfinite(v) for key in history for v in history[key])
    # an untrained decoder outputs ~0.5 everywhere (MSE ~0.2); a trained one the mean image
    # at the very least (MSE ~0.1 at d=2 after 300 steps, ~0.03 when converged)
    assert history["test_mse"][-1] < 0.6 * before, (before, history["test_mse"])
    if name in ("FisherNet", "CalibratedVAE"):
        assert history["noise_std"][-1] < 1.0  # the noise level learns from 1 downwards
    else:
        assert history["noise_std"] == [1.0] * 5


def test_training_is_reproducible_for_a_seed(fmnist_small):
    train_x, test_x, _ = fmnist_small
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = nf.FisherNet(2, hidden=64)
        history = nf.train(model, train_x[:512], test_x[:100], epochs=2, lr=1e-3, seed=5,
                           progress=False)
        runs.append((history, model.state_dict()))
    for key in ("train_loss", "test_loss", "test_mse", "noise_std"):
        assert runs[0][0][key] == runs[1][0][key]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key])


def test_resumed_training_equals_uninterrupted_training(fmnist_small, tmp_path):
    train_x, test_x, _ = fmnist_small
    kw = dict(lr=1e-3, seed=3, progress=False)
    torch.manual_seed(2)
    full = nf.FisherNet(2, hidden=64)
    full_history = nf.train(full, train_x[:512], test_x[:100], epochs=3, **kw)

    path = tmp_path / "run.h5"
    torch.manual_seed(2)
    nf.train(nf.FisherNet(2, hidden=64), train_x[:512], test_x[:100], epochs=1,
             checkpoint=path, **kw)
    resumed = nf.FisherNet(2, hidden=64)  # different initial weights: the checkpoint wins
    history = nf.train(resumed, train_x[:512], test_x[:100], epochs=3, checkpoint=path, **kw)
    assert history["epoch"] == [1, 2, 3]
    for key in ("train_loss", "test_loss", "test_mse", "noise_std"):
        np.testing.assert_allclose(history[key], full_history[key], rtol=1e-6)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-7)
    assert nf.load_checkpoint(path).history["epoch"] == [1, 2, 3]
    with pytest.raises(ValueError, match="config"):
        nf.train(nf.FisherNet(3, hidden=64), train_x[:64], test_x[:10], epochs=4,
                 checkpoint=path, progress=False)
    # resume=False ignores the complete checkpoint, trains again and replaces it
    torch.manual_seed(2)
    again = nf.train(nf.FisherNet(2, hidden=64), train_x[:512], test_x[:100], epochs=2,
                     checkpoint=path, resume=False, **kw)
    assert again["epoch"] == [1, 2]
    np.testing.assert_allclose(again["test_mse"], full_history["test_mse"][:2], rtol=1e-6)
    assert nf.load_checkpoint(path).history["epoch"] == [1, 2]


def test_divergence_stops_and_keeps_the_last_good_state(fmnist_small, tmp_path, monkeypatch):
    train_x, test_x, _ = fmnist_small
    model = nf.FisherNet(2, hidden=32)
    path = tmp_path / "run.h5"
    original = model.loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        if calls["n"] > 8 + 1 + 3:  # epoch 1: 8 steps + 1 test-loss call; then 3 good steps
            with torch.no_grad():  # what an exploding update does to the weights
                model.decoder.linears[0].weight.fill_(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(model, "loss", poisoned)
    with pytest.raises(nf.TrainingDivergedError, match=r"epoch 2, step 4.*after epoch 1"):
        nf.train(model, train_x[:512], test_x[:50], epochs=5, checkpoint=path, lr=1e-3,
                 progress=False)
    saved = nf.load_checkpoint(path)
    assert saved.history["epoch"] == [1]
    for key, value in saved.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_training_input(fmnist_small):
    train_x, test_x, _ = fmnist_small
    model = nf.VAE(2, hidden=16)
    bad = train_x[:100].copy()
    bad[5, 3] = np.inf
    with pytest.raises(ValueError, match="train_images contains non-finite"):
        nf.train(model, bad, test_x, epochs=1, progress=False)
    with pytest.raises(TypeError, match="test_images must be floating point"):
        nf.train(model, train_x, (test_x * 255).astype(np.uint8), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"train_images must have shape \(batch, 784\)"):
        nf.train(model, train_x[:, :700], test_x, epochs=1, progress=False)
    for scaled, seen in ((train_x * 255, r"\[0, 255\]"), (2 * train_x - 1, r"\[-1, 1\]")):
        with pytest.raises(ValueError, match="train_images must be scaled to \\[0, 1\\], got "
                                             "values in " + seen):
            nf.train(model, scaled, test_x, epochs=1, progress=False)


def test_training_takes_float64_torch_and_lists_like_numpy(fmnist_small):
    """The same images as float32 numpy, float64 torch or a nested list train the same."""
    train_x, test_x, _ = fmnist_small
    histories = []
    for train_images in (train_x[:128], torch.from_numpy(train_x[:128]).double(),
                         train_x[:128].tolist()):
        torch.manual_seed(0)
        model = nf.VAE(2, hidden=16)
        histories.append(nf.train(model, train_images, test_x[:50], epochs=1, lr=1e-3,
                                  seed=0, progress=False)["test_mse"])
    assert histories[0] == histories[1] == histories[2]


def test_noise_lr_calibrates_the_noise_level_to_the_residuals(fmnist_small):
    """With its own learning rate xi_N reaches the residual level; at the network's it lags.

    The optimum of Eq. 25 in xi_N sits near log(mean squared residual per pixel) (the prior
    and log-det terms shift it little for p = 2,000), so after training the noise variance
    must be within a factor 2 of the reconstruction MSE with noise_lr = 1e-2; with the
    network's lr = 1e-3 xi_N moves ~0.001 per step and 315 steps leave it near its start.
    """
    train_x, test_x, _ = fmnist_small
    result = {}
    for noise_lr in (None, 1e-2):
        torch.manual_seed(0)
        model = nf.FisherNet(2)
        history = nf.train(model, train_x, test_x, epochs=5, batch_size=32, lr=1e-3, seed=0,
                           progress=False, noise_lr=noise_lr)
        result[noise_lr] = (history["noise_std"][-1] ** 2, history["test_mse"][-1])
    variance, mse = result[1e-2]
    assert 0.5 < variance / mse < 2.0, result
    assert result[None][0] > 5 * result[None][1], result  # the lagging default


def test_resuming_with_other_settings_is_an_error_unless_asked_and_then_recorded(fmnist_small,
                                                                               tmp_path):
    """A checkpoint trained at lr 1e-3, batch 64 on 512 images: resuming it with another lr,
    batch size, seed, number of data or noise_lr names every difference; with
    change_settings=True the optimizer really uses the new rates and the record says so."""
    train_x, test_x, _ = fmnist_small
    path = tmp_path / "run.h5"
    kw = dict(progress=False, checkpoint=path)
    torch.manual_seed(0)
    nf.train(nf.VAE(2, hidden=32, learn_noise=True), train_x[:512], test_x[:50], epochs=1,
             lr=1e-3, **kw)
    record = nf.load_checkpoint(path).training_state
    assert record["config"] == dict(epochs=1, batch_size=64, lr=1e-3, noise_lr=1e-3, seed=0,
                                    n_train=512)
    for changed, message in ((dict(lr=1e-4), r"lr 0.001 \(checkpoint\) -> 0.0001"),
                             (dict(lr=1e-3, batch_size=32), "batch_size 64 .* -> 32"),
                             (dict(lr=1e-3, seed=1), "seed 0 .* -> 1"),
                             (dict(lr=1e-3, noise_lr=1e-2), r"noise_lr 0.001 .* -> 0.01"),
                             (dict(lr=1e-3, images=256), "n_train 512 .* -> 256")):
        images = train_x[:changed.pop("images", 512)]
        with pytest.raises(ValueError, match="other settings: " + message):
            nf.train(nf.VAE(2, hidden=32, learn_noise=True), images, test_x[:50], epochs=2,
                     **changed, **kw)
    assert nf.load_checkpoint(path).history["epoch"] == [1]  # nothing was trained

    rates = []

    class RecordRates(nf.training.Callback):
        def epoch_started(self, state):
            rates.append([group["lr"] for group in state.optimizer.param_groups])

    model = nf.VAE(2, hidden=32, learn_noise=True)
    nf.train(model, train_x[:512], test_x[:50], epochs=2, lr=1e-4, noise_lr=1e-2,
             change_settings=True, callbacks=[RecordRates()], **kw)
    assert rates == [[1e-4, 1e-2]]
    record = nf.load_checkpoint(path).training_state
    assert record["config"]["lr"] == 1e-4 and record["config"]["noise_lr"] == 1e-2
    assert record["changes"] == [dict(after_epoch=1, changed=[
        "lr 0.001 (checkpoint) -> 0.0001", "noise_lr 0.001 (checkpoint) -> 0.01"])]
    saved = nf.load_checkpoint(path).optimizer_state["param_groups"]
    assert [group["lr"] for group in saved] == [1e-4, 1e-2]


def test_training_config_is_validated():
    with pytest.raises(ValueError, match="lr must be a positive number"):
        nf.training.TrainingConfig(epochs=1, lr=0)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        nf.training.TrainingConfig(epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        nf.training.TrainingConfig(epochs=1, seed=1.5)
    assert nf.training.TrainingConfig(epochs=2).effective_noise_lr == 1e-4
