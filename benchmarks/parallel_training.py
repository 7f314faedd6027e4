"""Throughput of several trainings on a small CPU: one process per core with one torch thread
each, against one process with all threads running them one after the other, and against
the same processes with all threads each (oversubscribed).

Each job is the same short training (``--epochs`` of a FisherNet on ``--n-train`` images,
batch 64, seed = job number). Prints the wall-clock time of both schedules and the
throughput ratio, measured in the same run::

    python benchmarks/parallel_training.py [--jobs 2] [--n-train 6000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time

import torch

import nifty_fishernet as nf


def one_training(job, n_train, epochs, threads, d=5):
    """Train job ``job`` and return its seconds and final test MSE."""
    torch.set_num_threads(threads)
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    torch.manual_seed(job)
    model = nf.FisherNet(d)
    began = time.perf_counter()
    history = nf.train(model, train[:n_train], test[:1000], epochs=epochs, lr=1e-3,
                       noise_lr=1e-2, device="cpu", seed=job, progress=False)
    return time.perf_counter() - began, history["test_mse"][-1]


def _worker(arguments):
    return one_training(*arguments)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    cores = os.cpu_count()
    print(f"torch {torch.__version__}, {cores} cores, {platform.processor() or platform.machine()}; "
          f"{args.jobs} trainings of {args.epochs} epoch(s) on {args.n_train} images each")
    began = time.perf_counter()
    serial = [one_training(job, args.n_train, args.epochs, cores) for job in range(args.jobs)]
    serial_seconds = time.perf_counter() - began
    def at_once(threads):
        began = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            jobs = pool.map(_worker, [(job, args.n_train, args.epochs, threads)
                                      for job in range(args.jobs)])
        return jobs, time.perf_counter() - began

    parallel, parallel_seconds = at_once(1)
    crowded, crowded_seconds = at_once(cores)
    print(f"one process, {cores} threads, one job after the other: {serial_seconds:7.1f} s "
          f"(jobs {', '.join(f'{s:.1f}' for s, _ in serial)} s)")
    print(f"{args.jobs} processes, 1 thread each, at once:          {parallel_seconds:7.1f} s "
          f"(jobs {', '.join(f'{s:.1f}' for s, _ in parallel)} s)")
    print(f"{args.jobs} processes, {cores} threads each, at once:          {crowded_seconds:7.1f} s "
          f"(jobs {', '.join(f'{s:.1f}' for s, _ in crowded)} s)")
    print(f"throughput against the serial schedule: 1 thread each {serial_seconds / parallel_seconds:.2f}, "
          f"{cores} threads each {serial_seconds / crowded_seconds:.2f} (wall clock, process "
          f"start included)")
    same = all(abs(a[1] - b[1]) < 1e-3 for a, b in zip(serial, parallel))
    print(f"final test MSE per job: serial {[round(m, 5) for _, m in serial]}, parallel "
          f"{[round(m, 5) for _, m in parallel]}" + ("" if same else " (thread counts change "
                                                       "float summation)"))
    return serial_seconds, parallel_seconds


if __name__ == "__main__":
    main()
