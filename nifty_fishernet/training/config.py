"""The settings of a training run: validated once, stored in the checkpoint, compared on resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["TrainingConfig", "SEED_STRIDE", "epoch_seed"]

#: Seeds of the per-epoch random streams are ``seed * SEED_STRIDE + epoch``: a prime larger
#: than any epoch count, so that no two (seed, epoch) pairs share a stream.
SEED_STRIDE = 1_000_003


def epoch_seed(seed, epoch):
    """The seed of one epoch's random stream (shuffling, sampling noise)."""
    return int(seed) * SEED_STRIDE + int(epoch)


@dataclass(frozen=True)
class TrainingConfig:
    """What determines a training run besides the model and the data's values.

    Parameters
    ----------
    epochs : int
        Total number of epochs; a resumed run continues up to this number.
    batch_size : int
        Minibatch size (64 in Table 2).
    lr : float
        Adam learning rate of the network (1e-4 in Table 2).
    noise_lr : float, optional
        Learning rate of the learned noise parameter ``xi_N`` (None: ``lr``, as in the paper).
    seed : int
        Seeds the shuffling and the sampling noise of every epoch.
    n_train : int, optional
        Number of training data (filled in by :func:`~nifty_fishernet.train`).
    """

    epochs: int
    batch_size: int = 64
    lr: float = 1e-4
    noise_lr: float | None = None
    seed: int = 0
    n_train: int | None = None

    #: Settings that must agree between a checkpoint and the run that resumes it.
    COMPARED = ("batch_size", "lr", "noise_lr", "seed", "n_train")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "seed") + (("n_train",) if self.n_train is not None
                                                        else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        for name in ("lr", "noise_lr"):
            value = getattr(self, name)
            if value is None and name == "noise_lr":
                continue
            if not float(value) > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def effective_noise_lr(self):
        """The learning rate ``xi_N`` really gets."""
        return self.lr if self.noise_lr is None else self.noise_lr

    def to_dict(self):
        """The settings as JSON-able dict (``noise_lr`` resolved)."""
        return dict(dataclasses.asdict(self), noise_lr=self.effective_noise_lr)

    def differences(self, saved):
        """``["lr 0.001 (checkpoint) -> 0.0001", ...]`` for every compared setting in which
        ``saved`` (a :meth:`to_dict` of an earlier run, possibly of an older version without
        some keys) differs from this config."""
        mine = self.to_dict()
        return [f"{key} {saved[key]!r} (checkpoint) -> {mine[key]!r}"
                for key in self.COMPARED if key in saved and saved[key] != mine[key]]
