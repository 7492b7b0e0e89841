"""sgdlab.AdamW on FSDP2 (fully_shard) parameters, with 8-bit state: each rank keeps its shard
of every parameter and the 8-bit state of that shard, and a distributed checkpoint
(torch.distributed.checkpoint) lets an interrupted run resume where it stopped.

    torchrun --nproc_per_node 2 examples/distributed/fsdp2.py [CHECKPOINT_DIRECTORY]
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

import sgdlab


def batches(steps, rank, world, size=32):
    """The same global batches on every rank (a fixed seed); each rank takes its share."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 4, generator=generator)
    for _ in range(steps):
        x = torch.randn(size, 16, generator=generator)
        yield x[rank::world], torch.tanh(x @ teacher)[rank::world]


def train(steps=100, checkpoint=None):
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 4))
    for layer in (model[0], model[2], model):
        fully_shard(layer)
    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sgdlab.optim.compact_state(optimizer, torch.uint8)  # 8-bit: tensors of 4096+ elements

    start = 0
    if checkpoint and os.path.exists(os.path.join(checkpoint, ".metadata")):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        saved = {"model": model_state, "optimizer": optimizer_state, "step": 0}
        dcp.load(saved, checkpoint_id=checkpoint)
        set_state_dict(model, optimizer, model_state_dict=saved["model"],
                       optim_state_dict=saved["optimizer"])
        start = saved["step"]
        print(f"rank {rank}: resumed at step {start}")

    losses = []
    for step, (x, y) in enumerate(batches(steps, rank, world)):
        if step < start:
            continue
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()  # FSDP2 reduce-scatters the gradients: each rank gets its shard's
        optimizer.step()
        losses.append(loss.item())
        if rank == 0 and step % 20 == 0:
            print(f"step {step}: loss {loss.item():.4f} (rank 0's share of the batch)")

    state = sum(value.to_local().numel() * value.to_local().element_size()
                if hasattr(value, "to_local") else value.numel() * value.element_size()
                for entry in optimizer.state.values() for value in entry.values() if value.dim())
    print(f"rank {rank}: {state} bytes of optimizer state (its shards)")
    if checkpoint:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state, "step": steps},
                 checkpoint_id=checkpoint)
    return losses


if __name__ == "__main__":
    dist.init_process_group("gloo")  # "nccl" on GPUs
    try:
        train(checkpoint=sys.argv[1] if len(sys.argv) > 1 else None)
    finally:
        dist.destroy_process_group()
