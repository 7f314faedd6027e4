"""The package's own experiments, each a subpackage with its settings, its run (a function
and a command line) and its report, so that demos stay thin and tests call the package.

- :mod:`~nifty_fishernet.experiments.fashion_mnist`: the paper's Fashion-MNIST study (the
  main job, ``demos/fashion_mnist.py``).
- :mod:`~nifty_fishernet.experiments.toy_comparison`: 2-D toy problems against exact posteriors.
- :mod:`~nifty_fishernet.experiments.inpainting`: a trained FisherNet as prior in NIFTy
  inpainting and deblurring.
- :mod:`~nifty_fishernet.experiments.nifty_prior`: the decoder inside a NIFTy model with
  Poisson counts, PSF, mask and a correlated-field background.
- :mod:`~nifty_fishernet.experiments.posterior_shape`: how Gaussian the posteriors are.
- :mod:`~nifty_fishernet.experiments.calibration_variants`: training variants judged by the
  calibration harness.
- :mod:`~nifty_fishernet.experiments.posterior_network`: an amortized posterior fitted to a
  model's own simulations.

Each has ``main(argv)``; ``demos/<name>.py`` is its command line.
"""
