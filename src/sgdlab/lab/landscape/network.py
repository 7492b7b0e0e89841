"""Loss landscapes of real networks: 1-D interpolations, 2-D filter-normalized slices, sharpness.

:func:`network_landscape` trains one model per optimizer on a compare-lab task (same seed, hence
the same initial weights; training is the compare lab's :func:`~sgdlab.lab.runner.train_run`, so a
re-run resumes from its checkpoints), then measures, on the training loss:

- **1-D lines** (Goodfellow et al., 2015): the loss along the straight line
  ``theta(a) = (1 - a) * theta_0 + a * theta_opt`` from the initialisation to each solution, and
  between every pair of solutions, for ``a`` slightly beyond [0, 1]. A bump between two solutions
  is a barrier; no bump means they lie in one connected basin along that line.
- **2-D slices** (Li et al., 2018, "Visualizing the Loss Landscape of Neural Nets"):
  ``L(theta_opt + a * d1 + b * d2)`` on a grid, where ``d1, d2`` are random Gaussian directions
  *filter-normalized* to the solution: each filter (row of a weight matrix, output channel of a
  convolution) of ``d`` is rescaled to the norm of the same filter in ``theta_opt``. This removes
  the scale invariance of ReLU networks, so the width of the bowl can be compared between
  solutions; bias and other 1-D parameters get no direction (zero), as in the paper.
- **Sharpness**: the largest eigenvalue of the Hessian of the training loss at each solution, by
  power iteration on Hessian-vector products (double back-propagation, never the full Hessian).

Everything is returned as numpy arrays in a :class:`NetworkLandscape`.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "NetworkLandscape",
    "Solution",
    "filter_normalized_direction",
    "hessian_top_eigenvalue",
    "network_landscape",
]


# --- the measurements, on a flat parameter vector ---------------------------------------------


def hessian_top_eigenvalue(
    loss_fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    *,
    iters: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> tuple[float, int]:
    """The largest-magnitude eigenvalue of the Hessian of ``loss_fn`` at ``theta`` (1-D tensor).

    Power iteration ``v <- H v / |H v|`` with ``H v`` from double back-propagation; the estimate is
    the Rayleigh quotient ``v . H v``. Stops when it changes by less than ``tol`` (relative) or
    after ``iters`` products. At a minimum the Hessian is (nearly) positive semi-definite, so this
    is its largest eigenvalue, the usual "sharpness". Returns ``(eigenvalue, products used)``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    # Fused attention kernels (flash / memory-efficient) have no double backward; the plain
    # "math" implementation of scaled_dot_product_attention does.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        return _power_iteration(loss_fn, theta, iters, tol, seed, progress)


def _power_iteration(loss_fn, theta, iters, tol, seed, progress) -> tuple[float, int]:
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(theta), theta, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
    v /= v.norm()
    estimate = float("nan")
    for i in range(1, iters + 1):
        # The gradient's graph is built once and reused for every product (retain_graph).
        (hv,) = torch.autograd.grad(grad, theta, v, retain_graph=True)
        previous, estimate = estimate, float(torch.dot(v, hv))
        if progress is not None:
            progress(i)
        norm = hv.norm()
        if norm == 0 or not torch.isfinite(norm):
            return estimate, i
        v = hv / norm
        if abs(estimate - previous) <= tol * abs(estimate):
            return estimate, i
    return estimate, iters


def filter_normalized_direction(
    params: Sequence[Tensor], generator: torch.Generator, *, ignore_1d: bool = True
) -> list[Tensor]:
    """A random direction shaped like ``params``, each filter rescaled to its parameter's norm.

    A "filter" is a slice along the first dimension (a row of a linear layer's weight, an output
    channel of a convolution, a row of an embedding). 1-D parameters (biases, norm scales) get a
    zero direction when ``ignore_1d`` (Li et al.'s default), else one rescaled as a whole.
    """
    directions = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        if p.dim() <= 1:
            d = torch.zeros_like(p) if ignore_1d else d * (p.norm() / (d.norm() + 1e-10))
        else:
            rows_d, rows_p = d.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            scale = rows_p.norm(dim=1, keepdim=True) / (rows_d.norm(dim=1, keepdim=True) + 1e-10)
            d = (rows_d * scale).reshape(p.shape)
        directions.append(d)
    return directions


class FlatLoss:
    """The task's loss as a function of one flat parameter vector (``torch.func.functional_call``)."""

    def __init__(self, model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor):
        self.model = model.eval()
        self.loss, self.x, self.y = loss, x, y
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]
        self._vmap_ok = True

    def flatten(self, module: nn.Module) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def unflatten(self, theta: Tensor) -> list[Tensor]:
        return [t.reshape(s) for t, s in zip(torch.split(theta, self.sizes), self.shapes)]

    def __call__(self, theta: Tensor) -> Tensor:
        params = dict(zip(self.names, self.unflatten(theta)))
        return self.loss(torch.func.functional_call(self.model, params, (self.x,)), self.y)

    @torch.no_grad()
    def value(self, theta: Tensor) -> float:
        return float(self(theta))

    @torch.no_grad()
    def values(self, thetas: Tensor) -> np.ndarray:
        """The loss at each row of ``thetas`` (shape ``(k, P)``): one batched pass via ``vmap``.

        Batching the points turns many small matrix products into a few large ones, which is
        several times faster on CPU; models that ``vmap`` cannot trace fall back to a loop.
        """
        if self._vmap_ok:
            try:
                with warnings.catch_warnings():
                    # Layers without a batching rule (e.g. the fused transformer encoder) are run
                    # by vmap's per-example fallback, correct but slower; the warning is noise here.
                    warnings.filterwarnings("ignore", message=".*batching rule.*")
                    return torch.func.vmap(self)(thetas).numpy().astype(float)
            except Exception:  # noqa: BLE001 - any tracing failure: evaluate point by point
                self._vmap_ok = False
        return np.array([self.value(theta) for theta in thetas])


# --- results ---------------------------------------------------------------------------------


@dataclass
class Solution:
    """One trained model: where it ended, how good it is, how sharp."""

    label: str
    status: str
    train_loss: float
    test_loss: float
    test_metric: float
    distance_from_init: float
    sharpness: float = float("nan")
    hessian_products: int = 0


@dataclass
class NetworkLandscape:
    """What :func:`network_landscape` measured, as numpy arrays.

    ``line_alphas``: the interpolation coefficients ``a`` (0 = start of the line, 1 = its end).
    ``init_lines[label]`` / ``init_lines_test[label]``: train / test loss from the initialisation
    to that solution. ``pair_lines[(a, b)]``: train loss from solution ``a`` to solution ``b``.
    ``slice_coords``: the grid coordinates along both directions; ``slices[label]``: the train loss
    on that grid around the solution (shape ``(n, n)``, rows = second direction).
    """

    task: str
    metric: str
    solutions: list[Solution]
    line_alphas: np.ndarray
    init_lines: dict[str, np.ndarray]
    init_lines_test: dict[str, np.ndarray]
    pair_lines: dict[tuple[str, str], np.ndarray]
    slice_coords: np.ndarray
    slices: dict[str, np.ndarray]
    examples: int = 0
    notes: list[str] = field(default_factory=list)

    def plot(self, path: str | Path | None = None, *, dpi: int = 120):
        """The 1-D lines and the 2-D slices on one shared colour scale (returns the figure)."""
        from sgdlab.lab.landscape.plots import plot_network

        return plot_network(self, path, dpi=dpi)

    def save(self, path: str | Path) -> Path:
        """All arrays in one ``.npz`` (keys ``init_line_<i>``, ``slice_<i>``, ... ``labels``)."""
        labels = [s.label for s in self.solutions]
        arrays: dict[str, Any] = {
            "labels": np.array(labels),
            "line_alphas": self.line_alphas,
            "slice_coords": self.slice_coords,
            "sharpness": np.array([s.sharpness for s in self.solutions]),
            "train_loss": np.array([s.train_loss for s in self.solutions]),
        }
        for i, label in enumerate(labels):
            if label in self.init_lines:
                arrays[f"init_line_{i}"] = self.init_lines[label]
                arrays[f"init_line_test_{i}"] = self.init_lines_test[label]
            if label in self.slices:
                arrays[f"slice_{i}"] = self.slices[label]
        for (a, b), line in self.pair_lines.items():
            arrays[f"pair_line_{labels.index(a)}_{labels.index(b)}"] = line
        np.savez_compressed(path, **arrays)
        return Path(path)


# --- the pipeline ------------------------------------------------------------------------------


def network_landscape(
    task: Any = "digits",
    optimizers: Iterable[Any] = ("sgd", "adam"),
    *,
    seed: int = 0,
    epochs: int | None = None,
    resolution: int = 21,
    span: float = 1.0,
    line_points: int = 29,
    hessian_iters: int = 50,
    max_examples: int = 2048,
    checkpoint_dir: str | Path | None = None,
    progress: Any = None,
) -> NetworkLandscape:
    """Train ``task`` with each optimizer from the same initialisation and measure its landscape.

    ``task``: a name of :func:`sgdlab.lab.tasks.task_names` or a ``Task``; ``optimizers``: spec
    strings or ``OptimizerSpec`` (two or more). ``resolution`` x ``resolution`` points per 2-D slice
    over ``[-span, span]^2`` (filter-normalized units); ``line_points`` per 1-D line over
    ``[-0.2, 1.2]``. Losses and Hessians use the first ``max_examples`` training examples (all of
    them for the built-in small tasks). ``checkpoint_dir`` keeps the training checkpoints, so a
    second call reuses finished training. ``progress`` is a ``rich.progress.Progress`` (optional).
    """
    from sgdlab.lab.runner import Budget, run_id, train_run
    from sgdlab.lab.specs import OptimizerSpec, parse_spec
    from sgdlab.lab.tasks import Task, get_task

    task = task if isinstance(task, Task) else get_task(task)
    specs = [s if isinstance(s, OptimizerSpec) else parse_spec(s, task=task) for s in optimizers]
    if len(specs) < 1:
        raise ValueError("network_landscape needs at least one optimizer")
    if len({s.label for s in specs}) != len(specs):
        raise ValueError("optimizer labels must be distinct; add label=... to the specs")
    for name, value, low in (("resolution", resolution, 3), ("line_points", line_points, 3),
                             ("hessian_iters", hessian_iters, 1), ("max_examples", max_examples, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(span, (int, float)) and math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a positive number, got {span!r}")

    budget = Budget(epochs=epochs).resolve(task)
    torch.manual_seed(seed)  # train_run initialises the model exactly like this
    model = task.model()
    x, y = task.x_train[:max_examples], task.y_train[:max_examples]
    flat = FlatLoss(model, task.loss, x, y)
    flat_test = FlatLoss(model, task.loss, task.x_test, task.y_test)
    theta0 = flat.flatten(model)

    bar = _Bars(progress)
    solutions: list[Solution] = []
    thetas: dict[str, Tensor] = {}
    with tempfile.TemporaryDirectory() as scratch:
        # train_run hands back records, not the model: the trained weights come from its
        # checkpoint, kept in checkpoint_dir (so a re-run reuses finished training) or a scratch dir.
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
        for spec in specs:
            batch = task.n_train if spec.full_batch else task.batch_size
            checkpoint = folder / f"{run_id(task, spec, seed, budget, batch)}.pt"
            job = bar.add(f"training {spec.label}", 1.0)
            result = train_run(task, spec, seed, epochs=budget.epochs, steps=budget.steps,
                               checkpoint=checkpoint, on_progress=lambda f, job=job: bar.set(job, f))
            bar.set(job, 1.0)
            theta = _load_parameters(task, spec, seed, checkpoint)
            final = result.final
            solutions.append(Solution(
                label=spec.label,
                status=result.status,
                train_loss=_num(final.get("train_loss")),
                test_loss=_num(final.get("test_loss")),
                test_metric=_num(final.get(f"test_{task.metric}")),
                distance_from_init=float((theta - theta0).norm()),
            ))
            if torch.isfinite(theta).all() and result.status != "diverged":
                thetas[spec.label] = theta

    alphas = np.linspace(-0.2, 1.2, line_points)
    labels = list(thetas)
    init_lines, init_lines_test, pair_lines = {}, {}, {}
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    job = bar.add("1-D interpolations", len(labels) + len(pairs))
    for label in labels:
        init_lines[label] = _line(flat, theta0, thetas[label], alphas)
        init_lines_test[label] = _line(flat_test, theta0, thetas[label], alphas)
        bar.advance(job)
    for a, b in pairs:
        pair_lines[(a, b)] = _line(flat, thetas[a], thetas[b], alphas)
        bar.advance(job)

    coords = np.linspace(-span, span, resolution)
    slices = {}
    for label in labels:
        generator = torch.Generator().manual_seed(seed + 12345)  # the same raw draws for everyone
        params = flat.unflatten(thetas[label])
        d1 = torch.cat([d.reshape(-1) for d in filter_normalized_direction(params, generator)])
        d2 = torch.cat([d.reshape(-1) for d in filter_normalized_direction(params, generator)])
        job = bar.add(f"2-D slice around {label}", resolution * resolution)
        grid = np.empty((resolution, resolution))
        a = torch.as_tensor(coords, dtype=d1.dtype).unsqueeze(1)
        for i, b in enumerate(coords):  # one row of the grid per batched evaluation
            grid[i] = flat.values(thetas[label] + a * d1 + float(b) * d2)
            bar.advance(job, resolution)
        slices[label] = grid

    notes = []
    for solution in solutions:
        if solution.label not in thetas:
            continue
        job = bar.add(f"sharpness of {solution.label}", hessian_iters)
        try:
            solution.sharpness, solution.hessian_products = hessian_top_eigenvalue(
                flat, thetas[solution.label], iters=hessian_iters, seed=seed,
                progress=lambda i, job=job: bar.set(job, i),
            )
        except RuntimeError as error:  # a layer without double backward: no sharpness, say why
            notes.append(f"no sharpness for {solution.label}: {str(error).splitlines()[0]}")
        bar.set(job, hessian_iters)

    if len(x) < task.n_train:
        notes.append(f"losses and Hessians on the first {len(x)} of {task.n_train} training examples")
    return NetworkLandscape(
        task=task.name, metric=task.metric, solutions=solutions, line_alphas=alphas,
        init_lines=init_lines, init_lines_test=init_lines_test, pair_lines=pair_lines,
        slice_coords=coords, slices=slices, examples=len(x), notes=notes,
    )


def _num(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _line(flat: FlatLoss, start: Tensor, end: Tensor, alphas: np.ndarray) -> np.ndarray:
    a = torch.as_tensor(alphas, dtype=start.dtype).unsqueeze(1)
    return np.concatenate([flat.values(chunk) for chunk in torch.split((1.0 - a) * start + a * end, 16)])


def _load_parameters(task, spec, seed, path: Path) -> Tensor:
    saved = torch.load(path, weights_only=False)
    torch.manual_seed(seed)
    model = task.model()
    model.load_state_dict(saved["model"])
    optimizer = spec.build(model.parameters(), task)
    optimizer.load_state_dict(saved["optimizer"])
    # Schedule-free optimizers train at one point and evaluate at another; the landscape is
    # measured where the model is evaluated.
    switch = getattr(optimizer, "eval", None)
    if callable(switch):
        switch()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class _Bars:
    """Thin wrapper so the pipeline runs with or without a rich Progress."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def add(self, description: str, total: float):
        return self.progress.add_task(description, total=total) if self.progress else None

    def set(self, job, completed: float) -> None:
        if self.progress is not None:
            self.progress.update(job, completed=completed)

    def advance(self, job, amount: float = 1) -> None:
        if self.progress is not None:
            self.progress.advance(job, amount)


# --- the CLI ---------------------------------------------------------------------------------


def run_network_cli(args: Any, out: Path, default_optimizers: list[str]) -> int:
    """``sgdlab landscape --task NAME``: train, measure, print the table, write PNG and NPZ."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from sgdlab.lab.specs import parse_specs
    from sgdlab.lab.tasks import get_task

    console = Console()
    task = get_task(args.task)
    specs = parse_specs(args.opt or default_optimizers, task=task)
    if len(specs) < 2:
        console.print("[yellow]one optimizer: no solution-to-solution line will be drawn[/yellow]")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    out.mkdir(parents=True, exist_ok=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        result = network_landscape(
            task, specs, seed=args.seed, epochs=args.epochs, resolution=args.resolution,
            span=args.span, hessian_iters=args.hessian_iters,
            checkpoint_dir=out / "checkpoints" / task.name, progress=progress,
        )
    png = out / f"{task.name}-landscape.png"
    result.plot(png)
    npz = result.save(out / f"{task.name}-landscape.npz")

    table = Table(title=f"{task.name}: loss landscape around each solution (seed {args.seed})")
    for column in ("optimizer", "status", "train loss", f"test {task.metric}",
                   "|θ − θ₀|", "λ_max(H)", "HVPs"):
        table.add_column(column, justify="left" if column in ("optimizer", "status") else "right")
    for s in result.solutions:
        table.add_row(s.label, s.status, f"{s.train_loss:.4g}", f"{s.test_metric:.4f}",
                      f"{s.distance_from_init:.3g}",
                      "-" if math.isnan(s.sharpness) else f"{s.sharpness:.4g}",
                      # Hitting the limit means the estimate may not have settled yet.
                      f"{s.hessian_products} (limit)" if s.hessian_products >= args.hessian_iters
                      else str(s.hessian_products))
    table.caption = "λ_max(H): sharpness, the top Hessian eigenvalue of the train loss (power iteration)"
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {png}\nwrote {npz}")
    return 0
