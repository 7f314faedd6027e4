"""Results stored under a key of everything that determines them, so reruns skip finished work.

A key is a SHA-256 :func:`fingerprint` of the inputs (settings, arrays, a model's weights);
:class:`ResultCache` keeps JSON records in a folder, one file per key, written atomically. A
changed input gives a new key, so a stale result is never read back; ``force`` recomputes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .io import write_text

__all__ = ["fingerprint", "json_hash", "ResultCache", "StageRecords"]


def _feed(digest, part):
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    if isinstance(part, torch.nn.Module):
        digest.update(type(part).__name__.encode())
        _feed(digest, getattr(part, "config", None))
        for name, tensor in part.state_dict().items():
            digest.update(name.encode())
            _feed(digest, tensor)
    elif isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
    else:
        # settings: JSON with sorted keys, so that equal dicts give equal keys
        digest.update(json.dumps(part, sort_keys=True, default=repr).encode())
    digest.update(b"\x00")


def fingerprint(*parts):
    """SHA-256 hex digest of ``parts``: JSON-able settings, numpy arrays, tensors, or modules
    (their class, ``config`` and every tensor of the ``state_dict``)."""
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


class ResultCache:
    """JSON records in ``folder``, one file ``<label>_<key[:16]>.json`` per key.

    Parameters
    ----------
    folder : str or path-like
        Created on the first write.
    force : bool
        Ignore stored records (:meth:`get` returns None); new ones replace them.
    """

    def __init__(self, folder, force=False):
        self.folder = Path(folder)
        self.force = bool(force)

    def path(self, label, key, suffix=".json"):
        """The file for ``key``; ``label`` makes it readable (e.g. ``"table1_FisherNet_d5"``)."""
        return self.folder / f"{label}_{key[:16]}{suffix}"

    def get(self, label, key):
        """The stored record, or None (not stored, ``force``, or unreadable: then recomputed)."""
        path = self.path(label, key)
        if self.force or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable cache file {path} ({err}); recomputing it",
                          RuntimeWarning, stacklevel=2)
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            warnings.warn(f"ignoring cache file {path}: it holds another key; recomputing it",
                          RuntimeWarning, stacklevel=2)
            return None
        # records of versions before the hash have none: read as they are
        if "sha256" in record and record["sha256"] != json_hash(record.get("value")):
            warnings.warn(f"ignoring cache file {path}: its value does not match its integrity "
                          f"hash (edited or corrupt); recomputing it", RuntimeWarning,
                          stacklevel=2)
            return None
        return record["value"]

    def put(self, label, key, value):
        """Store a JSON-able ``value`` under ``key`` (atomically); returns the file's path."""
        path = self.path(label, key)
        write_text(path, json.dumps({"key": key, "sha256": json_hash(value), "value": value},
                                    indent=1))
        return path

    def stages(self, label, key):
        """The records of the stages of one long computation stored under ``key``, as a
        :class:`StageRecords` mapping (e.g. the ``finished`` rows of
        :func:`nifty_fishernet.calibration.calibrate`), so a killed run resumes."""
        return StageRecords(self, label, key)


class StageRecords:
    """``{stage name: JSON-able record}`` kept in a :class:`ResultCache`, one file per stage
    (``<label>_stage-<name>_<key[:16]>.json``), written as each stage finishes.

    Supports ``records.get(name)`` (None if missing), ``name in records``,
    ``records[name]``, ``records[name] = value`` and :meth:`names`; an unreadable or corrupt
    file counts as missing (the stage runs again). Stage names are words and spaces. A stage
    whose result is not JSON (arrays) is kept by its owner in :meth:`file`.
    """

    def __init__(self, cache, label, key):
        self.cache, self.label, self.key = cache, str(label), str(key)

    def _label(self, name):
        return f"{self.label}_stage-{str(name).replace(' ', '-')}"

    def names(self):
        """The names of the stages stored, in the order they were written: JSON records that
        read back, and the stages kept in a :meth:`file` of their own (by existence)."""
        prefix, tail = f"{self.label}_stage-", f"_{self.key[:16]}"
        paths = sorted(self.cache.folder.glob(f"{prefix}*{tail}.*"),
                       key=lambda path: path.stat().st_mtime)
        names = []
        for path in paths:
            name = path.name[len(prefix):-len(tail + path.suffix)].replace("-", " ")
            if path.suffix != ".json" or self.get(name) is not None:
                names.append(name)
        return names

    def file(self, name, suffix):
        """The file of a stage whose result is kept in a format of its own (e.g. ``".h5"``
        arrays): ``<label>_stage-<name>_<key[:16]><suffix>`` beside the JSON records."""
        if not str(suffix).startswith(".") or suffix == ".json":
            raise ValueError(f"suffix must be a file extension other than .json (the JSON "
                             f"records'), got {suffix!r}")
        return self.cache.path(self._label(name), self.key, suffix)

    def get(self, name):
        return self.cache.get(self._label(name), self.key)

    def __contains__(self, name):
        return self.get(name) is not None

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name, value):
        self.cache.put(self._label(name), self.key, value)


def json_hash(value):
    """SHA-256 hex digest of a JSON-able value (sorted keys, so equal dicts hash equal): the
    integrity hash of a record's value, and the trained models' configuration keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
