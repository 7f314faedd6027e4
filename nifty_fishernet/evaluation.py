"""Sample quality of trained models: the FIDs of the paper's Table 1 (its layout and the
paper's values are in :mod:`nifty_fishernet.experiments.fashion_mnist`).

For each model and latent dimension: the FID of the test reconstructions (from the encoder
mean), of decoded N(0, 1) latents, and of decoded draws from latent density estimators fitted
to the training set's encoder means (Matérn KDE for d <= 5, Gaussian mixture for every d),
all against the test images; plus the real-vs-real floor (training vs test images).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import ResultCache, fingerprint
from .density import (DensityFileError, FlowDensity, GaussianMixtureDensity, GridTooLargeError,
                      MaternKDE, load_density)
from .metrics.features import feature_extractor
from .metrics.fid import feature_statistics, fid
from .io import jsonable
from .validation import EVALUATION_BATCH

__all__ = ["sample_quality", "encode_means", "decode_latents", "active_units"]

#: The latent density estimators of Table 1, by key.
ESTIMATORS = {"mkde": MaternKDE, "gmm": GaussianMixtureDensity, "flow": FlowDensity}

#: Part of every cache key: raise it when a change alters the numbers of an entry.
EVALUATION_VERSION = 1

def _batches(n, size):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def encode_means(model, images, batch_size=EVALUATION_BATCH):
    """Encoder means of ``images`` as a float64 ``(n, d)`` array."""
    out = []
    with torch.no_grad():
        for part in _batches(len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[part]), dtype=model.dtype, device=model.device)
            out.append(model.encode(x).double().cpu().numpy())
    return np.concatenate(out)


def decode_latents(model, latents, batch_size=EVALUATION_BATCH):
    """Decoded ``(n, d)`` latents as float32 ``(n, k)`` images, clipped to [0, 1]."""
    out = []
    with torch.no_grad():
        for part in _batches(len(latents), batch_size):
            z = torch.as_tensor(np.asarray(latents[part]), dtype=model.dtype,
                                device=model.device)
            out.append(model.decode(z).float().clamp(0, 1).cpu().numpy())
    return np.concatenate(out)


def active_units(model, images, threshold=0.01, batch_size=EVALUATION_BATCH):
    """How many latent dimensions the encoder uses (Burda et al. 2016, "active units").

    A dimension is active when its encoder mean varies over the images: Var_x E[z_i | x] above
    ``threshold`` (a hundredth of the N(0, 1) prior's variance). A VAE whose KL term outweighs
    the data term leaves dimensions at the prior (posterior collapse); they add parameters but
    no reconstruction detail.

    Parameters
    ----------
    model : LatentModel
    images : array-like, shape (n, k)
        At least two images.
    threshold : float
        Variance above which a dimension counts as active.

    Returns
    -------
    dict
        ``active`` (int), ``variance`` (list of d floats: Var_x of each encoder mean) and
        ``threshold``.
    """
    if len(images) < 2:
        raise ValueError(f"active_units needs at least two images to measure a variance, got "
                         f"{len(images)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    variance = encode_means(model, images, batch_size).var(axis=0, ddof=1)
    return dict(active=int(np.sum(variance > threshold)), variance=variance.tolist(),
                threshold=float(threshold))


def sample_quality(models, train_images, test_images, n_images=10_000, features="fmnist",
                   estimators=("mkde", "gmm"), seed=0, device="cpu", mkde_options=None,
                   gmm_options=None, feature_options=None, progress=True, densities=None,
                   cache_dir=None, force=False, flow_options=None):
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
    estimators : sequence of {"mkde", "gmm", "flow"}
        Latent density estimators to sample from (:class:`MaternKDE` only where its grid
        fits, d <= 5; :class:`GaussianMixtureDensity`; :class:`FlowDensity`).
    seed : int
        Seeds the N(0, 1) latents and the density estimators' draws.
    mkde_options, gmm_options, flow_options : dict, optional
        Keyword arguments of :class:`MaternKDE`, :class:`GaussianMixtureDensity` and
        :class:`FlowDensity`.
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
        ``{"features", "n_images", "seed", "floor", "feature_weights", "floors", "results":
        {name: {d: {...}}}}`` where each entry holds the FIDs ``rec``, ``sample``, ``mkde``,
        ``gmm``, ``flow`` (None where not computed, with the reason under ``notes``), the
        estimators' fit details and ``feature_weights``, a hash of the feature network's
        weights (the FID classifier's instance; ``floors`` maps it to its floor); ``cached``
        lists the entries read from ``cache_dir``.
    """
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; use any of {ESTIMATORS}")
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
    # the feature network's weights are in the keys: another instance of the FID classifier
    # (each machine trains its own) gives new entries, never another instance's
    extractor = feature_extractor(features, options["device"], options.get("cache_dir"),
                                  options.get("inception_path"), progress=False)
    weights = getattr(extractor, "weights", None)
    settings = dict(version=EVALUATION_VERSION, n_images=n, features=features,
                    feature_weights=weights, seed=int(seed), estimators=sorted(estimators),
                    mkde=mkde_options, gmm=gmm_options)
    if "flow" in estimators:  # (keys of runs without the flow stay as they were)
        settings["flow"] = flow_options
    images_key = None if cache is None else fingerprint(train_images, test_images[:n])

    floor_key = None if cache is None else fingerprint("floor", images_key, settings)
    floor = None if cache is None else cache.get("floor", floor_key)
    if floor is None:
        floor = against_test(train_images[:n])
        if cache is not None:
            cache.put("floor", floor_key, floor)
    out = {"features": features if isinstance(features, str) else getattr(
               features, "name", "custom"),
           "n_images": n, "seed": int(seed), "floor": floor, "feature_weights": weights,
           "floors": {} if weights is None else {weights: floor}, "results": {}, "cached": []}
    jobs = [(name, d, model) for name, by_dim in models.items()
            for d, model in sorted(by_dim.items())]
    for name, d, model in tqdm(jobs, desc="sample quality", disable=not progress):
        model.eval()
        label = f"table1_{name}_d{d}"
        entry, fitted = None, {}
        if cache is not None:
            key = fingerprint("table1", model, images_key, settings)
            paths = {kind: cache.path(f"density_{name}_d{d}_{kind}", key, ".h5")
                     for kind in ESTIMATORS}
            entry, fitted = _stored_entry(cache, label, key, paths, densities is not None)
        if entry is not None:
            out["cached"].append([name, int(d)])
        else:
            entry, fitted = _quality_entry(model, train_images, test_images[:n], against_test,
                                           estimators, np.random.default_rng([int(seed), int(d)]),
                                           dict(mkde=mkde_options, gmm=gmm_options,
                                                flow=flow_options))
            entry["feature_weights"] = weights
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


def _quality_entry(model, train_images, test_images, against_test, estimators, rng, options):
    """One model's row of Table 1 and the estimators it fitted (``{kind: density}``)."""
    n = len(test_images)
    entry, fitted = {"notes": {}}, {}
    test_means = encode_means(model, test_images)
    entry["rec"] = against_test(decode_latents(model, test_means))
    normal = rng.standard_normal((n, model.latent_dim))
    entry["sample"] = against_test(decode_latents(model, normal))
    train_means = encode_means(model, train_images)
    for key in ESTIMATORS:
        if key == "flow" and key not in estimators:
            continue  # (entries without the flow keep their old keys)
        entry[key] = None
        if key not in estimators:
            continue
        density = ESTIMATORS[key](**(options[key] or {}))
        if key == "mkde":
            try:
                density.check_grid(model.latent_dim)
            except GridTooLargeError as err:
                entry["notes"]["mkde"] = str(err)
                continue
        fit_began = time.perf_counter()
        density.fit(train_means)
        entry[f"{key}_fit_seconds"] = time.perf_counter() - fit_began
        fitted[key] = density
        entry[f"{key}_heldout_log_density"] = float(np.mean(density.log_density(test_means)))
        if key == "gmm":
            entry["gmm_components"] = int(density.n_components)
            entry["gmm_at_limit"] = bool(density.at_limit)
        elif key == "mkde":
            entry["mkde_cells"] = list(density.cells)
            entry["mkde_memory_mib"] = density.memory_mib(model.latent_dim)
        draws = density.sample(n, generator=rng)
        entry[key] = against_test(decode_latents(model, draws))
    return entry, fitted
