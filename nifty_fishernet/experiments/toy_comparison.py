"""Latent posteriors against the exact (grid) posterior on 2-D toy problems.

For each toy problem (``banana``: an analytic map into 16 dimensions with strongly curved
posteriors; ``random_mlp``: a small random-weight network) this trains a FisherNet and a VAE
(with learned noise) on draws of the generative process and compares, on held-out data
points, the exact posterior computed on a grid with

- the FisherNet's amortized posterior ``N(mu_enc, M^-1(mu_enc))``;
- the VAE's diagonal Gaussian;
- a Laplace approximation at the MAP (true decoder, NIFTy MAP);
- MGVI and geoVI through NIFTy (``ift.optimize_kl``), with the true decoder (started from
  the MAP, which starts at the exact posterior's mode on the grid: a start from the encoder
  can end in a minor mode, and such failed starts are counted separately) and with the
  FisherNet's learned decoder and noise level (started from the encoder's mean);
- each learned model's amortized and refined posterior against the exact posterior of its
  *own* decoder, in its own coordinates: how good the model's own posterior approximation
  is, apart from how well its latents match the true ones.

A learned model's latent coordinates are identified only up to a rotation or reflection (the
N(0, 1) prior has that symmetry), so learned posteriors are rotated into the true coordinates
by orthogonal Procrustes on training draws; the rms residual of that alignment is reported,
since no learned posterior can match p better than its coordinates match the true ones.

Metrics per method (averaged over the data points): KL(p||q), KL(q||p), error of the posterior
mean in posterior standard deviations, coverage of q's 68% and 95% highest-density regions
(how often they contain the true latent), seconds per data point. Writes ``results.json``,
``table.md`` and ``posteriors.png`` into the output folder. About 7 minutes on 2 CPU cores
with the defaults::

    python demos/toy_comparison.py [--out output/toy_comparison] [--n-test 200]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from tqdm import tqdm

import nifty_fishernet as nf
from nifty_fishernet.nifty import decoder_likelihood, infer_latents, metric_blocks
from nifty_fishernet.nifty.compat import values
from nifty_fishernet.toy import (LatentGrid, banana_problem, compare_on_grid,
                                 exact_log_posterior, gaussian_log_density, geovi_log_density,
                                 in_hpd_region, random_mlp_problem)

PROBLEMS = {"banana": banana_problem, "random_mlp": random_mlp_problem}
#: Methods shown in the figure (all are in the table).
SHOWN = ("FisherNet amortized", "VAE diagonal", "Laplace at MAP", "MGVI (true f)",
         "geoVI (true f)")
COLORS = dict(zip(SHOWN, ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple")))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/toy_comparison"))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--n-test", type=int, default=200, help="held-out data points")
    parser.add_argument("--n-train", type=int, default=20000, help="training draws")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise-lr", type=float, default=3e-2,
                        help="Adam rate of the learned noise level (see nifty_fishernet.train)")
    parser.add_argument("--n-samples", type=int, default=5,
                        help="MGVI/geoVI antithetic sample pairs per KL iteration")
    parser.add_argument("--iterations", type=int, default=3, help="optimize_kl iterations")
    parser.add_argument("--grid-points", type=int, default=301, help="grid nodes per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def train_models(problem, args):
    """A FisherNet and a VAE with learned noise, trained on draws of the process."""
    _, x_train = problem.sample(args.n_train, seed=args.seed + 1)
    _, x_val = problem.sample(2000, seed=args.seed + 2)
    models = {"FisherNet": nf.FisherNet(2, problem.data_dim, hidden=64, layers=2),
              "VAE": nf.VAE(2, problem.data_dim, hidden=64, layers=2, learn_noise=True)}
    for name, model in models.items():
        torch.manual_seed(args.seed)
        nf.train(model, x_train.float(), x_val.float(), args.epochs, batch_size=128, lr=3e-3,
                 noise_lr=args.noise_lr, device="cpu", seed=args.seed,
                 progress=not args.no_progress, value_range=None)  # f(z) + noise, not images
        models[name] = model.double().eval()
    return models


def latent_alignment(problem, model, args):
    """Orthogonal ``R`` with ``mu_enc(x) R ~ z`` on training draws, and its rms residual.

    A learned model's latent coordinates are identified only up to the symmetries of the
    prior: any rotation or reflection of ``z`` gives the same N(0, 1), so the learned
    decoder is at best ``f(z R)``. Orthogonal Procrustes on the encoder means finds that
    rotation; its residual says how far the learned coordinates are from the true ones
    beyond it (learned approximations cannot be closer to p than that allows).
    """
    z, x = problem.sample(5000, seed=args.seed + 1)
    with torch.no_grad():
        mu = model.posterior(x)[0].numpy()
    rotation, _ = orthogonal_procrustes(mu, z.numpy())
    residual = float(np.sqrt(((mu @ rotation - z.numpy()) ** 2).sum(1).mean()))
    return torch.from_numpy(rotation), residual


def in_true_coordinates(log_q, rotation):
    """A density over learned latents ``u`` as one over ``z = u R`` (``|det R| = 1``)."""
    cache = {}

    def log_density(points, rows=slice(None)):
        if cache.get("points") is not points:  # same points, same rotated tensor
            cache.update(points=points, rotated=points @ rotation.T)
        return log_q(cache["rotated"], rows)
    return log_density


def own_decoder_approximations(models, x):
    """Each learned model against the exact posterior of its *own* decoder and noise level,
    in its own latent coordinates (no alignment): ``{method: (log_p, log_q, seconds per
    datum)}`` for the amortized and the refined (Laplace) posterior."""
    out = {}
    for name, model in models.items():
        log_p = exact_log_posterior(model.decoder, math.exp(model.noise.xi.item()), x)
        for kind, options in (("amortized", {}), ("refined", dict(refine=True))):
            began = time.perf_counter()
            with torch.no_grad():
                mean, cov = model.posterior(x, **options)
            out[f"{name} {kind} (own f)"] = (
                log_p, gaussian_log_density(mean, cov), (time.perf_counter() - began) / len(x))
    return out


def approximations(problem, models, x, grid, log_p, args):
    """``{method: (log_q, seconds per datum)}`` for the held-out data ``x``, the alignment
    residuals of the learned models, and how often a start from the encoder fails."""
    fishernet = models["FisherNet"]
    n = x.shape[0]
    rotations, alignment = {}, {}
    for name, model in models.items():
        rotations[name], alignment[name] = latent_alignment(problem, model, args)
    out, means = {}, {}
    for name, label in (("FisherNet", "FisherNet amortized"), ("VAE", "VAE diagonal")):
        began = time.perf_counter()
        with torch.no_grad():
            means[name], cov = models[name].posterior(x)
        out[label] = (in_true_coordinates(gaussian_log_density(means[name], cov),
                                          rotations[name]),
                      (time.perf_counter() - began) / n)
    mu = means["FisherNet"]

    truth_lh = decoder_likelihood(problem.decoder, 2, x.numpy(), problem.noise_variance)
    learned_lh = nf.FisherNetLikelihood(fishernet, x.numpy())
    learned_noise = math.exp(fishernet.xi_n.item())
    kw = dict(n_samples=args.n_samples, total_iterations=args.iterations, seed=args.seed)
    progress = tqdm(total=6, desc=f"{problem.name}: NIFTy", leave=False,
                    disable=args.no_progress)
    # A MAP started from the FisherNet's (aligned) encoder mean can end in a minor mode far
    # from the posterior: counted here as failed starts ...
    aligned_mu = (mu @ rotations["FisherNet"]).numpy()
    from_encoder = infer_latents(truth_lh, aligned_mu, "map", **kw)
    outside = ~in_hpd_region(grid, log_p, torch.from_numpy(from_encoder.mean), 0.95)
    progress.update()
    # ... so the true decoder's runs start at the exact posterior's mode on the grid: MAP
    # first, then MGVI and geoVI from the MAP, as one would with any NIFTy model.
    modes = torch.cat([grid.points[log_p(grid.points, slice(b, min(b + 16, n))).argmax(-1)]
                       for b in range(0, n, 16)]).numpy()
    result = infer_latents(truth_lh, modes, "map", **kw)
    out["Laplace at MAP"] = (gaussian_log_density(result.mean, result.covariance),
                             result.seconds / n)
    map_point, map_seconds = result.mean, result.seconds
    # a start fails where it ends in a lower mode than the one found from the grid's mode
    at = [torch.cat([log_p(torch.from_numpy(point)[b:b + 16, None, :], slice(b, b + 16))[:, 0]
                     for b in range(0, n, 16)]) for point in (from_encoder.mean, map_point)]
    lower = at[0] < at[1] - 0.5
    progress.update()
    runs = [("MGVI (true f)", truth_lh, "mgvi", map_point),
            ("geoVI (true f)", truth_lh, "geovi", map_point),
            ("MGVI (learned f)", learned_lh, "mgvi", mu.numpy()),
            ("geoVI (learned f)", learned_lh, "geovi", mu.numpy())]
    for name, likelihood, method, initial in runs:
        result = infer_latents(likelihood, initial, method, **kw)
        expansion = torch.tensor(values(result.position["latent"]))
        true = "true" in name
        decoder, noise = ((problem.decoder, problem.noise_variance) if true
                          else (fishernet.decoder, learned_noise))
        if method == "geovi":
            # geoVI's branch is found on the grid of the decoder's own coordinates.
            log_q = geovi_log_density(decoder, noise, expansion, grid)
        else:  # MGVI's q: N(expansion point, inverse NIFTy metric there)
            log_q = gaussian_log_density(
                expansion, np.linalg.inv(metric_blocks(likelihood, result.position)))
        if not true:
            log_q = in_true_coordinates(log_q, rotations["FisherNet"])
        seconds = result.seconds + (map_seconds if true else 0.0)
        out[name] = (log_q, seconds / n)
        progress.update()
    progress.close()
    starts = {"failed_from_encoder": int(lower.sum()),
              "outside_95_from_encoder": int(outside.sum()), "n": n,
              "rule": "a MAP (true f) started from the aligned FisherNet encoder mean fails "
                      "where it ends in a mode whose log posterior density is more than 0.5 "
                      "below that of the MAP started at the exact posterior's mode on the "
                      "grid (outside_95: it even lies outside the exact 95 % region); the "
                      "true-f rows start at the grid's mode"}
    return out, alignment, starts


def summarise(metrics):
    return {
        "kl_pq_mean": float(np.mean(metrics["kl_pq"])),
        "kl_pq_median": float(np.median(metrics["kl_pq"])),
        "kl_qp_mean": float(np.mean(metrics["kl_qp"])),
        "kl_qp_median": float(np.median(metrics["kl_qp"])),
        "mean_error_sigma": float(np.mean(metrics["mean_error_sigma"])),
        "std_ratio_median": float(np.median(metrics["std_ratio"])),
        "coverage_68": float(np.mean(metrics["covered_68"])),
        "coverage_95": float(np.mean(metrics["covered_95"])),
        "mass_68": float(np.mean(metrics["mass_68"])),
        "mass_95": float(np.mean(metrics["mass_95"])),
    }


def hpd_contours(ax, grid, log_density, color, label, filled=False):
    """Draw the 68% and 95% highest-density contours of one datum's density."""
    values = torch.softmax(log_density, -1)
    order = torch.sort(values, descending=True).values
    mass = torch.cumsum(order, 0)
    levels = sorted({float(order[min(int(torch.searchsorted(mass, m)), order.numel() - 1)])
                     for m in (0.95, 0.68)})
    image = values.reshape(grid.n, grid.n).T.numpy()
    axis = grid.axis.numpy()
    if filled:
        ax.contourf(axis, axis, image, levels=levels + [float(values.max()) * 1.01],
                    colors=["0.85", "0.6"])
    else:
        ax.contour(axis, axis, image, levels=levels, colors=[color], linewidths=1.0)
    ax.plot([], [], color=color, label=label)


def plot_posteriors(path, panels):
    fig, axes = plt.subplots(len(panels), 4, figsize=(13, 3.3 * len(panels)), squeeze=False)
    for row, (problem_name, grid, log_p, log_qs, truth, picks) in zip(axes, panels):
        for ax, b in zip(row, picks):
            rows = slice(b, b + 1)
            points = grid.points
            hpd_contours(ax, grid, log_p(points, rows)[0], "0.4", "exact (grid)", filled=True)
            for name in SHOWN:
                hpd_contours(ax, grid, log_qs[name][0](points, rows)[0], COLORS[name], name)
            ax.plot(*truth[b].numpy(), "k*", ms=9, label="true z")
            ax.set_title(f"{problem_name}, datum {b}")
            centre = truth[b].numpy()
            ax.set_xlim(centre[0] - 2.5, centre[0] + 2.5)
            ax.set_ylim(centre[1] - 2.5, centre[1] + 2.5)
            ax.set_xlabel("$z_1$")
            ax.set_ylabel("$z_2$")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Exact posterior (grey: 68%/95% regions) and approximations (68%/95% contours)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fraction(value):
    return "–" if math.isnan(value) else f"{value:.2f}"


def markdown_table(results, learned):
    lines = []
    for problem_name, rows in results.items():
        info = learned[problem_name]
        lines += [f"### {problem_name}", "",
                  f"Learned noise std: FisherNet {info['FisherNet']['noise_std']:.3f}, VAE "
                  f"{info['VAE']['noise_std']:.3f} (true {info['true noise_std']:.3f}). "
                  f"Learned latents after the best rotation, rms distance from the true z: "
                  f"FisherNet {info['FisherNet']['alignment_rms']:.2f}, VAE "
                  f"{info['VAE']['alignment_rms']:.2f}. Failed starts: "
                  f"{info['starts']['failed_from_encoder']} of {info['starts']['n']} MAPs "
                  f"(true f) started from the aligned encoder mean end in a lower mode "
                  f"(log density > 0.5 below the mode-started MAP's), "
                  f"{info['starts']['outside_95_from_encoder']} outside the exact 95 % "
                  f"region; the true-f rows start at the grid's mode.", "",
                  "Rows marked (own f) compare a learned model with the exact posterior of "
                  "its own decoder and noise level (no alignment; the true z has no place "
                  "there, so no coverage); the others with the true decoder's.", "",
                  "| method | KL(p‖q) mean / median | KL(q‖p) mean / median | mean error [σ] "
                  "| median std ratio | coverage 68% | coverage 95% | exact mass 68% / 95% "
                  "| s / datum |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(
                f"| {name} | {row['kl_pq_mean']:.3f} / {row['kl_pq_median']:.3f} "
                f"| {row['kl_qp_mean']:.3f} / {row['kl_qp_median']:.3f} "
                f"| {row['mean_error_sigma']:.3f} | {row['std_ratio_median']:.2f} "
                f"| {_fraction(row['coverage_68'])} | {_fraction(row['coverage_95'])} "
                f"| {row['mass_68']:.2f} / {row['mass_95']:.2f} "
                f"| {row['seconds_per_datum']:.2e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    grid = LatentGrid(points=args.grid_points)
    results, learned, panels, started = {}, {}, [], time.perf_counter()
    for problem_name in args.problems:
        problem = PROBLEMS[problem_name](seed=args.seed)
        models = train_models(problem, args)
        truth, x = problem.sample(args.n_test, seed=args.seed + 3)
        log_p = exact_log_posterior(problem.decoder, problem.noise_variance, x)
        began = time.perf_counter()
        exact_metrics = compare_on_grid(grid, log_p, log_p, truth)
        exact_seconds = (time.perf_counter() - began) / args.n_test
        rows = {"exact (grid)": {**summarise(exact_metrics),
                                 "seconds_per_datum": exact_seconds}}
        log_qs, alignment, starts = approximations(problem, models, x, grid, log_p, args)
        per_datum_kl = {}
        for name, (log_q, seconds) in tqdm(log_qs.items(), desc=f"{problem_name}: grid",
                                           leave=False, disable=args.no_progress):
            metrics = compare_on_grid(grid, log_p, log_q, truth)
            rows[name] = {**summarise(metrics), "seconds_per_datum": seconds}
            per_datum_kl[name] = metrics["kl_pq"]
        for name, (log_p_own, log_q, seconds) in own_decoder_approximations(models,
                                                                            x).items():
            # the true z has no place in a learned model's own coordinates: no coverage
            rows[name] = {**summarise(compare_on_grid(grid, log_p_own, log_q, None)),
                          "seconds_per_datum": seconds}
        results[problem_name] = rows
        learned[problem_name] = {
            name: {"noise_std": model.noise_std, "alignment_rms": alignment[name]}
            for name, model in models.items()}
        learned[problem_name]["true noise_std"] = problem.noise_variance ** 0.5
        learned[problem_name]["starts"] = starts
        # Show the two data where MGVI does worst and two typical ones.
        worst = np.argsort(per_datum_kl["MGVI (true f)"])
        picks = [int(worst[-1]), int(worst[-2]), int(worst[len(worst) // 2]), int(worst[0])]
        panels.append((problem_name, grid, log_p, log_qs, truth, picks))
        print(f"{problem_name}: resolution {grid.resolution(log_p(grid.points)):.1f} grid "
              f"spacings per smallest posterior sigma")
    plot_posteriors(args.out / "posteriors.png", panels)
    table = markdown_table(results, learned)
    (args.out / "table.md").write_text(table + "\n")
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "hardware": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}",
              "seconds": time.perf_counter() - started, "results": results,
              "learned_models": learned}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(table)
    print(f"total {report['seconds']:.0f} s; wrote {args.out}/results.json, table.md, "
          f"posteriors.png")
    return report


if __name__ == "__main__":
    main()
