"""The bridge to NIFTy: trained networks as NIFTy operators, likelihoods and latent posteriors."""

from .inference import LatentPosterior, infer_latents, latent_posterior, metric_blocks
from .likelihood import (LATENT_KEY, NOISE_KEY, FisherNetLikelihood, decoder_likelihood,
                         decoder_operator, noise_variance_operator)
from .operator import TorchJacobian, TorchOperator

__all__ = ["TorchOperator", "TorchJacobian", "FisherNetLikelihood", "decoder_likelihood",
           "decoder_operator", "noise_variance_operator", "latent_posterior", "infer_latents",
           "LatentPosterior", "metric_blocks", "LATENT_KEY", "NOISE_KEY"]
