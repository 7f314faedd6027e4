"""A trained FisherNet as the prior of one component of a realistic NIFTy model.

Photon counts of Fashion-MNIST test images seen through an instrument::

    counts ~ Poisson(exposure * M B (object + background))

- ``object``: the FisherNet's decoder ``f(z)``, ``z ~ N(0, 1)`` (d = 5), on the image domain
  ``(UnstructuredDomain(B), RGSpace((28, 28), distances=1))`` (``image_shape=``), plus the
  decoder's own misfit ``sigma_N * eps`` with ``eps ~ N(0, 1)`` per pixel (the learned
  ``e^{xi_N} = sigma_N^2``; ``--no-misfit`` leaves it out, and the posterior's error bars
  then cover the truth far less often than they claim); negative values are clipped at 0;
- ``background``: a smooth, positive correlated field (``ift.CorrelatedFieldMaker``, one
  field per image, log-normal around 0.1);
- ``B``: a Gaussian PSF (``ift.HarmonicSmoothingOperator``, sigma in pixels); ``M``: dead
  columns and randomly missing pixels (``ift.MaskOperator``); ``exposure``: counts per unit
  intensity.

The truth is a real test image plus a background drawn from the field's prior, so the decoder
does not hold the truth exactly. ``nf.infer_latents`` infers the latents and the background's
keys jointly with MGVI and geoVI, from the encoder's mean of the exposure-corrected counts
(``nf.encoder_position``) and the background at 0. Compared on the object (the image
without background) and on the total sky, by mean squared error over all pixels and over
the masked pixels alone, and by how often the posterior's sky std covers the true sky:

- the encoder alone, applied to ``counts / exposure`` (masked pixels 0);
- the FisherNet + background model (MGVI, geoVI);
- a correlated-field-only model of the sky (MGVI; its "object" is its sky minus the true
  background, a favour to it).

Writes ``nifty_prior.json``, ``summary.md`` and ``nifty_prior.png`` (truth, data, posterior
mean, std and background per image)::

    python demos/nifty_prior.py [--checkpoint PATH] [--out output/nifty_prior]

With the default settings it finishes in under 5 minutes on 2 CPU cores (measured: 100 s;
see the JSON's ``seconds``). The model is ``nf.quick_fishernet(5, --checkpoint)``: the main
job's d = 5 FisherNet, else the quick recipe, trained once (about 1 minute) and cached.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import nifty_fishernet as nf
from nifty_fishernet.nifty import decoder_operator, decoder_target, ift
from nifty_fishernet.nifty.compat import values

IMAGE = (28, 28)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/nifty_prior"))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained d = 5 FisherNet; default: nf.quick_fishernet(5)")
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--exposure", type=float, default=30.0,
                        help="expected counts per unit intensity")
    parser.add_argument("--psf-sigma", type=float, default=1.0, help="PSF width in pixels")
    parser.add_argument("--missing", type=float, default=0.1,
                        help="fraction of randomly missing pixels (plus two dead columns)")
    parser.add_argument("--n-samples", type=int, default=4, help="antithetic sample pairs")
    parser.add_argument("--iterations", type=int, default=4, help="global KL iterations")
    parser.add_argument("--methods", nargs="+", default=["mgvi", "geovi"],
                        choices=["mgvi", "geovi"])
    parser.add_argument("--no-field-only", action="store_true",
                        help="skip the correlated-field-only comparison")
    parser.add_argument("--no-misfit", dest="misfit", action="store_false",
                        help="leave out the decoder's misfit field (overconfident posterior)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)



def background_model(batch, prefix, offset=0.1, fluctuations=(0.3, 0.1), slope=(-4.0, 0.5)):
    """``exp`` of a correlated field per image: smooth and positive, around ``offset``."""
    maker = ift.CorrelatedFieldMaker(prefix, total_N=batch)
    maker.add_fluctuations(ift.RGSpace(IMAGE, distances=1.0), fluctuations, None, None, slope)
    maker.set_amplitude_total_offset(np.log(offset), (0.3, 0.1))
    return maker.finalize(prior_info=0).exp()


def instrument(batch, args, rng):
    """``M B``: PSF then mask (two dead columns and random missing pixels)."""
    domain = decoder_target(batch, 784, IMAGE)
    psf = ift.HarmonicSmoothingOperator(domain, args.psf_sigma, space=1)
    hidden = rng.uniform(size=domain.shape) < args.missing
    hidden[:, :, 9:11] = True
    return ift.MaskOperator(ift.makeField(domain, hidden)) @ psf, hidden


def run(args):
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    model, source = nf.quick_fishernet(5, args.checkpoint)
    test, _ = nf.load_fashion_mnist("test")
    batch = args.n_images
    objects = test[:batch].astype(np.float64).reshape((batch,) + IMAGE)
    response, hidden = instrument(batch, args, rng)
    exposure = float(args.exposure)

    background = background_model(batch, "background_")
    with ift.random.Context(args.seed + 1):
        true_background = values(background(ift.from_random(background.domain)))
    true_sky = objects + true_background
    rate = exposure * values(response(ift.makeField(response.domain, true_sky)))
    counts = rng.poisson(rate)
    data = ift.makeField(response.target, counts)

    decoder = decoder_operator(model, batch, image_shape=IMAGE)
    if args.misfit:
        # the decoder's own misfit as a pixel field: object = f(z) + sigma_N * eps
        decoder = decoder + model.noise_std * ift.FieldAdapter(decoder.target, "misfit")
    decoder = decoder.clip(0.0, None)
    sky = decoder + background
    # the PSF's FFTs can round a vanishing sky to tiny negative rates: floor them
    likelihood = ift.PoissonianEnergy(data) @ (exposure * response @ sky).clip(1e-12, None)
    # masked pixels 0, PSF kept
    observed = values(response.adjoint(ift.makeField(response.target, counts / exposure)))
    start = nf.encoder_position(model, observed.reshape(batch, -1), domain=likelihood.domain)
    with torch.no_grad():
        encoder_object = model.decode(torch.tensor(
            values(start["latent"]), dtype=model.dtype)).double().numpy().reshape(objects.shape)

    def mse(estimate, truth, where=None):
        where = np.ones(truth.shape, bool) if where is None else where
        return float(np.mean((estimate - truth)[where] ** 2))

    def within(mean, std):
        """How often the posterior's own error bars (1 and 2 std) cover the true sky."""
        error = np.abs(mean - true_sky)
        return {"sky_within_1sigma": float(np.mean(error < std)),
                "sky_within_2sigma": float(np.mean(error < 2 * std))}

    rows = {"encoder on counts / exposure": {
        "object_mse": mse(encoder_object, objects),
        "object_mse_masked": mse(encoder_object, objects, hidden)}}
    shown = {}
    for method in args.methods:
        posterior = nf.infer_latents(likelihood, start, method, n_samples=args.n_samples,
                                     total_iterations=args.iterations, seed=args.seed)
        object_mean, object_var = posterior.samples.sample_stat(decoder)
        sky_mean, sky_var = posterior.samples.sample_stat(sky)
        background_mean, _ = posterior.samples.sample_stat(background)
        sky_std = np.sqrt(values(sky_var))
        rows[f"FisherNet + background ({method})"] = {
            "object_mse": mse(values(object_mean), objects),
            "object_mse_masked": mse(values(object_mean), objects, hidden),
            "sky_mse": mse(values(sky_mean), true_sky),
            "background_mse": mse(values(background_mean), true_background),
            **within(values(sky_mean), sky_std), "seconds": posterior.seconds}
        shown[method] = {"object mean": values(object_mean), "sky std": sky_std,
                         "background": values(background_mean)}
        print(f"{method}: object MSE {rows[f'FisherNet + background ({method})']['object_mse']:.4f}"
              f" ({posterior.seconds:.0f} s)")

    # The alternative without the network: the whole sky as one correlated field.
    field_mean = None
    if not args.no_field_only:
        field = background_model(batch, "sky_", offset=0.2, fluctuations=(1.0, 0.5),
                                 slope=(-2.5, 0.5))
        field_likelihood = (ift.PoissonianEnergy(data)
                            @ (exposure * response @ field).clip(1e-12, None))
        began = time.perf_counter()
        controllers = nf.default_minimizers("mgvi", batch, blockwise=False)
        samples, _ = nf.nifty.variational_inference(
            field_likelihood, ift.full(field_likelihood.domain, 0.0), "mgvi", args.n_samples,
            args.iterations, seed=args.seed, threads=1, **controllers)
        field_mean, field_var = samples.sample_stat(field)
        field_mean = values(field_mean)
        rows["correlated field only (mgvi)"] = {
            "object_mse": mse(field_mean - true_background, objects),
            "object_mse_masked": mse(field_mean - true_background, objects, hidden),
            "sky_mse": mse(field_mean, true_sky),
            **within(field_mean, np.sqrt(values(field_var))), "seconds": time.perf_counter() - began}
        print(f"correlated field: sky MSE {rows['correlated field only (mgvi)']['sky_mse']:.4f}")

    plot(args.out / "nifty_prior.png", objects, true_background, observed, hidden, shown,
         field_mean)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "model": source, "nifty": nf.nifty.NIFTY,
              "hardware": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "mean_counts_per_pixel": float(counts.mean()),
              "results": rows, "seconds": time.perf_counter() - started}
    (args.out / "nifty_prior.json").write_text(json.dumps(report, indent=2))
    return report


def plot(path, objects, true_background, observed, hidden, shown, field_mean, n_show=4):
    columns = [("true object", objects, "gray"), ("true background", true_background, "magma"),
               ("counts / exposure\n(masked: white)", observed, "gray")]
    for method, images in shown.items():
        columns += [(f"{method} object mean", images["object mean"], "gray"),
                    (f"{method} sky std", images["sky std"], "magma"),
                    (f"{method} background", images["background"], "magma")]
    if field_mean is not None:
        columns.append(("correlated field only\n(sky mean)", field_mean, "gray"))
    rows = min(n_show, len(objects))
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.4 * rows + 0.5),
                             squeeze=False)
    for j, (title, images, cmap) in enumerate(columns):
        vmax = float(np.max(images[:rows])) if cmap == "magma" else 1.2
        for i in range(rows):
            shown_image = np.where(hidden[i], np.nan, images[i]) if title.startswith("counts") \
                else images[i]
            axes[i, j].imshow(shown_image, cmap=cmap, vmin=0.0, vmax=vmax)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"{title}\n(0 to {vmax:.2f})", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    lines = ["| model | object MSE | on masked pixels | sky MSE | sky within 1 / 2 std "
             "| seconds |", "|---|---|---|---|---|---|"]
    for name, row in report["results"].items():
        sky = f"{row['sky_mse']:.4f}" if "sky_mse" in row else "-"
        within = (f"{row['sky_within_1sigma']:.2f} / {row['sky_within_2sigma']:.2f}"
                  if "sky_within_2sigma" in row else "-")
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        lines.append(f"| {name} | {row['object_mse']:.4f} | {row['object_mse_masked']:.4f} "
                     f"| {sky} | {within} | {seconds} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
