"""Data-parallel training under torchrun: two CPU processes with gloo stay identical."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import nifty_fishernet as nf

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"


def test_two_gloo_processes_train_identical_parameters(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]
    assert int(ranks[0]["world"]) == 2
    keys = [k for k in ranks[0] if k not in ("world", "test_mse")]
    assert keys
    for key in keys:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
        assert np.all(np.isfinite(ranks[0][key]))
    np.testing.assert_array_equal(ranks[0]["test_mse"], ranks[1]["test_mse"])
    # Training happened: the checkpoint (written by rank 0 only) holds the same weights, and
    # they differ from a fresh initialisation with rank 0's seed.
    saved = nf.load(tmp_path / "ddp.h5")
    for key, value in saved.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ranks[0][key])
    torch.manual_seed(0)
    fresh = nf.FisherNet(2, hidden=32, layers=2).state_dict()
    assert any(not np.allclose(fresh[k].numpy(), ranks[0][k]) for k in keys)


def test_fashion_mnist_demo_under_torchrun(tmp_path):
    """The main job itself launched by torchrun (as a module): both ranks train, rank 0 writes
    the report."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "nifty_fishernet.experiments.fashion_mnist", "--out", str(out), "--dims", "2", "--epochs", "1", "--n-train", "256",
         "--models", "FisherNet", "--no-sample-quality", "--calibration-sims", "20",
         "--calibration-images", "4", "--no-calibration-nifty"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test MSE after 1 epochs") == 1  # rank 0 alone reports
    (checkpoint,) = (out / "models").glob("FisherNet_d2_*.h5")
    history = nf.load_checkpoint(checkpoint).history
    assert history["epoch"] == [1] and 0 < history["test_mse"][0] < 0.3
    assert (out / "summary.md").is_file() and (out / "fig6_shoe_ellipses.png").is_file()
