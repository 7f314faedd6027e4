"""Training: :func:`train` (Adam, per-epoch test, checkpoints, resuming, data-parallel under
torchrun) built from :func:`train_epoch` and :func:`evaluate`, its :class:`TrainingConfig`,
and the callbacks it calls around every epoch."""

from .callbacks import (Callback, CheckpointWriter, DivergenceGuard, ProgressReport,
                        TrainingDivergedError, TrainingState)
from .config import SEED_STRIDE, TrainingConfig, epoch_seed
from .loop import HISTORY_KEYS, evaluate, parameter_groups, resolve_device, train, train_epoch

__all__ = ["train", "train_epoch", "evaluate", "resolve_device", "parameter_groups",
           "TrainingConfig", "epoch_seed", "SEED_STRIDE", "HISTORY_KEYS",
           "Callback", "DivergenceGuard", "ProgressReport", "CheckpointWriter",
           "TrainingState", "TrainingDivergedError"]
