"""Race optimizers on your own model and data with the compare lab's Python API.

    .venv/bin/python examples/compare_custom_task.py
    .venv/bin/python examples/compare_custom_task.py --epochs 3 --seeds 2 --workers 2 --out /tmp/spirals

A `Task` is a model factory, train/test tensors and a default budget (loss: cross-entropy,
metric: accuracy, unless you pass others). The race writes the same report directory as
`sgdlab compare`: runs.jsonl, summary.json, report.md, report.html and plots/.
"""

from __future__ import annotations

import argparse

import torch

from sgdlab.lab.report import build_report, print_report, write_report
from sgdlab.lab.runner import run_race
from sgdlab.lab.specs import parse_specs
from sgdlab.lab.tasks import Task


def two_spirals(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals in the plane: a small problem that needs a non-linear model."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=generator) * 3 * torch.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=generator)
    sign = 1 - 2 * label.float()
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / 5
    return x + 0.05 * torch.randn(n, 2, generator=generator), label


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default="runs/example-spirals")
    args = parser.parse_args()

    x_train, y_train = two_spirals(800, seed=0)
    x_test, y_test = two_spirals(400, seed=1)
    task = Task("spirals", mlp, x_train, y_train, x_test, y_test, epochs=args.epochs, batch_size=32,
                target_loss=0.3, description="two spirals, 800 train / 400 test points, MLP 2-64-64-2")
    specs = parse_specs(["gd:lr=0.5", "sgd:lr=0.1", "momentum:lr=0.02", "adam:lr=3e-3"], task=task)
    race = run_race(task, specs, seeds=args.seeds, workers=args.workers, out=args.out)
    report = build_report(race)
    print_report(report)
    paths = write_report(report, args.out)
    print(f"report: {paths['html']}")


if __name__ == "__main__":  # worker processes are spawned and import this file: keep the race here
    main()
