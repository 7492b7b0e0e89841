"""Peak memory of a training step: optimizer.step() after backward vs optimizer in backward.

Each measurement runs in a fresh process. After a warm-up step (which creates the optimizer
state), the process's peak resident set (VmHWM) is reset through /proc/self/clear_refs, a few
more training steps run, and the new peak minus the resident set before them is reported: the
memory a training step needs on top of parameters and optimizer state (gradients, activations,
temporaries). glibc's mmap threshold is fixed so that freed tensors go back to the OS at once.

    .venv/bin/python benchmarks/in_backward_memory.py --width 2048 --layers 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, optimizer_name: str, width: int, layers: int, batch: int) -> dict:
    import torch

    import sgdlab
    from sgdlab.optim import optimizer_in_backward

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    params = sum(p.numel() for p in model.parameters())
    cls, options = {"adamw": (sgdlab.AdamW, {"lr": 1e-4}),
                    "sgd-momentum": (sgdlab.SGD, {"lr": 1e-3, "momentum": 0.9})}[optimizer_name]
    optimizer = cls(model.parameters(), **options)
    x = torch.randn(batch, width)

    def train_step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        if mode == "step":
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if mode == "in-backward":
        optimizer_in_backward(optimizer)
    for _ in range(3):  # creates the optimizer state; compiles the step (from its second use)
        train_step()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM (the peak resident set) to the current resident set
    for _ in range(3):
        train_step()
    peak = _rss_kib("VmHWM")
    return {"mode": mode, "optimizer": optimizer_name, "parameters": params,
            "gradient_mib": params * 4 / 2**20, "resident_before_mib": before / 1024,
            "step_peak_extra_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--optimizer", action="append", choices=["adamw", "sgd-momentum"])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OPTIMIZER"), help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.width, args.layers, args.batch)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    rows = []
    for optimizer in args.optimizer or ["adamw", "sgd-momentum"]:
        for mode in ("step", "in-backward"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, optimizer, "--width", str(args.width),
                 "--layers", str(args.layers), "--batch", str(args.batch)],
                check=True, capture_output=True, text=True, env=env,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\nMLP {args.layers} x Linear({args.width}, {args.width}), batch {args.batch}: "
          f"{rows[0]['parameters']:,} parameters, gradients {rows[0]['gradient_mib']:.0f} MiB")
    print("| optimizer | mode | peak memory of a step above params + state (MiB) |\n|---|---|---:|")
    for row in rows:
        print(f"| {row['optimizer']} | {row['mode']} | {row['step_peak_extra_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
