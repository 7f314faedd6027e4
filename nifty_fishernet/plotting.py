"""Figures of latent spaces (PNG via matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = ["plot_latent_density"]

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
