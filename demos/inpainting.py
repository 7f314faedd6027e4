"""A trained FisherNet as a prior inside a NIFTy model: inpainting and deblurring.

The command line of :mod:`nifty_fishernet.experiments.inpainting` (its documentation says what it
measures and writes)::

    python demos/inpainting.py [--checkpoint PATH]
"""

import matplotlib

matplotlib.use("Agg")  # files only, whatever display there is

from nifty_fishernet.experiments.inpainting import main  # noqa: E402

if __name__ == "__main__":
    main()
