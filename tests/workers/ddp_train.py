"""Worker for tests/test_distributed.py: run under torchrun, train briefly, dump parameters."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import nifty_fishernet as nf


def main(out):
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    torch.manual_seed(int(__import__("os").environ["RANK"]))  # different inits per rank:
    model = nf.FisherNet(2, hidden=32, layers=2)                 # DDP must make them equal
    history = nf.train(model, train[:512], test[:64], epochs=2, batch_size=64, lr=1e-3,
                       device="cpu", seed=0, progress=False,
                       checkpoint=Path(out) / "ddp.h5")
    rank = dist.get_rank()
    np.savez(Path(out) / f"rank{rank}.npz",
             world=dist.get_world_size(), test_mse=history["test_mse"],
             **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
