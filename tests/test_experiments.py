"""The package's experiments (the demos' command lines) run end to end on tiny settings and
write their files; the Fashion-MNIST main job has its own test file."""

import math

import pytest

import nifty_fishernet as nf


@pytest.mark.nifty
def test_toy_comparison_demo_smoke(tmp_path):
    from nifty_fishernet.experiments import toy_comparison

    out = tmp_path / "toy"
    report = toy_comparison.main(["--out", str(out), "--problems", "banana", "--n-test", "6",
                                  "--n-train", "1000", "--epochs", "2", "--n-samples", "1",
                                  "--iterations", "1", "--grid-points", "151",
                                  "--no-progress"])
    for name in ("results.json", "table.md", "posteriors.png"):
        assert (out / name).stat().st_size > 500, name
    rows = report["results"]["banana"]
    own = {"FisherNet amortized (own f)", "FisherNet refined (own f)",
           "VAE amortized (own f)", "VAE refined (own f)"}
    assert set(rows) == {"exact (grid)", "FisherNet amortized", "VAE diagonal",
                         "Laplace at MAP", "MGVI (true f)", "geoVI (true f)",
                         "MGVI (learned f)", "geoVI (learned f)"} | own
    for name, row in rows.items():
        for key, value in row.items():
            # no true z in a learned model's own coordinates: coverage is not defined there
            if name in own and key.startswith("coverage"):
                assert math.isnan(value)
            else:
                assert math.isfinite(value), (name, key)
        if name not in own:
            assert 0 <= row["coverage_68"] <= row["coverage_95"] <= 1
        assert 0 <= row["mass_68"] <= row["mass_95"] <= 1 + 1e-9
    starts = report["learned_models"]["banana"]["starts"]
    assert 0 <= starts["failed_from_encoder"] <= starts["n"] == 6
    assert rows["exact (grid)"]["kl_pq_mean"] < 1e-2  # p against itself
    assert "| geoVI (true f) |" in (out / "table.md").read_text()


@pytest.mark.nifty
def test_inpainting_demo_smoke(tmp_path):
    from nifty_fishernet.experiments import inpainting

    checkpoint = tmp_path / "fishernet.h5"
    nf.FisherNet(2, hidden=32, layers=1).save(checkpoint)  # untrained: the plumbing only
    out = tmp_path / "inpaint"
    report = inpainting.main(["--out", str(out), "--checkpoint", str(checkpoint),
                              "--n-images", "6", "--n-samples", "1", "--iterations", "1"])
    for name in ("results.json", "summary.md", "mask.png", "blur.png"):
        assert (out / name).stat().st_size > 200, name
    assert "| mask |" in (out / "summary.md").read_text()
    for case in ("mask", "blur"):
        row = report["results"][case]
        for method in ("encoder on observation", "mgvi", "geovi"):
            assert 0 < row[method]["mse_hidden"] < 1


def test_posterior_shape_demo_smoke(tmp_path):
    from nifty_fishernet.experiments import posterior_shape

    checkpoint = tmp_path / "fishernet.h5"
    torch_model = nf.FisherNet(5, hidden=32, layers=1)
    torch_model.save(checkpoint)  # untrained: the plumbing only
    report = posterior_shape.main(["--checkpoint", str(checkpoint), "--n", "12", "--steps", "5",
                                   "--out", str(tmp_path / "shape")])
    assert (tmp_path / "shape" / "posterior_shape.json").stat().st_size > 100
    assert 0 <= report["lower_mode_from_truth_fraction"] <= 1
    assert set(report["mahalanobis2_in_laplace"]) == set(report["chi2"])


def test_reference_modes_demo_smoke(tmp_path):
    from nifty_fishernet.experiments import reference_modes

    checkpoint = tmp_path / "fishernet.h5"
    nf.FisherNet(2, hidden=32, layers=1).save(checkpoint)  # untrained: the plumbing only
    report = reference_modes.main(["--models", str(checkpoint), "--images", "4",
                                   "--out", str(tmp_path / "modes")])
    assert (tmp_path / "modes" / "reference_modes.json").stat().st_size > 100
    result = report["results"][str(checkpoint)]
    assert result["method"] == "grid" and 0 <= result["images_with_lower_mode"] <= 4
    for by_reference in result["methods"].values():
        assert set(by_reference) == {"encoder's mode", "lowest mode"}
        assert all(0 <= v["mass_95"] <= 1 for v in by_reference.values())
    with pytest.raises(SystemExit, match="nothing to measure"):
        reference_modes.main(["--out", str(tmp_path / "none")])


@pytest.mark.nifty
def test_nifty_prior_demo_smoke(tmp_path):
    from nifty_fishernet.experiments import nifty_prior

    checkpoint = tmp_path / "fishernet.h5"
    nf.FisherNet(5, hidden=32, layers=1).save(checkpoint)  # untrained: the plumbing only
    out = tmp_path / "prior"
    report = nifty_prior.main(["--out", str(out), "--checkpoint", str(checkpoint),
                               "--n-images", "2", "--n-samples", "1", "--iterations", "1"])
    for name in ("nifty_prior.json", "summary.md", "nifty_prior.png"):
        assert (out / name).stat().st_size > 200, name
    rows = report["results"]
    assert set(rows) == {"encoder on counts / exposure", "FisherNet + background (mgvi)",
                         "FisherNet + background (geovi)", "correlated field only (mgvi)"}
    for name, row in rows.items():
        assert 0 < row["object_mse"] < 1 and 0 < row["object_mse_masked"] < 1, name
        if name != "encoder on counts / exposure":
            assert 0 <= row["sky_within_1sigma"] <= row["sky_within_2sigma"] <= 1, name
    assert report["model"] == str(checkpoint)


def test_quick_fishernet_loads_the_given_checkpoint_and_refuses_a_missing_one(tmp_path):
    checkpoint = tmp_path / "given.h5"
    nf.FisherNet(3, hidden=16, layers=1).save(checkpoint)
    model, source = nf.quick_fishernet(3, checkpoint)
    assert model.latent_dim == 3 and not model.training and source == str(checkpoint)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        nf.quick_fishernet(3, tmp_path / "missing.h5")
