"""How honest a latent posterior is: simulation-based calibration on the model's own
generative process, and exact posteriors of its own decoder (grid, importance sampling)."""

from .exact import (GRID_MAX_DIM, ExactPosterior, compare_to_exact, exact_mass_below,
                    exact_posterior, load_exact_posterior, lower_bound_eigenvalues,
                    save_exact_posterior)
from .harness import (DEFAULT_METHODS, HPD_SUFFIX, NIFTY_METHODS, calibrate, calibration_stages,
                      recalibrate)
from .sbc import (LEVELS, gaussian_coverage, hpd_ranks, mahalanobis2, rank_histogram,
                  sample_coverage, sbc_ranks, simulate)

__all__ = ["LEVELS", "simulate", "gaussian_coverage", "sample_coverage", "sbc_ranks",
           "hpd_ranks", "rank_histogram", "mahalanobis2", "ExactPosterior", "exact_posterior",
           "save_exact_posterior", "load_exact_posterior",
           "compare_to_exact", "exact_mass_below", "lower_bound_eigenvalues", "GRID_MAX_DIM",
           "calibrate", "recalibrate", "calibration_stages", "DEFAULT_METHODS",
           "NIFTY_METHODS", "HPD_SUFFIX"]
