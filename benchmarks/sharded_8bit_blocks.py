"""How FSDP2 sharding changes 8-bit optimizer state: blocks restart at each shard's start.

With sharded parameters each rank quantizes its own shard (sgdlab.optim.sharded), so the 256-element
blocks start at the shard's first element, not at a multiple of 256 of the whole tensor. After a
shard boundary that is not a multiple of 256, every block of that shard is shifted against the
whole tensor's ("split" counts such boundaries). This script takes Adam moments from real training
(the digits task, one process, float32 state), quantizes each one whole and cut into FSDP2's
Shard(0) pieces (with the same rounding noise at the same element), and counts and measures what
differs: elements whose decoded value differs, and the mean error against float32 either way.

    PYTHONPATH=src python benchmarks/sharded_8bit_blocks.py [--world 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import sgdlab
from sgdlab.lab.tasks import _digits_data
from sgdlab.optim import quantized


def moments(shape_hidden: int = 100, steps: int = 60) -> dict[str, torch.Tensor]:
    """Adam's float32 moments of an MLP 64-H-10 (H=100: rows of 64, so shards of 50 rows do not
    end on a block boundary) after ``steps`` steps on digits."""
    x, y, _, _ = _digits_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, shape_hidden), nn.ReLU(), nn.Linear(shape_hidden, 10))
    optimizer = sgdlab.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(len(y), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    found = {}
    for name, param in model.named_parameters():
        if param.dim() == 2:
            for key in ("exp_avg", "exp_avg_sq"):
                found[f"{name} {key} {list(param.shape)}"] = optimizer.state[param][key].clone()
    return found


def roundtrip(value: torch.Tensor, cuts: list[int], seed: int = 12345) -> torch.Tensor:
    """``value`` quantized in pieces ``[cuts[i], cuts[i+1])`` (blocks restart in each), decoded."""
    flat = value.reshape(-1)
    out = torch.empty_like(flat)
    for start, stop in zip(cuts[:-1], cuts[1:]):
        if stop > start:
            codes, scales = quantized.encode(flat[start:stop], seed, start)
            out[start:stop] = quantized.decode(codes, scales)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    block = quantized.BLOCK
    print(f"{'state':<34} {'blocks':>6} {'split':>5} {'differ':>7} "
          f"{'mean |err| whole':>16} {'sharded':>9} {'max |diff|/amax':>15}")
    for name, value in moments().items():
        rows, row = value.shape[0], value[0].numel()
        per_rank = -(-rows // args.world)
        cuts = [min(r * per_rank, rows) * row for r in range(args.world + 1)]
        whole = roundtrip(value, [0, value.numel()])
        sharded = roundtrip(value, cuts)
        flat = value.reshape(-1)
        differ = int((whole != sharded).sum())
        split = sum(1 for cut in cuts[1:-1] if cut % block)
        blocks = -(-value.numel() // block)
        amax = flat.abs().max()
        error_whole = float((whole - flat).abs().mean())
        error_sharded = float((sharded - flat).abs().mean())
        print(f"{name:<34} {blocks:>6} {split:>5} {differ:>7} {error_whole:>16.3e} "
              f"{error_sharded:>9.3e} {float((whole - sharded).abs().max() / amax):>15.3e}")


if __name__ == "__main__":
    main()
