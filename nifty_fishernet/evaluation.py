"""Sample quality of trained models: the paper's Table 1 (FIDs), measured by us.

For each model and latent dimension: the FID of the test reconstructions (from the encoder
mean), of decoded N(0, 1) latents, and of decoded draws from latent density estimators fitted
to the training set's encoder means (Matérn KDE for d <= 5, Gaussian mixture for every d),
all against the test images; plus the real-vs-real floor (training vs test images).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import ResultCache, fingerprint
from .density import (DensityFileError, GaussianMixtureDensity, GridTooLargeError, MaternKDE,
                      load_density)
from .metrics.features import CLASSIFIER_FILE
from .metrics.fid import feature_statistics, fid

__all__ = ["sample_quality", "table1_markdown", "write_table1", "PAPER_TABLE1", "encode_means",
           "decode_latents", "jsonable"]

#: Table 1 of the paper: Inception FIDs against the Fashion-MNIST test set, 10^4 images.
#: "CVAE" in the paper is the convolutional VAE.
PAPER_TABLE1 = {
    "FisherNet": {"rec": {2: 116, 5: 80, 10: 68, 15: 61, 20: 57},
                  "sample": {2: 116, 5: 110, 10: 124, 15: 135, 20: 148},
                  "mkde": {2: 116, 5: 85}},
    "VAE": {"rec": {2: 125, 5: 97, 10: 98, 15: 97, 20: 97},
            "sample": {2: 125, 5: 99, 10: 100, 15: 102, 20: 100}},
    "ConvVAE": {"rec": {2: 151, 5: 95, 10: 86, 15: 87, 20: 90},
                "sample": {2: 152, 5: 95, 10: 89, 15: 92, 20: 100}},
}

#: Part of every cache key: raise it when a change alters the numbers of an entry.
EVALUATION_VERSION = 1

QUANTITIES = {"rec": "test reconstructions", "sample": "N(0,1) samples",
              "mkde": "Matérn KDE samples", "gmm": "Gaussian-mixture samples"}


def _batches(n, size):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def encode_means(model, images, batch_size=1000):
    """Encoder means of ``images`` as a float64 ``(n, d)`` array."""
    out = []
    with torch.no_grad():
        for part in _batches(len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[part]), dtype=model.dtype, device=model.device)
            out.append(model.encode(x).double().cpu().numpy())
    return np.concatenate(out)


def decode_latents(model, latents, batch_size=1000):
    """Decoded ``(n, d)`` latents as float32 ``(n, k)`` images, clipped to [0, 1]."""
    out = []
    with torch.no_grad():
        for part in _batches(len(latents), batch_size):
            z = torch.as_tensor(np.asarray(latents[part]), dtype=model.dtype,
                                device=model.device)
            out.append(model.decode(z).float().clamp(0, 1).cpu().numpy())
    return np.concatenate(out)


def sample_quality(models, train_images, test_images, n_images=10_000, features="fmnist",
                   estimators=("mkde", "gmm"), seed=0, device="cpu", mkde_options=None,
                   gmm_options=None, feature_options=None, progress=True, densities=None,
                   cache_dir=None, force=False):
    """FIDs of reconstructions and generated samples for every model and latent dimension.

    Parameters
    ----------
    models : dict
        ``{name: {latent_dim: trained model}}``, e.g. ``{"FisherNet": {2: m2, 5: m5}}``.
    train_images, test_images : numpy.ndarray
        ``(p, 784)`` images in [0, 1]; the density estimators are fitted to the encoder
        means of ``train_images``, all FIDs are against ``test_images[:n_images]``.
    n_images : int
        Images per FID (10,000 in the paper).
    features : {"fmnist", "inception"} or callable
        Feature network of the FID (see :func:`nifty_fishernet.fid`).
    estimators : sequence of {"mkde", "gmm"}
        Latent density estimators to sample from; "mkde" only where its grid fits (d <= 5).
    seed : int
        Seeds the N(0, 1) latents and the density estimators' draws.
    mkde_options, gmm_options : dict, optional
        Keyword arguments of :class:`MaternKDE` and :class:`GaussianMixtureDensity`.
    feature_options : dict, optional
        Keyword arguments of :func:`feature_statistics` (``cache_dir``, ``inception_path``,
        ``batch_size``).
    progress : bool
        A progress bar over the models.
    densities : dict, optional
        If given, filled with the fitted estimators, ``{(name, d, "mkde" | "gmm"): density}``
        (e.g. to plot them without fitting again).
    cache_dir : str or path-like, optional
        Store every entry (and the floor) in this folder under a key of everything that
        determines it: the model's weights, the images, and the settings above except
        ``progress`` and ``device``; the fitted estimators go beside it as HDF5
        (:func:`~nifty_fishernet.density.load_density`). A later call with the same inputs
        reads them instead of computing, so an interrupted evaluation resumes with the
        first unfinished entry. Needs ``features`` given by name.
    force : bool
        Recompute everything and replace the stored entries.

    Returns
    -------
    dict
        ``{"features", "n_images", "seed", "floor", "results": {name: {d: {...}}}}`` where each
        entry holds the FIDs ``rec``, ``sample``, ``mkde``, ``gmm`` (None where not computed,
        with the reason under ``notes``) and the estimators' fit details; ``cached`` lists
        the entries read from ``cache_dir``.
    """
    unknown = set(estimators) - {"mkde", "gmm"}
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; use 'mkde' and/or 'gmm'")
    n = min(int(n_images), len(test_images), len(train_images))
    if n < 2:
        raise ValueError(f"need at least 2 images per FID, got {n}")
    if cache_dir is not None and not isinstance(features, str):
        raise TypeError("cache_dir needs features given by name ('fmnist' or 'inception'): "
                        "a callable's results cannot be keyed")
    options = dict(feature_options or {})
    options.setdefault("device", device)
    cache = None if cache_dir is None else ResultCache(cache_dir, force=force)

    def stats(images):
        return feature_statistics(images, features, **options)

    reference = None

    def against_test(images):
        nonlocal reference
        if reference is None:
            reference = stats(test_images[:n])
        return fid(stats(images), reference)

    began = time.perf_counter()
    # the feature network's version is in its file name: a new classifier gives new keys
    settings = dict(version=EVALUATION_VERSION, n_images=n, features=features,
                    classifier=CLASSIFIER_FILE if features == "fmnist" else None,
                    seed=int(seed), estimators=sorted(estimators), mkde=mkde_options,
                    gmm=gmm_options)
    images_key = None if cache is None else fingerprint(train_images, test_images[:n])

    floor_key = None if cache is None else fingerprint("floor", images_key, settings)
    floor = None if cache is None else cache.get("floor", floor_key)
    if floor is None:
        floor = against_test(train_images[:n])
        if cache is not None:
            cache.put("floor", floor_key, floor)
    out = {"features": features if isinstance(features, str) else getattr(
               features, "name", "custom"),
           "n_images": n, "seed": int(seed), "floor": floor, "results": {}, "cached": []}
    jobs = [(name, d, model) for name, by_dim in models.items()
            for d, model in sorted(by_dim.items())]
    for name, d, model in tqdm(jobs, desc="sample quality", disable=not progress):
        model.eval()
        label = f"table1_{name}_d{d}"
        entry, fitted = None, {}
        if cache is not None:
            key = fingerprint("table1", model, images_key, settings)
            paths = {kind: cache.path(f"density_{name}_d{d}_{kind}", key, ".h5")
                     for kind in ("mkde", "gmm")}
            entry, fitted = _stored_entry(cache, label, key, paths, densities is not None)
        if entry is not None:
            out["cached"].append([name, int(d)])
        else:
            entry, fitted = _quality_entry(model, train_images, test_images[:n], against_test,
                                           estimators, np.random.default_rng([int(seed), int(d)]),
                                           mkde_options, gmm_options)
            if cache is not None:
                for kind, density in fitted.items():
                    density.save(paths[kind])
                entry = jsonable(entry)
                cache.put(label, key, entry)
        if densities is not None:
            for kind, density in fitted.items():
                densities[name, int(d), kind] = density
        out["results"].setdefault(name, {})[int(d)] = entry
    out["seconds"] = time.perf_counter() - began
    return out


def _stored_entry(cache, label, key, density_paths, with_densities):
    """A stored Table 1 entry (and its fitted densities if asked for), or ``(None, {})`` when
    anything is missing or unreadable: then the entry is computed again."""
    entry = cache.get(label, key)
    fitted = {}
    if entry is None or not with_densities:
        return entry, fitted
    for kind, path in density_paths.items():
        if entry.get(kind) is None:
            continue  # not computed (e.g. no MKDE grid in this d): no file either
        try:
            fitted[kind] = load_density(path)
        except (FileNotFoundError, DensityFileError) as err:
            warnings.warn(f"recomputing {label}: {err}", RuntimeWarning, stacklevel=3)
            return None, {}
    return entry, fitted


def _quality_entry(model, train_images, test_images, against_test, estimators, rng,
                   mkde_options, gmm_options):
    """One model's row of Table 1 and the estimators it fitted (``{"mkde"|"gmm": density}``)."""
    n = len(test_images)
    entry, fitted = {"notes": {}}, {}
    test_means = encode_means(model, test_images)
    entry["rec"] = against_test(decode_latents(model, test_means))
    normal = rng.standard_normal((n, model.latent_dim))
    entry["sample"] = against_test(decode_latents(model, normal))
    train_means = encode_means(model, train_images)
    for key in ("mkde", "gmm"):
        entry[key] = None
        if key not in estimators:
            continue
        if key == "mkde":
            density = MaternKDE(**(mkde_options or {}))
            try:
                density.check_grid(model.latent_dim)
            except GridTooLargeError as err:
                entry["notes"]["mkde"] = str(err)
                continue
        else:
            density = GaussianMixtureDensity(**(gmm_options or {}))
        fit_began = time.perf_counter()
        density.fit(train_means)
        entry[f"{key}_fit_seconds"] = time.perf_counter() - fit_began
        fitted[key] = density
        entry[f"{key}_heldout_log_density"] = float(np.mean(density.log_density(test_means)))
        if key == "gmm":
            entry["gmm_components"] = int(density.n_components)
            entry["gmm_at_limit"] = bool(density.at_limit)
        else:
            entry["mkde_cells"] = list(density.cells)
            entry["mkde_memory_mib"] = density.memory_mib(model.latent_dim)
        draws = density.sample(n, generator=rng)
        entry[key] = against_test(decode_latents(model, draws))
    return entry, fitted


def _cell(ours, paper):
    text = "–" if ours is None else f"{ours:.1f}"
    return text if paper is None else f"{text} ({paper})"


def table1_markdown(quality):
    """Table 1 as markdown: our FIDs with the paper's in parentheses."""
    dims = sorted({d for by_dim in quality["results"].values() for d in by_dim})
    lines = [f"FID against {quality['n_images']} test images, {quality['features']} features "
             f"(paper's values in parentheses: Inception features, 10,000 images; comparable "
             f"only with features='inception'). Real-vs-real floor (train vs test): "
             f"{quality['floor']:.2f}.", "",
             "| model | FID of | " + " | ".join(f"d={d}" for d in dims) + " |",
             "|---|---|" + "---|" * len(dims)]
    for name, by_dim in quality["results"].items():
        paper = PAPER_TABLE1.get(name, {})
        for key, label in QUANTITIES.items():
            values = [by_dim.get(d, {}).get(key) for d in dims]
            papers = [paper.get(key, {}).get(d) for d in dims]
            if all(v is None for v in values) and all(p is None for p in papers):
                continue
            cells = [_cell(v, p) for v, p in zip(values, papers)]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def jsonable(value):
    """``value`` with numpy scalars as Python numbers, dict keys as strings, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_table1(quality, folder):
    """Write ``table1.json`` and ``table1.md`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "table1.json", folder / "table1.md"
    record = dict(quality, paper=PAPER_TABLE1)
    json_path.write_text(json.dumps(jsonable(record), indent=1))
    md_path.write_text(table1_markdown(quality))
    return json_path, md_path
