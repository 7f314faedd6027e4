"""Milliseconds per ConvVAE training step on the CPU, by execution variant, against the VAE.

The ConvVAE's mathematics is fixed; what may change is how torch executes it. Variants, each
a fresh ConvVAE with the same initial weights:

- ``default``: NCHW tensors, torch's default CPU convolutions;
- ``channels_last``: weights and activations in NHWC (``torch.channels_last``), which
  oneDNN's convolutions prefer;
- ``compile``: the encoder and decoder through ``torch.compile`` (inductor; the first steps
  compile and are not timed);
- ``mkldnn off``: ``torch.backends.mkldnn`` disabled (the reference without oneDNN).

Steps of all variants and of the dense VAE (the baseline, same d, batch 64) are interleaved
so that load drifts affect all alike; the ratio is against the VAE of the same run. Target:
a ConvVAE step at most 2x a dense VAE step. Also printed: each step's floating-point
operations (torch's flop counter) and the rate reached, which bound what any execution
variant can gain. One torch thread unless ``--threads``::

    python benchmarks/conv_step.py [--steps 200] [--dims 2 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import nifty_fishernet as nf


def make_step(model, x, generator, context=contextlib.nullcontext):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with context():
            optimizer.zero_grad(set_to_none=True)
            model.loss(x, n_data=60000, generator=generator).backward()
            optimizer.step()
    return step


def step_flops(model, x):
    """Floating-point operations of one loss + backward (torch's flop counter)."""
    with FlopCounterMode(display=False) as counter:
        model.loss(x, n_data=60000, generator=torch.Generator().manual_seed(0)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def mkldnn_off():
    return torch.backends.mkldnn.flags(enabled=False)


def variants(d, x):
    """``{name: step}`` for the VAE and every ConvVAE variant, same initial weights."""
    torch.manual_seed(0)
    vae = nf.VAE(d).train()
    torch.manual_seed(0)
    reference = nf.ConvVAE(d)
    state = reference.state_dict()

    def conv():
        model = nf.ConvVAE(d)
        model.load_state_dict(state)
        return model.train()

    steps = {"VAE (dense)": make_step(vae, x, torch.Generator().manual_seed(0)),
             "default": make_step(conv(), x, torch.Generator().manual_seed(0))}
    last = conv().to(memory_format=torch.channels_last)
    steps["channels_last"] = make_step(last, x, torch.Generator().manual_seed(0))
    compiled = conv()
    compiled.encoder = torch.compile(compiled.encoder)
    compiled.decoder = torch.compile(compiled.decoder)
    steps["compile"] = make_step(compiled, x, torch.Generator().manual_seed(0))
    steps["mkldnn off"] = make_step(conv(), x, torch.Generator().manual_seed(0), mkldnn_off)
    flops = {"VAE (dense)": step_flops(nf.VAE(d).train(), x),
             "ConvVAE": step_flops(conv(), x)}
    return steps, flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=None,
                        help="subset of the ConvVAE variants (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, _ = nf.load_fashion_mnist("train")
    x = torch.from_numpy(images[:64])
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; batch 64, median of {args.steps} steps")
    results = {}
    for d in args.dims:
        steps, flops = variants(d, x)
        if args.variants:
            steps = {k: v for k, v in steps.items() if k == "VAE (dense)" or k in args.variants}
        times = {key: [] for key in steps}
        for _ in range(10):  # warm-up (and compilation)
            for step in steps.values():
                step()
        for _ in range(args.steps):
            for key, step in steps.items():
                start = time.perf_counter()
                step()
                times[key].append(1e3 * (time.perf_counter() - start))
        med = {key: statistics.median(t) for key, t in times.items()}
        base = med["VAE (dense)"]
        print(f"\nd = {d}: {flops['VAE (dense)'] / 1e9:.2f} GFLOP per VAE step, "
              f"{flops['ConvVAE'] / 1e9:.2f} per ConvVAE step "
              f"({flops['ConvVAE'] / flops['VAE (dense)']:.1f}x)")
        print(f"{'variant':<16} {'ms / step':>10} {'/ VAE':>7} {'GFLOP/s':>8}")
        for key, value in med.items():
            work = flops["VAE (dense)" if key == "VAE (dense)" else "ConvVAE"]
            print(f"{key:<16} {value:>10.2f} {value / base:>7.2f} {work / value / 1e6:>8.1f}",
                  flush=True)
        results[d] = med
    return results


if __name__ == "__main__":
    main()
