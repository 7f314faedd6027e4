"""Evaluation metrics."""

from .mse import reconstruction_mse

__all__ = ["reconstruction_mse"]
