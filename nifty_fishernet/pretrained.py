"""A trained Fashion-MNIST FisherNet for demos, benchmarks and tests that need one.

One recipe, used everywhere: the main job's quick setting (5 epochs on the first 12,000
training images, Adam at lr 1e-3, ``xi_N`` at 1e-2, batch 64). The demos prefer the main
job's own quick model where it has finished training (found where the experiment writes it,
:func:`nifty_fishernet.experiments.fashion_mnist.trained_model_path`) and fall back to this
recipe, trained once and kept in the user cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load, load_checkpoint
from .data import load_fashion_mnist
from .io import user_cache_dir
from .experiments.fashion_mnist.settings import (DEFAULT_OUT, SETTINGS, TRAINING_KEYS,
                                                 trained_model_path)
from .models import FisherNet
from .training import train

#: The main job's quick setting; its model is trained on the first ``n_train`` training images
#: (the main job takes a seeded permutation) and tested on the first ``n_test`` test images.
QUICK_RECIPE = dict({key: SETTINGS["quick"][key] for key in TRAINING_KEYS}, n_test=1000)


def main_job_model(latent_dim, out=DEFAULT_OUT, seed=0, name="FisherNet"):
    """The main job's quick model of ``latent_dim`` (in evaluation mode, on the CPU) if it has
    finished training, else None."""
    path = trained_model_path(name, latent_dim, "quick", seed, out)
    try:
        saved = load_checkpoint(path)
    except (FileNotFoundError, CheckpointError):
        return None
    finished = (saved.training_state or {}).get("epochs_done") == SETTINGS["quick"]["epochs"]
    return saved.model.eval() if finished else None


def quick_fishernet(latent_dim=5, checkpoint=None, cache_dir=None, seed=0, progress=False,
                    verbose=True):
    """A trained FisherNet: a given checkpoint, the main job's quick model, or the recipe.

    Parameters
    ----------
    latent_dim : int
        Latent dimension ``d``.
    checkpoint : path-like, optional
        Load this file (it must exist). Default: the main job's quick FisherNet of this ``d``
        and seed if it has finished training (:func:`main_job_model`), else the quick recipe.
    cache_dir : path-like, optional
        Where the quick recipe's model is kept (default: the user cache,
        ``~/.cache/nifty_fishernet/models``); a second call loads it instead of training.
    seed : int
        Seed of the quick recipe (initial weights, shuffling, sampling noise).
    progress : bool
        Show the training's progress bar.
    verbose : bool
        Say on stderr which model is used, and where none of the main job's was found.

    Returns
    -------
    model : FisherNet
        In evaluation mode, on the CPU.
    source : str
        Where it came from, for reports.
    """
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        if verbose:
            print(f"quick_fishernet: using the given model {checkpoint}", file=sys.stderr)
        return load(checkpoint).eval(), str(checkpoint)
    model = main_job_model(latent_dim, seed=seed)
    if model is not None:
        source = trained_model_path("FisherNet", latent_dim, "quick", seed)
        if verbose:
            print(f"quick_fishernet: using the main job's model {source}", file=sys.stderr)
        return model, str(source)
    recipe = QUICK_RECIPE
    folder = Path(cache_dir) if cache_dir is not None else user_cache_dir("models")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"FisherNet_d{int(latent_dim)}_quick_seed{int(seed)}.h5"
    if verbose:
        print(f"quick_fishernet: no finished main-job model at "
              f"{trained_model_path('FisherNet', latent_dim, 'quick', seed)}; "
              + (f"using the quick recipe's model {path}" if path.exists() else
                 f"training the quick recipe (~1 min) into {path}"), file=sys.stderr)
    torch.manual_seed(seed)
    model = FisherNet(int(latent_dim))
    train_images, _ = load_fashion_mnist("train")
    test_images, _ = load_fashion_mnist("test")
    # train() resumes from a complete checkpoint without training: the cache hit.
    train(model, train_images[:recipe["n_train"]], test_images[:recipe["n_test"]],
          epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
          noise_lr=recipe["noise_lr"], device="cpu", seed=seed, checkpoint=path,
          progress=progress)
    return model.eval(), f"{path} (quick recipe, seed {seed})"
