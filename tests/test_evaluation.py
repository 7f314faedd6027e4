"""Table 1 evaluation: structure, finiteness, the estimators' reach, and the Fig. 9 plot."""

import copy
import json

import numpy as np
import pytest
import torch

import nifty_fishernet as nf
from nifty_fishernet.evaluation import decode_latents, sample_quality
from nifty_fishernet.experiments.fashion_mnist import (PAPER_TABLE1, table1_markdown,
                                                       write_table1)
from nifty_fishernet.plotting import plot_latent_density


@pytest.fixture(scope="module")
def quality(fmnist_small):
    train_x, test_x, _ = fmnist_small
    models = {}
    for name, make in (("FisherNet", nf.FisherNet), ("VAE", nf.VAE)):
        models[name] = {}
        for d in (2, 7):
            torch.manual_seed(d)
            models[name][d] = make(d)
    nf.train(models["FisherNet"][2], train_x[:1000], test_x[:100], epochs=1, lr=1e-3,
             progress=False)
    return sample_quality(models, train_x[:1000], test_x, n_images=300,
                          mkde_options=dict(cells_per_axis=12, n_samples=1, iterations=1),
                          progress=False)


def test_every_fid_is_computed_where_it_should_be(quality):
    assert quality["n_images"] == 300 and quality["features"] == "fmnist"
    assert np.isfinite(quality["floor"]) and quality["floor"] >= 0
    for name in ("FisherNet", "VAE"):
        for d in (2, 7):
            entry = quality["results"][name][d]
            for key in ("rec", "sample", "gmm"):
                assert np.isfinite(entry[key]) and entry[key] > 0, (name, d, key)
            assert entry["gmm_components"] >= 1
        # MKDE in 2-D; in 7-D its grid has no default and the note says what to use instead.
        assert np.isfinite(quality["results"][name][2]["mkde"])
        assert quality["results"][name][7]["mkde"] is None
        assert "GaussianMixtureDensity" in quality["results"][name][7]["notes"]["mkde"]
    # one epoch of training already beats an untrained decoder's reconstructions by far
    trained, untrained = (quality["results"]["FisherNet"][2]["rec"],
                          quality["results"]["VAE"][2]["rec"])
    assert trained < untrained


def test_table1_files_hold_our_values_beside_the_papers(quality, tmp_path):
    json_path, md_path = write_table1(quality, tmp_path)
    record = json.loads(json_path.read_text())
    assert record["paper"]["FisherNet"]["mkde"]["5"] == 85
    assert record["results"]["FisherNet"]["7"]["mkde"] is None
    text = md_path.read_text()
    assert text == table1_markdown(quality)
    ours = quality["results"]["FisherNet"][2]["rec"]
    assert f"| FisherNet | test reconstructions | {ours:.1f} (116) |" in text
    assert PAPER_TABLE1["VAE"]["sample"][20] == 100


def test_decoded_latents_are_images(quality):
    model = nf.FisherNet(2)
    images = decode_latents(model, np.random.default_rng(0).normal(size=(5, 2)))
    assert images.shape == (5, 784) and images.min() >= 0 and images.max() <= 1


def test_bad_evaluation_input(fmnist_small):
    train_x, test_x, _ = fmnist_small
    with pytest.raises(ValueError, match="estimators"):
        sample_quality({}, train_x, test_x, estimators=("vae_prior",))
    with pytest.raises(ValueError, match="at least 2"):
        sample_quality({}, train_x, test_x[:1])


def test_latent_density_figure(tmp_path, fmnist_small):
    _, _, labels = fmnist_small
    means = np.random.default_rng(0).normal(size=(len(labels), 2))
    density = nf.GaussianMixtureDensity(components=(1, 2)).fit(means)
    path = plot_latent_density(density, means, tmp_path / "fig9.png", labels=labels,
                               n_samples=200)
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="2-D"):
        plot_latent_density(nf.GaussianMixtureDensity(components=(1,)).fit(
            np.zeros((50, 3)) + np.random.default_rng(1).normal(size=(50, 3))), means[:, :2],
            tmp_path / "x.png")


def test_cached_evaluation_is_read_back_and_keyed_by_the_weights(fmnist_small, tmp_path,
                                                                 monkeypatch):
    """A second call computes no features; changed weights recompute only that model; force
    recomputes all; the fitted densities come back from their files."""
    import nifty_fishernet.evaluation as evaluation

    train_x, test_x, _ = fmnist_small
    torch.manual_seed(0)
    models = {"FisherNet": {2: nf.FisherNet(2)}, "VAE": {2: nf.VAE(2)}}
    options = dict(n_images=200, mkde_options=dict(cells_per_axis=8, n_samples=1, iterations=1),
                   gmm_options=dict(components=(1, 2)), progress=False, cache_dir=tmp_path)
    first_densities = {}
    first = sample_quality(models, train_x[:600], test_x, densities=first_densities, **options)
    assert first["cached"] == []

    calls = []
    real = evaluation.feature_statistics
    monkeypatch.setattr(evaluation, "feature_statistics",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    densities = {}
    again = sample_quality(models, train_x[:600], test_x, densities=densities, **options)
    assert calls == [] and again["cached"] == [["FisherNet", 2], ["VAE", 2]]
    assert again["floor"] == first["floor"]
    for name in models:
        for key in ("rec", "sample", "mkde", "gmm"):
            assert again["results"][name][2][key] == first["results"][name][2][key]
    assert set(densities) == set(first_densities) == {
        (name, 2, kind) for name in models for kind in ("mkde", "gmm")}
    z = np.random.default_rng(1).normal(size=(20, 2))
    for key, density in densities.items():
        np.testing.assert_array_equal(density.log_density(z), first_densities[key].log_density(z))

    # a stored density that went missing: that entry alone is computed again
    (removed,) = tmp_path.glob("density_VAE_d2_gmm_*.h5")
    removed.unlink()
    with pytest.warns(RuntimeWarning, match="recomputing table1_VAE_d2"):
        partly = sample_quality(models, train_x[:600], test_x, densities={}, **options)
    assert partly["cached"] == [["FisherNet", 2]] and removed.is_file()
    assert partly["results"]["VAE"][2]["gmm"] == first["results"]["VAE"][2]["gmm"]

    with torch.no_grad():
        models["VAE"][2].decoder.linears[-1].bias.add_(0.1)  # new weights, new key
    changed = sample_quality(models, train_x[:600], test_x, **options)
    assert changed["cached"] == [["FisherNet", 2]]
    assert changed["results"]["VAE"][2]["rec"] != first["results"]["VAE"][2]["rec"]
    forced = sample_quality(models, train_x[:600], test_x, force=True, **options)
    assert forced["cached"] == []
    with pytest.raises(TypeError, match="by name"):
        sample_quality(models, train_x[:600], test_x, features=lambda x: x.flatten(1),
                       **options)


def test_another_fid_classifier_instance_gets_its_own_entries(fmnist_small, tmp_path,
                                                              monkeypatch):
    """Each machine trains its own FID classifier, and instances score the same images ~20 %
    apart: an entry scored by one instance is never read back for another, every entry names
    its instance, and a table of mixed instances says which scored which entry."""
    import nifty_fishernet.metrics.features as features
    from nifty_fishernet.cache import fingerprint

    train_x, test_x, _ = fmnist_small
    torch.manual_seed(0)
    models = {"FisherNet": {2: nf.FisherNet(2)}}
    options = dict(n_images=200, estimators=(), progress=False, cache_dir=tmp_path / "cache")
    first = sample_quality(models, train_x[:600], test_x, **options)
    classifier = features.fashion_classifier()
    weights = fingerprint(classifier)[:16]
    assert first["feature_weights"] == weights == first["results"]["FisherNet"][2][
        "feature_weights"]
    assert first["floors"] == {weights: first["floor"]}

    # another instance of the recipe (here: the network with one bias nudged), trained into
    # another classifier folder
    other = copy.deepcopy(classifier)
    with torch.no_grad():
        other.dense.bias.add_(0.05)
    monkeypatch.setattr(features, "train_fashion_classifier",
                        lambda progress=True: (other, 0.95))
    second = sample_quality(models, train_x[:600], test_x,
                            feature_options=dict(cache_dir=tmp_path / "classifier"), **options)
    assert second["cached"] == [] and second["feature_weights"] == fingerprint(other)[:16]
    assert second["feature_weights"] != weights
    assert second["results"]["FisherNet"][2]["rec"] != first["results"]["FisherNet"][2]["rec"]

    mixed = dict(second, floors={**first["floors"], **second["floors"]},
                 results={"FisherNet": {2: first["results"]["FisherNet"][2]},
                          "VAE": {2: second["results"]["FisherNet"][2]}})
    text = table1_markdown(mixed)
    assert f"- `{weights}` (floor {first['floor']:.3f}): FisherNet d=2" in text
    assert f"- `{second['feature_weights']}` (floor {second['floor']:.3f}): VAE d=2" in text
    assert "instances" not in table1_markdown(first)


def test_the_flow_joins_table1_with_its_heldout_likelihood(fmnist_small, tmp_path):
    """estimators with "flow": its FID and held-out log-density beside the mixture's, its
    fitted flow stored with the entry and read back; keys of runs without it unchanged."""
    train_x, test_x, _ = fmnist_small
    torch.manual_seed(0)
    model = nf.FisherNet(3, hidden=32, layers=1)
    options = dict(n_images=200, estimators=("gmm", "flow"), progress=False,
                   gmm_options=dict(components=(1, 2)), cache_dir=tmp_path,
                   flow_options=dict(epochs=5, hidden=16, transforms=1))
    densities = {}
    quality = sample_quality({"FisherNet": {3: model}}, train_x[:600], test_x,
                             densities=densities, **options)
    entry = quality["results"]["FisherNet"][3]
    for key in ("gmm", "flow", "gmm_heldout_log_density", "flow_heldout_log_density"):
        assert np.isfinite(entry[key]), key
    assert entry["mkde"] is None and isinstance(densities["FisherNet", 3, "flow"],
                                                nf.FlowDensity)
    again = {}
    cached = sample_quality({"FisherNet": {3: model}}, train_x[:600], test_x, densities=again,
                            **options)
    assert cached["cached"] == [["FisherNet", 3]]
    z = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_array_equal(again["FisherNet", 3, "flow"].log_density(z),
                                  densities["FisherNet", 3, "flow"].log_density(z))
    without = sample_quality({"FisherNet": {3: model}}, train_x[:600], test_x,
                             **dict(options, estimators=("gmm",), densities=None))
    assert "flow" not in without["results"]["FisherNet"][3]
    with pytest.raises(ValueError, match="unknown estimators"):
        sample_quality({"FisherNet": {3: model}}, train_x[:600], test_x, estimators=("kde",))


def test_active_units_count_the_dimensions_the_encoder_uses(fmnist_small):
    _, test_x, _ = fmnist_small
    torch.manual_seed(0)
    model = nf.VAE(4)
    with torch.no_grad():  # mean outputs 1 and 3 (rows 1, 3 of the mean half) made constant
        last = model.encoder.linears[-1]
        last.weight[[1, 3]] = 0.0
        last.bias[[1, 3]] = 0.7
    usage = nf.evaluation.active_units(model, test_x[:500])
    means = nf.evaluation.encode_means(model, test_x[:500])
    np.testing.assert_allclose(usage["variance"], means.var(axis=0, ddof=1), rtol=1e-12)
    assert usage["variance"][1] == 0 and usage["variance"][3] == 0
    # an untrained encoder's other means vary a little; the threshold decides
    assert usage["active"] == sum(v > 0.01 for v in usage["variance"])
    assert nf.evaluation.active_units(model, test_x[:500], threshold=1e-12)["active"] == 2
    with pytest.raises(ValueError, match="at least two images"):
        nf.evaluation.active_units(model, test_x[:1])
    with pytest.raises(ValueError, match="threshold must be positive"):
        nf.evaluation.active_units(model, test_x[:10], threshold=0)
