"""Real-vs-real FID floor and feature cost for both FID feature sets.

The floor is the FID between the first N training and the first N test images of
Fashion-MNIST: what two samples of real images score, the lower limit any model can reach
at that N. Also prints the feature extraction time per image, and the floor's ratio to the
FID of the same test images against blurred training images (sigma 1 pixel) as a scale.

    python benchmarks/fid_features.py [--fmnist-images 10000] [--inception-images 500]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from scipy import ndimage

import nifty_fishernet as nf
from nifty_fishernet.metrics.features import inception_weights_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-images", type=int, default=10000)
    parser.add_argument("--inception-images", type=int, default=500)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'features':>10} {'images':>7} {'floor':>9} {'blurred':>9} {'floor/blur':>10} "
          f"{'s/image':>9}")
    sets = [("fmnist", args.fmnist_images)]
    try:
        inception_weights_path()
        sets.append(("inception", args.inception_images))
    except FileNotFoundError as err:
        print(f"# inception skipped: {err}")
    out = {}
    for features, n in sets:
        nf.feature_statistics(test[:2], features=features)  # load / train the network first
        began = time.perf_counter()
        reference = nf.feature_statistics(test[:n], features=features)
        seconds = (time.perf_counter() - began) / n
        floor = nf.fid(train[:n], reference, features=features)
        blurred = ndimage.gaussian_filter(train[:n].reshape(-1, 28, 28), (0, 1, 1))
        blur = nf.fid(blurred.reshape(n, -1), reference, features=features)
        out[features] = dict(images=n, floor=floor, blurred=blur, seconds_per_image=seconds)
        print(f"{features:>10} {n:>7} {floor:>9.3f} {blur:>9.3f} {floor / blur:>10.4f} "
              f"{seconds:>9.4f}", flush=True)
    return out


if __name__ == "__main__":
    main()
