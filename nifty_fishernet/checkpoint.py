"""HDF5 checkpoints: weights, model class and config, optimizer state and history.

Loading never unpickles or imports anything a file names: the model class is looked up in
:data:`nifty_fishernet.models.MODEL_TYPES`, configs and histories are JSON, and every tensor is
a plain HDF5 dataset with a Fletcher-32 checksum, and an integrity hash over every attribute
and dataset (:mod:`nifty_fishernet.io`) is checked before anything is used, so an edited or
corrupt byte anywhere is a :class:`CheckpointError`, not a silently wrong weight or record.
The model's config is validated before the model is built. Writes are atomic.

Layout::

    /            attrs: format, format_version, sha256, package_version, model_type,
                        model_config
    /model/<state_dict key>               one dataset per tensor (attr "shape")
    /optimizer/<param index>/<state key>  Adam moments and steps; attr "param_groups" (JSON)
    /            attrs: history, training_state (JSON)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ._version import __version__
from .errors import FileFormatError
from .io import read_hdf5, read_tensors, write_hdf5, write_tensors
from .io.registry import MODEL_TYPES

__all__ = ["save", "load", "load_checkpoint", "Checkpoint", "CheckpointError",
           "FORMAT_VERSION"]

FORMAT = "nifty_fishernet.checkpoint"
#: 2: the integrity hash over every attribute and dataset (version 1 files read with a warning)
FORMAT_VERSION = 2


class CheckpointError(FileFormatError):
    """A checkpoint file is corrupt, truncated, edited, holds another model type, or a config
    that does not build its model."""


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, as read back by :func:`load_checkpoint`."""

    model: torch.nn.Module
    optimizer_state: dict | None = None
    history: dict = field(default_factory=dict)
    training_state: dict = field(default_factory=dict)
    package_version: str = ""
    #: The file's format version; older than :data:`FORMAT_VERSION` means "save it again".
    format_version: int = FORMAT_VERSION


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
    with write_hdf5(path, FORMAT, FORMAT_VERSION) as f:
        f.attrs["package_version"] = __version__
        f.attrs["model_type"] = model_type
        f.attrs["model_config"] = json.dumps(model.config)
        f.attrs["history"] = json.dumps(history or {})
        f.attrs["training_state"] = json.dumps(training_state or {})
        write_tensors(f.create_group("model"), model.state_dict())
        if optimizer is not None:
            state = optimizer.state_dict()
            opt = f.create_group("optimizer")
            opt.attrs["param_groups"] = json.dumps(state["param_groups"])
            for index, entries in state["state"].items():
                write_tensors(opt.create_group(str(index)), entries)


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
        The file is truncated, corrupt, edited, not a checkpoint of this package, holds
        another model type or a config its model class refuses.
    """
    with read_hdf5(path, FORMAT, FORMAT_VERSION, CheckpointError, "checkpoint file",
                   hashed_since=2) as f:
        name = str(f.attrs["model_type"])
        cls = MODEL_TYPES.lookup(name, path, CheckpointError)
        if model_type is not None and cls is not model_type:
            raise CheckpointError(f"{path} holds a {name}, not a {model_type.__name__}")
        config = json.loads(f.attrs["model_config"])
        state = read_tensors(f["model"])
        optimizer_state = None
        if "optimizer" in f:
            opt = f["optimizer"]
            optimizer_state = {
                "param_groups": json.loads(opt.attrs["param_groups"]),
                "state": {int(i): read_tensors(g) for i, g in opt.items()},
            }
        history = json.loads(f.attrs["history"])
        training_state = json.loads(f.attrs["training_state"])
        package_version = str(f.attrs["package_version"])
        format_version = int(f.attrs.get("format_version", 1))
    try:
        cls.check_config(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its {name} config {config} is invalid: {err}") from err
    model = cls(**config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {name}{model.config}: "
                              f"{err}") from err
    return Checkpoint(model.to(device), optimizer_state, history, training_state,
                      package_version, format_version)


def load(path, device="cpu", model_type=None):
    """Load the model stored in a checkpoint (on ``device``, CPU by default).

    See :func:`load_checkpoint` for the parameters and errors.
    """
    return load_checkpoint(path, device=device, model_type=model_type).model
