"""Convolutions summed tap by tap: the same sums as torch's, the same Jacobians."""

import pytest
import torch
from torch import nn

import nifty_fishernet as nf
from nifty_fishernet.models import TapConv2d, tap_convolutions

#: (in, out, kernel, stride, padding, bias): the ConvVAE's last layer, strides, rectangular
#: kernels and paddings, 1x1, no bias
CONVOLUTIONS = [(32, 1, 3, 1, 1, True), (5, 3, (3, 2), 2, (1, 0), False),
                (4, 4, 1, 1, 0, True), (3, 2, 5, 3, 2, True), (6, 2, (2, 3), (2, 1), (0, 2), True)]


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, bias",
                         CONVOLUTIONS)
def test_tap_conv_sums_like_conv2d(in_channels, out_channels, kernel, stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                     bias=bias).double()
    tap = TapConv2d.from_conv(conv)
    assert tap.weight is conv.weight and tap.bias is conv.bias
    assert list(tap.state_dict()) == list(conv.state_dict())
    x = torch.randn(4, in_channels, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
        assert tap(x).shape == expected.shape
        torch.testing.assert_close(tap(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tap(x[0]), expected[0], rtol=1e-12, atol=1e-12)


def test_tap_conv_jacobian_is_torch_jacobian():
    """Forward-mode autodiff through the tap sums (NIFTy's row Jacobians) against the
    reverse-mode Jacobian of the decoder with torch's own convolution."""
    torch.manual_seed(1)
    decoder = nn.Sequential(nn.Linear(2, 4 * 6 * 6), nn.Unflatten(1, (4, 6, 6)), nn.Tanh(),
                            nn.Conv2d(4, 1, 2, padding=1), nn.Flatten(), nn.Sigmoid()).double()
    tapped = tap_convolutions(decoder)
    assert isinstance(tapped[3], TapConv2d)
    z = torch.randn(3, 2, dtype=torch.float64)
    value, jt = nf.decoder_jacobian(tapped, z, method="autodiff")
    torch.testing.assert_close(value, decoder(z), rtol=1e-12, atol=1e-14)
    for row in range(3):
        reference = torch.autograd.functional.jacobian(
            lambda zi: decoder(zi.unsqueeze(0)).squeeze(0), z[row])
        torch.testing.assert_close(jt[row].T, reference, rtol=1e-12, atol=1e-14)


def test_tap_convolutions_replaces_only_convolutions_to_few_channels():
    model = nf.ConvVAE(2).double()
    tapped = tap_convolutions(model.decoder)
    # the last layer (32 channels to one, 3x3): taps are 9 values per pixel, im2col 288
    taps = [m for m in tapped.modules() if isinstance(m, TapConv2d)]
    assert len(taps) == 1 and (taps[0].in_channels, taps[0].out_channels) == (32, 1)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in tapped.modules()) == 3
    assert not any(isinstance(m, TapConv2d) for m in model.decoder.modules())
    for name, value in model.decoder.state_dict().items():
        assert torch.equal(tapped.state_dict()[name], value)
        assert tapped.state_dict()[name].data_ptr() != value.data_ptr()
    z = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(tapped(z), model.decoder(z), rtol=1e-12, atol=1e-14)
    # a strided convolution, or one to many channels, stays torch's
    for conv in (nn.Conv2d(32, 1, 3, stride=2), nn.Conv2d(8, 8, 3)):
        assert type(tap_convolutions(conv)) is nn.Conv2d
    assert type(tap_convolutions(nn.Conv2d(32, 1, 3))) is TapConv2d


@pytest.mark.parametrize("options, named", [({"groups": 2}, "groups=2"),
                                            ({"dilation": 2}, "dilation=(2, 2)"),
                                            ({"padding": "same"}, "padding='same'"),
                                            ({"padding": 1, "padding_mode": "reflect"},
                                             "padding_mode='reflect'")])
def test_tap_conv_names_what_it_does_not_cover(options, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        TapConv2d.from_conv(nn.Conv2d(4, 2, 3, **options))
    # and tap_convolutions leaves such a convolution as it is
    assert type(tap_convolutions(nn.Conv2d(36, 2, 3, **options))) is nn.Conv2d
    with pytest.raises(TypeError, match="Linear"):
        TapConv2d.from_conv(nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        TapConv2d.from_conv(nn.Conv2d(4, 2, 3))(torch.randn(2, 3, 5, 5))
