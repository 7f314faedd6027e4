"""Where does a cheap importance-sampled refinement lose its coverage, and what buys it back?

``RefineOptions.fast()`` (64 quasi-random draws x 4 rounds) is calibrated on one quick
FisherNet at d = 5 and falls short on another of the same recipe. Would an adaptive budget
(more draws only for the data whose cheap run looks hard) close the gap at a fraction of
the cost? This script answers with the model's own simulations (seed 0):

1. a draws sweep: coverage of the true latent by the Gaussian's 68 / 95 % regions and by
   the weighted draws themselves, effective sample size and CPU seconds per datum, for
   ``--draws`` per round (4 rounds, quasi-random, sample-size corrected, bfloat16 weights);
2. the cheapest and the largest setting side by side per quartile of two per-datum signals
   of the cheap run: its effective sample size, and how much wider than ``M(MAP)^{-1}`` its
   covariance is (largest generalised eigenvalue). An adaptive budget helps if the cheap
   run's deficit sits in the quartiles a signal can single out;
3. the coverage an oracle policy would reach: the large run's regions for the data flagged
   by a threshold on each signal, the cheap run's for the rest, with the mean cost;
4. with ``--network``: the sweep again with a better first proposal, the posterior network
   of ``nf.fit_posterior_network(model)`` (fitted once to the model's own simulations, 4,000
   steps; its CPU time printed) as a further component (``proposal=network.posterior``).

``--preset default`` sweeps ``RefineOptions(correction="importance", n_draws=n)`` instead
(the calibration harness's "refined (importance)": pseudo-random draws, four further
starts, the sample-size correction since harness version 6); ``--sample-size-correction
on|off`` overrides either.

Run (one thread; CPU seconds by ``time.process_time``)::

    OMP_NUM_THREADS=1 python benchmarks/importance_budget.py [--dim 5] [--checkpoint PATH]
        [--sims 1000] [--draws 32 64 128 256 1024] [--network] [--preset fast|default]
        [--sample-size-correction on|off]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5, help="latent dimension d")
    parser.add_argument("--checkpoint", default=None, help="trained FisherNet (HDF5)")
    parser.add_argument("--sims", type=int, default=1000, help="simulated data")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--draws", type=int, nargs="+", default=[32, 64, 128, 256, 1024],
                        help="importance draws per round (4 rounds each)")
    parser.add_argument("--network", action="store_true",
                        help="also sweep with a fitted posterior network as a proposal")
    parser.add_argument("--preset", choices=("fast", "default"), default="fast",
                        help="RefineOptions.fast(n_draws=n) or the default options with "
                             "importance sampling and n draws")
    parser.add_argument("--sample-size-correction", choices=("on", "off"), default=None,
                        help="override the preset's sample-size correction")
    return parser.parse_args(argv)


def refine_options(args, n_draws):
    """The options of one setting of the sweep: the preset with ``n_draws`` per round."""
    overrides = dict(n_draws=n_draws)
    if args.sample_size_correction is not None:
        overrides["sample_size_correction"] = args.sample_size_correction == "on"
    if args.preset == "fast":
        return nf.RefineOptions.fast(**overrides)
    return nf.RefineOptions(correction="importance", **overrides)


def refine_all(model, x, truth, options, batch, proposal=None):
    """Per datum: Gaussian coverage (n, 2), draws' coverage (n, 2), ESS, widening; CPU s."""
    starts = range(0, x.shape[0], batch)
    began = time.process_time()
    parts = [model.refined_posterior(x[start:start + batch], options, proposal=proposal)
             for start in starts]
    seconds = (time.process_time() - began) / x.shape[0]
    truths = [truth[start:start + batch] for start in starts]
    gaussian = np.concatenate([np.asarray(cal.gaussian_coverage(p.mean, p.covariance, t))
                               for p, t in zip(parts, truths)])
    draws = np.concatenate([np.asarray(cal.sample_coverage(p.draws, t,
                                                           weights=p.log_weights.exp()))
                            for p, t in zip(parts, truths)])
    ess = torch.cat([p.ess for p in parts]).numpy()
    widening = np.concatenate([np.asarray(cal.lower_bound_eigenvalues(
        p.covariance, p.laplace_covariance)).reshape(p.mean.shape[0], -1).max(1)
        for p in parts])
    return dict(gaussian=gaussian, draws=draws, ess=ess, widening=widening, seconds=seconds)


def sweep(model, x, truth, args, proposal=None):
    """The draws sweep, printed; ``{draws: refine_all(...)}``."""
    runs = {}
    print(f"{'draws x 4 rounds':>17} {'Gaussian 68/95':>15} {'draws 68/95':>12} "
          f"{'ESS median (10 %)':>18} {'CPU ms / datum':>15}")
    with torch.no_grad():
        for n in args.draws:
            run = refine_all(model, x, truth, refine_options(args, n), args.batch, proposal)
            runs[n] = run
            print(f"{n:>17} {pair(run['gaussian'].mean(0)):>15} {pair(run['draws'].mean(0)):>12} "
                  f"{np.median(run['ess']):>8.0f} ({np.quantile(run['ess'], 0.1):>5.0f}) "
                  f"{1e3 * run['seconds']:>15.2f}")
    return runs


def pair(values):
    return f"{values[0]:.2f} / {values[1]:.2f}"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    model, source = nf.quick_fishernet(args.dim, args.checkpoint)
    model.eval()
    print(f"# model: {source}; d = {model.latent_dim}, {args.sims} simulated data (seed 0), "
          f"B = {args.batch}, torch {torch.__version__}, 1 thread; options: "
          f"{refine_options(args, args.draws[0])}")
    truth, x = cal.simulate(model, args.sims, seed=0)
    runs = sweep(model, x, truth, args)
    cheap, large = runs[min(runs)], runs[max(runs)]
    for signal in ("ess", "widening"):
        values = cheap[signal]
        edges = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        print(f"\nby quartile of the {min(runs)}-draw run's {signal}: Gaussian coverage "
              f"68/95 of {min(runs)} and {max(runs)} draws")
        for q, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            inside = (values >= lo) & (values <= hi)
            print(f"  Q{q + 1} [{lo:8.2f}, {hi:8.2f}]  {pair(cheap['gaussian'][inside].mean(0))}"
                  f"  {pair(large['gaussian'][inside].mean(0))}")
        print(f"  oracle policy ({max(runs)} draws where flagged), by threshold:")
        hard_side = (lambda v, t: v < t) if signal == "ess" else (lambda v, t: v > t)
        for threshold in edges[1:-1]:
            hard = hard_side(values, threshold)
            covered = np.where(hard[:, None], large["gaussian"], cheap["gaussian"]).mean(0)
            cost = cheap["seconds"] + hard.mean() * large["seconds"]
            print(f"    threshold {threshold:8.2f}: {hard.mean():.0%} flagged, coverage "
                  f"{pair(covered)}, {1e3 * cost:.2f} CPU ms / datum")
    if args.network:
        began = time.process_time()
        network = nf.fit_posterior_network(model, seed=0, progress=False)
        seconds = time.process_time() - began
        with torch.no_grad():
            alone = cal.gaussian_coverage(*network.posterior(x), truth).mean(0)
        print(f"\nposterior network fitted in {seconds:.0f} CPU s; alone it covers "
              f"{pair(alone)}; as a further proposal component:")
        sweep(model, x, truth, args, proposal=network.posterior)


if __name__ == "__main__":
    main()
