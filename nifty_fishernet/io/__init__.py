"""One file layer for everything the package writes and reads back.

- :func:`atomic_path` / :func:`write_text`: a file appears complete or not at all, with the
  umask's permissions; temporaries left by a killed writer are removed.
- :func:`write_hdf5` / :func:`read_hdf5`: HDF5 files with a format name and version and an
  integrity hash (SHA-256) over every attribute and dataset, checked on every read, so that
  any edit or corruption is a :class:`~nifty_fishernet.errors.FileFormatError`.
- :class:`Registry`: classes a file may name (models, densities), looked up by name, so that
  loading never imports or unpickles what a file asks for.
- :func:`write_tensors` / :func:`read_tensors`: torch ``state_dict``-like groups.
- :func:`jsonable` / :func:`write_json`: JSON records (numpy scalars, NaN as null).

Checkpoints (:mod:`nifty_fishernet.checkpoint`), densities, the FID classifier, cache
records and the data download all use it.
"""

from .files import STALE_SECONDS, atomic_path, user_cache_dir, write_text
from .hdf5 import HASH_ATTR, content_hash, read_hdf5, read_tensors, write_hdf5, write_tensors
from .records import jsonable, write_json
from .registry import DENSITY_TYPES, MODEL_TYPES, Registry

__all__ = ["atomic_path", "write_text", "user_cache_dir", "STALE_SECONDS", "write_hdf5", "read_hdf5",
           "content_hash", "HASH_ATTR", "write_tensors", "read_tensors", "Registry",
           "MODEL_TYPES", "DENSITY_TYPES", "jsonable", "write_json"]
