"""The models' settings as small frozen dataclasses, validated before a model is built.

A model keeps its settings as ``model.model_config`` (the dataclass) and ``model.config``
(its dict form). The dict is what checkpoints store and what cache keys hash, so it is derived
from the dataclass in one place (:meth:`ModelConfig.to_dict`): options added after the first
checkpoints are left out while at their default, so those checkpoints and keys stay valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ModelConfig", "FisherNetConfig", "VAEConfig", "ConvVAEConfig", "SOLVERS",
           "JACOBIANS"]

#: How the FisherNet solves ``M z = theta``.
SOLVERS = ("auto", "cholesky", "cg")
#: How the decoder's Jacobian is computed: the fused forward pass of an MLP decoder
#: (:class:`nifty_fishernet.fisher.FusedJacobian`), forward-mode autodiff, or the first
#: where the decoder has it.
JACOBIANS = ("auto", "fused", "autodiff")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Settings every model has."""

    latent_dim: int

    #: Fields :meth:`to_dict` leaves out while at their default.
    OPTIONAL = ()
    #: Fields that must be positive integers.
    SIZES = ("latent_dim",)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # JSON gives lists: the frozen config keeps tuples
                object.__setattr__(self, field.name, tuple(value))
        for name in self.SIZES:
            _positive_int(name, getattr(self, name))

    @classmethod
    def from_dict(cls, config):
        """The config of a stored dict, or a clear error for unknown keys or bad values."""
        if not isinstance(config, dict):
            raise TypeError(f"a {cls.__name__} must come from a dict, got "
                            f"{type(config).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown} (known: "
                            f"{sorted(known)})")
        return cls(**config)

    def to_dict(self):
        """The stored form: JSON types, optional fields only where they differ from their
        default."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in self.OPTIONAL and value == field.default:
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class FisherNetConfig(ModelConfig):
    """:class:`~nifty_fishernet.FisherNet`'s settings (see its parameters)."""

    data_dim: int = 784
    hidden: int = 448
    layers: int = 3
    solver: str = "auto"
    differentiate_metric: bool = False
    n_samples: int = 1
    log_det: bool = False
    map_weight: float = 0.0
    map_steps: int = 3
    jacobian: str = "auto"

    OPTIONAL = ("n_samples", "log_det", "map_weight", "map_steps", "jacobian")
    SIZES = ("latent_dim", "data_dim", "hidden", "layers", "n_samples", "map_steps")

    def __post_init__(self):
        super().__post_init__()
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be one of {JACOBIANS}, got {self.jacobian!r}")
        if not float(self.map_weight) >= 0:
            raise ValueError(f"map_weight must be >= 0, got {self.map_weight!r}")
        object.__setattr__(self, "map_weight", float(self.map_weight))
        object.__setattr__(self, "differentiate_metric", bool(self.differentiate_metric))
        object.__setattr__(self, "log_det", bool(self.log_det))


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """:class:`~nifty_fishernet.VAE`'s settings (see its parameters)."""

    data_dim: int = 784
    hidden: int = 448
    layers: int = 3
    learn_noise: bool = False
    noise_variance: float = 1.0

    OPTIONAL = ("noise_variance",)
    SIZES = ("latent_dim", "data_dim", "hidden", "layers")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "learn_noise", bool(self.learn_noise))
        object.__setattr__(self, "noise_variance", float(self.noise_variance))


@dataclass(frozen=True)
class ConvVAEConfig(ModelConfig):
    """:class:`~nifty_fishernet.ConvVAE`'s settings (see its parameters)."""

    learn_noise: bool = False
    hidden: int = 448
    filters: tuple = (32, 32, 64)
    kernel_size: int = 3
    strides: tuple = (2, 1, 2)
    image_shape: tuple = (1, 28, 28)
    noise_variance: float = 1.0

    OPTIONAL = ("noise_variance",)
    SIZES = ("latent_dim", "hidden", "kernel_size")

    def __post_init__(self):
        super().__post_init__()
        for name in ("filters", "strides", "image_shape"):
            values = tuple(getattr(self, name))
            for i, value in enumerate(values):
                _positive_int(f"{name}[{i}]", value)
            object.__setattr__(self, name, values)
        if len(self.filters) != len(self.strides) or len(self.image_shape) != 3:
            raise ValueError(f"need as many filters as strides and image_shape (channels, "
                             f"height, width), got {self.filters}, {self.strides}, "
                             f"{self.image_shape}")
        reduction = 1
        for s in self.strides:
            reduction *= s
        if self.image_shape[1] % reduction or self.image_shape[2] % reduction:
            raise ValueError(f"image_shape {self.image_shape} is not divisible by the product "
                             f"of the strides {self.strides}")
        object.__setattr__(self, "learn_noise", bool(self.learn_noise))
        object.__setattr__(self, "noise_variance", float(self.noise_variance))
