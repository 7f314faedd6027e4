"""Data-parallel training under ``torchrun``: process group, DDP wrapper, batch shards.

When a script is started with ``torchrun --nproc_per_node=N script.py``, every process gets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`nifty_fishernet.train` then trains with
``torch.nn.parallel.DistributedDataParallel`` (NCCL on CUDA, one GPU per process; gloo on
CPU). Each global minibatch of ``batch_size`` images is split across the processes and DDP
averages their gradients, so the update is that of the whole minibatch: same learning rate,
same model, N times the throughput. The FisherNet's loss, metric and sampling are unchanged;
they run per process on its shard.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "distributed_context", "distributed_session", "LossModule"]


@dataclass
class DistributedContext:
    """Where this process stands: ``rank`` of ``world`` processes (0 of 1 when not launched
    by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self):
        return self.world > 1

    @property
    def is_main(self):
        """The process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, batch):
        """This process's share of a global minibatch (rows ``rank, rank + world, ...``)."""
        return batch[self.rank::self.world] if self.active else batch

    def mean(self, value):
        """Average of a float over all processes (the value itself when not distributed)."""
        if not self.active:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.item() / self.world

    def device(self, device):
        """The device of this process: its own GPU under torchrun with CUDA."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


def distributed_context(device):
    """Join the process group if launched by torchrun (idempotent) and describe this process.

    Parameters
    ----------
    device : torch.device
        The training device; CUDA selects the NCCL backend, anything else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


@contextlib.contextmanager
def distributed_session(device):
    """:func:`distributed_context` as a ``with`` block that leaves the process group at its end
    if it joined it (a caller that joined it first keeps it: nested sessions are free)."""
    joined = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        yield distributed_context(device)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


class LossModule(nn.Module):
    """A model's training loss as ``forward``, so that DDP can wrap it.

    DDP synchronises gradients of what runs through its ``forward``; the models' API computes
    the loss in ``loss()``, which this module exposes as ``forward``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, n_data=None, generator=None):
        return self.model.loss(x, n_data=n_data, generator=generator)
