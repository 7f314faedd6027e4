"""Latent posteriors against the exact (grid) posterior on 2-D toy problems.

The command line of :mod:`nifty_fishernet.experiments.toy_comparison` (its documentation says what it
measures and writes)::

    python demos/toy_comparison.py [--out output/toy_comparison] [--n-test 200]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.toy_comparison import main  # noqa: E402

if __name__ == "__main__":
    main()
