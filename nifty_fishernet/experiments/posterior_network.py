"""The amortized posterior fitted to the model's own simulations, judged by the harness.

For the quick FisherNet (``nf.quick_fishernet(d)``) this fits ``nf.fit_posterior_network``
twice, on simulations alone (the sleep phase) and with the wake phase on the first 12,000
training images, and measures both against the encoder's amortized posterior with
``nifty_fishernet.calibration.calibrate`` (coverage on simulated data, exact mass on real
test images)::

    python demos/posterior_network.py --dim 5 [--steps 4000] [--out output/posterior_network]

Writes ``posterior_network_d<d>.json``; one torch thread (run one d per core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--n-simulated", type=int, default=300)
    parser.add_argument("--n-real", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("output/posterior_network"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    model, source = nf.quick_fishernet(args.dim, args.checkpoint)
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    methods = {"amortized": dict(refine=False)}
    fits = {}
    for name, real in (("network (sleep)", None), ("network (sleep + wake)", train[:12000])):
        began = time.perf_counter()
        network = nf.fit_posterior_network(model, steps=args.steps, real_images=real,
                                           seed=args.seed)
        fits[name] = {"seconds": time.perf_counter() - began, "loss": network.history}
        methods[name] = network.posterior
    result = cal.calibrate(model, test, methods=methods, n_simulated=args.n_simulated,
                           n_real=args.n_real, seed=args.seed, progress=False)
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "model": source, "fits": fits, "calibration": result,
              "hardware": f"{platform.processor() or platform.machine()}, 1 torch thread, "
                          f"torch {torch.__version__}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"posterior_network_d{args.dim}.json").write_text(json.dumps(report, indent=1))
    print("| method | coverage 68 / 95 (simulated) | exact mass 68 / 95 (real, mean) "
          "| KL(p||q) median | mean error [sigma] median | fit seconds |")
    print("|---|---|---|---|---|---|")
    for name in methods:
        sim, real = result["simulated"][name]["coverage"], result["real"][name]
        print(f"| {name} | {sim['68']:.2f} / {sim['95']:.2f} | {real['mass_68']['mean']:.2f} / "
              f"{real['mass_95']['mean']:.2f} | {real['kl_pq']['median']:.2f} | "
              f"{real['mean_error_sigma']['median']:.2f} | "
              f"{fits.get(name, {}).get('seconds', 0):.0f} |")
    return report


if __name__ == "__main__":
    main()
