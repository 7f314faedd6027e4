"""Convolutions summed tap by tap, for decoders evaluated in float64 on the CPU.

NIFTy's inference runs a trained decoder in float64. torch's fast CPU convolutions (oneDNN)
have no float64 kernels; the fallback forms an im2col buffer of ``C k_h k_w`` values per
output pixel before its matrix product. Where the convolution has few output channels that
buffer is nearly all of the cost: a ConvVAE's last layer (32 channels to one, 3x3) takes
0.30 s of a 0.8 s float64 decoder pass for 200 images, and 0.012 s summed tap by tap
(``benchmarks/nifty_jacobian.py`` measures the whole effect).

:class:`TapConv2d` computes the same sums in another order: one matrix product over the input
channels gives each kernel tap's contribution at every input pixel, ``O k_h k_w`` values per
pixel, and the output adds the ``k_h k_w`` shifted slices. :func:`tap_convolutions` puts it in
place of each convolution whose taps are no more values per pixel than its input has
channels (``O k_h k_w <= C``, stride 1), where it is the cheaper order.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import nn

__all__ = ["TapConv2d", "tap_convolutions"]


class TapConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (groups 1, dilation 1, zero padding) summed tap by tap.

    The same parameters, state dict and results as the convolution it is made from
    (:meth:`from_conv`); only the order of the sums differs (float64 results agree to
    rounding, ~1e-15 relative).
    """

    @classmethod
    def from_conv(cls, conv):
        """A TapConv2d sharing ``conv``'s weight and bias.

        Raises
        ------
        ValueError
            If ``conv`` has groups, dilation, a padding mode other than zeros or a string
            padding (``"same"``), which this order of sums does not cover.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        problems = [what for what, bad in (
            (f"groups={conv.groups}", conv.groups != 1),
            (f"dilation={conv.dilation}", tuple(conv.dilation) != (1, 1)),
            (f"padding_mode={conv.padding_mode!r}", conv.padding_mode != "zeros"),
            (f"padding={conv.padding!r}", isinstance(conv.padding, str))) if bad]
        if problems:
            raise ValueError(f"TapConv2d covers groups=1, dilation=1 and integer zero padding; "
                             f"the convolution has {', '.join(problems)}")
        weight = conv.weight
        tap = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, bias=conv.bias is not None, device="meta",
                  dtype=weight.dtype)
        tap.weight = weight
        tap.bias = conv.bias
        return tap

    def forward(self, x):
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"TapConv2d expects (B, {self.in_channels}, H, W) or "
                             f"({self.in_channels}, H, W), got {tuple(x.shape)}")
        batch, channels, height, width = x.shape
        out_channels, _, kh, kw = self.weight.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        out_h = (height + 2 * ph - kh) // sh + 1
        out_w = (width + 2 * pw - kw) // sw + 1
        # taps[b, (ky, kx), o, y, x] = sum_c w[o, c, ky, kx] x[b, c, y, x]: padding the taps
        # equals padding the input, since zeros contribute nothing
        kernel = self.weight.permute(2, 3, 0, 1).reshape(kh * kw * out_channels, channels)
        taps = (kernel @ x.reshape(batch, channels, height * width)).reshape(
            batch, kh * kw, out_channels, height, width)
        taps = F.pad(taps, (pw, pw, ph, ph))
        out = None
        for ky in range(kh):
            for kx in range(kw):
                part = taps[:, ky * kw + kx, :, ky:ky + sh * (out_h - 1) + 1:sh,
                            kx:kx + sw * (out_w - 1) + 1:sw]
                out = part if out is None else out + part
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.squeeze(0) if unbatched else out


def _taps_are_cheaper(conv):
    # the tap order writes O k_h k_w values per pixel, the im2col order C k_h k_w per output
    # pixel; with stride 1 both make the same products, so few output channels decide
    if type(conv) is not nn.Conv2d:
        return False
    kh, kw = conv.kernel_size
    return (conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and tuple(conv.stride) == (1, 1)
            and conv.out_channels * kh * kw <= conv.in_channels)


def tap_convolutions(module):
    """A copy of ``module`` with each cheaper-by-taps ``nn.Conv2d`` a :class:`TapConv2d`.

    A convolution is replaced where its stride is 1 and its taps are no more values per pixel
    than its input has channels (``out_channels * k_h * k_w <= in_channels``), e.g. a
    ConvVAE's last layer to one image channel. The copy's parameters are copies of
    ``module``'s; ``module`` itself is not changed.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    torch.nn.Module
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    module = copy.deepcopy(module)
    if _taps_are_cheaper(module):
        return TapConv2d.from_conv(module)
    _replace_children(module)
    return module


def _replace_children(module):
    for name, child in module.named_children():
        if _taps_are_cheaper(child):
            setattr(module, name, TapConv2d.from_conv(child))
        else:
            _replace_children(child)
