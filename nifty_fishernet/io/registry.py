"""Classes a file may name, by name: loading looks them up here and never imports or
unpickles anything a file asks for."""

from __future__ import annotations

__all__ = ["Registry", "MODEL_TYPES", "DENSITY_TYPES"]


class Registry(dict):
    """``{class name: class}`` of one kind of stored object.

    Parameters
    ----------
    kind : str
        What the classes are (``"model"``, ``"density"``), for error messages.
    """

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, cls):
        """Class decorator: make ``cls`` loadable under its name."""
        self[cls.__name__] = cls
        return cls

    def lookup(self, name, path, error):
        """The class registered as ``name``; ``error`` (an exception class) naming the file
        ``path`` and the known names if there is none."""
        cls = self.get(name)
        if cls is None:
            raise error(f"{path} holds an unknown {self.kind} type {name!r} (this version "
                        f"knows {sorted(self)})")
        return cls


#: Model classes (filled by :func:`nifty_fishernet.models.register_model`); here rather than
#: beside the models so that checkpoints need not import the models package.
MODEL_TYPES = Registry("model")

#: Latent density classes (filled by ``nifty_fishernet.density.base.register_density``).
DENSITY_TYPES = Registry("density")
