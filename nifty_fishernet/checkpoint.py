"""HDF5 checkpoints: weights, model class and config, optimizer state and history.

Loading never unpickles or imports anything a file names: the model class is looked up in
:data:`nifty_fishernet.models.MODEL_TYPES`, configs and histories are JSON, and every tensor is
a plain HDF5 dataset with a Fletcher-32 checksum, so a corrupt byte is an error, not a
silently wrong weight. Writes go to a temporary file in the same folder that is renamed over
the target only when complete.

Layout::

    /            attrs: format, format_version, package_version, model_type, model_config
    /model/<state_dict key>               one dataset per tensor (attr "shape")
    /optimizer/<param index>/<state key>  Adam moments and steps; attr "param_groups" (JSON)
    /            attrs: history, training_state (JSON)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ._version import __version__
from .models.base import MODEL_TYPES

__all__ = ["save", "load", "load_checkpoint", "Checkpoint", "CheckpointError"]

FORMAT = "nifty_fishernet.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or holds another model type."""


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, as read back by :func:`load_checkpoint`."""

    model: torch.nn.Module
    optimizer_state: dict | None = None
    history: dict = field(default_factory=dict)
    training_state: dict = field(default_factory=dict)
    package_version: str = ""


def _write_tensor(group, name, tensor):
    array = tensor.detach().cpu().numpy()
    flat = np.ascontiguousarray(array).reshape(-1)
    # Fletcher-32 needs a chunked, non-empty dataset: store flat, keep the shape as attr.
    ds = group.create_dataset(name, data=flat, fletcher32=flat.size > 0)
    ds.attrs["shape"] = np.asarray(array.shape, dtype=np.int64)


def _read_tensor(ds):
    return torch.from_numpy(np.asarray(ds[()]).reshape(tuple(ds.attrs["shape"])).copy())


def save(path, model, optimizer=None, history=None, training_state=None):
    """Write ``model`` (and optionally optimizer state and history) to an HDF5 file.

    Parameters
    ----------
    path : str or path-like
        Target file; replaced atomically.
    model : nifty_fishernet.models.LatentModel
        A model of a registered class.
    optimizer : torch.optim.Optimizer, optional
        Its state (e.g. Adam moments) is stored for resuming training.
    history : dict, optional
        JSON-serialisable training history.
    training_state : dict, optional
        JSON-serialisable extra state (epoch counters, seeds, ...).
    """
    model_type = type(model).__name__
    if MODEL_TYPES.get(model_type) is not type(model):
        raise TypeError(f"{model_type} is not a registered model type "
                        f"({sorted(MODEL_TYPES)}); decorate it with register_model")
    with atomic_hdf5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["package_version"] = __version__
        f.attrs["model_type"] = model_type
        f.attrs["model_config"] = json.dumps(model.config)
        f.attrs["history"] = json.dumps(history or {})
        f.attrs["training_state"] = json.dumps(training_state or {})
        write_state_dict(f.create_group("model"), model.state_dict())
        if optimizer is not None:
            state = optimizer.state_dict()
            opt = f.create_group("optimizer")
            opt.attrs["param_groups"] = json.dumps(state["param_groups"])
            for index, entries in state["state"].items():
                sub = opt.create_group(str(index))
                for key, value in entries.items():
                    _write_tensor(sub, key, torch.as_tensor(value))


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


#: A temporary file of :func:`atomic_path` this old belongs to a writer that was killed.
STALE_SECONDS = 600


def _remove_stale_temporaries(path):
    now = time.time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - candidate.stat().st_mtime > STALE_SECONDS:
                candidate.unlink()
        except FileNotFoundError:  # another writer finished or removed it meanwhile
            pass


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path in ``path``'s folder that replaces ``path`` once the block succeeds.

    Write the file under the yielded name; it is synced and renamed over ``path`` at the end
    of the ``with`` block. On any error the temporary file is removed and ``path`` is left as
    it was, so a reader never sees a half-written file. The file gets the permissions the
    umask gives (``mkstemp``'s own are 0600), and temporary files that a killed writer left
    for ``path`` (older than :data:`STALE_SECONDS`) are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_hdf5(path):
    """Open a new HDF5 file that replaces ``path`` only once it is completely written
    (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def write_state_dict(group, state_dict):
    """One checksummed dataset per tensor of a torch ``state_dict`` in an HDF5 group."""
    for key, value in state_dict.items():
        _write_tensor(group, key, value)


def read_state_dict(group):
    """The inverse of :func:`write_state_dict` (checksums verified on read)."""
    return {key: _read_tensor(group[key]) for key in group.keys()}


def load_checkpoint(path, device="cpu", model_type=None):
    """Read a checkpoint completely.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file written by :func:`save`.
    device : str or torch.device
        Where the model is put (default CPU, whatever device it was saved from).
    model_type : type, optional
        If given, the file must hold a model of exactly this class.

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        The file is truncated, corrupt, not a checkpoint of this package, or holds another
        model type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CheckpointError(f"{path} is not a readable HDF5 checkpoint (truncated or "
                              f"corrupt): {err}") from err
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is an HDF5 file but not a nifty_fishernet "
                                      f"checkpoint")
            version = int(f.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise CheckpointError(f"{path} has checkpoint format {version}; this package "
                                      f"reads up to {FORMAT_VERSION}")
            name = str(f.attrs["model_type"])
            cls = MODEL_TYPES.get(name)
            if cls is None:
                raise CheckpointError(f"{path} holds an unknown model type {name!r}")
            if model_type is not None and cls is not model_type:
                raise CheckpointError(f"{path} holds a {name}, not a {model_type.__name__}")
            model = cls(**json.loads(f.attrs["model_config"]))
            state = read_state_dict(f["model"])
            optimizer_state = None
            if "optimizer" in f:
                opt = f["optimizer"]
                optimizer_state = {
                    "param_groups": json.loads(opt.attrs["param_groups"]),
                    "state": {int(i): {k: _read_tensor(ds) for k, ds in g.items()}
                              for i, g in opt.items()},
                }
            history = json.loads(f.attrs["history"])
            training_state = json.loads(f.attrs["training_state"])
            package_version = str(f.attrs["package_version"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt or incomplete: {err}") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {name}{model.config}: "
                              f"{err}") from err
    return Checkpoint(model.to(device), optimizer_state, history, training_state,
                      package_version)


def load(path, device="cpu", model_type=None):
    """Load the model stored in a checkpoint (on ``device``, CPU by default).

    See :func:`load_checkpoint` for the parameters and errors.
    """
    return load_checkpoint(path, device=device, model_type=model_type).model
