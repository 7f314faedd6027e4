"""The Fashion-MNIST experiment's settings, its model grid, and where its trained models live.

Light on purpose (no plotting, no NIFTy): :func:`nifty_fishernet.quick_fishernet`, the demos
and the benchmarks import it to find the main job's trained models.
"""

from __future__ import annotations

from pathlib import Path

from ...cache import json_hash
from ...models import VAE, ConvVAE, FisherNet
from .paper import PAPER_TABLE2

__all__ = ["MODELS", "DEFAULT_MODELS", "SETTINGS", "TRAINING_KEYS", "DEFAULT_OUT", "CALIBRATION_VERSION",
           "GAUSSIAN_ROWS_ONLY",
           "build_model", "config_key", "trained_model_path", "setting_for"]

#: The models compared, by the name used in every table: latent dimension -> untrained model.
MODELS = {
    "FisherNet": lambda d: FisherNet(d),
    "VAE": lambda d: VAE(d),
    "CalibratedVAE": lambda d: VAE(d, learn_noise=True),
    "ConvVAE": lambda d: ConvVAE(d),
    # the VAE with decoder variance 1/2, i.e. the plain sum of squared errors of many Keras
    # VAEs: which baseline the paper most likely had (its VAE reaches MSE ~0.0175, ours
    # with variance 1 ~0.031); run on request (--models VAEHalfVariance)
    "VAEHalfVariance": lambda d: VAE(d, noise_variance=0.5),
}

#: The models a run trains unless ``--models`` says otherwise.
DEFAULT_MODELS = ["FisherNet", "VAE", "CalibratedVAE", "ConvVAE"]

SETTINGS = {
    "quick": dict(dims=[2, 5], epochs=5, n_train=12000, lr=1e-3, noise_lr=1e-2, batch_size=64,
                  features="fmnist", fid_images=2000,
                  mkde=dict(cells_per_axis={2: 32, 5: 5}, n_samples=3, iterations=3),
                  calibration=dict(n_simulated=300, n_real=64, n_reference=100, n_nifty=64),
                  # the ConvVAE's exact posteriors (10^6 decoder calls) take too long here
                  calibration_models=["FisherNet", "VAE", "CalibratedVAE"],
                  calibration_nifty={"FisherNet": ["mgvi", "geovi"]}),
    "paper": dict(dims=PAPER_TABLE2["dims"], epochs=PAPER_TABLE2["epochs"],
                  n_train=PAPER_TABLE2["n_train"], lr=PAPER_TABLE2["lr"], noise_lr=None,
                  batch_size=PAPER_TABLE2["batch_size"],
                  # the paper's 10,000 images with the Fashion-MNIST classifier's features;
                  # Inception (0.3 s per image on 2 CPU cores) for reconstructions and
                  # N(0,1) samples on 1,000 images
                  features="fmnist", fid_images=10000, inception_images=1000,
                  # all three latent densities; the mixture's size searched on 10,000 means
                  # until its held-out score peaks (at d >= 5 the 128 candidates ran out)
                  estimators=["mkde", "gmm", "flow"], gmm=dict(extend=True, search_size=10000),
                  mkde=dict(cells_per_axis=None, n_samples=5, iterations=4),
                  calibration=dict(n_simulated=1000, n_real=200, n_reference=200, n_nifty=200),
                  calibration_models=list(MODELS),
                  calibration_nifty={name: ["mgvi", "geovi"] for name in DEFAULT_MODELS},
                  # the ConvVAE's Jacobian in float32, its values in float64: 3-4x faster
                  # on the CPU (benchmarks/nifty_jacobian.py); d = 2 was measured before, in
                  # float64
                  calibration_nifty_options={"ConvVAE": {"jacobian_dtype": "float32"}}),
}

#: What determines a trained model, besides its name, d and seed.
TRAINING_KEYS = ("epochs", "n_train", "lr", "noise_lr", "batch_size")

#: Where ``demos/fashion_mnist.py`` writes by default.
DEFAULT_OUT = Path("output/fashion_mnist")

#: Part of every calibration cache key and stored in every calibration entry: raise it when
#: a change alters the numbers (or the rows) of an entry. 4: exact references centred on the
#: lowest mode found; 5: SBC ranks of sampled posteriors corrected; 6: the importance
#: refinement's highest-density rows (predictive thresholds) and its covariance widened for
#: its effective sample size (``RefineOptions.sample_size_correction``, now the default).
CALIBRATION_VERSION = 6

#: Versions whose change altered only the Gaussian methods' rows (the amortized and refined
#: posteriors): an entry of the version just before such a run of them is brought up to
#: date by ``calibration.recalibrate``, its NIFTy rows and exact-reference SBC kept.
GAUSSIAN_ROWS_ONLY = (6,)


def build_model(name, latent_dim):
    """An untrained model of the grid; a clear error for a name not in :data:`MODELS`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the experiment has {sorted(MODELS)}")
    return MODELS[name](int(latent_dim))


def setting_for(mode):
    """A copy of :data:`SETTINGS` ``[mode]`` (nested dicts copied too)."""
    if mode not in SETTINGS:
        raise ValueError(f"unknown setting {mode!r}; use one of {sorted(SETTINGS)}")
    return {key: dict(value) if isinstance(value, dict) else value
            for key, value in SETTINGS[mode].items()}


def config_key(name, d, setting, seed):
    """Short hash of everything that determines a trained model.

    The first 10 hex digits of :func:`~nifty_fishernet.cache.json_hash` of the configuration
    (not :func:`~nifty_fishernet.cache.fingerprint`, whose digests differ: models trained by
    earlier versions keep their file names).
    """
    config = dict(model=name, d=int(d), seed=int(seed), **{k: setting[k] for k in TRAINING_KEYS})
    return json_hash(config)[:10]


def trained_model_path(name, d, setting="quick", seed=0, out=DEFAULT_OUT):
    """The checkpoint the main job writes for model ``name`` at latent dimension ``d``:
    ``<out>/models/<name>_d<d>_<key>.h5`` (it may not exist yet).

    Parameters
    ----------
    setting : str or dict
        ``"quick"``, ``"paper"``, or a setting dict with the :data:`TRAINING_KEYS`.
    """
    if isinstance(setting, str):
        setting = setting_for(setting)
    return Path(out) / "models" / f"{name}_d{int(d)}_{config_key(name, d, setting, seed)}.h5"
