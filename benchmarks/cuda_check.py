"""sgdlab on a CUDA device: the same numbers as the references, on every execution path.

CI has no GPU; this script is what a machine with one runs (`python benchmarks/cuda_check.py`).
For each optimizer it trains a small MLP on CUDA for a few steps and prints the largest
difference from its reference, next to how far the parameters moved:

- SGD, Adam, AdamW (and Muon, where torch has it): against torch.optim on the same device, with
  sgdlab's default path (grouped; Inductor for large groups, eager otherwise), ``foreach=False``
  (per tensor) and optimizer-in-backward;
- schedule-free and SWATS (no torch.optim counterpart): CUDA against the same optimizer on CPU;
- compact state (bfloat16, 8-bit) on CUDA against float32 state on CUDA (within its rounding),
  and the 8-bit codes CUDA stores against those the CPU stores for the same step.

Exits 1 if a difference is above its bound.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import sgdlab
from sgdlab.optim import optimizer_in_backward

STEPS = 5


def model(device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                              torch.nn.Tanh(), torch.nn.Linear(256, 10))
    return net.to(device)


def batches(device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 64, generator=generator).to(device),
             torch.randint(0, 10, (32,), generator=generator).to(device)) for _ in range(STEPS)]


def train(make, device: torch.device, *, in_backward: bool = False, groups=None):
    net = model(device)
    params = groups(net) if groups else net.parameters()
    optimizer = make(params)
    if hasattr(optimizer, "train") and callable(optimizer.train):
        optimizer.train()
    handle = optimizer_in_backward(optimizer) if in_backward else None
    for x, y in batches(device):
        if not in_backward:
            optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if not in_backward:
            optimizer.step()
    if handle is not None:
        handle.remove()
    return [p.detach().double().cpu() for p in net.parameters()], optimizer


def difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    start = [p.detach().double().cpu() for p in model(cuda).parameters()]
    rows, failed = [], False

    def report(name, path, ours, theirs, bound):
        nonlocal failed
        moved = difference(theirs, start)
        diff = difference(ours, theirs)
        ok = diff <= bound * max(moved, 1e-12)
        failed |= not ok
        rows.append({"optimizer": name, "path": path, "max_difference": diff, "moved": moved,
                     "bound_relative": bound, "ok": ok})
        print(f"{name:22s} {path:28s} diff {diff:.3e}  moved {moved:.3e}  "
              f"{'ok' if ok else 'FAILED'}", flush=True)

    torch_pairs = {
        "sgd-momentum": (lambda p, **k: sgdlab.SGD(p, lr=0.1, momentum=0.9, **k),
                         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        "sgd-nesterov-wd": (lambda p, **k: sgdlab.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                      weight_decay=1e-2, **k),
                            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                      weight_decay=1e-2)),
        "adam-amsgrad": (lambda p, **k: sgdlab.Adam(p, lr=1e-3, amsgrad=True, **k),
                         lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True)),
        "adamw": (lambda p, **k: sgdlab.AdamW(p, lr=1e-3, weight_decay=0.1, **k),
                  lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1)),
    }
    for name, (ours, theirs) in torch_pairs.items():
        reference, _ = train(theirs, cuda)
        # CUDA kernels (torch.optim's foreach ones, sgdlab's eager or Inductor ones) contract
        # multiply-adds each their own way: Adam differs in the last bit of a few elements
        # (measured on an H200: 6.5e-8 after 5 steps that moved the weights 5e-3).
        report(name, "default (grouped)", train(ours, cuda)[0], reference, 1e-4)
        report(name, "foreach=False", train(lambda p: ours(p, foreach=False), cuda)[0],
               reference, 1e-4)
        report(name, "in backward", train(ours, cuda, in_backward=True)[0], reference, 1e-4)
        for dtype, label, bound in ((torch.bfloat16, "bfloat16 state", 0.05),
                                    (torch.uint8, "8-bit state", 0.25)):
            compact = train(lambda p: ours([{"params": list(p), "state_dtype": dtype,
                                             "min_8bit_size": 0}]), cuda)[0]
            report(name, label, compact, reference, bound)

    if hasattr(torch.optim, "Muon") and hasattr(sgdlab, "Muon"):
        matrices = lambda net: [p for p in net.parameters() if p.dim() == 2]  # noqa: E731
        reference, _ = train(lambda p: torch.optim.Muon(p, lr=0.02), cuda, groups=matrices)
        ours = train(lambda p: sgdlab.Muon(p, lr=0.02), cuda, groups=matrices)[0]
        # Newton-Schulz runs in bfloat16 in both: batched and one-by-one products round alike
        # only up to bfloat16's precision.
        report("muon", "default", ours, reference, 0.02)  # the rest is not updated by either

    for name, make in {
        "schedule-free-sgd": lambda p: sgdlab.ScheduleFreeSGD(p, lr=0.5, warmup_steps=2),
        "schedule-free-adamw": lambda p: sgdlab.ScheduleFreeAdamW(p, lr=1e-2, warmup_steps=2),
        "swats": lambda p: sgdlab.SWATS(p, lr=1e-3, switch_at=3),
    }.items():
        on_cpu = train(make, cpu)[0]
        report(name, "cuda vs cpu", train(make, cuda)[0], on_cpu, 1e-4)
        report(name, "cuda in backward vs cpu", train(make, cuda, in_backward=True)[0], on_cpu,
               1e-4)

    # The 8-bit codes of one step, CUDA (PyTorch codec) against CPU (C loop).
    codes = {}
    for label, device in (("cuda", cuda), ("cpu", cpu)):
        _, optimizer = train(lambda p: sgdlab.Adam([{"params": list(p), "state_dtype": torch.uint8,
                                                     "min_8bit_size": 0}], lr=1e-3), device)
        codes[label] = torch.cat([s["exp_avg"].flatten().cpu().int()
                                        for s in optimizer.state.values()])
    mismatched = (codes["cuda"] != codes["cpu"]).float().mean().item()
    off_by = (codes["cuda"] - codes["cpu"]).abs().max().item()
    print(f"8-bit codes after {STEPS} Adam steps, CUDA vs CPU: {mismatched:.2%} differ, "
          f"by at most {off_by} code(s)")
    rows.append({"check": "8-bit codes cuda vs cpu", "fraction_differing": mismatched,
                 "max_code_difference": off_by})
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
