"""Seconds per image of the refined posterior against NIFTy's MGVI, at B images a batch.

The refined posterior (``model.posterior(x, refine=True)``: Newton steps from the encoder's
mean to the MAP, then the Laplace covariance, or importance-sampled moments with
``correction="importance"``) is meant as the package's cheap honest posterior. Target: at
most 1/100 of MGVI's time per image at B = 128 (MGVI: ``nf.latent_posterior``, blockwise, 5
sample pairs, 3 KL iterations, float32, one torch thread), measured in the same run. Prints
seconds per image and the ratio MGVI / method.

The model is the main job's d = 5 FisherNet (``--checkpoint``; default: the newest
``output/fashion_mnist/models/FisherNet_d5_*.h5``), else one trained here as the main job's
quick setting trains it::

    python benchmarks/refined_posterior.py [--batch 128] [--checkpoint PATH]
        [--draws 256 1024]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import time

import torch

import nifty_fishernet as nf


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--checkpoint", default=None, help="trained FisherNet (HDF5)")
    parser.add_argument("--draws", type=int, nargs="+", default=[256, 1024],
                        help="importance draws per image (per round)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--mgvi-images", type=int, default=128,
                        help="images timed for MGVI (one batch of --batch)")
    return parser.parse_args(argv)


def trained_model(checkpoint):
    if checkpoint is None:
        found = sorted(glob.glob("output/fashion_mnist/models/FisherNet_d5_*.h5"),
                       key=os.path.getmtime)
        checkpoint = found[-1] if found else None
    if checkpoint is not None:
        print(f"# model: {checkpoint}")
        return nf.load(checkpoint).eval()
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    torch.manual_seed(0)
    model = nf.FisherNet(5)
    nf.train(model, train[:12000], test[:1000], epochs=5, lr=1e-3, device="cpu", seed=0,
             noise_lr=1e-2, progress=False)
    print(f"# no trained d=5 FisherNet found: trained one here (noise std "
          f"{model.noise_std:.4f})")
    return model.eval()


def best_time(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - began)
    return best


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = trained_model(args.checkpoint)
    test, _ = nf.load_fashion_mnist("test")
    x = torch.from_numpy(test[:args.batch])
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread, B = {args.batch}, d = {model.latent_dim}, float32")
    mgvi = best_time(lambda: nf.latent_posterior(model, test[:args.batch].astype("float64"),
                                                 method="mgvi", n_samples=5,
                                                 total_iterations=3, dtype=torch.float32),
                     1) / args.batch
    rows = {"MGVI (NIFTy, blockwise)": mgvi}
    with torch.no_grad():
        rows["amortized"] = best_time(lambda: model.posterior(x), args.repeats) / args.batch
        rows["refined (Laplace)"] = best_time(lambda: model.posterior(x, refine=True),
                                              args.repeats) / args.batch
        for draws in args.draws:
            rows[f"refined (importance, {draws} draws x 2 rounds)"] = best_time(
                lambda n=draws: model.posterior(x, refine=True, correction="importance",
                                                n_draws=n), args.repeats) / args.batch
    print(f"{'method':>44} {'s/image':>10} {'MGVI / method':>14}")
    for name, seconds in rows.items():
        print(f"{name:>44} {seconds:>10.2e} {mgvi / seconds:>14.1f}")
    return rows


if __name__ == "__main__":
    main()
