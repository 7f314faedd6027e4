"""``python -m nifty_fishernet.experiments.fashion_mnist`` (= ``demos/fashion_mnist.py``)."""

from .run import main

main()
