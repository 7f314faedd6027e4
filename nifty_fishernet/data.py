"""Fashion-MNIST from its original IDX files, verified by content hash."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .errors import NiftyFishernetError
from .io import atomic_path, user_cache_dir

__all__ = ["load_fashion_mnist", "DatasetNotFoundError", "fashion_mnist_search_paths",
           "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

#: SHA-256 of the *decompressed* IDX files: gzip containers differ between distributors
#: (Debian re-compresses them), the content must not.
_FILES = {
    "train": {
        "images": ("train-images-idx3-ubyte",
                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "labels": ("train-labels-idx1-ubyte",
                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    },
    "test": {
        "images": ("t10k-images-idx3-ubyte",
                   "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "labels": ("t10k-labels-idx1-ubyte",
                   "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}
_N = {"train": 60000, "test": 10000}
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(NiftyFishernetError, FileNotFoundError):
    """Fashion-MNIST is neither found locally nor downloadable."""


def _cache_dir():
    return user_cache_dir("fashion-mnist")


def fashion_mnist_search_paths(root=None):
    """The folders searched for the IDX ``.gz`` files, in order."""
    paths = []
    if root is not None:
        paths.append(Path(root))
    if os.environ.get("FASHION_MNIST_DIR"):
        paths.append(Path(os.environ["FASHION_MNIST_DIR"]))
    paths += [DEBIAN_DIR, _cache_dir()]
    return paths


def _has_split(folder, split):
    return all((folder / f"{name}.gz").is_file() for name, _ in _FILES[split].values())


def _read_verified(path, sha256):
    with gzip.open(path, "rb") as f:
        try:
            raw = f.read()
        except (OSError, EOFError) as err:
            raise ValueError(f"{path} is not a valid gzip file ({err})") from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path} has the wrong content (SHA-256 of the decompressed data "
                         f"{digest}, expected {sha256}); delete it and fetch it again")
    return raw


def _parse_idx(raw, n, item_shape):
    # IDX: 2 zero bytes, dtype code 0x08 (uint8), ndim, then ndim big-endian uint32 sizes.
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if dims != (n,) + item_shape:
        raise ValueError(f"IDX header gives shape {dims}, expected {(n,) + item_shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download(split, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, sha256 in _FILES[split].values():
        target = folder / f"{name}.gz"
        if target.is_file():
            continue
        with atomic_path(target) as tmp:  # checked before it replaces anything
            with open(tmp, "wb") as out, urllib.request.urlopen(
                    DOWNLOAD_URL + f"{name}.gz", timeout=60) as response:
                shutil.copyfileobj(response, out)
            _read_verified(tmp, sha256)


def load_fashion_mnist(split="train", root=None, download=True):
    """Load a Fashion-MNIST split as float32 images in [0, 1] and int64 labels.

    The four original IDX ``.gz`` files are looked for in, in order: ``root``,
    ``$FASHION_MNIST_DIR``, ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``) and the user cache ``~/.cache/nifty_fishernet/fashion-mnist``.
    If none has them, the official files are downloaded into the cache. Every file's
    decompressed content is checked against its SHA-256.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    root : str or path-like, optional
        A folder holding the ``.gz`` files.
    download : bool
        Allow the download into the user cache.

    Returns
    -------
    images : numpy.ndarray
        float32, shape ``(N, 784)``, values in [0, 1].
    labels : numpy.ndarray
        int64, shape ``(N,)``.

    Raises
    ------
    DatasetNotFoundError
        No folder has the files and they could not be downloaded; the message names every
        way to provide them.
    ValueError
        A file is corrupt or has the wrong content.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is not None and not Path(root).is_dir():
        raise DatasetNotFoundError(f"root={str(root)!r} is not a folder")
    folder = next((p for p in fashion_mnist_search_paths(root) if _has_split(p, split)), None)
    if folder is None:
        cache = _cache_dir()
        error = "download disabled"
        if download:
            try:
                _download(split, cache)
                folder = cache
            except (urllib.error.URLError, OSError) as err:
                error = f"download failed: {err}"
        if folder is None:
            looked = ", ".join(str(p) for p in fashion_mnist_search_paths(root))
            raise DatasetNotFoundError(
                f"Fashion-MNIST ({split}) not found in: {looked}; {error}. Provide the four "
                f"IDX .gz files by one of: pass root=FOLDER; set FASHION_MNIST_DIR=FOLDER; "
                f"on Debian 'apt-get install dataset-fashion-mnist'; or allow the download "
                f"from {DOWNLOAD_URL} into {cache}.")
    image_name, image_sha = _FILES[split]["images"]
    label_name, label_sha = _FILES[split]["labels"]
    n = _N[split]
    images = _parse_idx(_read_verified(folder / f"{image_name}.gz", image_sha), n, (28, 28))
    labels = _parse_idx(_read_verified(folder / f"{label_name}.gz", label_sha), n, ())
    return (images.reshape(n, 784).astype(np.float32) / np.float32(255.0),
            labels.astype(np.int64))
