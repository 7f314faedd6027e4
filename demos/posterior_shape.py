"""Why a Gaussian at the MAP misses the FisherNet's d = 5 posterior: its shape, measured.

The command line of :mod:`nifty_fishernet.experiments.posterior_shape` (its documentation says what it
measures and writes)::

    python demos/posterior_shape.py [--checkpoint PATH] [--n 300] [--out output/posterior_shape]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.posterior_shape import main  # noqa: E402

if __name__ == "__main__":
    main()
