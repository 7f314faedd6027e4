"""Evaluation metrics: reconstruction error, the Fréchet distance of image features (FID),
and a two-sample test."""

from .fid import FeatureStatistics, feature_statistics, fid, frechet_distance
from .mse import reconstruction_mse
from .two_sample import energy_distance_test

__all__ = ["reconstruction_mse", "fid", "frechet_distance", "feature_statistics",
           "FeatureStatistics", "energy_distance_test"]
