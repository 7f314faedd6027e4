"""Train FisherNet, VAE, calibrated VAE and ConvVAE on Fashion-MNIST and compare them.

The command line of :mod:`nifty_fishernet.experiments.fashion_mnist` (its documentation lists
what is written, the settings and how a run goes in parts)::

    python demos/fashion_mnist.py [--quick | --paper] [--out output/fashion_mnist]
        [--models ...] [--dims ...] [--features fmnist|inception] [--fid-images N]
        [--no-sample-quality] [--no-calibration] [--force]
"""

from nifty_fishernet.experiments.fashion_mnist import main

if __name__ == "__main__":
    main()
