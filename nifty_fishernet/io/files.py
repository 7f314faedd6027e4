"""Atomic writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_path", "write_text", "STALE_SECONDS", "user_cache_dir"]

#: A temporary file of :func:`atomic_path` this old (seconds) belongs to a killed writer.
STALE_SECONDS = 600


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


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


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def user_cache_dir(*parts):
    """The package's folder in the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "nifty_fishernet", *parts)
