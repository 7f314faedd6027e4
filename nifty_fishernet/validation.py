"""Every check on what users pass in, in one place: arrays of images and latents, batches for
a model, and the sizes the package works in.

numpy arrays, torch tensors (any device) and nested lists are accepted alike; a wrong type,
shape, non-finite value or scale is a clear error that names the argument.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EVALUATION_BATCH", "as_real_array", "check_batch", "as_model_input", "as_latents",
           "as_image_batch"]

#: Batch size of every evaluation pass (encoding, decoding, test loss and MSE, features): a
#: memory bound only, results do not depend on it.
EVALUATION_BATCH = 1000


def as_real_array(values, name):
    """``values`` (numpy, torch, nested lists) as a numpy array of real numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _check_finite(array, name):
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain non-finite values")


def check_batch(x, width, dtype, name="x"):
    """Raise a clear error unless ``x`` is a finite floating tensor of shape ``(B, width)``
    in ``dtype`` (a model's own input check: no conversion here).

    Parameters
    ----------
    x : torch.Tensor
        The batch to check.
    width : int
        Expected size of the last axis.
    dtype : torch.dtype
        The model's parameter dtype, which ``x`` must match.
    name : str
        How the error messages refer to ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__} (the "
                        f"model's methods take tensors; nifty_fishernet.train and the "
                        f"evaluation functions also take numpy arrays and lists)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (images scaled to [0, 1]), got "
                        f"dtype {x.dtype}")
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the model computes in {dtype}; "
                        f"convert one of them (x.to({dtype}) or model.to({x.dtype}))")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (batch, {width}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name} contains non-finite values (NaN or inf) in {bad} of "
                         f"{x.shape[0]} rows")


def as_model_input(images, model, name, value_range=(0.0, 1.0)):
    """``images`` (numpy, torch or a nested list) as a checked tensor in the model's dtype on
    the CPU, with every value in ``value_range`` (None: any finite values).

    Floating-point inputs of another precision are converted (numpy and torch alike); integer
    images are refused, and so are images on another scale (0-255, or -1 to 1), which would
    otherwise train silently against a decoder whose outputs lie in [0, 1].
    """
    if isinstance(images, (list, tuple)):
        images = np.asarray(images)
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(f"{name} must be floating point (scaled to [0, 1]), got dtype "
                            f"{images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images)).to(model.dtype)
    elif isinstance(images, torch.Tensor) and images.is_floating_point():
        images = images.detach().cpu().to(model.dtype)
    check_batch(images, model.data_dim, model.dtype, name)
    if value_range is not None:
        low, high = float(images.min()), float(images.max())
        if low < value_range[0] or high > value_range[1]:
            raise ValueError(f"{name} must be scaled to [{value_range[0]:g}, "
                             f"{value_range[1]:g}], got values in [{low:.4g}, {high:.4g}]: "
                             f"divide 8-bit images by 255, map [-1, 1] images by (x + 1) / 2 "
                             f"(value_range=None for data that are not images)")
    return images


def as_latents(latents, name="latents", latent_dim=None):
    """``latents`` as a finite float64 ``(n, d)`` array with ``n >= 1``, or a clear error."""
    array = as_real_array(latents, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n, latent_dim), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if latent_dim is not None and array.shape[1] != latent_dim:
        raise ValueError(f"{name} have latent dimension {array.shape[1]}, the estimator was "
                         f"fitted in {latent_dim}")
    array = array.astype(np.float64)
    _check_finite(array, name)
    return array


def as_image_batch(images, name="images", image_shape=(28, 28), tolerance=1e-3):
    """Images as a float32 ``(n, 1, *image_shape)`` tensor in [0, 1], or a clear error.

    Accepts ``(n, h * w)``, ``(n, h, w)`` or ``(n, 1, h, w)`` arrays, tensors or lists; values
    up to ``tolerance`` outside [0, 1] (rounding) are clipped, larger ones refused.
    """
    array = as_real_array(images, name)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    n, size = array.shape[0], int(np.prod(image_shape))
    if array.shape[1:] not in ((size,), tuple(image_shape), (1,) + tuple(image_shape)):
        raise ValueError(f"{name} must have shape (n, {size}), (n, {image_shape[0]}, "
                         f"{image_shape[1]}) or (n, 1, {image_shape[0]}, {image_shape[1]}), "
                         f"got {array.shape}")
    array = array.astype(np.float32).reshape(n, 1, *image_shape)
    _check_finite(array, name)
    low, high = float(array.min()), float(array.max())
    if low < -tolerance or high > 1 + tolerance:
        raise ValueError(f"{name} must lie in [0, 1] (pixel intensities), got values in "
                         f"[{low:.3g}, {high:.3g}]")
    return torch.from_numpy(np.clip(array, 0.0, 1.0))
