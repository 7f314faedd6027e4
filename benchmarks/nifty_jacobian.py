"""Seconds of MGVI and geoVI on a ConvVAE's decoder: one Jacobian per point against one
decoder pass per Jacobian product, and the decoder in float32 against float64.

NIFTy applies the decoder's Jacobian (and its adjoint) many times at each point: every
conjugate-gradient step of the sampling and of the KL's Newton steps, and, in geoVI, every
step of the nonlinear sample updates. ``nifty_fishernet.nifty.decoder_operator`` forms the
per-datum Jacobians once per point (fused for this package's MLPs, by forward-mode autodiff
otherwise) and applies them as batched matrix products; the baseline is the same decoder as a
plain :class:`~nifty_fishernet.nifty.TorchOperator`, which makes one ``torch.func.jvp`` pass
per product and reuses one reverse-mode pass for the adjoints. Both run the same problem
(Gaussian likelihood with the model's learned noise, the encoder's mean as start, the same
seed and the package's default minimizers) in the same process. A third run evaluates the
decoder in float32 (``decoder_operator(..., dtype=torch.float32)``; NIFTy's fields stay
float64): oneDNN, torch's fast CPU convolutions, has no float64 kernels. Printed per method:
the seconds of each, the ratios to the row-Jacobian float64 run, how far each posterior mean
lies from that run's, in its posterior standard deviations, and the largest relative change
of a posterior standard deviation (float64: rounding only).

    OMP_NUM_THREADS=1 python benchmarks/nifty_jacobian.py --checkpoint PATH [--images 1]
        [--methods mgvi geovi]

``PATH``: a trained ConvVAE checkpoint (e.g. one of ``docs/results/paper/models/``);
without one a ConvVAE with its initial weights is used, whose posterior is nearly the prior
(fewer iterations: the ratio, not the seconds, is the figure then).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch

import nifty_fishernet as nf
from nifty_fishernet.nifty import (LATENT_KEY, TorchOperator, decoder_operator,
                                   encoder_position, ift, infer_latents)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="trained ConvVAE (HDF5)")
    parser.add_argument("--latent-dim", type=int, default=2,
                        help="latent dimension of the untrained ConvVAE (no --checkpoint)")
    parser.add_argument("--images", type=int, default=1, help="test images B, one problem")
    parser.add_argument("--methods", nargs="+", choices=["mgvi", "geovi"],
                        default=["mgvi", "geovi"])
    parser.add_argument("--n-samples", type=int, default=10,
                        help="antithetic sample pairs (the calibration's default at d <= 8)")
    parser.add_argument("--iterations", type=int, default=3,
                        help="KL iterations (the calibration's default)")
    return parser.parse_args(argv)


def per_product_operator(model, batch):
    """The baseline: the decoder in float64 as a plain TorchOperator (no row Jacobian)."""
    decoder = copy.deepcopy(model.decoder).to(torch.float64).eval().requires_grad_(False)
    latent = ift.UnstructuredDomain((batch, model.latent_dim))
    target = ift.UnstructuredDomain((batch, model.data_dim))
    return TorchOperator(latent, target, decoder, dtype=torch.float64).ducktape(LATENT_KEY)


def run(model, images, operator, method, args):
    data = ift.makeField(operator.target, images.astype(np.float64))
    precision = ift.ScalingOperator(operator.target, 1.0 / model.noise_std ** 2,
                                    sampling_dtype=np.float64)
    likelihood = ift.GaussianEnergy(data=data, inverse_covariance=precision) @ operator
    start = encoder_position(model, images)
    began = time.perf_counter()
    result = infer_latents(likelihood, start, method, args.n_samples, args.iterations, seed=0)
    return time.perf_counter() - began, result


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.checkpoint:
        model = nf.load(args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model = nf.ConvVAE(args.latent_dim)
        source = f"ConvVAE d = {args.latent_dim}, initial weights (seed 0)"
    model.eval()
    if not isinstance(model, nf.ConvVAE):
        raise SystemExit(f"{args.checkpoint} holds a {type(model).__name__}, not a ConvVAE: "
                         f"the dense models' decoders have a fused Jacobian already")
    test, _ = nf.load_fashion_mnist("test")
    images = test[:args.images].reshape(args.images, -1)
    print(f"# model: {source}; noise std {model.noise_std:.4f}; B = {args.images} test images; "
          f"{args.n_samples} sample pairs, {args.iterations} KL iterations")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread, NIFTy {nf.nifty.NIFTY}")
    print(f"{'method':>7} {'decoder':>32} {'seconds':>8} {'ratio':>6} "
          f"{'mean shift / sigma':>19} {'sigma change':>13}")
    for method in args.methods:
        paths = {"per-product pass, float64": per_product_operator(model, args.images),
                 "row Jacobian, float64": decoder_operator(model, args.images),
                 "row Jacobian, float32": decoder_operator(model, args.images,
                                                           dtype=torch.float32)}
        runs = {name: run(model, images, operator, method, args)
                for name, operator in paths.items()}
        seconds, reference = runs["row Jacobian, float64"]
        sigma = np.sqrt(np.diagonal(reference.covariance, axis1=-2, axis2=-1))
        for name, (took, result) in runs.items():
            shift = float(np.max(np.abs(result.mean - reference.mean) / sigma))
            spread = np.sqrt(np.diagonal(result.covariance, axis1=-2, axis2=-1)) / sigma
            print(f"{method:>7} {name:>32} {took:8.1f} {took / seconds:5.2f}x "
                  f"{shift:19.1e} {float(np.max(np.abs(spread - 1))):13.1e}")


if __name__ == "__main__":
    main()
