"""Member-steps per second of a vectorized population on one device, against the same members
stepped one after the other: the MNIST-1D CNN, batch 64, forward + backward + SGD-momentum
(``sgdlab.algorithms.sgd`` on the stacked tensors, as ``sgdlab.lab.population`` runs it).

    python benchmarks/population_gpu.py --device cuda --members 1,3,16,64,256
    .venv/bin/python benchmarks/population_gpu.py --device cpu --members 1,3,16   # one thread
"""

from __future__ import annotations

import argparse
import time

import torch

from sgdlab.algorithms import sgd
from sgdlab.lab.tasks import CNN1d
from sgdlab.optim import torch_ops


def population_step_time(members: int, device: str, steps: int) -> float:
    """Seconds per step of a population of ``members`` (all of them, one step each)."""
    models = [CNN1d(40, 32, 10).to(device) for _ in range(members)]
    base = models[0]
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
              for name, _ in base.named_parameters()}
    states = {name: {} for name in params}
    x = torch.randn(members, 64, 40, device=device)
    y = torch.randint(0, 10, (members, 64), device=device)

    def loss(p, xb, yb):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(base, p, (xb,)), yb)

    batched = torch.func.vmap(loss)

    def step():
        nonlocal params
        losses = batched(params, x, y)
        grads = torch.autograd.grad(losses.sum(), list(params.values()))
        with torch.no_grad():
            new = {}
            for (name, p), g in zip(params.items(), grads):
                new[name], states[name] = sgd(p.detach(), g, states[name], lr=0.03, momentum=0.9, ops=torch_ops)
        params = {k: v.requires_grad_() for k, v in new.items()}

    return _time(step, steps, device)


def sequential_step_time(members: int, device: str, steps: int) -> float:
    """Seconds per step of ``members`` separate models with sgdlab.SGD, one after the other."""
    import sgdlab

    models = [CNN1d(40, 32, 10).to(device) for _ in range(members)]
    optimizers = [sgdlab.SGD(m.parameters(), lr=0.03, momentum=0.9) for m in models]
    x = torch.randn(64, 40, device=device)
    y = torch.randint(0, 10, (64,), device=device)

    def step():
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    return _time(step, steps, device)


def _time(step, steps: int, device: str) -> float:
    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", default="1,3,16,64,256")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"{name}, torch {torch.__version__}\n")
    print("| members | population ms/step | member-steps/s | one after another ms/step | member-steps/s | ratio |")
    print("|---|---|---|---|---|---|")
    for members in (int(m) for m in args.members.split(",")):
        together = population_step_time(members, args.device, args.steps)
        alone = sequential_step_time(members, args.device, max(3, args.steps // max(1, members // 4)))
        print(f"| {members} | {together * 1e3:.2f} | {members / together:,.0f} | {alone * 1e3:.2f} | "
              f"{members / alone:,.0f} | {alone / together:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
