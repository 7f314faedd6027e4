"""Milliseconds per training step (batch 64): FisherNet against the VAE, in one run.

Prints, for d = 2, 10, 20, the median time of a full Adam step (loss, backward, update) for
the VAE, the FisherNet (fused tangent-propagation Jacobian, Cholesky solve) and, as the
straightforward baseline, the same FisherNet with its Jacobian from jacfwd + vmap. The
ratios are against the VAE measured in the same run; steps of the models are interleaved so
that machine load drifts affect all alike.

    python benchmarks/train_step.py [--steps 300] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import nifty_fishernet as nf


def make_step(model, x, generator):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, n_data=60000, generator=generator).backward()
        optimizer.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per model and d")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10, 20])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = nf.training.resolve_device(args.device)
    images, _ = nf.load_fashion_mnist("train")
    x = torch.from_numpy(images[:64]).to(device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; batch 64, median of {args.steps} steps")
    print(f"{'d':>3} {'VAE ms':>8} {'FisherNet ms':>13} {'ratio':>6} "
          f"{'jacfwd+vmap ms':>15} {'ratio':>6}")
    for d in args.dims:
        torch.manual_seed(0)
        # the baseline: the same FisherNet with the Jacobian by jacfwd + vmap
        models = {"vae": nf.VAE(d), "fisher": nf.FisherNet(d),
                  "jacfwd": nf.FisherNet(d, jacobian="autodiff")}
        steps = {}
        for key, model in models.items():
            model.to(device).train()
            steps[key] = make_step(model, x, torch.Generator(device=device).manual_seed(0))
        times = {key: [] for key in models}
        for _ in range(20):  # warm-up
            for step in steps.values():
                step()
        for _ in range(args.steps):
            for key, step in steps.items():
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                times[key].append(1e3 * (time.perf_counter() - start))
        med = {key: statistics.median(t) for key, t in times.items()}
        print(f"{d:>3} {med['vae']:>8.2f} {med['fisher']:>13.2f} "
              f"{med['fisher'] / med['vae']:>6.2f} {med['jacfwd']:>15.2f} "
              f"{med['jacfwd'] / med['vae']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
