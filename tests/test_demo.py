"""The main job runs end to end on a tiny setting and writes its files."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))

import fashion_mnist  # noqa: E402


def test_fashion_mnist_demo_smoke(tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--dims", "2", "--epochs", "1", "--n-train", "256"]
    fashion_mnist.main(args + ["--fid-images", "200", "--mkde-iterations", "1",
                               "--mkde-samples", "1"])
    for name in ("results.json", "mse_per_epoch.png", "reconstructions.png", "table1.json",
                 "table1.md", "latent_density.png", "fig1_fishernet_loss.png",
                 "fig2_mse_vs_d.png", "fig4_latent_means_d2.png", "fig5_ellipses_one_image.png",
                 "fig5_reconstructions_along_axes.png", "fig6_shoe_ellipses.png",
                 "fig7_normal_samples_d2.png", "fig8_normal_samples_d2.png",
                 "fig10_fishernet_samples_d2.png"):
        assert (out / name).stat().st_size > 500, name
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    for runs in report["results"].values():
        assert math.isfinite(runs["2"]["test_mse"]) and 0 < runs["2"]["test_mse"] < 0.3
    for entry in report["table1"]["results"].values():
        assert all(math.isfinite(entry["2"][key]) for key in ("rec", "sample", "mkde", "gmm"))
    # a rerun finds the checkpoints complete and trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    fashion_mnist.main(args + ["--no-sample-quality"])
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes


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
    assert set(rows) == {"exact (grid)", "FisherNet amortized", "VAE diagonal",
                         "Laplace at MAP", "MGVI (true f)", "geoVI (true f)",
                         "MGVI (learned f)", "geoVI (learned f)"}
    for row in rows.values():
        assert all(math.isfinite(value) for value in row.values())
        assert 0 <= row["coverage_68"] <= row["coverage_95"] <= 1
    assert rows["exact (grid)"]["kl_pq_mean"] < 1e-2  # p against itself
    assert "| geoVI (true f) |" in (out / "table.md").read_text()


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
