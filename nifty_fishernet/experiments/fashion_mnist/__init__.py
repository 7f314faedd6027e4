"""The paper's Fashion-MNIST experiment: settings, model grid, Table 1, calibration, figures
and report in one place; ``demos/fashion_mnist.py`` is its command line.

Use :func:`main` with a command line's arguments (see :mod:`.run`), e.g.
``main(["--paper", "--models", "FisherNet", "--dims", "2"])`` for one part of the paper's
setting; :func:`trained_model_path` says where the models are.
"""

from .merge import RunMismatchError, cell_gaps, complete_cells, merge_records
from .paper import PAPER_TABLE1, PAPER_TABLE2, PAPER_VAE_MSE_EXCESS, PAPER_VAE_MSE_PLATEAU
from .report import calibration_markdown, summary_markdown, write_summary
from .settings import (CALIBRATION_VERSION, DEFAULT_MODELS, DEFAULT_OUT, MODELS, SETTINGS, TRAINING_KEYS, build_model, config_key,
                       setting_for, trained_model_path)
from .table1 import QUANTITIES, table1_markdown, write_table1

__all__ = ["main", "parse_args", "CALIBRATION_VERSION", "MODELS", "DEFAULT_MODELS", "SETTINGS", "TRAINING_KEYS", "DEFAULT_OUT",
           "build_model", "config_key", "setting_for", "trained_model_path",
           "RunMismatchError", "merge_records", "complete_cells", "cell_gaps",
           "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_VAE_MSE_EXCESS", "PAPER_VAE_MSE_PLATEAU",
           "QUANTITIES", "table1_markdown", "write_table1",
           "summary_markdown", "calibration_markdown", "write_summary"]


def __getattr__(name):
    # the run (plotting, calibration) is imported when asked for, so that finding a trained
    # model (e.g. nifty_fishernet.quick_fishernet) does not import matplotlib
    if name in ("main", "parse_args"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
