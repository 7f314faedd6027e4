"""The file layer: every byte of a checkpoint, density, classifier or cache record is checked
on load, writes are atomic with the umask's permissions, and stale temporaries go away."""

import json
import os
import time
import warnings

import h5py
import numpy as np
import pytest
import torch

import nifty_fishernet as nf
from nifty_fishernet import io
from nifty_fishernet.cache import ResultCache
from nifty_fishernet.checkpoint import FORMAT, CheckpointError


@pytest.fixture
def trained_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nf.FisherNet(2, hidden=16, layers=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(torch.rand(4, 784)).backward()
    optimizer.step()
    path = tmp_path / "model.h5"
    model.save(path, optimizer=optimizer, history={"test_mse": [0.125]},
               training_state={"epochs_done": 1, "lr": 0.001})
    return path


def _edit_attr(path, obj, key):
    """Change one digit of a JSON (or string) attribute in place, as an editor would."""
    with h5py.File(path, "r+") as f:
        target = f[obj]
        text = str(target.attrs[key])
        digit = next(i for i, c in enumerate(text) if c.isdigit())
        target.attrs[key] = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:]


@pytest.mark.parametrize("obj, key", [("/", "history"), ("/", "training_state"),
                                      ("/", "package_version"), ("/", "model_config"),
                                      ("/optimizer", "param_groups")])
def test_an_edited_digit_in_any_attribute_is_an_error(trained_checkpoint, obj, key):
    _edit_attr(trained_checkpoint, obj, key)
    with pytest.raises(CheckpointError, match="integrity hash"):
        nf.load_checkpoint(trained_checkpoint)


def test_a_weight_dataset_rewritten_without_its_checksum_is_an_error(trained_checkpoint):
    with h5py.File(trained_checkpoint, "r+") as f:
        name = "model/decoder.linears.0.weight"
        shape, size = f[name].attrs["shape"], f[name].size
        del f[name]
        f.create_dataset(name, data=np.full(size, 7.0, dtype=np.float32))  # no fletcher32
        f[name].attrs["shape"] = shape
    with pytest.raises(CheckpointError, match="integrity hash"):
        nf.load_checkpoint(trained_checkpoint)
    assert issubclass(CheckpointError, nf.NiftyFishernetError)


def test_a_removed_hash_or_group_is_an_error(trained_checkpoint):
    with h5py.File(trained_checkpoint, "r+") as f:
        del f["optimizer"]
    with pytest.raises(CheckpointError, match="integrity hash"):
        nf.load_checkpoint(trained_checkpoint)
    with h5py.File(trained_checkpoint, "r+") as f:
        del f.attrs[io.HASH_ATTR]
    with pytest.raises(CheckpointError, match="no integrity hash"):
        nf.load_checkpoint(trained_checkpoint)


def test_an_invalid_config_is_a_checkpoint_error_before_the_model_is_built(tmp_path):
    """A file with a valid hash whose config cannot build its model (``latent_dim: -5``, a
    key the class does not take) is a CheckpointError naming the problem."""
    for config, message in (({"latent_dim": -5}, "latent_dim must be a positive integer"),
                            ({"latent_dim": 2, "depth": 3}, r"no field\(s\) \['depth'\]")):
        path = tmp_path / "bad.h5"
        with io.write_hdf5(path, FORMAT, 2) as f:
            for key, value in dict(package_version=nf.__version__, model_type="FisherNet",
                                   model_config=json.dumps(config), history="{}",
                                   training_state="{}").items():
                f.attrs[key] = value
            f.create_group("model")
        with pytest.raises(CheckpointError, match=message):
            nf.load(path)


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        paths = [tmp_path / "model.h5", tmp_path / "density.h5", tmp_path / "text.json"]
        nf.FisherNet(2, hidden=8, layers=1).save(paths[0])
        nf.GaussianMixtureDensity(components=(1,)).fit(
            np.random.default_rng(0).normal(size=(50, 2))).save(paths[1])
        io.write_text(paths[2], "{}")
        record = ResultCache(tmp_path / "cache").put("entry", "0" * 64, {"a": 1})
        for path in paths + [record]:
            assert os.stat(path).st_mode & 0o777 == 0o640, path
    finally:
        os.umask(old)


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    target = tmp_path / "model.h5"
    stale = tmp_path / ".model.h5.k1ll3d.tmp"  # what a save killed by SIGKILL leaves
    fresh = tmp_path / ".model.h5.wr1t1ng.tmp"  # another writer, still at work
    other = tmp_path / ".other.h5.k1ll3d.tmp"  # another file's: not ours to remove
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    old = time.time() - io.STALE_SECONDS - 60
    for path in (stale, other):
        os.utime(path, (old, old))
    nf.FisherNet(2, hidden=8, layers=1).save(target)
    assert target.is_file() and not stale.exists()
    assert fresh.exists() and other.exists()


def test_densities_and_cache_records_are_checked(tmp_path):
    density = nf.GaussianMixtureDensity(components=(1, 2)).fit(
        np.random.default_rng(0).normal(size=(200, 2)))
    path = density.save(tmp_path / "density.h5")
    _edit_attr(path, "/", "fitted")
    with pytest.raises(nf.density.DensityFileError, match="integrity hash"):
        nf.load_density(path)

    cache = ResultCache(tmp_path / "cache")
    key = "f" * 64
    record = cache.put("entry", key, {"fid": 12.5})
    assert cache.get("entry", key) == {"fid": 12.5}
    record.write_text(record.read_text().replace("12.5", "13.5"))
    with pytest.warns(RuntimeWarning, match="integrity hash"):
        assert cache.get("entry", key) is None  # recomputed, not read


def test_files_of_the_previous_format_load_with_a_warning(tmp_path):
    """Version 1 files (before the hash) are read, with a warning to save them again."""
    path = tmp_path / "old.h5"
    model = nf.FisherNet(2, hidden=8, layers=1)
    with h5py.File(path, "w") as f:
        for key, value in dict(format=FORMAT, format_version=1,
                               package_version="0.1.0", model_type="FisherNet",
                               model_config=json.dumps(model.config), history="{}",
                               training_state="{}").items():
            f.attrs[key] = value
        io.write_tensors(f.create_group("model"), model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = nf.load(path)
    assert any("before integrity hashes" in str(w.message) for w in caught)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                  model.state_dict().values()))


def test_training_rewrites_a_finished_checkpoint_of_the_previous_format(tmp_path):
    """A finished training's checkpoint of format 1 (no hash: a warning on every load) is
    written again, unchanged, when train() finds it complete, so it loads quietly after."""
    torch.manual_seed(0)
    images = torch.rand(32, 784, dtype=torch.float64).float()
    path = tmp_path / "model.h5"
    settings = dict(epochs=1, batch_size=16, lr=1e-3, progress=False, checkpoint=path)
    model = nf.FisherNet(2, hidden=8, layers=1)
    nf.train(model, images, images[:8], **settings)
    with h5py.File(path, "a") as f:  # as the first version wrote it
        del f.attrs[io.HASH_ATTR]
        f.attrs["format_version"] = 1
    with pytest.warns(RuntimeWarning, match="before integrity hashes"):
        old = nf.load_checkpoint(path)
    assert old.format_version == 1
    again = nf.FisherNet(2, hidden=8, layers=1)
    with pytest.warns(RuntimeWarning, match="before integrity hashes"):
        history = nf.train(again, images, images[:8], **settings)  # nothing left to train
    assert history == old.history
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = nf.load_checkpoint(path)
    assert new.format_version == 2 and new.history == old.history
    assert new.training_state == old.training_state
    assert all(torch.equal(a, b) for a, b in zip(new.model.state_dict().values(),
                                                  old.model.state_dict().values()))
    assert new.optimizer_state["param_groups"] == old.optimizer_state["param_groups"]
