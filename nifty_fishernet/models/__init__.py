"""Latent-variable models sharing one interface (:class:`LatentModel`)."""

from .base import MODEL_TYPES, LatentModel, check_data, register_model
from .fishernet import FisherNet
from .mlp import MLP
from .noise import GaussianNoise
from .posterior_network import PosteriorNetwork, fit_posterior_network
from .refine import RefinedPosterior, RefineOptions, refine_posterior
from .tap_conv import TapConv2d, tap_convolutions
from .vae import VAE, ConvVAE

__all__ = ["LatentModel", "FisherNet", "VAE", "ConvVAE", "MLP", "GaussianNoise", "MODEL_TYPES",
           "register_model", "check_data", "RefineOptions", "RefinedPosterior",
           "refine_posterior", "PosteriorNetwork", "fit_posterior_network", "TapConv2d",
           "tap_convolutions"]
