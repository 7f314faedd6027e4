"""Seconds per image of the refined posterior against NIFTy's MGVI, at B images a batch.

The refined posterior (``model.posterior(x, refine=True)``: Newton steps from the encoder's
mean to the MAP, then the Laplace covariance, or importance-sampled moments with
``correction="importance"``) is meant as the package's cheap honest posterior. Target: at
most 1/100 of MGVI's time per image at B = 128 (MGVI: ``nf.latent_posterior``, blockwise, 5
sample pairs, 3 KL iterations, float32, one torch thread), measured in the same run. Prints
CPU seconds per image (``time.process_time`` of the one-thread process, so a neighbour on
another core or a shared core changes little; run with ``OMP_NUM_THREADS=1`` so that NumPy's
BLAS keeps one thread too) and the ratio MGVI / method, and beside them each method's coverage of
the true latent by its 68 % / 95 % regions on ``--sims`` data simulated from the model
itself, and the exact posterior's mass inside them on the first ``--real`` test images (the
version-4 exact reference of ``nifty_fishernet.calibration``), so cost and honesty are read
together. Importance-sampled refinements are also judged by their highest-density regions
(``RefinedPosterior.energy_threshold``: level sets of the model's energy, thresholds from the
same weighted draws; columns "HPD"), which follow a non-Gaussian posterior's shape.

The model is the main job's FisherNet of ``--dim`` (``--checkpoint``; default: the newest
``output/fashion_mnist/models/FisherNet_d<dim>_*.h5``), else ``nf.quick_fishernet``'s quick
recipe (kept in the user cache)::

    python benchmarks/refined_posterior.py [--dim 5] [--batch 128] [--checkpoint PATH]
        [--draws 128 512] [--sims 1000] [--real 200] [--network]

``--fast-draws 16 32`` adds ``RefineOptions.fast(n_draws=N)`` rows. ``--network`` adds
``RefineOptions.fast()`` with a posterior network
(``nf.fit_posterior_network``, fitted once to the model's own simulations; its CPU time is
printed apart) as a further proposal component, at 64, 128 and 256 draws per round.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import nifty_fishernet as nf
from nifty_fishernet import calibration as cal


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5, help="latent dimension d")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--checkpoint", default=None, help="trained FisherNet (HDF5)")
    parser.add_argument("--draws", type=int, nargs="+", default=[128, 512],
                        help="importance draws per image (per round)")
    parser.add_argument("--sims", type=int, default=1000,
                        help="simulated data for the coverage columns")
    parser.add_argument("--real", type=int, default=200,
                        help="test images for the exact-mass columns (0: none)")
    parser.add_argument("--fast-draws", type=int, nargs="*", default=[],
                        help="also RefineOptions.fast(n_draws=N) for each N (fewer draws "
                             "than its 64, e.g. at d = 2)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--network", action="store_true",
                        help="also fast() with a posterior network fitted to the model's "
                             "simulations as a further proposal component")
    return parser.parse_args(argv)



def best_time(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time()
        function()
        best = min(best, time.process_time() - began)
    return best


def measure(model, options, simulated, truth, truth_energy, real, exact):
    """A method's coverage of the simulated truths and exact mass on the real images (68 /
    95 %) by the Gaussian of its moments, and for importance-sampled refinements by its
    highest-density regions (None where not measured)."""
    def run(x):
        if options.get("refine", False) is False:
            return (*model.posterior(x, **options), None)
        result = model.refined_posterior(x, **options)
        return result.mean, result.covariance, (result if result.draw_energy is not None
                                                else None)

    mean, cov, result = run(simulated)
    cover = cal.gaussian_coverage(mean, cov, truth).mean(0)
    hpd_cover = None if result is None else [
        float((cal.hpd_ranks(result.draw_energy, truth_energy, result.log_weights.exp())
               < level).mean()) for level in cal.LEVELS]
    mass = hpd_mass = None
    if exact is not None:
        mean, cov, result = run(real)
        found = cal.compare_to_exact(model, real, exact, mean, cov)
        mass = (found["mass_68"].mean(), found["mass_95"].mean())
        if result is not None:
            hpd_mass = [float(cal.exact_mass_below(exact, result.energy_threshold(level))
                              .mean()) for level in cal.LEVELS]
    return cover, mass, hpd_cover, hpd_mass


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    model, source = nf.quick_fishernet(args.dim, args.checkpoint)
    print(f"# model: {source}")
    test, _ = nf.load_fashion_mnist("test")
    x = torch.from_numpy(test[:args.batch])
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread, B = {args.batch}, d = {model.latent_dim}, float32")
    mgvi = best_time(lambda: nf.latent_posterior(model, test[:args.batch].astype("float64"),
                                                 method="mgvi", n_samples=5,
                                                 total_iterations=3, dtype=torch.float32),
                     1) / args.batch
    rows = {"MGVI (NIFTy, blockwise)": (mgvi, None, None, None, None)}
    methods = {"amortized": dict(refine=False),
               "refined (Laplace, <= 50 Newton steps)": dict(refine=True, max_steps=50),
               "refined (Laplace; default <= 10 steps)": dict(refine=True),
               "refined (importance; default)": dict(refine=True, correction="importance"),
               "refined (importance, no further starts)": dict(
                   refine=True, correction="importance", starts=0)}
    for draws in args.draws:
        methods[f"refined (importance, {draws} draws x 4 rounds)"] = dict(
            refine=True, correction="importance", n_draws=draws)
    # the cheapest variants near the coverage target: few draws, spread evenly, widened for
    # their small effective sample size, weighed with bfloat16 products where the CPU has them
    cheap = dict(refine=True, correction="importance", n_draws=64, starts=0)
    methods["refined (importance, 64 x 4, no starts, pseudo-random)"] = cheap
    cheap = dict(cheap, quasi_random=True)
    methods["refined (importance, 64 x 4, no starts, quasi-random)"] = cheap
    cheap = dict(cheap, sample_size_correction=True)
    methods["refined (importance, 64 x 4, quasi, sample-size corrected)"] = cheap
    methods["refined (RefineOptions.fast(): the above, bfloat16 products)"] = dict(
        refine=nf.RefineOptions.fast())
    for draws in args.fast_draws:
        methods[f"refined (RefineOptions.fast(n_draws={draws}))"] = dict(
            refine=nf.RefineOptions.fast(n_draws=draws))
    if args.network:
        # fitted once per model (printed apart: amortized over all the images it serves)
        began = time.process_time()
        network = nf.fit_posterior_network(model, seed=0, progress=False)
        print(f"# posterior network fitted in {time.process_time() - began:.0f} CPU s "
              f"(nf.fit_posterior_network, 4,000 steps)")
        for draws in (64, 128, 256):
            methods[f"refined (fast(n_draws={draws}), posterior network proposal)"] = dict(
                refine=nf.RefineOptions.fast(n_draws=draws), proposal=network.posterior)
    truth, simulated = cal.simulate(model, args.sims, seed=0)
    real = torch.from_numpy(test[:args.real])
    with torch.no_grad():
        truth_energy = model.energy(simulated, truth)
        exact = cal.exact_posterior(model, real, seed=0) if args.real else None
        for name, options in methods.items():
            seconds = best_time(lambda o=options: model.posterior(x, **o),
                                args.repeats) / args.batch
            rows[name] = (seconds, *measure(model, options, simulated, truth, truth_energy,
                                            real, exact))
    print(f"{'method':>68} {'CPU s/image':>11} {'MGVI / method':>14} {'coverage 68/95 %':>17} "
          f"{'exact mass 68/95 %':>19} {'HPD coverage':>13} {'HPD exact mass':>15}")
    for name, (seconds, *measured) in rows.items():
        cover, mass, hpd_cover, hpd_mass = ("–" if value is None else
                                            f"{value[0]:.2f} / {value[1]:.2f}"
                                            for value in measured)
        print(f"{name:>68} {seconds:>11.2e} {mgvi / seconds:>14.1f} {cover:>17} {mass:>19} "
              f"{hpd_cover:>13} {hpd_mass:>15}")
    return rows


if __name__ == "__main__":
    main()
