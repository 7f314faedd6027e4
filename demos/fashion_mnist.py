"""Train FisherNet, VAE, calibrated VAE and ConvVAE on Fashion-MNIST and compare them.

Writes into the output folder:

- ``results.json``: settings, and per model and latent dimension the training history
  (test MSE, test loss, noise level, seconds per epoch);
- ``mse_per_epoch.png``: test MSE (Eq. 32-33) per epoch, one panel per latent dimension;
- ``reconstructions.png``: test images beside each model's reconstruction from ``mu``;
- ``table1.json``, ``table1.md``: the paper's Table 1 measured by us (FIDs of test
  reconstructions, of N(0,1) samples, of Matérn-KDE samples for d <= 5 and of Gaussian-mixture
  samples for every d), beside the paper's values;
- ``latent_density.png``: the paper's Fig. 9, the FisherNet's d = 2 Matérn KDE with the
  test means, and samples drawn from it;
- the paper's other figures: ``fig1_fishernet_loss.png`` (loss against d),
  ``fig2_mse_vs_d.png``, ``mse_per_epoch.png`` (Fig. 3), ``fig4_latent_means_d2.png``,
  ``fig5_ellipses_one_image.png`` and ``fig5_reconstructions_along_axes.png``,
  ``fig6_shoe_ellipses.png``, ``fig7/fig8_normal_samples_d<d>.png`` (d = 2 and 15, or the
  largest d run), ``fig10_fishernet_samples_d5.png`` (N(0,1) against the density estimators);
- ``calibration.json``, ``calibration.png``: every model's latent posteriors (amortized,
  refined by Laplace and by importance sampling; the FisherNet's also by NIFTy's MGVI and
  geoVI, ``--no-calibration-nifty`` to skip them) against the truth: coverage of the true
  latent on data simulated from the model itself, and the exact posterior's mass inside
  their credible regions on real test images (``nifty_fishernet.calibration``; quick: all
  models but the ConvVAE, ``--calibration-models`` to choose);
- ``summary.md``: the run's command and settings, test MSE, seconds per epoch and noise level
  per model and d, Table 1, the figures; the paper's values beside ours;
- ``models/<model>_d<d>_<key>.h5``: the trained models, ``key`` a hash of the training
  configuration (rerunning resumes and skips finished ones; another setting trains anew);
- ``cache/``: Table 1's entries (and fitted latent densities) under a hash of the model's
  weights and the evaluation settings, so a rerun recomputes nothing it has; ``--force``
  retrains every model and recomputes every entry.

An interrupted run resumes: training from the last completed epoch's checkpoint, Table 1
from the first entry not yet stored.

Under ``torchrun --nproc_per_node=N demos/fashion_mnist.py ...`` training is data-parallel
(``nifty_fishernet.train`` with DistributedDataParallel); rank 0 alone evaluates and writes.

Settings:

- ``--quick`` (default): d in {2, 5}, 5 epochs on 12,000 training images, lr 1e-3 (ten times
  Table 2's, to make up for the fewer steps) and 1e-2 for the noise level (which otherwise
  lags behind, see ``nifty_fishernet.train``); FIDs on 2,000 images with the Fashion-MNIST
  classifier's features; MKDE on 32 x 32 (d = 2) and 5^5 (d = 5) cells.
- ``--paper``: Table 2 (batch 64, lr 1e-4, Adam), 50 epochs on all 60,000 images,
  d in {2, 3, 5, 10, 15, 20}; FIDs on 10,000 images with Inception features; MKDE on the
  default grids. A GPU job.

    python demos/fashion_mnist.py [--quick | --paper] [--out output/fashion_mnist]
        [--features fmnist|inception] [--fid-images N] [--no-sample-quality] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import nifty_fishernet as nf  # noqa: E402
from nifty_fishernet import plotting  # noqa: E402
from nifty_fishernet.cache import ResultCache, fingerprint  # noqa: E402
from nifty_fishernet.calibration import calibrate  # noqa: E402
from nifty_fishernet.distributed import distributed_context  # noqa: E402
from nifty_fishernet.report import write_summary  # noqa: E402
from nifty_fishernet.plotting import plot_latent_density  # noqa: E402

MODELS = {
    "FisherNet": lambda d: nf.FisherNet(d),
    "VAE": lambda d: nf.VAE(d),
    "CalibratedVAE": lambda d: nf.VAE(d, learn_noise=True),
    "ConvVAE": lambda d: nf.ConvVAE(d),
}
SETTINGS = {
    "quick": dict(dims=[2, 5], epochs=5, n_train=12000, lr=1e-3, noise_lr=1e-2, batch_size=64,
                  features="fmnist", fid_images=2000,
                  mkde=dict(cells_per_axis={2: 32, 5: 5}, n_samples=3, iterations=3),
                  calibration=dict(n_simulated=300, n_real=64, n_reference=100, n_nifty=64),
                  # the ConvVAE's exact posteriors (10^6 decoder calls) take too long here
                  calibration_models=["FisherNet", "VAE", "CalibratedVAE"],
                  calibration_nifty={"FisherNet": ["mgvi", "geovi"]}),
    "paper": dict(dims=[2, 3, 5, 10, 15, 20], epochs=50, n_train=60000, lr=1e-4, noise_lr=None,
                  batch_size=64, features="inception", fid_images=10000,
                  mkde=dict(cells_per_axis=None, n_samples=5, iterations=4),
                  calibration=dict(n_simulated=1000, n_real=200, n_reference=200, n_nifty=200),
                  calibration_models=list(MODELS),
                  calibration_nifty={name: ["mgvi", "geovi"] for name in MODELS}),
}


def config_key(name, d, setting, seed):
    """Short hash of everything that determines a trained model."""
    config = dict(model=name, d=d, seed=seed, **{k: setting[k] for k in TRAINING_KEYS})
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


TRAINING_KEYS = ("epochs", "n_train", "lr", "noise_lr", "batch_size")
#: Part of every calibration cache key: raise it when a change alters the numbers.
CALIBRATION_VERSION = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="reduced setting for 2 CPU cores (default)")
    mode.add_argument("--paper", dest="mode", action="store_const", const="paper",
                      help="the paper's Table 2 setting")
    parser.set_defaults(mode="quick")
    parser.add_argument("--out", type=Path, default=Path("output/fashion_mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="folder with the IDX .gz files")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--dims", type=int, nargs="+", help="override the latent dimensions")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--n-train", type=int, help="override the number of training images")
    parser.add_argument("--features", choices=["fmnist", "inception"],
                        help="FID features (quick: fmnist, paper: inception)")
    parser.add_argument("--fid-images", type=int, help="images per FID")
    parser.add_argument("--mkde-iterations", type=int, help="MKDE KL iterations")
    parser.add_argument("--mkde-samples", type=int, help="MKDE antithetic sample pairs")
    parser.add_argument("--no-sample-quality", dest="sample_quality", action="store_false",
                        help="skip Table 1 (FIDs) and the latent density figure")
    parser.add_argument("--no-calibration", dest="calibration", action="store_false",
                        help="skip the calibration of the latent posteriors")
    parser.add_argument("--calibration-sims", type=int,
                        help="simulated data per model for the coverage (SBC)")
    parser.add_argument("--calibration-images", type=int,
                        help="test images per model compared with the exact posterior")
    parser.add_argument("--no-calibration-nifty", dest="calibration_nifty",
                        action="store_false",
                        help="calibrate without NIFTy's MGVI and geoVI")
    parser.add_argument("--calibration-models", nargs="+", choices=list(MODELS),
                        help="models to calibrate (quick: all but the ConvVAE, whose exact "
                             "posteriors cost ~10^6 convolutional decoder calls)")
    parser.add_argument("--force", action="store_true",
                        help="retrain every model and recompute every metric, even where the "
                             "output folder holds them for this configuration")
    return parser.parse_args(argv)


def plot_mse_per_epoch(results, dims, path):
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.6), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for name, runs in results.items():
            history = runs[str(d)]["history"]
            ax.plot(history["epoch"], history["test_mse"], marker="o", ms=3, label=name)
        ax.set(title=f"latent dimension {d}", xlabel="epoch", ylabel="test MSE", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reconstructions(models, test_x, dims, path, n_images=10):
    x = torch.from_numpy(test_x[:n_images])
    rows = [("test images", x)]
    for d in dims:
        for name, by_dim in models.items():
            model = by_dim[d].eval()
            with torch.no_grad():
                rows.append((f"{name} d={d}", model.reconstruct(x.to(model.device)).cpu()))
    fig, axes = plt.subplots(len(rows), n_images, figsize=(n_images * 0.9, len(rows) * 0.95))
    for r, (label, images) in enumerate(rows):
        for c in range(n_images):
            ax = axes[r][c]
            ax.imshow(images[c].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figures(trained, results, densities, test_x, test_labels, setting, seed, out):
    """The paper's Figs. 1, 2, 4-8 and 10 (3 and 9 are written elsewhere); returns their names."""
    dims = setting["dims"]
    written = []

    def to_images(model, z):
        return nf.evaluation.decode_latents(model, np.asarray(z))

    fisher = results["FisherNet"]
    written.append(plotting.plot_against_dimension(
        {"test loss per datum (Eq. 25, no constants)":
            {"FisherNet": {d: fisher[str(d)]["test_loss"] for d in dims}},
         "test MSE": {"FisherNet": {d: fisher[str(d)]["test_mse"] for d in dims}}},
        out / "fig1_fishernet_loss.png", "FisherNet: loss and reconstruction error against d"))
    written.append(plotting.plot_against_dimension(
        {"test MSE": {name: {d: runs[str(d)]["test_mse"] for d in dims}
                      for name, runs in results.items()}},
        out / "fig2_mse_vs_d.png", "test MSE against d"))
    if 2 in dims:
        two = {name: by_dim[2] for name, by_dim in trained.items()}
        written.append(plotting.plot_latent_means(
            {name: nf.evaluation.encode_means(m, test_x) for name, m in two.items()},
            test_labels, out / "fig4_latent_means_d2.png"))
        compared = {name: two[name] for name in ("FisherNet", "VAE") if name in two}
        with torch.no_grad():
            posteriors = {}
            for name, model in compared.items():
                mu, cov = model.posterior(torch.as_tensor(test_x[:1], dtype=model.dtype))
                posteriors[name] = (mu.double().numpy(), cov.double().numpy())
            written.append(plotting.plot_uncertainty_ellipses(
                posteriors, out / "fig5_ellipses_one_image.png"))
            rows = {"test image": test_x[:1]}
            for name, (mu, cov) in posteriors.items():
                values, vectors = np.linalg.eigh(cov[0])
                for axis in (1, 0):  # largest first
                    steps = [mu[0] + s * np.sqrt(values[axis]) * vectors[:, axis]
                             for s in (-2, -1, 0, 1, 2)]
                    rows[f"{name} axis {2 - axis} (-2..2 sigma)"] = to_images(
                        compared[name], steps)
            written.append(plotting.plot_image_rows(
                rows, out / "fig5_reconstructions_along_axes.png",
                "reconstructions at -2, -1, 0, +1, +2 sigma along the posterior's axes"))
            shoes = np.flatnonzero(np.isin(test_labels, (5, 7, 9)))[:150]
            posteriors = {}
            for name, model in compared.items():
                mu, cov = model.posterior(torch.as_tensor(test_x[shoes], dtype=model.dtype))
                posteriors[name] = (mu.double().numpy(), cov.double().numpy())
            written.append(plotting.plot_uncertainty_ellipses(
                posteriors, out / "fig6_shoe_ellipses.png", classes=(5, 7, 9),
                labels=test_labels[shoes]))
    rng = np.random.default_rng(seed)
    for figure, d in (("fig7", min(dims)), ("fig8", 15 if 15 in dims else max(dims))):
        normal = rng.standard_normal((10, d))
        written.append(plotting.plot_image_rows(
            {name: to_images(by_dim[d], normal) for name, by_dim in trained.items()},
            out / f"{figure}_normal_samples_d{d}.png", f"decoded N(0,1) latents, d = {d}"))
    d = 5 if 5 in dims else max(dims)
    rows = {"N(0,1)": to_images(trained["FisherNet"][d], rng.standard_normal((10, d)))}
    for key, label in (("mkde", "Matérn KDE"), ("gmm", "Gaussian mixture")):
        if ("FisherNet", d, key) in densities:
            rows[label] = to_images(trained["FisherNet"][d],
                                    densities["FisherNet", d, key].sample(10, generator=rng))
    written.append(plotting.plot_image_rows(rows, out / f"fig10_fishernet_samples_d{d}.png",
                                            f"FisherNet d = {d}: latent samples decoded"))
    return [path.name for path in written]


def table1(trained, train_x, test_x, test_labels, setting, args, out):
    """FIDs of Table 1 (written to table1.json/.md) and the latent-density figure."""
    densities = {}
    quality = nf.evaluation.sample_quality(
        trained, train_x, test_x, n_images=setting["fid_images"], features=setting["features"],
        seed=args.seed, device="cpu", mkde_options=setting["mkde"], densities=densities,
        cache_dir=out / "cache", force=args.force)
    nf.evaluation.write_table1(quality, out)
    density = densities.get(("FisherNet", 2, "mkde"))
    if density is not None:
        means = nf.evaluation.encode_means(trained["FisherNet"][2], test_x)
        plot_latent_density(density, means, out / "latent_density.png", labels=test_labels,
                            title="FisherNet d=2: Matérn KDE of the training means")
    print("\n" + nf.evaluation.table1_markdown(quality))
    return quality, densities


def calibration(trained, test_x, setting, args, out):
    """Every model's posteriors against the truth (``nifty_fishernet.calibration``): coverage
    on simulated data, exact-posterior mass on real test images; cached under a hash of the
    model's weights and the settings. Writes ``calibration.json`` and ``calibration.png``."""
    cache = ResultCache(out / "cache", force=args.force)
    options = setting["calibration"]
    results = {}
    for name, by_dim in trained.items():
        if name not in setting["calibration_models"]:
            continue
        results[name] = {}
        for d, model in sorted(by_dim.items()):
            model = model.cpu().eval()
            nifty = (setting["calibration_nifty"].get(name, [])
                     if args.calibration_nifty else [])
            key = fingerprint("calibration", CALIBRATION_VERSION, model, options, nifty,
                              args.seed, test_x[:options["n_real"]])
            entry = cache.get(f"calibration_{name}_d{d}", key)
            if entry is None:
                began = time.perf_counter()
                entry = calibrate(model, test_x, seed=args.seed, nifty=nifty, **options)
                entry["seconds"] = time.perf_counter() - began
                entry = nf.evaluation.jsonable(entry)
                cache.put(f"calibration_{name}_d{d}", key, entry)
            results[name][d] = entry
            coverage = {m: v["coverage"] for m, v in entry["simulated"].items()}
            print(f"{name:>14} d={d:<2} coverage 68/95 %: " + "; ".join(
                f"{m} {c['68']:.2f}/{c['95']:.2f}" for m, c in coverage.items()))
    (out / "calibration.json").write_text(json.dumps(nf.evaluation.jsonable(
        {"settings": options, "seed": args.seed, "results": results}), indent=1))
    plotting.plot_calibration(results, out / "calibration.png",
                              "Latent posteriors against the truth (quick models)"
                              if args.mode == "quick" else "Latent posteriors against the truth")
    return results


def _paper_order(name):
    number = {"reconstructions.png": 0, "mse_per_epoch.png": 3, "latent_density.png": 9,
              "calibration.png": 11}.get(name)
    return number if number is not None else int(name[3:].split("_")[0])


def main(argv=None):
    args = parse_args(argv)
    setting = dict(SETTINGS[args.mode])
    for key in ("dims", "epochs", "n_train", "features", "fid_images"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    setting["mkde"] = dict(setting["mkde"])
    setting["calibration"] = dict(setting["calibration"])
    for key, option in (("n_simulated", "calibration_sims"), ("n_real", "calibration_images")):
        if getattr(args, option) is not None:
            setting["calibration"][key] = getattr(args, option)
    if args.calibration_models is not None:
        setting["calibration_models"] = args.calibration_models
    for key, option in (("iterations", "mkde_iterations"), ("n_samples", "mkde_samples")):
        if getattr(args, option) is not None:
            setting["mkde"][key] = getattr(args, option)
    out = args.out
    (out / "models").mkdir(parents=True, exist_ok=True)
    device = nf.training.resolve_device(args.device)
    context = distributed_context(device)  # under torchrun: one training process per rank

    train_x, _ = nf.load_fashion_mnist("train", root=args.data_root)
    test_x, test_labels = nf.load_fashion_mnist("test", root=args.data_root)
    train_x = train_x[np.random.default_rng(args.seed).permutation(len(train_x))
                      [:setting["n_train"]]]

    results, trained = {}, {}
    start = time.perf_counter()
    for name in args.models:
        results[name], trained[name] = {}, {}
        for d in setting["dims"]:
            torch.manual_seed(args.seed)
            model = MODELS[name](d)
            history = nf.train(model, train_x, test_x, epochs=setting["epochs"],
                               batch_size=setting["batch_size"], lr=setting["lr"],
                               noise_lr=setting["noise_lr"], device=device, seed=args.seed,
                               checkpoint=out / "models" /
                               f"{name}_d{d}_{config_key(name, d, setting, args.seed)}.h5",
                               resume=not args.force, progress=context.is_main)
            trained[name][d] = model
            results[name][str(d)] = dict(
                test_mse=history["test_mse"][-1], test_loss=history["test_loss"][-1],
                noise_std=history["noise_std"][-1],
                seconds_per_epoch=float(np.mean(history["seconds"])), history=history)
            if context.is_main:
                print(f"{name:>14} d={d:<2} test MSE {history['test_mse'][-1]:.5f}")
    if not context.is_main:
        torch.distributed.destroy_process_group()
        return None  # rank 0 evaluates and writes

    command = "python demos/fashion_mnist.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    report = dict(mode=args.mode, command=command.strip(), setting=setting, seed=args.seed,
                  device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=platform.machine(), package_version=nf.__version__,
                  train_seconds=time.perf_counter() - start, results=results)
    # Fig. 3 shows d = 2, 5, 10 (those of them in this run; else every d run)
    plot_mse_per_epoch(results, [d for d in setting["dims"] if d in (2, 5, 10)]
                       or setting["dims"], out / "mse_per_epoch.png")
    plot_reconstructions(trained, test_x, setting["dims"], out / "reconstructions.png")
    densities = {}
    if args.sample_quality:
        report["table1"], densities = table1(trained, train_x, test_x, test_labels, setting,
                                             args, out)
    if args.calibration:
        report["calibration"] = calibration(trained, test_x, setting, args, out)
    if "FisherNet" in trained:
        report["figures"] = figures(trained, results, densities, test_x, test_labels, setting,
                                    args.seed, out)
    # every figure of this run in the paper's order (Fig. 3 = mse_per_epoch, 9 = latent_density)
    written = ["reconstructions.png", "mse_per_epoch.png"] + report.get("figures", [])
    if args.sample_quality and (out / "latent_density.png").is_file():
        written.append("latent_density.png")
    if args.calibration:
        written.append("calibration.png")
    report["figures"] = sorted(written, key=_paper_order)
    report["wall_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(nf.evaluation.jsonable(report), indent=1))
    write_summary(report, out)
    if context.active:
        torch.distributed.destroy_process_group()

    print(f"\ntest MSE after {setting['epochs']} epochs ({args.mode} setting):")
    print(f"{'model':>14} " + " ".join(f"{'d=' + str(d):>9}" for d in setting["dims"]))
    for name in args.models:
        print(f"{name:>14} " + " ".join(f"{results[name][str(d)]['test_mse']:>9.5f}"
                                        for d in setting["dims"]))
    print(f"\nwrote {out}/summary.md, results.json, figures"
          + (", table1.json, table1.md" if args.sample_quality else ""))
    return report


if __name__ == "__main__":
    main()
