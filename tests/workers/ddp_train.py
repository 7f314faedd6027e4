"""Worker for tests/test_distributed.py: run under torchrun, train briefly, dump parameters."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import nifty_fishernet as nf
from nifty_fishernet.distributed import distributed_session


def main(out):
    train, _ = nf.load_fashion_mnist("train")
    test, _ = nf.load_fashion_mnist("test")
    torch.manual_seed(int(__import__("os").environ["RANK"]))  # different inits per rank:
    model = nf.FisherNet(2, hidden=32, layers=2)                 # DDP must make them equal
    # joined here, so that train() uses the group and leaves it to this block to end
    with distributed_session(torch.device("cpu")) as context:
        history = nf.train(model, train[:512], test[:64], epochs=2, batch_size=64, lr=1e-3,
                           device="cpu", seed=0, progress=False,
                           checkpoint=Path(out) / "ddp.h5")
        assert dist.is_initialized()
        np.savez(Path(out) / f"rank{context.rank}.npz",
                 world=context.world, test_mse=history["test_mse"],
                 **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        dist.barrier()
    assert not dist.is_initialized()  # the session left the group it joined


if __name__ == "__main__":
    main(sys.argv[1])
