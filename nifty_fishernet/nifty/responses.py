"""Linear responses ``R`` for ``d = R(f(z)) + n``: hidden pixels and blur, batched."""

from __future__ import annotations

import nifty8 as ift
import numpy as np
from scipy import sparse

__all__ = ["pixel_mask", "gaussian_blur"]


def _decoder_domain(batch, pixels):
    return ift.makeDomain(ift.UnstructuredDomain((int(batch), int(pixels))))


def pixel_mask(hidden, batch=None):
    """``R`` keeping the visible pixels of every image (``ift.MaskOperator``).

    Parameters
    ----------
    hidden : array-like of bool
        ``(k,)`` (the same pixels hidden in every image, needs ``batch``) or ``(B, k)``;
        True marks a hidden pixel.
    batch : int, optional
        B, when ``hidden`` is one image's mask.

    Returns
    -------
    ift.LinearOperator
        From ``UnstructuredDomain((B, k))`` to the flat visible values (length = number of
        visible pixels in the batch).
    """
    hidden = np.asarray(hidden)
    if hidden.dtype != bool:
        raise TypeError(f"hidden must be a boolean mask, got dtype {hidden.dtype}")
    if hidden.ndim == 1:
        if batch is None:
            raise ValueError("a one-image mask needs batch=B")
        hidden = np.broadcast_to(hidden, (int(batch), hidden.size))
    if hidden.ndim != 2:
        raise ValueError(f"hidden must have shape (k,) or (B, k), got {hidden.shape}")
    if hidden.all():
        raise ValueError("every pixel is hidden: nothing is observed")
    domain = _decoder_domain(*hidden.shape)
    return ift.MaskOperator(ift.makeField(domain, hidden.copy()))


def gaussian_blur(batch, image_shape=(28, 28), sigma=1.5, truncate=3.0):
    """``R`` blurring every image with a normalised Gaussian kernel (zero padding).

    Parameters
    ----------
    batch : int
        B.
    image_shape : tuple of int
        ``(height, width)``; the decoder output is the flattened image.
    sigma : float
        Kernel standard deviation in pixels.
    truncate : float
        Kernel radius in units of ``sigma``.

    Returns
    -------
    ift.LinearOperator
        Endomorphism of ``UnstructuredDomain((B, height * width))`` (a sparse matrix).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    height, width = image_shape
    radius = int(np.ceil(truncate * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    # Separable blur: rows then columns, each a banded matrix.
    def band(n):
        return sparse.diags([np.full(n - abs(o), kernel[o + radius]) for o in offsets],
                            offsets, shape=(n, n))
    image_blur = sparse.kron(band(height), band(width))
    matrix = sparse.kron(sparse.identity(int(batch)), image_blur).tocsr()
    return ift.MatrixProductOperator(_decoder_domain(batch, height * width), matrix,
                                     flatten=True)
