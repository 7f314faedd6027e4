"""What happens around the epochs of :func:`~nifty_fishernet.train`: small objects the caller
may pass, called at the start and end of every epoch and when the loss diverges.

The defaults are a :class:`DivergenceGuard`, a :class:`ProgressReport` and, with a checkpoint
path, a :class:`CheckpointWriter`; pass further ones (e.g. to log to a file) as
``train(..., callbacks=[...])``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..checkpoint import save
from ..errors import NiftyFishernetError

__all__ = ["TrainingState", "Callback", "DivergenceGuard", "ProgressReport",
           "CheckpointWriter", "TrainingDivergedError"]


class TrainingDivergedError(NiftyFishernetError, RuntimeError):
    """The training loss became non-finite; the model holds the last good state."""


@dataclass
class TrainingState:
    """What callbacks see: the model and optimizer being trained, the run's config, the
    history so far, the current epoch (0-based) and the settings changed on resume."""

    model: object
    optimizer: object
    config: object
    history: dict
    epoch: int = 0
    changes: list = field(default_factory=list)

    @property
    def name(self):
        return f"{type(self.model).__name__} d={self.model.latent_dim}"

    def record(self):
        """The ``training_state`` a checkpoint stores."""
        return dict(epochs_done=len(self.history["epoch"]), config=self.config.to_dict(),
                    changes=self.changes)


class Callback:
    """Base class: override what you need."""

    def epoch_started(self, state):
        pass

    def epoch_finished(self, state):
        pass

    def diverged(self, state, step, value):
        """The loss of ``step`` was ``value`` (NaN or infinite)."""


class DivergenceGuard(Callback):
    """Keeps the model and optimizer of the last completed epoch and, when the loss becomes
    non-finite, restores them and raises :class:`TrainingDivergedError`.

    Parameters
    ----------
    checkpoint : path-like, optional
        Named in the error: it holds the same last good state.
    """

    def __init__(self, checkpoint=None):
        self.checkpoint = checkpoint
        self.last_good = None

    def epoch_started(self, state):
        self.last_good = (copy.deepcopy(state.model.state_dict()),
                          copy.deepcopy(state.optimizer.state_dict()))

    def diverged(self, state, step, value):
        state.model.load_state_dict(self.last_good[0])
        state.optimizer.load_state_dict(self.last_good[1])
        kept = f"; checkpoint {self.checkpoint} keeps it" if self.checkpoint is not None else ""
        raise TrainingDivergedError(
            f"{state.name}: non-finite loss ({value}) at epoch {state.epoch + 1}, step "
            f"{step + 1}; model and optimizer restored to their state after epoch "
            f"{state.epoch}{kept}")


class ProgressReport(Callback):
    """One line per finished epoch (through tqdm, so that progress bars stay intact)."""

    def epoch_finished(self, state):
        h = state.history
        tqdm.write(f"{state.name} epoch {h['epoch'][-1]}/{state.config.epochs}: train loss "
                   f"{h['train_loss'][-1]:.5g}  test loss {h['test_loss'][-1]:.5g}  test MSE "
                   f"{h['test_mse'][-1]:.5f}  noise std {h['noise_std'][-1]:.4f}  "
                   f"({h['seconds'][-1]:.1f} s)")


class CheckpointWriter(Callback):
    """Writes the model, the optimizer, the history and the run's record (config, changes)
    to ``path`` (atomically) after every epoch."""

    def __init__(self, path):
        self.path = path

    def epoch_finished(self, state):
        save(self.path, state.model, optimizer=state.optimizer, history=state.history,
             training_state=state.record())
