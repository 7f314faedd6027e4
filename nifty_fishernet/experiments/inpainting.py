"""A trained FisherNet as a prior inside a NIFTy model: inpainting and deblurring.

Fashion-MNIST test images are observed through a linear response and noise,
``d = R(x) + n``: (1) ``mask``: the lower half of every image hidden; (2) ``blur``: a Gaussian
blur (sigma 1.5 pixels). The latent ``z`` of ``x = f(z)`` is inferred with NIFTy's MGVI and
geoVI (``nifty_fishernet.latent_posterior`` with ``response=R``). Reported per case: the MSE
on the pixels the response hides (mask: the hidden half; blur: all pixels) of the posterior
mean image, next to the encoder applied to the observation (hidden pixels set to 0, blurred
image as is) and to the noise levels (the added noise and the decoder's own misfit, measured
on training images). Writes ``results.json``, ``summary.md`` and one figure
per case (truth, observation, encoder baseline, posterior mean, pixel-wise standard
deviation, two samples).

The model is ``--checkpoint`` (default: the newest d = 5 FisherNet of
``demos/fashion_mnist.py``, ``output/fashion_mnist/models/FisherNet_d5_<key>.h5``); if there
is none, ``nf.quick_fishernet`` trains one with the quick demo's settings (5 epochs, 12,000
images, lr 1e-3, noise_lr 1e-2) and keeps it in the user cache::

    python demos/inpainting.py [--checkpoint PATH]
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

import nifty_fishernet as nf
from nifty_fishernet.nifty import gaussian_blur, ift, pixel_mask
from nifty_fishernet.nifty.compat import values

SIDE = 28


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/inpainting"))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained d = 5 FisherNet; default: nf.quick_fishernet(5)")
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--noise-std", type=float, default=0.1,
                        help="standard deviation of the noise added to the observation")
    parser.add_argument("--blur-sigma", type=float, default=1.5)
    parser.add_argument("--n-samples", type=int, default=5, help="antithetic sample pairs")
    parser.add_argument("--iterations", type=int, default=4, help="optimize_kl iterations")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)



def decoder_misfit(model, n=1000):
    """Mean squared reconstruction error per pixel on ``n`` training images."""
    train, _ = nf.load_fashion_mnist("train")
    with torch.no_grad():
        x = torch.from_numpy(train[-n:]).to(model.dtype)
        return float(((model.reconstruct(x) - x) ** 2).mean())


def run_case(name, model, model_variance, truth, response, hidden, args, rng):
    """Observe ``truth`` through ``response``, infer, and score on the ``hidden`` pixels.

    ``model_variance`` is the decoder's own misfit, which adds to the observation noise.
    """
    clean = values(response(ift.makeField(response.domain, truth)))
    data = clean + args.noise_std * rng.normal(size=clean.shape)
    observed = values(response.adjoint(ift.makeField(response.target, data)))  # hidden: 0
    with torch.no_grad():
        x = torch.tensor(observed, dtype=model.dtype)
        baseline = model.decoder(model.encode(x)).double().numpy()

    def hidden_mse(images):
        return float(np.mean((images - truth)[hidden] ** 2))

    row = {"encoder on observation": {"mse_hidden": hidden_mse(baseline)},
           "noise levels": {"added_variance": args.noise_std ** 2,
                            "model_variance": model_variance,
                            "learned_exp_xi_N": math.exp(model.xi_n.item())}}
    shown = {"truth": truth, "observation": observed, "encoder": baseline}
    for method in ("mgvi", "geovi"):
        # The data see the decoder's misfit through the response plus the added noise:
        # C = R (model_variance) R^T + noise_std^2 (exact; a blur mixes the misfit).
        result = nf.latent_posterior(model, data, method=method, n_samples=args.n_samples,
                                     response=response, noise=args.noise_std ** 2,
                                     misfit=model_variance, total_iterations=args.iterations,
                                     seed=args.seed)
        images = result.images()
        mean, std = result.predictive()  # includes the misfit
        _, latent_std = result.predictive(include_noise=False)
        error = np.abs(mean - truth)[hidden]
        row[method] = {"mse_hidden": hidden_mse(mean), "seconds": result.seconds,
                       "mean_pixel_std_hidden": float(std[hidden].mean()),
                       "rms_predictive_std_hidden": float(np.sqrt(np.mean(std[hidden] ** 2))),
                       "rms_error_hidden": float(np.sqrt(np.mean(error ** 2))),
                       "mean_latent_pixel_std_hidden": float(latent_std[hidden].mean()),
                       "within_2sigma_hidden": float(np.mean(error <= 2 * std[hidden]))}
        shown[f"{method} mean"] = mean
        shown[f"{method} std"] = std
        shown[f"{method} sample 1"] = images[0]
        shown[f"{method} sample 2"] = images[1]
        print(f"{name} {method}: hidden-pixel MSE {row[method]['mse_hidden']:.4f} "
              f"({result.seconds:.0f} s)")
    plot_case(args.out / f"{name}.png", name, shown, row)
    return row


def plot_case(path, name, shown, row, n_show=6):
    keys = list(shown)
    fig, axes = plt.subplots(n_show, len(keys), figsize=(1.25 * len(keys), 1.3 * n_show + 0.6))
    for j, key in enumerate(keys):
        vmax = max(1e-6, float(shown[key][:n_show].max())) if "std" in key else 1.0
        for i in range(n_show):
            axes[i, j].imshow(shown[key][i].reshape(SIDE, SIDE), cmap="gray" if "std" not in key
                              else "magma", vmin=0.0, vmax=vmax)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        # The std columns share one linear scale from black (0) to white (vmax), stated here.
        title = f"{key}\n(0 to {vmax:.3f})" if "std" in key else key
        axes[0, j].set_title(title, fontsize=7)
    encoder = row["encoder on observation"]["mse_hidden"]
    fig.suptitle(f"{name}: hidden-pixel MSE encoder {encoder:.4f}, "
                 f"MGVI {row['mgvi']['mse_hidden']:.4f}, geoVI {row['geovi']['mse_hidden']:.4f}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, source = nf.quick_fishernet(5, args.checkpoint)
    test, _ = nf.load_fashion_mnist("test")
    truth = test[:args.n_images].astype(np.float64)
    rng = np.random.default_rng(args.seed)
    batch = truth.shape[0]

    lower_half = np.zeros((SIDE, SIDE), dtype=bool)
    lower_half[SIDE // 2:] = True
    lower_half = np.broadcast_to(lower_half.reshape(-1), truth.shape)
    # Measured on training images: after a short training run the learned exp(xi_N) is still
    # far above it (xi_N moves about one learning rate per step from 0), see README.
    misfit = decoder_misfit(model)
    results = {
        "mask": run_case("mask", model, misfit, truth, pixel_mask(lower_half), lower_half,
                         args, rng),
        "blur": run_case("blur", model, misfit, truth,
                         gaussian_blur(batch, sigma=args.blur_sigma),
                         np.ones_like(truth, dtype=bool), args, rng),
    }
    lines = ["| case | encoder on observation | MGVI | geoVI | added noise variance "
             "| model noise variance |", "|---|---|---|---|---|---|"]
    for case, row in results.items():
        lines.append(f"| {case} | {row['encoder on observation']['mse_hidden']:.4f} "
                     f"| {row['mgvi']['mse_hidden']:.4f} | {row['geovi']['mse_hidden']:.4f} "
                     f"| {row['noise levels']['added_variance']:.4f} "
                     f"| {row['noise levels']['model_variance']:.4f} |")
    summary = ("MSE on the hidden pixels (mask: lower half; blur: all pixels) of "
               f"{batch} test images\n\n" + "\n".join(lines) + "\n")
    (args.out / "summary.md").write_text(summary)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "model": source,
              "hardware": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}",
              "seconds": time.perf_counter() - started, "results": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(summary)
    return report


if __name__ == "__main__":
    main()
