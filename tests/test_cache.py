"""Keys of stored results change with every input that matters, and only with those."""

import os

import numpy as np
import pytest
import torch

import nifty_fishernet as nf
from nifty_fishernet.cache import ResultCache, fingerprint


def test_fingerprint_sees_values_dtype_shape_and_weights():
    x = np.arange(12, dtype=np.float32)
    base = fingerprint(x, {"a": 1, "b": [2, 3]})
    assert base == fingerprint(x.copy(), {"b": [2, 3], "a": 1})  # dict order is irrelevant
    changed = x.copy()
    changed[5] += 1e-6
    for other in (fingerprint(changed, {"a": 1, "b": [2, 3]}),
                  fingerprint(x.astype(np.float64), {"a": 1, "b": [2, 3]}),
                  fingerprint(x.reshape(3, 4), {"a": 1, "b": [2, 3]}),
                  fingerprint(x, {"a": 1, "b": [2, 4]}),
                  fingerprint({"a": 1, "b": [2, 3]}, x)):
        assert other != base
    assert fingerprint(x[::2]) == fingerprint(np.ascontiguousarray(x[::2]))
    assert fingerprint(torch.from_numpy(x)) == fingerprint(x)

    torch.manual_seed(0)
    model = nf.FisherNet(2, hidden=8, layers=1)
    key = fingerprint(model)
    torch.manual_seed(1)
    same = nf.FisherNet(2, hidden=8, layers=1)
    assert fingerprint(same) != key  # other initial weights
    same.load_state_dict(model.state_dict())
    assert fingerprint(same) == key
    with torch.no_grad():
        model.xi_n.add_(1e-3)  # the noise level is part of the model
    assert fingerprint(model) != key
    torch.manual_seed(0)
    assert fingerprint(nf.VAE(2, hidden=8, layers=1)) != key


def test_result_cache_round_trip_force_and_bad_files(tmp_path):
    cache = ResultCache(tmp_path / "c")
    key = fingerprint("entry")
    assert cache.get("table1", key) is None
    path = cache.put("table1", key, {"fid": 1.5, "notes": {}})
    assert path.name == f"table1_{key[:16]}.json" and not list(path.parent.glob(".*tmp"))
    assert cache.get("table1", key) == {"fid": 1.5, "notes": {}}
    assert ResultCache(tmp_path / "c", force=True).get("table1", key) is None
    path.write_text('{"key": "')  # a cut file: recomputed, with a warning
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert cache.get("table1", key) is None
    other = fingerprint("other")
    path.write_text(f'{{"key": "{other}", "value": 1}}')
    with pytest.warns(RuntimeWarning, match="another key"):
        assert cache.get("table1", key) is None


def test_stage_records_keep_each_stage_and_treat_a_bad_file_as_missing(tmp_path):
    cache = ResultCache(tmp_path / "c")
    key = fingerprint("a long computation")
    records = cache.stages("calibration_VAE_d2", key)
    assert "simulated mgvi" not in records
    with pytest.raises(KeyError, match="simulated mgvi"):
        records["simulated mgvi"]
    records["simulated mgvi"] = {"coverage": {"68": 0.5}}
    path = tmp_path / "c" / f"calibration_VAE_d2_stage-simulated-mgvi_{key[:16]}.json"
    assert path.is_file()
    # read back by a new mapping of the same key, not by another key's
    assert cache.stages("calibration_VAE_d2", key)["simulated mgvi"] == {"coverage": {"68": 0.5}}
    assert "simulated mgvi" not in cache.stages("calibration_VAE_d2", fingerprint("other"))
    assert "simulated mgvi" not in ResultCache(tmp_path / "c", force=True).stages(
        "calibration_VAE_d2", key)
    records["simulated gaussian"] = {"coverage": {"68": 0.6}}
    later = tmp_path / "c" / f"calibration_VAE_d2_stage-simulated-gaussian_{key[:16]}.json"
    os.utime(path, (1e9, 1e9))
    os.utime(later, (2e9, 2e9))
    assert records.names() == ["simulated mgvi", "simulated gaussian"]  # in written order
    assert cache.stages("calibration_VAE_d2", fingerprint("other")).names() == []
    path.write_text(path.read_text()[:20])  # cut short by a kill: the stage runs again
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert "simulated mgvi" not in records
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert records.names() == ["simulated gaussian"]
    # a stage kept in a file of its own (arrays) is named by the file's existence
    kept = records.file("real exact reference", ".h5")
    assert kept == tmp_path / "c" / f"calibration_VAE_d2_stage-real-exact-reference_{key[:16]}.h5"
    kept.write_bytes(b"arrays")
    os.utime(kept, (3e9, 3e9))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert records.names() == ["simulated gaussian", "real exact reference"]
    assert "real exact reference" not in cache.stages("calibration_VAE_d2",
                                                      fingerprint("other")).names()
    for suffix in (".json", "h5"):
        with pytest.raises(ValueError, match="extension other than .json"):
            records.file("real exact reference", suffix)
