"""The package's own experiments, each a subpackage with its settings, its run (a function
and a command line) and its report, so that demos stay thin and tests call the package.

- :mod:`~nifty_fishernet.experiments.fashion_mnist`: the paper's Fashion-MNIST study (the
  main job, ``demos/fashion_mnist.py``).
"""
