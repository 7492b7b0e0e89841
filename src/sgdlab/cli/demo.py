"""``sgdlab demo``: a short training run with sgdlab.SGD, the smallest end-to-end check."""

from __future__ import annotations

import argparse

from sgdlab.cli.checks import UsageError, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="train a small regression model with sgdlab.SGD")
    parser.add_argument("--steps", type=positive_int, default=200, help="training steps (default: 200)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01)")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum (default: 0.9)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import sgdlab

    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]) + 0.1 * torch.randn(256, 2)
    model = torch.nn.Linear(3, 2)
    loss_fn = torch.nn.MSELoss()
    try:
        optimizer = sgdlab.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    except ValueError as error:  # a negative learning rate or momentum
        raise UsageError(str(error)) from None
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if step == 1 or step % max(1, args.steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.6f}")
    return 0
