"""The paper's figures (PNG via matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = ["plot_latent_density", "plot_against_dimension", "plot_latent_means",
           "plot_uncertainty_ellipses", "plot_image_rows", "plot_calibration", "plot_histories"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def plot_latent_density(density, means, path, labels=None, n_samples=2000, generator=0,
                        resolution=200, title=None):
    """The paper's Fig. 9: a fitted 2-D latent density, the latent means, and its samples.

    Parameters
    ----------
    density : nifty_fishernet.density.LatentDensity
        Fitted in two dimensions.
    means : array-like
        ``(n, 2)`` latent means (e.g. of the test set) drawn on the density.
    path : str or path-like
        PNG file to write.
    labels : array-like, optional
        ``(n,)`` Fashion-MNIST classes for colouring the means.
    n_samples : int
        Draws from the density shown in the right panel.
    generator : int or numpy.random.Generator
        For the draws.
    resolution : int
        Evaluation grid points per axis.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
    """
    means = np.asarray(means, dtype=float)
    if density.latent_dim != 2 or means.ndim != 2 or means.shape[1] != 2:
        raise ValueError(f"need a 2-D density and (n, 2) means, got a {density.latent_dim}-D "
                         f"density and means of shape {means.shape}")
    low, high = means.min(axis=0), means.max(axis=0)
    pad = 0.05 * (high - low)
    axes_values = [np.linspace(lo - p, hi + p, resolution) for lo, hi, p in zip(low, high, pad)]
    grid = np.stack(np.meshgrid(*axes_values, indexing="xy"), axis=-1).reshape(-1, 2)
    values = np.exp(density.log_density(grid)).reshape(resolution, resolution)
    draws = density.sample(n_samples, generator=generator)

    fig = Figure(figsize=(15, 4.6))
    panels = fig.subplots(1, 3, sharex=True, sharey=True)
    positive = values[values > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max())
    mesh = panels[0].pcolormesh(axes_values[0], axes_values[1], np.maximum(values, norm.vmin),
                                cmap="viridis", norm=norm, shading="auto")
    fig.colorbar(mesh, ax=panels[0], label="density (log scale)")
    panels[0].set_title(f"{type(density).__name__}")
    if labels is None:
        panels[1].scatter(means[:, 0], means[:, 1], s=2, c="tab:blue", alpha=0.5)
    else:
        labels = np.asarray(labels)
        for k in np.unique(labels):
            sel = labels == k
            name = FASHION_CLASSES[k] if 0 <= k < len(FASHION_CLASSES) else str(k)
            panels[1].scatter(means[sel, 0], means[sel, 1], s=2, alpha=0.6, label=name)
        panels[1].legend(markerscale=5, fontsize=7, loc="upper right", ncol=2)
    panels[1].set_title(f"{len(means)} latent means")
    panels[2].scatter(draws[:, 0], draws[:, 1], s=2, c="tab:red", alpha=0.5)
    panels[2].set_title(f"{n_samples} samples from the density")
    for ax in panels:
        ax.set_xlabel("$z_1$")
    panels[0].set_ylabel("$z_2$")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_against_dimension(panels, path, title=None):
    """Figs. 1-2: quantities against the latent dimension, one panel each, a line per model.

    Parameters
    ----------
    panels : dict
        ``{y-axis label: {model name: {latent_dim: value}}}``; e.g. Fig. 1 is the FisherNet's
        test loss and its test MSE, Fig. 2 the test MSE of every model.
    path : str or path-like
        PNG file to write.
    title : str, optional
        Figure title.
    """
    fig = Figure(figsize=(5.0 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (ylabel, values) in zip(axes, panels.items()):
        for name, by_dim in values.items():
            dims = sorted(by_dim)
            ax.plot(dims, [by_dim[d] for d in dims], "o-", label=name)
        ax.set_xlabel("latent dimension d")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _ellipse(ax, mean, cov, scale, **style):
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    width, height = 2 * scale * np.sqrt(np.maximum(values[::-1], 0))
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, **style))


def plot_latent_means(means_by_model, labels, path):
    """Fig. 4: 2-D latent means of the test set coloured by class, one panel per model."""
    names = list(means_by_model)
    fig = Figure(figsize=(4.2 * len(names), 4))
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    labels = np.asarray(labels)
    for ax, name in zip(axes, names):
        means = np.asarray(means_by_model[name])
        for k in np.unique(labels):
            sel = labels == k
            ax.scatter(means[sel, 0], means[sel, 1], s=1, alpha=0.5,
                       label=FASHION_CLASSES[k] if k < len(FASHION_CLASSES) else str(k))
        ax.set_title(name)
        ax.set_xlabel("$z_1$")
    axes[0].set_ylabel("$z_2$")
    axes[-1].legend(markerscale=6, fontsize=6, loc="best")
    return _save(fig, path)


def plot_uncertainty_ellipses(posteriors, path, classes=None, labels=None):
    """Figs. 5-6: 1 and 2 sigma ellipses of 2-D latent posteriors, one panel per model.

    Parameters
    ----------
    posteriors : dict
        ``{model name: (means (n, 2), covariances (n, 2, 2))}``.
    classes, labels : optional
        Colour the points by ``labels`` restricted to ``classes`` (Fig. 6: the shoe classes);
        without them every point gets 1 and 2 sigma ellipses (Fig. 5).
    """
    names = list(posteriors)
    fig = Figure(figsize=(4.5 * len(names), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(names), sharex=True, sharey=True))
    for ax, name in zip(axes, names):
        means, covs = (np.asarray(a) for a in posteriors[name])
        colours = ["C0"] * len(means) if labels is None else [f"C{int(k)}" for k in labels]
        for mean, cov, colour in zip(means, covs, colours):
            scales = (2,) if classes is not None else (1, 2)
            for scale in scales:
                _ellipse(ax, mean, cov, scale, color=colour, lw=0.6 if scale == 2 else 1.0,
                         alpha=0.5 if classes is not None else 1.0)
        ax.scatter(means[:, 0], means[:, 1], s=4, c=colours)
        if classes is not None:
            for k in classes:
                ax.scatter([], [], c=f"C{k}", label=FASHION_CLASSES[k])
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("$z_1$")
        ax.autoscale_view()
    axes[0].set_ylabel("$z_2$")
    return _save(fig, path)


def plot_histories(histories, key, path, ylabel=None):
    """Fig. 3: a training curve per model, one panel per latent dimension.

    Parameters
    ----------
    histories : dict
        ``{d: {model name: history}}``, a history holding ``"epoch"`` and ``key`` lists.
    key : str
        The quantity plotted (e.g. ``"test_mse"``), on a log axis.
    """
    dims = list(histories)
    fig = Figure(figsize=(4.5 * len(dims), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(dims)))
    for ax, d in zip(axes, dims):
        for name, history in histories[d].items():
            ax.plot(history["epoch"], history[key], marker="o", ms=3, label=name)
        ax.set(title=f"latent dimension {d}", xlabel="epoch", ylabel=ylabel or key,
               yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_image_rows(rows, path, title=None, side=28):
    """Figs. 5, 7, 8, 10: rows of images, ``{row label: (n, side*side) array}``."""
    labels = list(rows)
    n = max(len(rows[label]) for label in labels)
    fig = Figure(figsize=(0.9 * n + 1.6, 0.95 * len(labels) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(labels), n))
    for i, label in enumerate(labels):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(rows[label]):
                ax.imshow(np.asarray(rows[label][j]).reshape(side, side), cmap="gray",
                          vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_calibration(results, path, title=None):
    """Coverage against the nominal level, and SBC rank histograms.

    Parameters
    ----------
    results : dict
        ``{model name: {latent_dim: calibrate(...) result}}`` (see
        :func:`nifty_fishernet.calibration.calibrate`).
    path : str or path-like
        PNG file to write.

    One row per latent dimension. Left: the coverage of the true latent by each method's
    68 % and 95 % regions on simulated data (markers), and the exact posterior mass inside
    them on real images (open markers), beside the nominal levels (dashed). Right: the
    SBC rank histograms of the FisherNet's methods (all latent dimensions pooled; flat at 1
    when calibrated; U-shaped: too narrow; humped: too wide).
    """
    dims = sorted({d for by_dim in results.values() for d in by_dim})
    fig = Figure(figsize=(13, 3.6 * len(dims)))
    axes = fig.subplots(len(dims), 2, squeeze=False, gridspec_kw=dict(width_ratios=(2, 1)))
    markers = {"68": "o", "95": "s"}
    for row, d in zip(axes, dims):
        ax, hist_ax = row
        labels, x = [], 0
        for name, by_dim in results.items():
            entry = by_dim.get(d)
            if entry is None:
                continue
            for method, sim in entry["simulated"].items():
                for level, marker in markers.items():
                    ax.plot(x, sim["coverage"][level], marker, color="C0" if level == "68"
                            else "C3", ms=6)
                    real = entry["real"].get(method, {}).get(f"mass_{level}")
                    if real is not None:
                        ax.plot(x, real["mean"], marker, mfc="none", color="C0" if level == "68"
                                else "C3", ms=9)
                labels.append(f"{name}\n{method}")
                x += 1
        for level in (0.68, 0.95):
            ax.axhline(level, ls="--", color="0.5", lw=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6.5)
        ax.set(ylim=(0, 1.02), ylabel="coverage / exact mass", title=f"d = {d}: filled: SBC "
               f"coverage (simulated), open: exact mass (real images); blue 68 %, red 95 %")
        ax.title.set_fontsize(8)
        fisher = results.get("FisherNet", {}).get(d)
        if fisher is not None:
            for method, sim in fisher["simulated"].items():
                counts = np.asarray(sim["rank_histogram"], dtype=float).sum(0)
                density = counts / counts.mean()
                edges = np.linspace(0, 1, len(counts) + 1)
                hist_ax.stairs(density, edges, label=method)
            hist_ax.axhline(1, color="0.3", lw=0.8, ls="--")
            hist_ax.set(xlabel="normalised rank of the true z", ylabel="relative frequency",
                        title=f"FisherNet d = {d}: SBC ranks")
            hist_ax.title.set_fontsize(8)
            hist_ax.legend(fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
