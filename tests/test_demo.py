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
    fashion_mnist.main(args)
    for name in ("results.json", "mse_per_epoch.png", "reconstructions.png"):
        assert (out / name).stat().st_size > 1000, name
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"FisherNet", "VAE", "CalibratedVAE", "ConvVAE"}
    for runs in report["results"].values():
        assert math.isfinite(runs["2"]["test_mse"]) and 0 < runs["2"]["test_mse"] < 0.3
    # a rerun finds the checkpoints complete and trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    fashion_mnist.main(args)
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == mtimes
