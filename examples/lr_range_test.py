"""The learning-rate range test inside an ordinary PyTorch training script.

    python examples/lr_range_test.py                 # range test, then 5 epochs at the suggested lr
    python examples/lr_range_test.py --opt adamw     # the same with sgdlab.AdamW
    python examples/lr_range_test.py --grid          # also train at 10 fixed lrs, to check the suggestion

Data: scikit-learn's 8x8 digits (bundled, no download); model: an MLP 64-64-10.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

import sgdlab
from sgdlab.lab.tune import lr_range_test


def data():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make(opt: str, lr: float, seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    if opt == "sgd":
        optimizer = sgdlab.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        optimizer = sgdlab.AdamW(model.parameters(), lr=lr)
    return model, optimizer


def loader(x, y, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                       generator=generator)


def train(model, optimizer, x, y, x_val, y_val, epochs: int, seed: int) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for xb, yb in loader(x, y, seed):
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        return (model(x_val).argmax(1) == y_val).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opt", choices=("sgd", "adamw"), default="sgd", help="SGD (momentum 0.9) or AdamW")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--grid", action="store_true", help="also train at 10 log-spaced learning rates")
    parser.add_argument("--plot", default="lr_range.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, x_val, y_val = data()

    model, optimizer = make(args.opt, lr=0.1, seed=0)
    result = lr_range_test(model, optimizer, torch.nn.CrossEntropyLoss(), loader(x, y, 0),
                           start_lr=1e-6, end_lr=10.0, num_steps=200, smoothing=0.9)
    result.plot(args.plot, title=f"digits MLP, {args.opt}")
    print(f"suggested lr {result.suggested_lr:.3g} ({result.rule}); steepest descent at "
          f"{result.steepest_lr:.3g}; minimum at {result.min_loss_lr:.3g}; plot: {args.plot}")

    # The model and optimizer are exactly as before the test: set the lr and train.
    for group in optimizer.param_groups:
        group["lr"] = result.suggested_lr
    accuracy = train(model, optimizer, x, y, x_val, y_val, args.epochs, seed=0)
    print(f"{args.epochs} epochs at the suggested lr: validation accuracy {accuracy:.4f}")

    if args.grid:
        print(f"grid ({args.epochs} epochs, mean of 2 seeds):")
        for lr in np.logspace(-4, 0.5, 10):
            accuracies = [train(*make(args.opt, lr, seed), x, y, x_val, y_val, args.epochs, seed) for seed in (0, 1)]
            print(f"  lr {lr:8.3g}  validation accuracy {np.mean(accuracies):.4f}")


if __name__ == "__main__":
    main()
