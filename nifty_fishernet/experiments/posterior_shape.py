"""Why a Gaussian at the MAP misses the FisherNet's d = 5 posterior: its shape, measured.

On data simulated from a trained model itself (z ~ N(0, 1), x = f(z) + sigma_N n), in float64:

- **modes**: Newton runs from the encoder's mean and from the true z; the fraction of data
  whose true-z run ends in a lower-energy mode (by more than 0.5 nats) than the encoder's;
- **curvature at the MAP**: eigenvalues of H^-1 M, H the exact Hessian of the energy
  (``torch.autograd.functional.hessian``), M the Fisher metric, on the first 40 data;
- **energy against the quadratic**: 2 (E(z_true) - E(MAP)) (chi^2_d for a Gaussian
  posterior) and the squared Mahalanobis distance of z_true in M(MAP) (also chi^2_d for
  the Laplace approximation), with their quantiles beside the chi^2_d ones.

Writes ``posterior_shape.json`` into the output folder::

    python demos/posterior_shape.py [--checkpoint PATH] [--n 300] [--out output/posterior_shape]

Default model: the main job's newest ``output/fashion_mnist/models/FisherNet_d5_*.h5``, else
``nf.quick_fishernet``'s quick recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chi2

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal
from nifty_fishernet.fisher import latent_energy, newton_map

QUANTILES = (0.1, 0.5, 0.68, 0.9, 0.95)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=300, help="simulated data")
    parser.add_argument("--steps", type=int, default=100, help="Newton steps at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("output/posterior_shape"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model, checkpoint = nf.quick_fishernet(5, args.checkpoint)
    model = model.double()
    d = model.latent_dim
    truth, x = cal.simulate(model, args.n, seed=args.seed)
    precision = model.noise.precision.detach()
    with torch.no_grad():
        from_encoder = newton_map(model.decoder, x, model.encode(x), precision,
                                  max_steps=args.steps)
        from_truth = newton_map(model.decoder, x, truth, precision, max_steps=args.steps)
        at_truth = latent_energy(x, truth, model.decoder(truth), precision)
    lower_mode = (from_truth.energy < from_encoder.energy - 0.5).double().mean().item()
    ratios = []
    for b in range(min(40, args.n)):
        hessian = torch.autograd.functional.hessian(
            lambda z, b=b: latent_energy(x[b:b + 1], z[None], model.decoder(z[None]),
                                         precision)[0], from_truth.z[b])
        ratios.append(torch.linalg.eigvals(torch.linalg.solve(hessian, from_truth.metric[b]))
                      .real)
    ratios = torch.cat(ratios).numpy()
    delta = 2 * (at_truth - from_truth.energy).numpy()
    gap = truth - from_truth.z
    mahalanobis2 = (gap[:, None, :] @ from_truth.metric @ gap[:, :, None])[:, 0, 0].numpy()
    report = dict(
        checkpoint=checkpoint, n=args.n, seed=args.seed, latent_dim=d,
        newton_converged_fraction=float(from_truth.converged.double().mean()),
        lower_mode_from_truth_fraction=lower_mode,
        hessian_inverse_times_metric_eigenvalues={str(q): float(np.quantile(ratios, q))
                                                  for q in (0.1, 0.5, 0.9)},
        twice_energy_above_map={str(q): float(np.quantile(delta, q)) for q in QUANTILES},
        mahalanobis2_in_laplace={str(q): float(np.quantile(mahalanobis2, q))
                                 for q in QUANTILES},
        chi2={str(q): float(chi2.ppf(q, d)) for q in QUANTILES},
        laplace_coverage_at_truth_mode={"68": float(np.mean(mahalanobis2 <= chi2.ppf(0.68, d))),
                                        "95": float(np.mean(mahalanobis2 <= chi2.ppf(0.95, d)))})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "posterior_shape.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
