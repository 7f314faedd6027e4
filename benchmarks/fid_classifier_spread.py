"""How far do FIDs with the Fashion-MNIST classifier's features move between instances of the
classifier's own recipe?

The ``fmnist`` features come from a small classifier trained on first use (fixed recipe and
seed, ``nifty_fishernet.metrics.features``) and cached per machine. Trained again on another
CPU, float summation differs and the instance differs; this measures what that does to the
FIDs of Table 1: the cached instance against instances of the same recipe with other seeds,
on the train-test floor and on each checkpoint's reconstructions and N(0,1) samples (10,000
images against the 10,000 test images, as in the paper setting's Table 1).

    OMP_NUM_THREADS=1 python benchmarks/fid_classifier_spread.py \\
        --checkpoints docs/results/paper/models/VAE_d20_*.h5 --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nifty_fishernet.checkpoint import load_checkpoint
from nifty_fishernet.data import load_fashion_mnist
from nifty_fishernet.evaluation import decode_latents, encode_means
from nifty_fishernet.metrics.features import fashion_classifier, train_fashion_classifier
from nifty_fishernet.metrics.fid import feature_statistics, fid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True,
                        help="trained models whose reconstructions and N(0,1) samples are scored")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="seeds of the further classifier instances (the cached one: 0)")
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the table here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    test_x, _ = load_fashion_mnist("test")
    train_x, _ = load_fashion_mnist("train")
    test_x = test_x[:args.n_images]
    classifiers = {"seed 0 (cached)": fashion_classifier(progress=False)}
    for seed in args.seeds:
        model, accuracy = train_fashion_classifier(seed=seed, progress=False)
        classifiers[f"seed {seed}"] = model.eval()
        print(f"classifier seed {seed}: test accuracy {accuracy:.4f}", flush=True)
    image_sets = {"floor (training images)": train_x[:args.n_images]}
    for path in args.checkpoints:
        model = load_checkpoint(path).model.eval()
        name = path.name.rsplit("_", 1)[0]
        image_sets[f"{name} reconstructions"] = decode_latents(model, encode_means(model, test_x))
        noise = torch.randn(args.n_images, model.latent_dim,
                            generator=torch.Generator().manual_seed(0))
        image_sets[f"{name} N(0,1) samples"] = decode_latents(model, noise.numpy())
    # each classifier's statistics of the test images, once for every image set
    features = {name: (lambda batch, net=net: net.features(batch))
                for name, net in classifiers.items()}
    reference = {name: feature_statistics(test_x, features=f) for name, f in features.items()}
    table = {}
    header = " | ".join(classifiers)
    print(f"\n| FID against the test images | {header} | spread (max - min) / mean |")
    print("|---" * (len(classifiers) + 2) + "|")
    for label, images in image_sets.items():
        row = {name: float(fid(reference[name], np.asarray(images), features=f))
               for name, f in features.items()}
        values = np.array(list(row.values()))
        spread = float((values.max() - values.min()) / values.mean())
        table[label] = dict(row, spread=spread)
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {spread:.1%} |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
