"""Training variants of the FisherNet judged by how honest their latent posteriors are.

Trains, in the main job's quick setting (5 epochs on 12,000 Fashion-MNIST images, Adam lr
1e-3, noise lr 1e-2, batch 64, seed 0), a FisherNet per latent dimension with

- ``paper``: the loss of Eq. 25 (one sample, no log-determinant);
- ``S=4``: four samples per datum in the loss;
- ``log det``: the term ``1/2 ln |M(mu)|`` of Eq. 24 kept;
- ``MAP pull``, ``MAP pull 0.01``: an encoder term pulling the mean towards the MAP of
  each datum's own posterior (``map_weight=1`` or ``0.01``, 3 Newton steps per batch),

and reports side by side: test MSE, the FID of the test reconstructions (Fashion-MNIST
classifier features), and the calibration of the amortized and the refined (Laplace)
posteriors (``nifty_fishernet.calibration.calibrate``: coverage on data simulated from each
model, exact-posterior mass on real test images). Writes ``variants.json``, ``variants.md``
and ``variants.png`` into the output folder; variants run separately (``--variants``) are
merged into the results already there::

    python demos/calibration_variants.py [--out output/calibration_variants] [--dims 2 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

import nifty_fishernet as nf
from nifty_fishernet.cache import fingerprint
from nifty_fishernet.calibration import calibrate

VARIANTS = {"paper": {}, "S=4": dict(n_samples=4), "log det": dict(log_det=True),
            "MAP pull": dict(map_weight=1.0, map_steps=3),
            "MAP pull 0.01": dict(map_weight=0.01, map_steps=3)}
METHODS = {"amortized": dict(refine=False), "refined (Laplace)": dict(refine=True)}
SETTING = dict(epochs=5, n_train=12000, lr=1e-3, noise_lr=1e-2, batch_size=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/calibration_variants"))
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=SETTING["epochs"])
    parser.add_argument("--n-train", type=int, default=SETTING["n_train"])
    parser.add_argument("--fid-images", type=int, default=2000)
    parser.add_argument("--sims", type=int, default=300, help="simulated data per model")
    parser.add_argument("--images", type=int, default=64, help="real images per model")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def plot(results, path):
    dims = sorted({d for by_dim in results.values() for d in by_dim})
    fig = Figure(figsize=(5 * len(dims), 3.8))
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    for ax, d in zip(axes, dims):
        names = [name for name in results if d in results[name]]
        for k, method in enumerate(METHODS):
            for level, marker in (("68", "o"), ("95", "s")):
                ax.plot(np.arange(len(names)) + 0.15 * k,
                        [results[n][d]["calibration"]["simulated"][method]["coverage"][level]
                         for n in names], marker, color=f"C{k}", ls="none",
                        label=f"{method} {level} %")
        for level in (0.68, 0.95):
            ax.axhline(level, ls="--", color="0.5", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set(ylim=(0, 1.02), title=f"d = {d}: coverage of the true z (simulated)",
               ylabel="coverage")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    train_x, _ = nf.load_fashion_mnist("train")
    test_x, _ = nf.load_fashion_mnist("test")
    train_x = train_x[np.random.default_rng(args.seed).permutation(len(train_x))[:args.n_train]]
    setting = dict(SETTING, epochs=args.epochs, n_train=args.n_train)
    started = time.perf_counter()
    record = args.out / "variants.json"
    # earlier parts of the same experiment (other variants or dimensions) are kept
    results = ({name: {int(d): entry for d, entry in by_dim.items()}
                for name, by_dim in json.loads(record.read_text())["results"].items()}
               if record.is_file() else {})
    for name in args.variants:
        results.setdefault(name, {})
        for d in args.dims:
            options = VARIANTS[name]
            key = fingerprint(dict(d=d, seed=args.seed, options=options, **setting))[:10]
            torch.manual_seed(args.seed)
            model = nf.FisherNet(d, **options)
            history = nf.train(model, train_x, test_x, epochs=setting["epochs"],
                               batch_size=setting["batch_size"], lr=setting["lr"],
                               noise_lr=setting["noise_lr"], device="cpu", seed=args.seed,
                               checkpoint=args.out / "models" / f"FisherNet_d{d}_{key}.h5")
            model.eval()
            reconstructions = nf.evaluation.decode_latents(
                model, nf.evaluation.encode_means(model, test_x[:args.fid_images]))
            rec_fid = nf.fid(test_x[:args.fid_images], reconstructions, features="fmnist")
            began = time.perf_counter()
            calibration = calibrate(model, test_x, methods=METHODS, n_simulated=args.sims,
                                    n_real=args.images, n_reference=0, seed=args.seed)
            results[name][d] = dict(options=options, test_mse=history["test_mse"][-1],
                                    noise_std=history["noise_std"][-1],
                                    seconds_per_epoch=float(np.mean(history["seconds"])),
                                    rec_fid=rec_fid, calibration=calibration,
                                    calibration_seconds=time.perf_counter() - began)
            sim = calibration["simulated"]
            print(f"{name:>9} d={d}: test MSE {history['test_mse'][-1]:.5f}, rec FID "
                  f"{rec_fid:.1f}, coverage amortized {sim['amortized']['coverage']['68']:.2f}/"
                  f"{sim['amortized']['coverage']['95']:.2f}, refined "
                  f"{sim['refined (Laplace)']['coverage']['68']:.2f}/"
                  f"{sim['refined (Laplace)']['coverage']['95']:.2f}", flush=True)
    lines = ["| variant | d | test MSE | rec FID | σ_N | s / epoch | amortized: coverage 68 / 95 "
             "| amortized: exact mass 68 / 95 | amortized: mean error [σ] | refined: coverage "
             "68 / 95 | refined: exact mass 68 / 95 |", "|---|---|---|---|---|---|---|---|---|"
             "---|---|"]
    for name, by_dim in results.items():
        for d, entry in by_dim.items():
            sim, real = entry["calibration"]["simulated"], entry["calibration"]["real"]
            a, r = "amortized", "refined (Laplace)"
            lines.append(
                f"| {name} | {d} | {entry['test_mse']:.5f} | {entry['rec_fid']:.1f} | "
                f"{entry['noise_std']:.4f} | {entry['seconds_per_epoch']:.1f} | "
                f"{sim[a]['coverage']['68']:.2f} / {sim[a]['coverage']['95']:.2f} | "
                f"{real[a]['mass_68']['mean']:.2f} / {real[a]['mass_95']['mean']:.2f} | "
                f"{real[a]['mean_error_sigma']['median']:.1f} | "
                f"{sim[r]['coverage']['68']:.2f} / {sim[r]['coverage']['95']:.2f} | "
                f"{real[r]['mass_68']['mean']:.2f} / {real[r]['mass_95']['mean']:.2f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "variants.md").write_text(table)
    report = dict(command="python demos/calibration_variants.py", settings=dict(
        vars(args), out=str(args.out)), training=setting,
        hardware=f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        seconds=time.perf_counter() - started, results=results)
    (args.out / "variants.json").write_text(json.dumps(nf.io.jsonable(report),
                                                       indent=1))
    plot(results, args.out / "variants.png")
    print(table)
    return report


if __name__ == "__main__":
    main()
