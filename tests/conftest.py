import numpy as np
import pytest
import torch

import nifty_fishernet as nf


def pytest_report_header(config):
    from nifty_fishernet.nifty.compat import NIFTY, NIFTY_VERSION

    return f"NIFTy: {NIFTY} {NIFTY_VERSION}"


def random_fishernet(latent_dim=3, data_dim=12, hidden=16, layers=2, xi=-1.5, seed=0, gain=3.0,
                     **kw):
    """A small float64 FisherNet in eval mode whose metric is far from the identity.

    The decoder weights are scaled by ``gain`` so that J^T N^{-1} J dominates the prior term.
    """
    torch.manual_seed(seed)
    model = nf.FisherNet(latent_dim, data_dim=data_dim, hidden=hidden, layers=layers,
                         **kw).double().eval()
    with torch.no_grad():
        model.xi_n.fill_(xi)
        for linear in model.decoder.linears:
            linear.weight.mul_(gain)
    return model


@pytest.fixture(scope="session")
def fmnist_small():
    """2,000 training and 500 test images of the real Fashion-MNIST (no synthetic stand-in)."""
    train, _ = nf.load_fashion_mnist("train")
    test, test_labels = nf.load_fashion_mnist("test")
    return (np.ascontiguousarray(train[:2000]), np.ascontiguousarray(test[:500]),
            test_labels[:500])
