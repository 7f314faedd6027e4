"""The paper's figures for the Fashion-MNIST experiment, drawn with :mod:`nifty_fishernet.plotting`.

Figures of the training record (Figs. 1-3) are drawn from the merged ``results.json``, so they
show every part of a run; figures that need a model (Figs. 4-8, 10, the reconstructions) show
the models whose weights this run has.
"""

from __future__ import annotations

import numpy as np
import torch

from ... import plotting
from ...evaluation import decode_latents, encode_means
from ...fisher import principal_axes

__all__ = ["record_figures", "model_figures"]


def record_figures(results, dims, out):
    """Figs. 1-3 from the training record ``{model: {str(d): {...}}}``; returns file names."""
    written = []
    fisher = results.get("FisherNet", {})
    fisher_dims = [d for d in dims if str(d) in fisher]
    if fisher_dims:
        written.append(plotting.plot_against_dimension(
            {"test loss per datum (Eq. 25, no constants)":
                {"FisherNet": {d: fisher[str(d)]["test_loss"] for d in fisher_dims}},
             "test MSE": {"FisherNet": {d: fisher[str(d)]["test_mse"] for d in fisher_dims}}},
            out / "fig1_fishernet_loss.png", "FisherNet: loss and reconstruction error against d"))
    written.append(plotting.plot_against_dimension(
        {"test MSE": {name: {d: runs[str(d)]["test_mse"] for d in dims if str(d) in runs}
                      for name, runs in results.items()}},
        out / "fig2_mse_vs_d.png", "test MSE against d"))
    # Fig. 3 shows d = 2, 5, 10 (those of them in this run; else every d run)
    shown = [d for d in dims if d in (2, 5, 10)] or list(dims)
    written.append(plotting.plot_histories(
        {d: {name: runs[str(d)]["history"] for name, runs in results.items() if str(d) in runs}
         for d in shown}, "test_mse", out / "mse_per_epoch.png", ylabel="test MSE"))
    return [path.name for path in written]


def model_figures(trained, densities, test_x, test_labels, seed, out):
    """The reconstructions and Figs. 4-8 and 10 from the models at hand.

    Parameters
    ----------
    trained : dict
        ``{name: {d: model}}``; a figure is drawn where its models are present.
    densities : dict
        ``{(name, d, "mkde" | "gmm"): fitted density}`` for Fig. 10.

    Returns
    -------
    list of str
        The file names written.
    """
    written = []
    dims = sorted({d for by_dim in trained.values() for d in by_dim})
    if not dims:
        return written
    rows = {"test images": test_x[:10]}
    for d in dims:
        for name, by_dim in trained.items():
            if d in by_dim:
                rows[f"{name} d={d}"] = decode_latents(by_dim[d],
                                                       encode_means(by_dim[d], test_x[:10]))
    written.append(plotting.plot_image_rows(rows, out / "reconstructions.png"))
    two = {name: by_dim[2] for name, by_dim in trained.items() if 2 in by_dim}
    if two:
        written.append(plotting.plot_latent_means(
            {name: encode_means(m, test_x) for name, m in two.items()},
            test_labels, out / "fig4_latent_means_d2.png"))
    compared = {name: two[name] for name in ("FisherNet", "VAE") if name in two}
    if compared:
        written += _fig5_fig6(compared, test_x, test_labels, out)
    rng = np.random.default_rng(seed)
    for figure, d in (("fig7", min(dims)), ("fig8", 15 if 15 in dims else max(dims))):
        normal = rng.standard_normal((10, d))
        written.append(plotting.plot_image_rows(
            {name: decode_latents(by_dim[d], normal) for name, by_dim in trained.items()
             if d in by_dim},
            out / f"{figure}_normal_samples_d{d}.png", f"decoded N(0,1) latents, d = {d}"))
    fisher = trained.get("FisherNet", {})
    if fisher:
        d = 5 if 5 in fisher else max(fisher)
        path = out / f"fig10_fishernet_samples_d{d}.png"
        found = [(key, label) for key, label in (("mkde", "Matérn KDE"),
                                                 ("gmm", "Gaussian mixture"),
                                                 ("flow", "normalizing flow"))
                 if ("FisherNet", d, key) in densities]
        # the densities are fitted by the part that measures the FisherNet's Table 1: a
        # part without them would replace its figure by the N(0,1) row alone
        if found or not path.exists():
            rows = {"N(0,1)": decode_latents(fisher[d], rng.standard_normal((10, d)))}
            for key, label in found:
                rows[label] = decode_latents(
                    fisher[d], densities["FisherNet", d, key].sample(10, generator=rng))
            written.append(plotting.plot_image_rows(
                rows, path, f"FisherNet d = {d}: latent samples decoded"))
        else:
            written.append(path)
    return [path.name for path in written]


def _posteriors(models, images):
    posteriors = {}
    with torch.no_grad():
        for name, model in models.items():
            mu, cov = model.posterior(torch.as_tensor(images, dtype=model.dtype))
            posteriors[name] = (mu.double(), cov.double())
    return posteriors


def _fig5_fig6(compared, test_x, test_labels, out):
    """Fig. 5 (one image's ellipses, and reconstructions walked along the posterior's axes) and
    Fig. 6 (ellipses of 150 shoes)."""
    posteriors = _posteriors(compared, test_x[:1])
    written = [plotting.plot_uncertainty_ellipses(
        {name: (mu.numpy(), cov.numpy()) for name, (mu, cov) in posteriors.items()},
        out / "fig5_ellipses_one_image.png")]
    rows = {"test image": test_x[:1]}
    for name, (mu, cov) in posteriors.items():
        std, axes = principal_axes(cov[0])
        for axis in range(2):  # largest first
            steps = torch.stack([mu[0] + s * std[axis] * axes[:, axis] for s in (-2, -1, 0, 1, 2)])
            rows[f"{name} axis {axis + 1} (-2..2 sigma)"] = decode_latents(compared[name],
                                                                          steps.numpy())
    written.append(plotting.plot_image_rows(
        rows, out / "fig5_reconstructions_along_axes.png",
        "reconstructions at -2, -1, 0, +1, +2 sigma along the posterior's axes"))
    shoes = np.flatnonzero(np.isin(test_labels, (5, 7, 9)))[:150]
    posteriors = _posteriors(compared, test_x[shoes])
    written.append(plotting.plot_uncertainty_ellipses(
        {name: (mu.numpy(), cov.numpy()) for name, (mu, cov) in posteriors.items()},
        out / "fig6_shoe_ellipses.png", classes=(5, 7, 9), labels=test_labels[shoes]))
    return written
