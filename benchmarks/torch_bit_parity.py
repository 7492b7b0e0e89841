"""Bit-level agreement of sgdlab's SGD / Adam / AdamW with torch.optim, path by path.

Every optimizer run sees the same parameters and the same gradients (drawn from a seeded
generator, independent of the parameters), so a difference can only come from the update's
arithmetic. Each run is compared, after every step, with torch.optim's for-loop path
(``foreach=False``) on the same configuration: parameters and every state tensor. Reported per
configuration and path: how many elements differ (summed over steps and tensors) and the largest
distance in ulps (units in the last place: 1 means adjacent floating-point numbers).

Paths of sgdlab: ``default`` (what ``sgdlab.Adam(params)`` runs: on CPU the grouped C loop),
``per-tensor`` (``foreach=False``: one eager rule call per tensor), ``eager-grouped`` (the grouped
program run by eager PyTorch: the path without a C compiler), ``inductor`` (the grouped program
compiled by torch.compile; slow to compile, so only with ``--inductor``). torch.optim's own
``foreach`` and ``fused`` paths are measured against its for-loop too: the yardstick.

    .venv/bin/python benchmarks/torch_bit_parity.py            # the full grid, ~1 min
    .venv/bin/python benchmarks/torch_bit_parity.py --quick    # a few configurations
    .venv/bin/python benchmarks/torch_bit_parity.py --inductor # adds Inductor (minutes)
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections import defaultdict

import torch

import sgdlab
from sgdlab.optim import grouped, native

SHAPES = [(), (7,), (33, 5), (1000,), (4097,), (3, 5, 7, 9)]
# Gradient scales per tensor: ordinary, tiny (Adam's eps matters), large.
SCALES = [1.0, 1e-6, 1.0, 0.05, 30.0, 1.0]


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in ulps between two float tensors of one dtype (NaNs equal)."""
    bits = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
            torch.float16: torch.int16}[a.dtype]
    lowest = torch.iinfo(bits).min

    def ordered(x: torch.Tensor) -> torch.Tensor:  # a monotonic integer image of the floats
        i = x.contiguous().view(bits).to(torch.int64)
        return torch.where(i < 0, lowest - i, i)  # negatives: magnitude bits flipped

    distance = (ordered(a) - ordered(b)).abs()
    both_nan = a.isnan() & b.isnan()
    return torch.where(both_nan, torch.zeros_like(distance), distance)


def make_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(1234)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def trajectory(cls, options: dict, dtype: torch.dtype, steps: int) -> list[list[torch.Tensor]]:
    """The parameters and state tensors after each step, in a fixed order."""
    params = make_params(dtype)
    optimizer = cls(params, **options)
    g = torch.Generator().manual_seed(99)
    snapshots = []
    for _ in range(steps):
        for p, scale in zip(params, SCALES):
            p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(dtype)
        optimizer.step()
        tensors = [p.detach().clone() for p in params]
        for p in params:
            state = optimizer.state.get(p, {})
            tensors += [state[k].detach().clone() for k in sorted(state)
                        if k != "step" and torch.is_tensor(state[k])]
        snapshots.append(tensors)
    return snapshots


class Path:
    """Run an sgdlab path: optimizer options and the execution settings it needs."""

    def __init__(self, name: str, options: dict, *, native_on: bool = True,
                 compile_min: int | None = None) -> None:
        self.name, self.options = name, options
        self.native_on, self.compile_min = native_on, compile_min

    def __call__(self, cls, options, dtype, steps):
        saved = os.environ.get("SGDLAB_NATIVE"), grouped.COMPILE_MIN_NUMEL
        os.environ["SGDLAB_NATIVE"] = "1" if self.native_on else "0"
        if self.compile_min is not None:
            grouped.COMPILE_MIN_NUMEL = self.compile_min
        try:
            return trajectory(cls, {**options, **self.options}, dtype, steps)
        finally:
            if saved[0] is None:
                os.environ.pop("SGDLAB_NATIVE", None)
            else:
                os.environ["SGDLAB_NATIVE"] = saved[0]
            grouped.COMPILE_MIN_NUMEL = saved[1]


def sgd_grid(quick: bool):
    for momentum, dampening, nesterov, weight_decay, maximize in itertools.product(
            [0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.1], [False, True]):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        if momentum == 0 and dampening != 0:
            continue
        if quick and (maximize or dampening):
            continue
        yield dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=weight_decay, maximize=maximize)


def adam_grid(quick: bool):
    for betas, eps, weight_decay, amsgrad, maximize in itertools.product(
            [(0.9, 0.999), (0.5, 0.9)], [1e-8], [0.0, 0.1], [False, True], [False, True]):
        if quick and (maximize or betas != (0.9, 0.999)):
            continue
        yield dict(lr=0.01, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                   maximize=maximize)


def describe(options: dict) -> str:
    skip = {"lr": None, "eps": 1e-8, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
            "weight_decay": 0.0, "maximize": False, "amsgrad": False, "betas": (0.9, 0.999)}
    shown = [f"{k}={v}" for k, v in options.items() if k in skip and skip[k] != v
             and skip[k] is not None]
    return ",".join(shown) or "plain"


def compare(ours, reference) -> tuple[int, int, int, float]:
    """(differing elements, total elements, max ulps, max difference in ulps of the largest
    element of its tensor) over all steps and tensors. The last one does not blow up where a
    value is near zero (an ulp of 1e-9 is tiny next to the tensor's other elements)."""
    differing = total = worst = 0
    worst_scaled = 0.0
    for step_a, step_b in zip(ours, reference, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            d = ulp_distance(a, b)
            differing += int((d != 0).sum())
            total += d.numel()
            worst = max(worst, int(d.max()) if d.numel() else 0)
            scale = float(b.abs().max()) if b.numel() else 0.0
            if scale > 0 and math.isfinite(scale):
                ulp = torch.finfo(b.dtype).eps * 2.0 ** math.floor(math.log2(scale))
                worst_scaled = max(worst_scaled, float((a - b).abs().max()) / ulp)
    return differing, total, worst, worst_scaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few configurations")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--inductor", action="store_true", help="also the Inductor path (slow)")
    parser.add_argument("--dtypes", default="float32,float64,bfloat16")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]

    paths = [
        Path("default", {}),
        Path("per-tensor", {"foreach": False}),
        Path("eager-grouped", {}, native_on=False),
    ]
    if args.inductor:
        paths.append(Path("inductor", {}, native_on=False, compile_min=0))
    torch_paths = {"torch foreach": {"foreach": True}, "torch fused": {"fused": True}}
    optimizers = [
        ("SGD", sgdlab.SGD, torch.optim.SGD, sgd_grid(args.quick)),
        ("Adam", sgdlab.Adam, torch.optim.Adam, adam_grid(args.quick)),
        ("AdamW", sgdlab.AdamW, torch.optim.AdamW, adam_grid(args.quick)),
    ]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.steps} steps, shapes {SHAPES}")
    print("each cell: elements differing from torch's for-loop path (of all parameter and state "
          "elements over all steps) / max ulps / max ulps of the tensor's largest element")
    columns = [p.name for p in paths] + list(torch_paths)
    summary: dict[tuple[str, str, str], list[tuple[int, int, int, float]]] = defaultdict(list)
    for name, ours, theirs, grid in optimizers:
        grid = list(grid)
        for dtype in dtypes:
            print(f"\n{name} {str(dtype).replace('torch.', '')}")
            print(f"  {'configuration':44s}" + "".join(f"{c:>17s}" for c in columns))
            for options in grid:
                reference = trajectory(theirs, {**options, "foreach": False}, dtype, args.steps)
                cells = []
                for path in paths:
                    cells.append(compare(path(ours, options, dtype, args.steps), reference))
                for extra in torch_paths.values():
                    cells.append(compare(trajectory(theirs, {**options, **extra}, dtype,
                                                    args.steps), reference))
                for column, cell in zip(columns, cells):
                    summary[(name, str(dtype), column)].append(cell)
                print(f"  {describe(options):44s}"
                      + "".join(f"{f'{d}/{w}/{v:.3g}':>17s}" for d, _, w, v in cells))
    c_loop = any(k is not None for k in native._kernels.values())  # noqa: SLF001
    print(f"\nthe default path ran the C loop: {c_loop}")
    print("summary: configurations bit-identical to torch's for-loop / all, "
          "differing elements, max ulps, max ulps of the tensor's largest element")
    for (name, dtype, column), cells in summary.items():
        same = sum(1 for cell in cells if cell[0] == 0)
        differing = sum(cell[0] for cell in cells)
        total = sum(cell[1] for cell in cells)
        worst = max(cell[2] for cell in cells)
        scaled = max(cell[3] for cell in cells)
        print(f"  {name:6s} {dtype.replace('torch.', ''):8s} {column:14s} {same:2d}/{len(cells):2d}"
              f"  {differing:7d} of {total:8d}  max {worst} ulp, {scaled:.3g} ulp of largest")


if __name__ == "__main__":
    main()
