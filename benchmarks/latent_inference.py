"""Seconds per image of MGVI latent inference through NIFTy, batched over B images.

B images form one NIFTy problem (latent field (B, d)), so NIFTy's and torch's per-call
overhead is shared by the batch. Prints seconds per image for each B and decoder precision
and the ratio against the first B, measured in the same run; every B covers at least
``--images`` test images (B = 1: sixteen separate runs), since one image's cost varies. Target: at B = 128 at least 10x
lower than at B = 1. ``--baseline`` adds NIFTy's ``optimize_kl`` unchanged (Newton-CG and plain
sampling CG, ``blockwise=False``) for comparison with the default (``blockwise=True``).

The model is ``nf.quick_fishernet(5, --checkpoint)``: the given checkpoint, else the main
job's newest ``output/fashion_mnist/models/FisherNet_d5_*.h5``, else the quick recipe
(5 epochs on 12,000 images, kept in the user cache)::

    python benchmarks/latent_inference.py [--batches 1 16 128] [--checkpoint PATH]
        [--dtypes float32 float64] [--repeats 2] [--baseline]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import nifty_fishernet as nf


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--checkpoint", default=None, help="trained d=5 FisherNet (HDF5)")
    parser.add_argument("--n-samples", type=int, default=5, help="antithetic sample pairs")
    parser.add_argument("--iterations", type=int, default=3, help="optimize_kl iterations")
    parser.add_argument("--dtypes", choices=["float64", "float32"], nargs="+",
                        default=["float32", "float64"], help="decoder precisions")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--images", type=int, default=16,
                        help="least number of test images timed per B (chunks of B)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time ift.optimize_kl with NIFTy's Newton-CG and plain sampling CG")
    return parser.parse_args(argv)



def main(argv=None):
    args = parse_args(argv)
    model, source = nf.quick_fishernet(5, args.checkpoint)
    print(f"# model: {source}, noise std {model.noise_std:.4f}")
    test, _ = nf.load_fashion_mnist("test")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; MGVI, {args.n_samples} sample pairs, "
          f"{args.iterations} KL iterations, best of {args.repeats}")
    print(f"{'path':>12} {'dtype':>8} {'B':>5} {'images':>7} {'seconds':>9} {'s/image':>9} "
          f"{'ratio vs first B':>16}")
    paths = {"blockwise": True}  # the default of latent_posterior
    if args.baseline:
        paths["optimize_kl"] = False
    per_image = {}
    for name, blockwise in paths.items():
        for dtype_name in args.dtypes:
            for batch in args.batches:
                # Every B covers at least --images images (in chunks of B), so that small
                # batches are not timed on one easy or hard image.
                n_images = max(batch, args.images)
                best = float("inf")
                for repeat in range(args.repeats):
                    began = time.perf_counter()
                    for start in range(0, n_images - batch + 1, batch):
                        nf.latent_posterior(model, test[start:start + batch].astype("float64"),
                                            method="mgvi", n_samples=args.n_samples,
                                            total_iterations=args.iterations,
                                            dtype=getattr(torch, dtype_name), seed=repeat,
                                            blockwise=blockwise)
                    best = min(best, time.perf_counter() - began)
                per_image[name, dtype_name, batch] = best / n_images
                ratio = per_image[name, dtype_name, args.batches[0]] / (best / n_images)
                print(f"{name:>12} {dtype_name:>8} {batch:>5} {n_images:>7} {best:>9.2f} "
                      f"{best / n_images:>9.4f} {ratio:>16.1f}", flush=True)
    return per_image


if __name__ == "__main__":
    main()
