"""The bridge to NIFTy: trained networks as NIFTy operators and likelihoods."""

from .likelihood import LATENT_KEY, FisherNetLikelihood, decoder_operator
from .operator import TorchJacobian, TorchOperator

__all__ = ["TorchOperator", "TorchJacobian", "FisherNetLikelihood", "decoder_operator",
           "LATENT_KEY"]
