"""The paper's figures for the Fashion-MNIST experiment, drawn with :mod:`nifty_fishernet.plotting`.

Figures of the training record (Figs. 1-3) are drawn from the merged ``results.json``, so they
show every part of a run; figures that need a model (Figs. 4-8, 10, the reconstructions) are
drawn where every model of the record they show has its weights at hand, and kept as they
are otherwise.
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


def model_figures(trained, densities, test_x, test_labels, seed, out, cells=None):
    """The reconstructions and Figs. 4-8 and 10 from the models at hand.

    A figure is drawn only where every model it shows is at hand: a part of a run in parts
    that has only some of the record's models leaves the figures drawn from all of them as
    they are, instead of replacing them with figures of its own models alone.

    Parameters
    ----------
    trained : dict
        ``{name: {d: model}}``, the models at hand.
    densities : dict
        ``{(name, d, "mkde" | "gmm" | "flow"): fitted density}`` for Fig. 10.
    cells : dict, optional
        ``{name: dims}``, the record's cells the figures show (default: those of
        ``trained``); the latent dimensions of Figs. 7, 8 and 10 are chosen from them.

    Returns
    -------
    list of str
        The file names of the figures drawn and of those kept as they were.
    """
    if cells is None:
        cells = trained
    cells = {name: sorted({int(d) for d in dims}) for name, dims in cells.items() if dims}
    dims = sorted({d for by_dim in cells.values() for d in by_dim})
    written = []
    if not dims:
        return written

    def figure(paths, shown, draw):
        """Write the files ``paths`` by ``draw()`` if every model of ``shown``
        (``[(name, d)]``) is at hand, else keep those of them there are."""
        if shown and all(d in trained.get(name, {}) for name, d in shown):
            draw()
            written.extend(paths)
        else:
            written.extend(path for path in paths if path.exists())

    every = [(name, d) for d in dims for name, by_dim in cells.items() if d in by_dim]
    figure([out / "reconstructions.png"], every, lambda: plotting.plot_image_rows(
        {"test images": test_x[:10]} | {
            f"{name} d={d}": decode_latents(trained[name][d],
                                            encode_means(trained[name][d], test_x[:10]))
            for name, d in every}, out / "reconstructions.png"))
    two = [name for name, by_dim in cells.items() if 2 in by_dim]
    figure([out / "fig4_latent_means_d2.png"], [(name, 2) for name in two],
           lambda: plotting.plot_latent_means(
               {name: encode_means(trained[name][2], test_x) for name in two},
               test_labels, out / "fig4_latent_means_d2.png"))
    compared = [name for name in ("FisherNet", "VAE") if name in two]
    if compared:
        figure([out / name for name in _FIG5_FIG6], [(name, 2) for name in compared],
               lambda: _fig5_fig6({name: trained[name][2] for name in compared}, test_x,
                                  test_labels, out))
    rng = np.random.default_rng(seed)
    for number, d in (("fig7", min(dims)), ("fig8", 15 if 15 in dims else max(dims))):
        normal = rng.standard_normal((10, d))
        path = out / f"{number}_normal_samples_d{d}.png"
        names = [name for name, by_dim in cells.items() if d in by_dim]
        figure([path], [(name, d) for name in names], lambda: plotting.plot_image_rows(
            {name: decode_latents(trained[name][d], normal) for name in names},
            path, f"decoded N(0,1) latents, d = {d}"))
    if "FisherNet" in cells:
        d = 5 if 5 in cells["FisherNet"] else max(cells["FisherNet"])
        path = out / f"fig10_fishernet_samples_d{d}.png"
        found = [(key, label) for key, label in (("mkde", "Matérn KDE"),
                                                 ("gmm", "Gaussian mixture"),
                                                 ("flow", "normalizing flow"))
                 if ("FisherNet", d, key) in densities]
        fisher = trained.get("FisherNet", {})

        def fig10():
            rows = {"N(0,1)": decode_latents(fisher[d], rng.standard_normal((10, d)))}
            for key, label in found:
                rows[label] = decode_latents(
                    fisher[d], densities["FisherNet", d, key].sample(10, generator=rng))
            return plotting.plot_image_rows(rows, path,
                                            f"FisherNet d = {d}: latent samples decoded")

        # the densities are fitted by the part that measures the FisherNet's Table 1: a
        # part without them would replace its figure by the N(0,1) row alone
        figure([path], [("FisherNet", d)] if found or not path.exists() else [], fig10)
    return [path.name for path in written]


_FIG5_FIG6 = ("fig5_ellipses_one_image.png", "fig5_reconstructions_along_axes.png",
              "fig6_shoe_ellipses.png")


def _posteriors(models, images):
    posteriors = {}
    with torch.no_grad():
        for name, model in models.items():
            mu, cov = model.posterior(torch.as_tensor(images, dtype=model.dtype))
            posteriors[name] = (mu.double(), cov.double())
    return posteriors


def _fig5_fig6(compared, test_x, test_labels, out):
    """Fig. 5 (one image's ellipses, and reconstructions walked along the posterior's axes) and
    Fig. 6 (ellipses of 150 shoes), written as the files named in ``_FIG5_FIG6``."""
    posteriors = _posteriors(compared, test_x[:1])
    plotting.plot_uncertainty_ellipses(
        {name: (mu.numpy(), cov.numpy()) for name, (mu, cov) in posteriors.items()},
        out / "fig5_ellipses_one_image.png")
    rows = {"test image": test_x[:1]}
    for name, (mu, cov) in posteriors.items():
        std, axes = principal_axes(cov[0])
        for axis in range(2):  # largest first
            steps = torch.stack([mu[0] + s * std[axis] * axes[:, axis] for s in (-2, -1, 0, 1, 2)])
            rows[f"{name} axis {axis + 1} (-2..2 sigma)"] = decode_latents(compared[name],
                                                                          steps.numpy())
    plotting.plot_image_rows(
        rows, out / "fig5_reconstructions_along_axes.png",
        "reconstructions at -2, -1, 0, +1, +2 sigma along the posterior's axes")
    shoes = np.flatnonzero(np.isin(test_labels, (5, 7, 9)))[:150]
    posteriors = _posteriors(compared, test_x[shoes])
    plotting.plot_uncertainty_ellipses(
        {name: (mu.numpy(), cov.numpy()) for name, (mu, cov) in posteriors.items()},
        out / "fig6_shoe_ellipses.png", classes=(5, 7, 9), labels=test_labels[shoes])
