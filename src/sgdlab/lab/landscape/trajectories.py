"""Optimizer trajectories on 2-D functions, run with the real optimizer classes.

The point ``w = (x, y)`` is one ``torch`` parameter of shape ``(2,)``; each optimizer is built by
the compare lab's spec parser (``"sgd:lr=1e-3,momentum=0.9"``, any name it knows), or given as an
``OptimizerSpec`` or a factory ``params -> torch.optim.Optimizer``, and stepped exactly as in
training: ``zero_grad``, ``backward``, ``step``. Two kinds of stochasticity are available:
additive Gaussian gradient noise (``noise``), and real mini-batch noise on finite-sum problems
(``batch_size`` with :class:`~sgdlab.lab.landscape.functions.LeastSquares2D`). A stochastic run
also records its deterministic twin (same optimizer, exact gradients) as ``reference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from sgdlab.lab.landscape.functions import Function2D, get_function

__all__ = ["Trajectory", "optimizer_label", "resolve_optimizer", "run_trajectories", "run_trajectory"]

OptimizerLike = Any  # a spec string, an OptimizerSpec, or a factory params -> torch.optim.Optimizer


@dataclass
class Trajectory:
    """One optimizer's path.

    ``path`` has shape ``(k + 1, 2)``: the start and the point after each of the ``k`` steps
    taken (``k == steps`` unless the run stopped early). ``losses[i]`` is the exact function value
    at ``path[i]`` (the full-batch loss, also for stochastic runs). ``status`` is ``"ok"``,
    ``"diverged"`` (a non-finite value appeared) or ``"escaped"`` (the point left a box 1000 times
    the plotting window, e.g. down an unbounded saddle); the path stops there.
    """

    label: str
    path: np.ndarray
    losses: np.ndarray
    status: str = "ok"
    noise: float = 0.0
    batch_size: int | None = None
    reference: "Trajectory | None" = None

    @property
    def steps(self) -> int:
        return len(self.path) - 1

    @property
    def final(self) -> np.ndarray:
        return self.path[-1]

    @property
    def stochastic(self) -> bool:
        return self.noise > 0 or self.batch_size is not None


def resolve_optimizer(optimizer: OptimizerLike) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """A factory ``params -> optimizer`` from a spec string, an ``OptimizerSpec`` or a factory."""
    if isinstance(optimizer, str):
        from sgdlab.lab.specs import parse_spec

        optimizer = parse_spec(optimizer)
    if hasattr(optimizer, "build"):
        return optimizer.build
    if callable(optimizer):
        return optimizer
    raise TypeError(
        "optimizer must be a spec string such as 'sgd:lr=0.1', an OptimizerSpec or a callable "
        f"params -> torch.optim.Optimizer, got {optimizer!r}"
    )


def optimizer_label(optimizer: OptimizerLike) -> str:
    """A short legend label: the spec text, or the factory's name and arguments."""
    if isinstance(optimizer, str):
        return optimizer
    for attr in ("label", "text"):
        value = getattr(optimizer, attr, None)
        if isinstance(value, str) and value:
            return value
    func = getattr(optimizer, "func", None)  # functools.partial(torch.optim.SGD, lr=...)
    if func is not None:
        kwargs = ",".join(f"{k}={v}" for k, v in getattr(optimizer, "keywords", {}).items())
        return f"{getattr(func, '__name__', 'optimizer')}:{kwargs}" if kwargs else func.__name__
    return getattr(optimizer, "__name__", None) or str(optimizer)


def run_trajectory(
    function: Function2D | str | Callable,
    optimizer: OptimizerLike,
    *,
    start: Sequence[float] | None = None,
    steps: int = 500,
    noise: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    label: str | None = None,
    reference: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Trajectory:
    """Run ``optimizer`` for ``steps`` steps on ``function`` from ``start`` and record the path.

    ``noise`` adds ``noise * N(0, I)`` to every gradient (except for full-batch specs such as
    ``gd``, which always get exact gradients); ``batch_size`` (finite-sum functions
    only) computes each gradient on that many data points drawn without replacement. When either
    is set and ``reference`` is true, the same optimizer is also run with exact gradients and
    stored as ``trajectory.reference``. ``seed`` fixes the noise and the batches.
    """
    function = get_function(function)
    if isinstance(optimizer, str):
        from sgdlab.lab.specs import parse_spec

        optimizer = parse_spec(optimizer)
    if getattr(optimizer, "full_batch", False):
        # A full-batch optimizer ("gd") is the exact-gradient baseline: no noise, no batches.
        noise, batch_size = 0.0, None
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    n = function.n_samples
    if batch_size is not None:
        if n == 1:
            raise ValueError(
                f"batch_size needs a finite-sum function such as 'least-squares'; {function.name!r} "
                "has no data points (use noise= for gradient noise)"
            )
        if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
            raise ValueError(f"batch_size must be an integer in [1, {n}], got {batch_size!r}")
        if batch_size == n:
            batch_size = None
    start = function.start if start is None else start
    if len(start) != 2:
        raise ValueError(f"start must be two numbers x,y, got {tuple(start)!r}")

    build = resolve_optimizer(optimizer)
    label = label or optimizer_label(optimizer)
    point = torch.nn.Parameter(torch.tensor([float(start[0]), float(start[1])], dtype=dtype))
    opt = build([point])
    # A spec's learning-rate schedule (sgd:schedule=cosine) spans the path's ``steps`` steps.
    scheduler = optimizer.schedule().build(opt, steps) if hasattr(optimizer, "schedule") and steps else None
    if callable(getattr(opt, "eval", None)) and callable(getattr(opt, "train", None)):
        opt.eval()  # start in eval mode: the loop switches to train mode around each step
    generator = torch.Generator().manual_seed(seed)
    box = 1000.0 * max(function.xlim[1] - function.xlim[0], function.ylim[1] - function.ylim[0])

    path = [point.detach().clone()]
    losses: list[torch.Tensor] = []  # losses[i] is f(path[i]), filled in as the steps go
    status = "ok"
    first_loss: list[torch.Tensor] = []
    indices: torch.Tensor | None = None
    kick: torch.Tensor | None = None

    def closure() -> torch.Tensor:
        # Optimizers such as SAM or L-BFGS evaluate the closure more than once per step; every
        # evaluation within a step sees the same mini-batch and the same gradient noise.
        opt.zero_grad()
        loss = function.batch_value(point, indices)
        loss.backward()
        if kick is not None:
            point.grad.add_(kick)
        if not first_loss:
            first_loss.append(loss.detach().clone())
        return loss

    # Schedule-free optimizers take gradients at one point (train mode) and answer with another
    # (eval mode); the path shows the answer, switching modes around each step.
    to_train, to_eval = getattr(opt, "train", None), getattr(opt, "eval", None)
    switches = callable(to_train) and callable(to_eval)
    for _ in range(steps):
        indices = None if batch_size is None else torch.randperm(n, generator=generator)[:batch_size]
        kick = None if noise == 0 else float(noise) * torch.randn(2, generator=generator, dtype=dtype)
        if indices is not None or switches:
            with torch.no_grad():
                exact = function.value(point).detach().clone()
        if switches:
            to_train()
        first_loss.clear()
        opt.step(closure)
        if scheduler is not None:
            scheduler.step()
        if switches:
            to_eval()
        if indices is None and not switches:
            exact = first_loss[0]  # the full loss at path[-1], without a second evaluation
        if not torch.isfinite(exact):
            break  # f(path[-1]) is not finite: path[-1] is dropped below
        losses.append(exact)
        current = point.detach().clone()
        if not torch.isfinite(current).all():
            status = "diverged"
            break
        path.append(current)
        if current.abs().max() > box:
            status = "escaped"
            break
    if len(losses) < len(path):
        with torch.no_grad():
            last = function.value(path[-1]).detach().clone()
        if torch.isfinite(last):
            losses.append(last)
        else:
            path.pop()
            status = "diverged"
    if not path:  # the start itself is not a finite point of the function
        raise ValueError(f"{function.name} is not finite at the start point {tuple(start)}")

    trajectory = Trajectory(
        label=label,
        path=torch.stack(path).numpy(),
        losses=torch.stack(losses).numpy(),
        status=status,
        noise=float(noise),
        batch_size=batch_size,
    )
    if reference and trajectory.stochastic:
        trajectory.reference = run_trajectory(
            function, optimizer, start=start, steps=steps, label=label, reference=False, dtype=dtype
        )
    return trajectory


def run_trajectories(
    function: Function2D | str | Callable,
    optimizers: Iterable[OptimizerLike],
    **kwargs: Any,
) -> list[Trajectory]:
    """:func:`run_trajectory` for each optimizer, with the same function, start and options."""
    function = get_function(function)
    return [run_trajectory(function, optimizer, **kwargs) for optimizer in optimizers]
