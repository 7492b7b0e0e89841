"""The arithmetic cost of the CPU step loop, apart from memory: state formats side by side.

On 2 cores the 8-bit step is bound by arithmetic (decode, block maxima, rounding noise, packing)
rather than by memory traffic, so its speed against torch fused depends on how fast the memory
happens to be. This measures the loop alone: one tensor small enough to stay in cache, one
thread, the compiled kernel called directly (no optimizer bookkeeping), minimum over many calls.

    .venv/bin/python benchmarks/kernel_compute.py --numel 65536 --calls 3001
"""

from __future__ import annotations

import argparse
import time

import torch

import sgdlab
from sgdlab.optim import native

OPTIMIZERS = {
    "sgd-momentum": (sgdlab.SGD, {"lr": 0.01, "momentum": 0.9}),
    "adamw": (sgdlab.AdamW, {"lr": 0.001}),
}
FORMATS = {"float32": None, "bfloat16": torch.bfloat16, "8-bit": torch.uint8}


def captured_call(cls, options: dict, state_dtype, numel: int):
    """Run two optimizer steps and keep the last C-loop call they made, ready to repeat."""
    calls = []
    original = native.Plan.run

    def record(plan, *args):
        calls.append((plan, args))
        return original(plan, *args)

    param = torch.nn.Parameter(torch.randn(numel))
    param.grad = torch.randn(numel) * 0.01
    optimizer = cls([{"params": [param], "state_dtype": state_dtype}], **options)
    native.Plan.run = record
    try:
        optimizer.step()
        optimizer.step()
    finally:
        native.Plan.run = original
    if not calls:
        raise SystemExit("the C loop did not run (no C compiler, or SGDLAB_NATIVE=0)")
    plan, args = calls[-1]
    # The plan points into the optimizer's state buffers: the closure keeps the optimizer alive.
    return lambda: original(plan, *args) if optimizer else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=65536)
    parser.add_argument("--calls", type=int, default=3001)
    args = parser.parse_args()
    torch.set_num_threads(1)
    calls = {
        (name, format_name): captured_call(cls, options, dtype, args.numel)
        for name, (cls, options) in OPTIMIZERS.items()
        for format_name, dtype in FORMATS.items()
    }
    best = {key: float("inf") for key in calls}
    for _ in range(args.calls):  # interleaved, so that noise hits every contender alike
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - start)
    print(f"{args.numel} elements, one thread, minimum of {args.calls} calls")
    for name in OPTIMIZERS:
        base = best[(name, "float32")]
        for format_name in FORMATS:
            seconds = best[(name, format_name)]
            print(f"  {name:13s} {format_name:9s} {seconds * 1e6:8.1f} us "
                  f"({seconds * 1e9 / args.numel:.2f} ns/element, {seconds / base:.2f}x float32)")


if __name__ == "__main__":
    main()
