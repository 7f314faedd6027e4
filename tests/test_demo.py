"""The main job runs end to end on a tiny setting and writes its files."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))

import fashion_mnist  # noqa: E402
import pytest  # noqa: E402

import nifty_fishernet as nf  # noqa: E402


def test_fashion_mnist_demo_smoke(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["--out", str(out), "--dims", "2", "--epochs", "1", "--n-train", "256",
            "--fid-images", "200", "--mkde-iterations", "1", "--mkde-samples", "1",
            "--calibration-sims", "20", "--calibration-images", "3", "--calibration-models",
            "FisherNet", "VAE", "CalibratedVAE", "ConvVAE"]
    fashion_mnist.main(args)
    for name in ("results.json", "summary.md", "mse_per_epoch.png", "reconstructions.png",
                 "table1.json", "table1.md", "latent_density.png", "fig1_fishernet_loss.png",
                 "fig2_mse_vs_d.png", "fig4_latent_means_d2.png", "fig5_ellipses_one_image.png",
                 "fig5_reconstructions_along_axes.png", "fig6_shoe_ellipses.png",
                 "fig7_normal_samples_d2.png", "fig8_normal_samples_d2.png",
                 "fig10_fishernet_samples_d2.png", "calibration.png", "calibration.json"):
        assert (out / name).stat().st_size > 500, name
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    for runs in report["results"].values():
        assert math.isfinite(runs["2"]["test_mse"]) and 0 < runs["2"]["test_mse"] < 0.3
        assert runs["2"]["seconds_per_epoch"] > 0
    for entry in report["table1"]["results"].values():
        assert all(math.isfinite(entry["2"][key]) for key in ("rec", "sample", "mkde", "gmm"))
    summary = (out / "summary.md").read_text()
    assert report["command"].endswith("ConvVAE") and report["command"] in summary
    assert set(report["calibration"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    assert "## Calibration of the latent posteriors" in summary
    assert "![calibration.png](calibration.png)" in summary
    for name, entry in report["calibration"].items():
        methods = entry["2"]["simulated"]
        nifty = {"mgvi", "geovi"} if name == "FisherNet" else set()  # quick: FisherNet only
        assert set(methods) == {"amortized", "refined (Laplace)", "refined (importance)"} | nifty
        assert nifty <= set(entry["2"]["real"])
        for method in methods.values():
            assert all(0 <= value <= 1 for value in method["coverage"].values())
        assert entry["2"]["real"]["exact"]["method"] == "grid"
    fisher_mse = report["results"]["FisherNet"]["2"]["test_mse"]
    assert f"| FisherNet | {fisher_mse:.5f} |" in summary
    assert "(+2.0e-04)" in summary and "## Table 1: FIDs" in summary
    assert "![fig6_shoe_ellipses.png](fig6_shoe_ellipses.png)" in summary

    # a rerun finds the checkpoints complete and every Table 1 entry stored: it trains nothing,
    # fits no density and computes no features, and reports the same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    monkeypatch.setattr(nf.evaluation, "feature_statistics", _forbidden)
    monkeypatch.setattr(nf.density.MaternKDE, "_fit", _forbidden)
    monkeypatch.setattr(nf.density.GaussianMixtureDensity, "_fit", _forbidden)
    monkeypatch.setattr(fashion_mnist, "calibrate", _forbidden)
    again = fashion_mnist.main(args)
    assert nf.evaluation.jsonable(again["calibration"]) == report["calibration"]
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes
    assert len(again["table1"]["cached"]) == 4
    assert nf.evaluation.jsonable(again["table1"]["results"]) == report["table1"]["results"]
    assert (out / "latent_density.png").stat().st_size > 500  # Fig. 9 from the stored density
    monkeypatch.undo()

    # --force retrains (new checkpoint files) and recomputes
    forced = fashion_mnist.main(args[:8] + ["--models", "FisherNet", "--no-sample-quality",
                                            "--no-calibration", "--force"])
    fisher = [p for p in mtimes if p.name.startswith("FisherNet")]
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in fisher)
    assert forced["results"]["FisherNet"]["2"]["test_mse"] == fisher_mse  # same seed


def _forbidden(*args, **kwargs):
    raise AssertionError("a cached result was computed again")


class Interrupted(Exception):
    """Stands for the process being killed."""


def test_interrupted_fashion_mnist_run_resumes(tmp_path, monkeypatch):
    """Killed after the third checkpoint write (VAE, epoch 1 of 2), then during Table 1's
    second entry: each rerun continues where the last one stopped, redoing nothing."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--dims", "2", "--epochs", "2", "--n-train", "256",
            "--models", "FisherNet", "VAE", "--fid-images", "100", "--mkde-iterations", "1",
            "--mkde-samples", "1", "--no-calibration"]
    saved, real_save = [], nf.training.save

    def save_then_maybe_die(path, model, **kwargs):
        real_save(path, model, **kwargs)
        saved.append((type(model).__name__, kwargs["training_state"]["epochs_done"]))
        if len(saved) == 3:
            raise Interrupted

    monkeypatch.setattr(nf.training, "save", save_then_maybe_die)
    with pytest.raises(Interrupted):
        fashion_mnist.main(args)
    assert saved == [("FisherNet", 1), ("FisherNet", 2), ("VAE", 1)]

    entries, real_entry = [], nf.evaluation._quality_entry

    def entry_then_maybe_die(model, *rest):
        entries.append(type(model).__name__)
        if len(entries) == 2:
            raise Interrupted
        return real_entry(model, *rest)

    monkeypatch.setattr(nf.evaluation, "_quality_entry", entry_then_maybe_die)
    with pytest.raises(Interrupted):
        fashion_mnist.main(args)
    assert saved[3:] == [("VAE", 2)]  # only the missing epoch was trained
    assert entries == ["FisherNet", "VAE"]

    report = fashion_mnist.main(args)
    assert saved[4:] == [] and entries[2:] == ["VAE"]  # FisherNet's entry was stored
    assert report["table1"]["cached"] == [["FisherNet", 2]]
    for name in ("FisherNet", "VAE"):
        assert report["results"][name]["2"]["history"]["epoch"] == [1, 2]
        assert math.isfinite(report["table1"]["results"][name][2]["mkde"])
    assert (out / "summary.md").is_file()


@pytest.mark.nifty
def test_toy_comparison_demo_smoke(tmp_path):
    import toy_comparison

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
    import inpainting
    import nifty_fishernet as nf

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
    import posterior_shape
    import nifty_fishernet as nf

    checkpoint = tmp_path / "fishernet.h5"
    torch_model = nf.FisherNet(5, hidden=32, layers=1)
    torch_model.save(checkpoint)  # untrained: the plumbing only
    report = posterior_shape.main(["--checkpoint", str(checkpoint), "--n", "12", "--steps", "5",
                                   "--out", str(tmp_path / "shape")])
    assert (tmp_path / "shape" / "posterior_shape.json").stat().st_size > 100
    assert 0 <= report["lower_mode_from_truth_fraction"] <= 1
    assert set(report["mahalanobis2_in_laplace"]) == set(report["chi2"])


@pytest.mark.nifty
def test_nifty_prior_demo_smoke(tmp_path):
    import nifty_prior

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
