"""Toy problems with a 2-D latent whose exact posteriors are computable on a grid."""

from .grid import (GRID_METRICS, LatentGrid, compare_on_grid, exact_log_posterior,
                   gaussian_log_density, geovi_log_density, in_hpd_region)
from .problems import (BananaDecoder, RandomMLPDecoder, ToyProblem, banana_problem,
                       random_mlp_problem)

__all__ = ["ToyProblem", "BananaDecoder", "RandomMLPDecoder", "banana_problem",
           "random_mlp_problem", "LatentGrid", "exact_log_posterior", "gaussian_log_density",
           "geovi_log_density", "compare_on_grid", "in_hpd_region", "GRID_METRICS"]
