"""The amortized posterior fitted to the model's own simulations, judged by the harness.

The command line of :mod:`nifty_fishernet.experiments.posterior_network` (its documentation says what it
measures and writes)::

    python demos/posterior_network.py --dim 5 [--steps 4000] [--out output/posterior_network]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.posterior_network import main  # noqa: E402

if __name__ == "__main__":
    main()
