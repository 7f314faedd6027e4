"""HDF5 files with a format, a version and an integrity hash over all they hold.

Every file has the root attributes ``format`` (what it is), ``format_version`` and
:data:`HASH_ATTR`, a SHA-256 over the names, types, shapes and bytes of every other
attribute and every dataset in every group. :func:`read_hdf5` recomputes it before the file
is used: an edited digit in a JSON attribute, a dataset rewritten with other values (with or
without its Fletcher-32 filter), a group removed: each is an error that names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import FileFormatError
from .files import atomic_path

__all__ = ["HASH_ATTR", "content_hash", "write_hdf5", "read_hdf5", "write_tensors",
           "read_tensors"]

#: The root attribute that holds the integrity hash.
HASH_ATTR = "sha256"


def _feed_value(digest, value):
    array = np.asarray(value)
    if array.dtype.kind in "OUS":  # strings (h5py returns str or bytes)
        digest.update(b"s" + "\x1f".join(str(v.decode() if isinstance(v, bytes) else v)
                                          for v in array.reshape(-1)).encode())
    else:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
    digest.update(b"\x00")


def content_hash(f):
    """SHA-256 hex digest of everything in the open HDF5 file ``f`` but :data:`HASH_ATTR`:
    every group and dataset by path in sorted order, with their attributes."""
    digest = hashlib.sha256()
    objects = {"/": f}
    f.visititems(lambda name, obj: objects.__setitem__("/" + name, obj))
    for name in sorted(objects):
        obj = objects[name]
        kind = "dataset" if isinstance(obj, h5py.Dataset) else "group"
        digest.update(f"{kind}:{name}\x00".encode())
        for key in sorted(obj.attrs):
            if name == "/" and key == HASH_ATTR:
                continue
            digest.update(f"attr:{key}\x00".encode())
            _feed_value(digest, obj.attrs[key])
        if kind == "dataset":
            _feed_value(digest, obj[()])
    return digest.hexdigest()


@contextlib.contextmanager
def write_hdf5(path, format, version):
    """A new HDF5 file (yielded open for writing) that replaces ``path`` atomically once the
    block succeeds, stamped with ``format``, ``version`` and the integrity hash."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = format
            f.attrs["format_version"] = int(version)
            yield f
            f.attrs[HASH_ATTR] = content_hash(f)


@contextlib.contextmanager
def read_hdf5(path, format, version, error=FileFormatError, what="file", hashed_since=1):
    """Open a file written by :func:`write_hdf5` after checking format, version and hash.

    Parameters
    ----------
    path : path-like
    format : str
        The ``format`` the file must have.
    version : int
        The newest format version this code reads.
    error : type
        The :class:`~nifty_fishernet.errors.FileFormatError` subclass raised for a bad file;
        errors raised by the ``with`` block while reading (a missing key, a value of the
        wrong type) become this error too.
    what : str
        What the file is, for messages ("checkpoint", "density file").
    hashed_since : int
        Files of an older version may lack the hash (written before it existed): they are
        read with a warning to save them again.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    error
        Truncated or corrupt, of another format or a newer version, or edited.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise error(f"{path} is not a readable HDF5 {what} (truncated or corrupt): "
                    f"{err}") from err
    with f:
        try:
            if f.attrs.get("format") != format:
                raise error(f"{path} is an HDF5 file but not a nifty_fishernet {what} "
                            f"(format {f.attrs.get('format')!r}, expected {format!r})")
            found = int(f.attrs.get("format_version", 1))  # the first files had none
            if found > version:
                raise error(f"{path} has {what} format {found}; this version of "
                            f"nifty_fishernet reads up to {version}")
            stored = f.attrs.get(HASH_ATTR)
            if stored is None and found >= hashed_since:
                raise error(f"{path} has no integrity hash: it was not written completely "
                            f"by nifty_fishernet or was edited")
            if stored is None:
                warnings.warn(f"{path} was written before integrity hashes (format {found}): "
                              f"its attributes are not checked; save it again to add one",
                              RuntimeWarning, stacklevel=3)
            elif content_hash(f) != str(stored):
                raise error(f"{path} does not match its integrity hash: it was edited "
                            f"after it was written, or is corrupt")
            yield f
        except error:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
            raise error(f"{path} is corrupt or incomplete ({type(err).__name__}: {err})") \
                from err


def write_tensors(group, tensors):
    """One Fletcher-32-checksummed dataset per tensor of ``tensors`` (e.g. a ``state_dict``);
    stored flat (the checksum needs a chunked, non-empty dataset) with the shape as attribute."""
    for name, tensor in tensors.items():
        array = torch.as_tensor(tensor).detach().cpu().numpy()
        flat = np.ascontiguousarray(array).reshape(-1)
        ds = group.create_dataset(name, data=flat, fletcher32=flat.size > 0)
        ds.attrs["shape"] = np.asarray(array.shape, dtype=np.int64)


def read_tensors(group):
    """The inverse of :func:`write_tensors`: ``{name: torch.Tensor}``."""
    return {name: torch.from_numpy(np.asarray(ds[()]).reshape(tuple(ds.attrs["shape"])).copy())
            for name, ds in group.items()}
