"""Seconds of MGVI and geoVI on a ConvVAE's decoder: one Jacobian per point against one
decoder pass per Jacobian product, convolutions summed tap by tap against torch's float64
ones, and the decoder in float32 against float64.

NIFTy applies the decoder's Jacobian (and its adjoint) many times at each point: every
conjugate-gradient step of the sampling and of the KL's Newton steps, and, in geoVI, every
step of the nonlinear sample updates. ``nifty_fishernet.nifty.decoder_operator`` forms the
per-datum Jacobians once per point (fused for this package's MLPs, by forward-mode autodiff
otherwise) and applies them as batched matrix products; the baseline is the same decoder as a
plain :class:`~nifty_fishernet.nifty.TorchOperator`, which makes one ``torch.func.jvp`` pass
per product and reuses one reverse-mode pass for the adjoints. In float64 on the CPU
``decoder_operator`` sums the last convolution (to one channel) tap by tap
(:func:`nifty_fishernet.models.tap_convolutions`); "torch conv" is the same row-Jacobian
operator on a plain float64 copy of the decoder. Two runs use float32, where oneDNN, torch's
fast CPU convolutions, has kernels and float64 has none: the whole decoder
(``decoder_operator(..., dtype=torch.float32)``; NIFTy's fields stay float64), and only its
Jacobian (``jacobian_dtype=torch.float32``: values and energies in float64). All run the
same problem (Gaussian likelihood with the model's learned noise, the encoder's mean as
start, the same seed and the package's default minimizers) in the same process, first with
glibc's default malloc, then the package's operator again after
:func:`nifty_fishernet.memory.keep_freed_memory` (which the Fashion-MNIST job calls; it
cannot be undone within a process). Printed first: one decoder pass and one row Jacobian at
``--pass-batch`` latent points (200: the calibration's batch), torch's convolutions, the
tap sums and the float32 Jacobian (with its float64 pass), under both mallocs, and the
float32 Jacobian's largest error; then per method: the seconds of
each decoder, the ratios to the package's float64 operator under the default malloc, how far
each posterior mean lies from that run's, in its posterior standard deviations, and the
largest relative change of a posterior standard deviation (float64: rounding only).

    OMP_NUM_THREADS=1 python benchmarks/nifty_jacobian.py --checkpoint PATH [--images 1]
        [--methods mgvi geovi]
        [--decoders per-product torch-conv tap-conv float32 float32-jacobian]

``PATH``: a trained ConvVAE checkpoint (e.g. one of ``docs/results/paper/models/``);
without one a ConvVAE with its initial weights is used, whose posterior is nearly the prior
(fewer iterations: the ratio, not the seconds, is the figure then).
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import time

import numpy as np
import torch

import nifty_fishernet as nf
from nifty_fishernet.memory import keep_freed_memory
from nifty_fishernet.models import tap_convolutions
from nifty_fishernet.nifty import (LATENT_KEY, TorchOperator, decoder_operator,
                                   encoder_position, ift, infer_latents)

#: The decoders compared: ``--decoders`` name -> printed label
DECODERS = {
    "per-product": "per-product pass, float64",
    "torch-conv": "row Jacobian, float64, torch conv",
    "tap-conv": "row Jacobian, float64",
    "float32": "row Jacobian, float32",
    "float32-jacobian": "float64, Jacobian in float32",
    "kept-memory": "row Jacobian, float64, kept memory"}
REFERENCE = "tap-conv"
#: The package's operator again after :func:`~nifty_fishernet.memory.keep_freed_memory`
KEPT = "kept-memory"


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
    parser.add_argument("--decoders", nargs="+", choices=[n for n in DECODERS if n != KEPT],
                        default=[n for n in DECODERS if n != KEPT],
                        help="decoders to run (the package's, tap-conv, always runs)")
    parser.add_argument("--pass-batch", type=int, default=200,
                        help="latent points of the single decoder pass and Jacobian timed")
    return parser.parse_args(argv)


def plain_float64_decoder(model):
    """The decoder in float64 with torch's own convolutions, gradients off."""
    return copy.deepcopy(model.decoder).to(torch.float64).eval().requires_grad_(False)


def per_product_operator(model, batch):
    """The first baseline: the plain float64 decoder as a TorchOperator (no row Jacobian)."""
    latent = ift.UnstructuredDomain((batch, model.latent_dim))
    target = ift.UnstructuredDomain((batch, model.data_dim))
    return TorchOperator(latent, target, plain_float64_decoder(model),
                         dtype=torch.float64).ducktape(LATENT_KEY)


def torch_conv_operator(model, batch):
    """The second baseline: row Jacobians of the plain float64 decoder."""
    decoder = plain_float64_decoder(model)
    latent = ift.UnstructuredDomain((batch, model.latent_dim))
    target = ift.UnstructuredDomain((batch, model.data_dim))
    return TorchOperator(latent, target, decoder, dtype=torch.float64,
                         row_jacobian=functools.partial(nf.decoder_jacobian, decoder,
                                                        method="autodiff")
                         ).ducktape(LATENT_KEY)


def operator(model, batch, name):
    if name == "per-product":
        return per_product_operator(model, batch)
    if name == "torch-conv":
        return torch_conv_operator(model, batch)
    if name == "float32-jacobian":
        return decoder_operator(model, batch, jacobian_dtype=torch.float32)
    return decoder_operator(model, batch,
                            dtype=torch.float32 if name == "float32" else torch.float64)


def seconds(function, repeats=3):
    function()
    began = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - began) / repeats


def time_passes(model, batch):
    """Seconds of one decoder pass and one row Jacobian at ``batch`` points: torch's
    convolutions, the tap sums, and the Jacobian in float32 (the float64 pass for the values
    plus a float32 Jacobian, as ``decoder_operator(..., jacobian_dtype=torch.float32)``)."""
    plain = plain_float64_decoder(model)
    tapped = tap_convolutions(plain)
    single = copy.deepcopy(plain).to(torch.float32)
    z = torch.randn(batch, model.latent_dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    z32 = z.to(torch.float32)
    with torch.no_grad():
        difference = float((plain(z) - tapped(z)).abs().max())
        passes = [seconds(lambda: decoder(z)) for decoder in (plain, tapped)]
        passes.append(passes[1])
    jacobians = [seconds(lambda: nf.decoder_jacobian(decoder, z, method="autodiff"))
                 for decoder in (plain, tapped)]
    jacobians.append(seconds(lambda: (tapped(z), nf.decoder_jacobian(single, z32))))
    exact = nf.decoder_jacobian(tapped, z)[1]
    rounded = nf.decoder_jacobian(single, z32)[1].double()
    jacobian_error = float((rounded - exact).abs().max() / exact.abs().max())
    return passes, jacobians, (difference, jacobian_error)


def print_passes(batch, timings):
    print(f"# float64 at B = {batch}, seconds of one decoder pass / one row Jacobian, and "
          f"ratios to torch conv with glibc's default malloc:")
    (base_pass, *_), (base_jacobian, *_), _ = timings["default malloc"]
    for memory, (passes, jacobians, (difference, jacobian_error)) in timings.items():
        for name, took_pass, took_jac in zip(("torch conv", "tap sums", "f32 Jacobian"),
                                             passes, jacobians):
            print(f"#   {memory:>15}, {name:>12}: pass {took_pass:.3f} s "
                  f"({base_pass / took_pass:.2f}x), Jacobian {took_jac:.3f} s "
                  f"({base_jacobian / took_jac:.2f}x)")
    print(f"#   largest difference tap sums - torch conv: {difference:.1e}; float32 Jacobian, "
          f"largest error relative to the largest entry: {jacobian_error:.1e}")


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
    names = [name for name in DECODERS if name in args.decoders or name == REFERENCE]
    # glibc's default malloc first: keep_freed_memory cannot be undone in a process
    runs = {(method, name): run(model, images, operator(model, args.images, name), method,
                                args)
            for method in args.methods for name in names}
    timings = {"default malloc": time_passes(model, args.pass_batch)}
    if keep_freed_memory():
        timings["kept memory"] = time_passes(model, args.pass_batch)
        for method in args.methods:
            runs[method, KEPT] = run(model, images, operator(model, args.images, REFERENCE),
                                     method, args)
        names.append(KEPT)
    print_passes(args.pass_batch, timings)
    print(f"{'method':>7} {'decoder':>34} {'seconds':>8} {'ratio':>6} "
          f"{'mean shift / sigma':>19} {'sigma change':>13}")
    for method in args.methods:
        took_reference, reference = runs[method, REFERENCE]
        sigma = np.sqrt(np.diagonal(reference.covariance, axis1=-2, axis2=-1))
        for name in names:
            took, result = runs[method, name]
            shift = float(np.max(np.abs(result.mean - reference.mean) / sigma))
            spread = np.sqrt(np.diagonal(result.covariance, axis1=-2, axis2=-1)) / sigma
            print(f"{method:>7} {DECODERS[name]:>34} {took:8.1f} {took / took_reference:5.2f}x "
                  f"{shift:19.1e} {float(np.max(np.abs(spread - 1))):13.1e}")


if __name__ == "__main__":
    main()
