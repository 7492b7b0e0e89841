"""sgdlab.AdamW as the local optimizer of ZeroRedundancyOptimizer (ZeRO stage 1): each rank
keeps the state of its partition of the parameters only (here in bfloat16: a quarter of
float32 state on one process), steps its partition, and sends it to the other ranks.

    torchrun --nproc_per_node 2 examples/distributed/zero.py
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import sgdlab


def batches(steps, rank, world, size=32):
    """The same global batches on every rank (a fixed seed); each rank takes its share."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 4, generator=generator)
    for _ in range(steps):
        x = torch.randn(size, 16, generator=generator)
        yield x[rank::world], torch.tanh(x @ teacher)[rank::world]


def train(steps=100):
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4)))
    optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=sgdlab.AdamW,
                                        lr=1e-2, weight_decay=0.01)
    sgdlab.optim.compact_state(optimizer.optim, torch.bfloat16)  # this rank's local optimizer
    losses = []
    for step, (x, y) in enumerate(batches(steps, rank, world)):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()  # this rank's partition, then every partition to every rank
        losses.append(loss.item())
        if rank == 0 and step % 20 == 0:
            print(f"step {step}: loss {loss.item():.4f} (rank 0's share of the batch)")
    state = sum(value.numel() * value.element_size() for entry in optimizer.optim.state.values()
                for value in entry.values() if value.dim())
    print(f"rank {rank}: {state} bytes of optimizer state")
    return losses


if __name__ == "__main__":
    dist.init_process_group("gloo")  # "nccl" on GPUs
    try:
        train()
    finally:
        dist.destroy_process_group()
