"""Linear responses ``R`` for ``d = R(f(z)) + n``: hidden pixels and blur, batched."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .compat import ift, values
from .likelihood import check_batch, decoder_target

__all__ = ["pixel_mask", "gaussian_blur"]


def pixel_mask(hidden, batch=None, image_shape=None):
    """``R`` keeping the visible pixels of every image (``ift.MaskOperator``).

    Parameters
    ----------
    hidden : array-like of bool
        One image's mask (``(k,)`` or ``image_shape``; the same pixels hidden in every image,
        needs ``batch``) or B masks (``(B, k)`` or ``(B,) + image_shape``); True marks a
        hidden pixel.
    batch : int, optional
        B, when ``hidden`` is one image's mask.
    image_shape : tuple of int, optional
        Act on the image domain (the decoder's target with ``image_shape=``) instead of the
        flat ``UnstructuredDomain((B, k))``.

    Returns
    -------
    ift.LinearOperator
        From the decoder's target to the flat visible values (length = number of visible
        pixels in the batch).
    """
    hidden = np.asarray(hidden)
    if hidden.dtype != bool:
        raise TypeError(f"hidden must be a boolean mask, got dtype {hidden.dtype}")
    pixels = hidden.shape[-1] if image_shape is None else int(np.prod(image_shape))
    one = [(pixels,)] + ([] if image_shape is None else [tuple(image_shape)])
    if hidden.shape in one:
        if batch is None:
            raise ValueError("a one-image mask needs batch=B")
        hidden = np.broadcast_to(hidden.reshape(-1), (check_batch(batch), pixels))
    elif hidden.ndim < 2 or hidden.shape[1:] not in one:
        raise ValueError(f"hidden must have shape (k,) or (B, k) (or image_shape, (B,) + "
                         f"image_shape), got {hidden.shape}")
    if hidden.all():
        raise ValueError("every pixel is hidden: nothing is observed")
    domain = decoder_target(hidden.shape[0], pixels, image_shape)
    return ift.MaskOperator(ift.makeField(domain, hidden.reshape(domain.shape).copy()))


def gaussian_blur(batch, image_shape=(28, 28), sigma=1.5, truncate=3.0, on_images=False):
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
    on_images : bool
        Act on the image domain ``(UnstructuredDomain(B), RGSpace(image_shape,
        distances=1.0))`` (the decoder's target with ``image_shape=``) instead of the flat
        ``UnstructuredDomain((B, height * width))``.

    Returns
    -------
    ift.LinearOperator
        An endomorphism: one sparse matrix applied to every image.
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
    domain = decoder_target(batch, height * width, image_shape if on_images else None)
    return _ImageMatrixOperator(domain, sparse.kron(band(height), band(width)).tocsr())


class _ImageMatrixOperator(ift.EndomorphicOperator):
    """One (sparse) matrix applied to each of the B flattened images of ``domain``."""

    def __init__(self, domain, matrix):
        self._domain = ift.makeDomain(domain)
        self._matrix, self._transpose = matrix, matrix.T.tocsr()
        self._capability = self.TIMES | self.ADJOINT_TIMES

    def apply(self, x, mode):
        self._check_input(x, mode)
        images = values(x).reshape(self._domain.shape[0], -1)
        matrix = self._matrix if mode == self.TIMES else self._transpose
        return ift.makeField(self._domain, (matrix @ images.T).T.reshape(self._domain.shape))
