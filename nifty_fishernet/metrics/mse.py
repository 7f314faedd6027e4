"""Reconstruction error (paper Eq. 32-33)."""

from __future__ import annotations

import torch

from ..validation import EVALUATION_BATCH

__all__ = ["reconstruction_mse"]


@torch.no_grad()
def reconstruction_mse(model, images, batch_size=EVALUATION_BATCH, per_image=False):
    """Mean squared error of the reconstructions from the encoder mean (Eq. 32-33).

    Parameters
    ----------
    model : nifty_fishernet.models.LatentModel
        Evaluated in eval mode on its own device; its mode is restored afterwards.
    images : torch.Tensor
        ``(p, k)`` data in the model's dtype (any device).
    batch_size : int
        Images per forward pass.
    per_image : bool
        Return ``MSE_i`` of every image (Eq. 32) instead of their mean (Eq. 33).

    Returns
    -------
    float or torch.Tensor
        The MSE, or a CPU tensor of shape ``(p,)``.
    """
    was_training = model.training
    model.eval()
    try:
        errors = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(model.device)
            errors.append(((x - model.reconstruct(x)) ** 2).mean(-1).cpu())
    finally:
        model.train(was_training)
    errors = torch.cat(errors)
    return errors if per_image else float(errors.double().mean())
