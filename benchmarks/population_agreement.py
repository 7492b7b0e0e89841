"""How closely a vectorized population reproduces its runs trained one at a time, next to how
closely PyTorch reproduces a run when only its convolution kernels change (oneDNN vs PyTorch's
native convolution): the yardstick for "the same to float tolerance" on a model whose training
amplifies rounding differences.

For each optimizer and seed: the largest difference of any loss or accuracy over all records of
the run (every epoch), population vs one at a time, and oneDNN vs native convolutions (both one at
a time). One torch thread::

    .venv/bin/python benchmarks/population_agreement.py --epochs 3
"""

from __future__ import annotations

import argparse

import torch

from sgdlab.lab.population import Member, train_population
from sgdlab.lab.runner import train_run
from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import get_task


def largest_difference(a, b) -> float:
    assert (a.run_id, a.status, len(a.records)) == (b.run_id, b.status, len(b.records))
    return max(abs(ra[k] - rb[k]) for ra, rb in zip(a.records, b.records) for k in ra
               if k != "time" and isinstance(ra[k], float) and isinstance(rb[k], float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--opt", action="append", default=None,
                        help="specs (default: the default race's six optimizers, one population)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task(args.task)
    texts = args.opt or ["gd", "sgd", "momentum", "nesterov", "adam", "adamw"]
    members = [Member(parse_spec(text), seed) for text in texts for seed in range(args.seeds)]
    together = train_population(task, members, epochs=args.epochs)
    print(f"{args.task}, {args.epochs} epochs, max |difference| of any loss or accuracy in any record\n")
    print("| optimizer | seed | population vs one at a time | oneDNN vs native convolution |")
    print("|---|---|---|---|")
    for member, result in zip(members, together):
        alone = train_run(task, member.spec, member.seed, epochs=args.epochs)
        with torch.backends.mkldnn.flags(enabled=False):
            native = train_run(task, member.spec, member.seed, epochs=args.epochs)
        print(f"| {member.spec.label} | {member.seed} | {largest_difference(result, alone):.2g} | "
              f"{largest_difference(alone, native):.2g} |", flush=True)


if __name__ == "__main__":
    main()
