"""HDF5 checkpoints: round trips, corruption, wrong types, atomic writes."""

import h5py
import pytest
import torch

import nifty_fishernet as nf
from nifty_fishernet import io
from nifty_fishernet.checkpoint import CheckpointError

MODELS = {
    "FisherNet": lambda: nf.FisherNet(3, hidden=32),
    "VAE": lambda: nf.VAE(3, hidden=32),
    "CalibratedVAE": lambda: nf.VAE(3, hidden=32, learn_noise=True),
    "ConvVAE": lambda: nf.ConvVAE(3, hidden=32),
}


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_gives_identical_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = MODELS[name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 784)
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    path = tmp_path / "model.h5"
    model.save(path, optimizer=optimizer, history={"test_mse": [0.1, 0.05]})
    ckpt = nf.load_checkpoint(path)
    loaded = ckpt.model
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.device == torch.device("cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(loaded.sample_posterior(x, 2, gen()), model.sample_posterior(x, 2, gen()))
    assert ckpt.history == {"test_mse": [0.1, 0.05]}
    assert ckpt.package_version == nf.__version__
    restored = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(ckpt.optimizer_state)
    ref, got = optimizer.state_dict()["state"], restored.state_dict()["state"]
    assert ref.keys() == got.keys()
    for i in ref:
        for k in ref[i]:
            assert torch.equal(torch.as_tensor(ref[i][k]), torch.as_tensor(got[i][k]))


def test_class_load_checks_the_model_type(tmp_path):
    nf.VAE(2, hidden=8).save(tmp_path / "vae.h5")
    assert isinstance(nf.VAE.load(tmp_path / "vae.h5"), nf.VAE)
    with pytest.raises(CheckpointError, match="holds a VAE, not a FisherNet"):
        nf.FisherNet.load(tmp_path / "vae.h5")


def test_truncated_file_gives_clear_error(tmp_path):
    path = tmp_path / "m.h5"
    nf.FisherNet(2, hidden=64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nf.load(path)


def test_corrupted_weights_give_clear_error(tmp_path):
    path = tmp_path / "m.h5"
    nf.FisherNet(2, hidden=64).save(path)
    with h5py.File(path, "r") as f:
        offset = f["model/decoder.linears.1.weight"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 1000] ^= 0xFF  # flip one byte inside a weight matrix
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        nf.load(path)


def test_other_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        nf.load(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5 at all")
    with pytest.raises(CheckpointError, match="not a readable HDF5"):
        nf.load(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(CheckpointError, match="not a nifty_fishernet checkpoint"):
        nf.load(tmp_path / "other.h5")
    path = tmp_path / "m.h5"
    nf.FisherNet(2, hidden=8).save(path)
    with h5py.File(path, "a") as f:  # edited and hashed again: the hash passes, the name not
        f.attrs["model_type"] = "os.system"
        f.attrs[io.HASH_ATTR] = io.content_hash(f)
    with pytest.raises(CheckpointError, match="unknown model type 'os.system'"):
        nf.load(path)
    with h5py.File(path, "a") as f:
        f.attrs["model_type"] = "FisherNet"
        del f["model/decoder.linears.0.bias"]
        f.attrs[io.HASH_ATTR] = io.content_hash(f)
    with pytest.raises(CheckpointError, match="do not fit"):
        nf.load(path)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    model = nf.FisherNet(2, hidden=8)
    model.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("nifty_fishernet.checkpoint.write_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temporary left over
