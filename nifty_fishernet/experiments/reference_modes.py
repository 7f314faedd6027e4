"""Does the exact reference find the posterior? Centred on the encoder's mode against the
lowest-energy mode found.

The calibration harness judges every posterior approximation on real test images against the
exact posterior of the model's own decoder (:func:`nifty_fishernet.calibration.exact_posterior`).
Up to the harness's version 3 that reference was centred on the MAP that Newton steps reach
from the encoder's mean; since version 4 it is centred on the lowest-energy mode among that
one and the ends of Newton runs from prior draws, and importance sampling also draws around
the other modes found. For each model this measures, on the first ``--images`` test images:

- how many images have a lower mode than the encoder's (more than 3 Laplace sigma away), and
  how many have further modes within 20 nats;
- for the amortized posterior and the refined ones (Laplace; importance-sampled moments), the
  exact posterior's mass inside their 68 / 95 % regions and their mean's error in posterior
  sigma (median), against both references.

Writes ``reference_modes.json`` into ``--out``::

    python demos/reference_modes.py --models CHECKPOINT ... [--quick 2 5] [--images 200]
        [--out docs/results/calibration]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal
from nifty_fishernet.io import write_text

METHODS = {"amortized": dict(refine=False),
           "refined (Laplace)": dict(refine=True),
           "refined (importance)": dict(refine=True, correction="importance")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[], help="trained models (HDF5)")
    parser.add_argument("--quick", type=int, nargs="*", default=[],
                        help="latent dimensions of nf.quick_fishernet's models to add")
    parser.add_argument("--images", type=int, default=200, help="first test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("output/reference_modes"))
    return parser.parse_args(argv)


def compare_references(model, images, seed=0):
    """The measurements above for one model on ``images`` ``(n, k)``: a JSON-ready dict."""
    real = torch.as_tensor(np.asarray(images), dtype=model.dtype, device=model.device)
    refined = model.refined_posterior(real)
    references, seconds = {}, {}
    for name, options in (("encoder's mode", dict(starts=0)), ("lowest mode", {})):
        began = time.perf_counter()
        references[name] = cal.exact_posterior(model, real, refined=refined, seed=seed,
                                               **options)
        seconds[name] = time.perf_counter() - began
    lowest = references["lowest mode"]
    out = dict(latent_dim=model.latent_dim, images=len(real), method=lowest.method,
               images_with_lower_mode=int(lowest.lower_mode.sum()),
               images_with_other_modes=int((lowest.other_modes > 0).sum()),
               reference_seconds=seconds, methods={})
    if lowest.off_grid_mass is not None:
        out["images_with_off_grid_mass_over_1_percent"] = int(
            (lowest.off_grid_mass > 0.01).sum())
    for name, options in METHODS.items():
        with torch.no_grad():
            mean, cov = model.posterior(real, **options)
        out["methods"][name] = {}
        for reference, exact in references.items():
            metrics = cal.compare_to_exact(model, real, exact, mean, cov, seed=seed)
            out["methods"][name][reference] = dict(
                mass_68=float(np.mean(metrics["mass_68"])),
                mass_95=float(np.mean(metrics["mass_95"])),
                mean_error_sigma_median=float(np.median(metrics["mean_error_sigma"])))
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    test, _ = nf.load_fashion_mnist("test")
    models = [(str(path), nf.load(path).eval()) for path in args.models]
    for d in args.quick:
        model, source = nf.quick_fishernet(d, verbose=False)
        models.append((source, model))
    if not models:
        raise SystemExit("nothing to measure: give --models and/or --quick")
    report = dict(seed=args.seed, torch=torch.__version__, threads=1, results={})
    for source, model in models:
        result = compare_references(model, test[:args.images], args.seed)
        report["results"][source] = result
        print(f"{source} (d = {result['latent_dim']}, {result['method']}): "
              f"{result['images_with_lower_mode']} of {result['images']} images with a lower "
              f"mode than the encoder's")
        for name, by_reference in result["methods"].items():
            print(f"  {name:>22}: " + "; ".join(
                f"{ref} {v['mass_68']:.3f} / {v['mass_95']:.3f} "
                f"(mean {v['mean_error_sigma_median']:.2f} sigma off)"
                for ref, v in by_reference.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "reference_modes.json", json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
