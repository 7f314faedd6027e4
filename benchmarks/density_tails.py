"""Tail mass of the latent density estimators on a banana, where the true density is known.

For each estimator (Matérn KDE, Gaussian mixture, normalizing flow) fitted to N draws of a
2-D banana: the held-out mean log-density of true draws under the estimator (against the true
density's own), and for draws *from* the estimator: the fraction below the true density's
0.1 % and 1 % quantiles (a calibrated sampler: 0.1 % and 1 %) and their mean true log-density
(against that of true draws). Held-out likelihood rewards covering the data; the second
block shows mass put where the truth has almost none. The true draws are the baseline.

    python benchmarks/density_tails.py [--n 10000] [--draws 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy.stats import norm

import nifty_fishernet as nf

#: The banana: a ~ N(0, 1), b ~ N(0, SPREAD^2), x = (a, b + CURVE (a^2 - 1)).
CURVE, SPREAD = 0.5, 0.3


def draw(n, rng):
    a, b = rng.standard_normal(n), SPREAD * rng.standard_normal(n)
    return np.stack([a, b + CURVE * (a ** 2 - 1)], axis=1)


def log_density(x):
    """Exact: the map (a, b) -> x has unit Jacobian determinant."""
    a, b = x[:, 0], x[:, 1] - CURVE * (x[:, 0] ** 2 - 1)
    return norm.logpdf(a) + norm.logpdf(b, scale=SPREAD)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="training draws")
    parser.add_argument("--draws", type=int, default=100000, help="draws from each estimator")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train, test, truth = draw(args.n, rng), draw(20000, rng), draw(args.draws, rng)
    truth_log = log_density(truth)
    q001, q01 = np.quantile(truth_log, [0.001, 0.01])
    print(f"# banana, {args.n} training draws, {args.draws} draws per sampler, seed "
          f"{args.seed}; {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'sampler':>24} {'held-out':>9} {'true':>7} {'< q0.1%':>8} {'< q1%':>7} "
          f"{'E log p':>8} {'vs true':>8} {'fit s':>6}")
    rows = {"true draws": (None, truth)}
    for name, estimator in (("MaternKDE", nf.MaternKDE()),
                            ("GaussianMixtureDensity", nf.GaussianMixtureDensity()),
                            ("FlowDensity", nf.FlowDensity())):
        estimator.progress = False
        began = time.perf_counter()
        estimator.fit(train)
        seconds = time.perf_counter() - began
        rows[name] = (estimator, estimator.sample(args.draws, generator=args.seed), seconds)
    for name, row in rows.items():
        estimator, samples = row[0], row[1]
        logp = log_density(samples)
        heldout = "–" if estimator is None else f"{estimator.log_density(test).mean():.3f}"
        print(f"{name:>24} {heldout:>9} {log_density(test).mean():>7.3f} "
              f"{np.mean(logp < q001):>8.2%} {np.mean(logp < q01):>7.2%} {logp.mean():>8.3f} "
              f"{logp.mean() - truth_log.mean():>+8.3f} "
              + (f"{row[2]:>6.1f}" if len(row) > 2 else f"{'–':>6}"))


if __name__ == "__main__":
    main()
