"""Training variants of the FisherNet judged by how honest their latent posteriors are.

The command line of :mod:`nifty_fishernet.experiments.calibration_variants` (its documentation says what it
measures and writes)::

    python demos/calibration_variants.py [--out output/calibration_variants] [--dims 2 5]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.calibration_variants import main  # noqa: E402

if __name__ == "__main__":
    main()
