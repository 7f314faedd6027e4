"""The bridge to NIFTy: trained networks as NIFTy operators, likelihoods and latent posteriors.

Runs on ``nifty8`` 8.5.x or NIFTy 9's ``nifty.cl`` (:mod:`.compat`); ``ift`` here is the one
in use.
"""

from .compat import NIFTY, ift
from .inference import (LatentPosterior, encoder_position, infer_latents, latent_posterior,
                        metric_blocks)
from .likelihood import (LATENT_KEY, LIKELIHOOD_NAME, NOISE_KEY, FisherNetLikelihood,
                         decoder_likelihood, decoder_operator, decoder_target,
                         noise_variance_operator)
from .noise import MarginalInverseCovariance, noise_inverse_covariance
from .operator import TorchJacobian, TorchOperator
from .responses import gaussian_blur, pixel_mask
from .vi import METHODS, default_minimizers, variational_inference

__all__ = ["ift", "NIFTY", "TorchOperator", "TorchJacobian", "FisherNetLikelihood",
           "decoder_likelihood", "decoder_operator", "decoder_target",
           "noise_variance_operator", "noise_inverse_covariance", "MarginalInverseCovariance",
           "latent_posterior", "infer_latents", "encoder_position", "LatentPosterior",
           "metric_blocks", "default_minimizers", "variational_inference", "METHODS",
           "gaussian_blur", "pixel_mask", "LATENT_KEY", "NOISE_KEY", "LIKELIHOOD_NAME"]
