"""Peak memory and time of the Inception FID features against the batch size.

Each batch size runs in a fresh process (a process's peak resident memory only grows) that
computes the Inception feature statistics of the first N Fashion-MNIST test images. Printed
per batch size: the peak resident memory, its rise over the process with the network loaded,
seconds per image, their ratios to the first batch size given (the baseline, measured in the
same run), and how far the feature mean and covariance move from the baseline's.

    OMP_NUM_THREADS=1 python benchmarks/inception_memory.py [--images 500] [--batch-sizes 500 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[500, 50])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--statistics", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(images, batch_size, statistics_path):
    """One batch size in this process; prints its figures as JSON."""
    import nifty_fishernet as nf

    test, _ = nf.load_fashion_mnist("test")
    nf.feature_statistics(test[:2], features="inception", batch_size=2)  # load the network
    loaded = _peak_mib()
    began = time.perf_counter()
    stats = nf.feature_statistics(test[:images], features="inception", batch_size=batch_size)
    seconds = time.perf_counter() - began
    np.savez(statistics_path, mean=stats.mean, covariance=stats.covariance)
    print(json.dumps(dict(batch_size=batch_size, loaded_mib=loaded, peak_mib=_peak_mib(),
                          seconds_per_image=seconds / images)))


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        return child(args.images, args.child, args.statistics)
    import tempfile
    from pathlib import Path

    print(f"# {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.images} test images")
    print(f"{'batch':>6} {'peak MiB':>9} {'rise MiB':>9} {'ratio':>6} {'s/image':>8} "
          f"{'ratio':>6} {'max |dmean|':>12} {'max |dcov|/max|cov|':>20}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for batch_size in args.batch_sizes:
            path = Path(folder) / f"stats_{batch_size}.npz"
            done = subprocess.run(
                [sys.executable, __file__, "--images", str(args.images), "--child",
                 str(batch_size), "--statistics", str(path)],
                check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            with np.load(path) as stats:
                row["mean"], row["covariance"] = stats["mean"], stats["covariance"]
            rows.append(row)
            base = rows[0]
            rise, base_rise = (row["peak_mib"] - row["loaded_mib"],
                               base["peak_mib"] - base["loaded_mib"])
            mean_shift = np.abs(row["mean"] - base["mean"]).max()
            cov_shift = (np.abs(row["covariance"] - base["covariance"]).max()
                         / np.abs(base["covariance"]).max())
            print(f"{batch_size:>6} {row['peak_mib']:>9.0f} {rise:>9.0f} "
                  f"{rise / base_rise:>6.3f} {row['seconds_per_image']:>8.4f} "
                  f"{row['seconds_per_image'] / base['seconds_per_image']:>6.3f} "
                  f"{mean_shift:>12.3g} {cov_shift:>20.3g}", flush=True)
    return [{k: v for k, v in row.items() if k not in ("mean", "covariance")} for row in rows]


if __name__ == "__main__":
    main()
