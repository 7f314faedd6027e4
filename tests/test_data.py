"""Fashion-MNIST loading from the real IDX files, and its errors."""

import gzip
import urllib.error

import numpy as np
import pytest

import nifty_fishernet as nf
from nifty_fishernet import data


def test_real_test_split_has_the_documented_content():
    images, labels = nf.load_fashion_mnist("test")
    assert images.shape == (10000, 784) and images.dtype == np.float32
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [1000] * 10
    # first labels of the official t10k file: ankle boot, pullover, trouser, trouser, shirt
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Hide every place the data could come from and make downloads fail."""
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    return tmp_path


def test_missing_dataset_names_every_option(nowhere):
    with pytest.raises(nf.DatasetNotFoundError) as err:
        nf.load_fashion_mnist("train")
    message = str(err.value)
    for hint in ("root=", "FASHION_MNIST_DIR", "apt-get install dataset-fashion-mnist",
                 "download", "no network"):
        assert hint in message
    with pytest.raises(nf.DatasetNotFoundError, match="download disabled"):
        nf.load_fashion_mnist("test", download=False)
    with pytest.raises(nf.DatasetNotFoundError, match="is not a folder"):
        nf.load_fashion_mnist("test", root=nowhere / "nope")


def test_env_folder_is_used_and_wrong_content_is_rejected(nowhere, monkeypatch):
    folder = nowhere / "mine"
    folder.mkdir()
    real = data.DEBIAN_DIR.__class__("/usr/share/datasets/fashion-mnist")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((real / name).read_bytes())
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    images, _ = nf.load_fashion_mnist("test")
    assert images.shape == (10000, 784)
    # a valid gzip with altered content fails the hash check
    raw = bytearray(gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="wrong content"):
        nf.load_fashion_mnist("test")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid gzip"):
        nf.load_fashion_mnist("test")


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        nf.load_fashion_mnist("validation")
