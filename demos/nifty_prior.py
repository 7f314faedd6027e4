"""A trained FisherNet as the prior of one component of a realistic NIFTy model.

The command line of :mod:`nifty_fishernet.experiments.nifty_prior` (its documentation says what it
measures and writes)::

    python demos/nifty_prior.py [--checkpoint PATH] [--out output/nifty_prior]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.nifty_prior import main  # noqa: E402

if __name__ == "__main__":
    main()
