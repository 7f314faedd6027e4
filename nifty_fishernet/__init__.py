"""nifty_fishernet: the FisherNet autoencoder in PyTorch, bridged to NIFTy.

The FisherNet's encoder gives the latent mean ``mu``; the latent covariance is the inverse of
the metric ``M(mu) = J^T N^{-1} J + 1`` of its decoder (Fisher metric of the likelihood plus
the prior's), with a learned noise level ``N = exp(xi_N) 1``.
"""

from ._version import __version__
from .errors import FileFormatError, NiftyFishernetError
from .checkpoint import Checkpoint, CheckpointError, load, load_checkpoint, save
from .data import DatasetNotFoundError, load_fashion_mnist
from .density import (FlowDensity, GaussianMixtureDensity, GridTooLargeError, LatentDensity,
                      MaternKDE, load_density)
from .fisher import (decoder_jacobian, draw_metric_noise, inverse_metric_offsets_cg,
                     inverse_metric_offsets_cholesky, metric_from_jacobian, principal_axes)
from .metrics import feature_statistics, fid, reconstruction_mse
from .models import (MLP, ConvVAE, FisherNet, LatentModel, PosteriorNetwork, RefinedPosterior,
                     RefineOptions, fit_posterior_network,
                     VAE, refine_posterior)
from .nifty import (FisherNetLikelihood, LatentPosterior, TorchOperator, decoder_likelihood,
                    decoder_operator, default_minimizers, encoder_position, infer_latents,
                    latent_posterior)
from .training import TrainingDivergedError, train
from .pretrained import quick_fishernet
from . import evaluation  # noqa: E402  (after the modules it uses)
from .evaluation import sample_quality  # noqa: E402

__all__ = [
    "__version__", "NiftyFishernetError", "FileFormatError",
    # models
    "LatentModel", "FisherNet", "VAE", "ConvVAE", "MLP",
    # refined posteriors
    "RefineOptions", "RefinedPosterior", "refine_posterior",
    # an amortized posterior fitted to a model's own simulations
    "PosteriorNetwork", "fit_posterior_network",
    # Fisher-metric math
    "decoder_jacobian", "metric_from_jacobian", "draw_metric_noise",
    "inverse_metric_offsets_cholesky", "inverse_metric_offsets_cg", "principal_axes",
    # data, training, evaluation, checkpoints
    "load_fashion_mnist", "DatasetNotFoundError", "train", "TrainingDivergedError",
    "reconstruction_mse", "fid", "feature_statistics", "save", "load", "load_checkpoint",
    "Checkpoint", "CheckpointError", "quick_fishernet",
    # sample quality (Table 1)
    "evaluation", "sample_quality",
    # latent densities
    "LatentDensity", "MaternKDE", "GaussianMixtureDensity", "FlowDensity", "GridTooLargeError",
    "load_density",
    # NIFTy bridge
    "TorchOperator", "FisherNetLikelihood", "decoder_likelihood", "latent_posterior",
    "infer_latents", "LatentPosterior", "decoder_operator", "encoder_position",
    "default_minimizers",
]
