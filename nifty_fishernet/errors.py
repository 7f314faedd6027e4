"""The package's exceptions share one root, so ``except NiftyFishernetError`` catches all of
them; each also derives from the built-in exception it refines (a file error is a
``ValueError``, a missing dataset a ``FileNotFoundError``), so older handlers still work."""

__all__ = ["NiftyFishernetError", "FileFormatError"]


class NiftyFishernetError(Exception):
    """Root of every exception this package raises on purpose."""


class FileFormatError(NiftyFishernetError, ValueError):
    """A file of this package is truncated, corrupt, edited after it was written, of another
    kind, or of a newer format than this version reads."""
