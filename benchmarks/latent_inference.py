"""Seconds per image of MGVI latent inference through NIFTy, batched over B images.

B images form one NIFTy problem (latent field (B, d)), so NIFTy's and torch's per-call
overhead is shared by the batch. Prints seconds per image for each B and the ratio against
B = 1, measured in the same run. Target: at B = 128 at least 10x lower than at B = 1.

The model is a d = 5 FisherNet trained on Fashion-MNIST (2 epochs on 12,000 images unless
``--checkpoint`` names a trained one, e.g. ``output/fashion_mnist/models/FisherNet_d5.h5``)::

    python benchmarks/latent_inference.py [--batches 1 16 128] [--checkpoint PATH]
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
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    return parser.parse_args(argv)


def trained_model(checkpoint):
    if checkpoint is not None:
        return nf.load(checkpoint).eval()
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    model = nf.FisherNet(5)
    nf.train(model, train[:12000], test[:1000], epochs=2, lr=1e-3, device="cpu", seed=0)
    return model.eval()


def main(argv=None):
    args = parse_args(argv)
    model = trained_model(args.checkpoint)
    test, _ = nf.load_fashion_mnist("test")
    dtype = getattr(torch, args.dtype)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; MGVI, {args.n_samples} sample pairs, "
          f"{args.iterations} KL iterations, decoder in {args.dtype}")
    print(f"{'B':>5} {'seconds':>9} {'s/image':>9} {'ratio vs first B':>13}")
    per_image = {}
    for batch in args.batches:
        best = float("inf")
        for repeat in range(args.repeats):
            began = time.perf_counter()
            nf.latent_posterior(model, test[:batch].astype("float64"), method="mgvi",
                                n_samples=args.n_samples, total_iterations=args.iterations,
                                dtype=dtype, seed=repeat)
            best = min(best, time.perf_counter() - began)
        per_image[batch] = best / batch
        ratio = per_image[args.batches[0]] / per_image[batch]
        print(f"{batch:>5} {best:>9.2f} {per_image[batch]:>9.4f} {ratio:>13.1f}")
    return per_image


if __name__ == "__main__":
    main()
