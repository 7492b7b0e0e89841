"""sgdlab.AdamW under DistributedDataParallel: every rank holds the whole model and its own
optimizer; DDP averages the gradients, so every rank takes the same step.

    torchrun --nproc_per_node 2 examples/distributed/ddp.py
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
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
    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    losses = []
    for step, (x, y) in enumerate(batches(steps, rank, world)):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()  # DDP averages the gradients over the ranks here
        optimizer.step()
        losses.append(loss.item())
        if rank == 0 and step % 20 == 0:
            print(f"step {step}: loss {loss.item():.4f} (rank 0's share of the batch)")
    return losses


if __name__ == "__main__":
    dist.init_process_group("gloo")  # "nccl" on GPUs
    try:
        train()
    finally:
        dist.destroy_process_group()
