"""Does the exact reference find the posterior? Centred on the encoder's mode against the
lowest-energy mode found.

The command line of :mod:`nifty_fishernet.experiments.reference_modes` (its documentation
says what it measures and writes)::

    python demos/reference_modes.py --models CHECKPOINT ... [--quick 2 5] [--images 200]
        [--out docs/results/calibration]
"""

from nifty_fishernet.experiments.reference_modes import main

if __name__ == "__main__":
    main()
