"""Does compact (bfloat16 or 8-bit) optimizer state train as well as float32 state?

Same task, same seeds, same hyperparameters; the only difference is ``state_dtype``. Prints final
train loss and test accuracy per seed and their mean and standard deviation, side by side.

    .venv/bin/python benchmarks/compact_convergence.py --task digits --optimizer adamw --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sgdlab
from sgdlab.lab.tasks import get_task

OPTIMIZERS = {
    # name -> (class, hyperparameters, task lr key)
    "adamw": (sgdlab.AdamW, {"weight_decay": 0.01}, "adam"),
    "adam": (sgdlab.Adam, {}, "adam"),
    "sgd-momentum": (sgdlab.SGD, {"momentum": 0.9}, "momentum"),
}


def train(task, optimizer_name: str, state_dtype, seed: int, epochs: int | None,
          lr: float | None = None, min_8bit_size: int | None = None) -> dict:
    cls, options, lr_key = OPTIMIZERS[optimizer_name]
    torch.manual_seed(seed)
    model = task.model()
    group = {"params": list(model.parameters())}
    if state_dtype is not None:
        group["state_dtype"] = state_dtype
    if min_8bit_size is not None:
        group["min_8bit_size"] = min_8bit_size
    optimizer = cls([group], lr=lr or task.lr_hint(lr_key), **options)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs or task.epochs):
        permutation = torch.randperm(task.n_train, generator=order)
        for start in range(0, task.n_train, task.batch_size):
            batch = permutation[start: start + task.batch_size]
            optimizer.zero_grad()
            task.loss(model(task.x_train[batch]), task.y_train[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        train_loss = task.loss(model(task.x_train), task.y_train).item()
        test_metric = task.metrics[task.metric](model(task.x_test), task.y_test)
    return {"train_loss": train_loss, task.metric: test_metric}


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--task-option wants KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the task's factory, e.g. channels=128 (repeatable)")
    parser.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's budget")
    parser.add_argument("--lr", type=float, default=None, help="default: the task's hint")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--min-8bit-size", type=int, default=None,
                        help="8-bit state only for tensors of at least this many elements "
                             "(default: the library's, 4096; 0: every tensor)")
    parser.add_argument("--json", help="write the per-seed results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task(args.task, **dict(_option(text) for text in args.task_option))
    formats = (("float32", None), ("bfloat16", torch.bfloat16), ("8-bit", torch.uint8))
    results: dict[str, list[dict]] = {name: [] for name, _ in formats}
    start = time.time()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, dtype in formats:
            results[name].append(train(task, args.optimizer, dtype, seed, args.epochs, args.lr,
                                       args.min_8bit_size))
        print(f"seed {seed}: " + "  ".join(
            f"{name} loss {results[name][-1]['train_loss']:.4f} "
            f"{task.metric} {results[name][-1][task.metric]:.4f}" for name in results), flush=True)
    lr = args.lr or task.lr_hint(OPTIMIZERS[args.optimizer][2])
    options = "".join(f" {text}" for text in args.task_option)
    if args.min_8bit_size is not None:
        options += f", min_8bit_size {args.min_8bit_size}"
    print(f"\n{args.task}{options}, {args.optimizer}, lr {lr}, "
          f"{args.epochs or task.epochs} epochs, {args.seeds} seeds ({time.time() - start:.0f} s)")
    print(f"| state | final train loss | test {task.metric} |\n|---|---|---|")
    for name, runs in results.items():
        cells = []
        for key in ("train_loss", task.metric):
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
