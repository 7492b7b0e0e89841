"""Gradient descent, visualized: optimizer paths on 2-D test functions and loss surfaces of networks.

Everything returns numpy arrays, so notebooks can draw their own pictures::

    from sgdlab.lab import landscape

    result = landscape.explore("rosenbrock", ["sgd:lr=1e-3", "momentum:lr=1e-3", "adam:lr=0.05"],
                               steps=500, start=(-1.5, 2))
    result.trajectories[0].path      # (501, 2) array of points, start first
    result.trajectories[0].losses    # (501,) f at each point
    X, Y, Z = result.grid()          # the function on a 200 x 200 grid (float64 arrays)
    result.plot("rosenbrock.png")    # contour map + loss panel (returns the figure)
    result.animate("rosenbrock.gif") # animated GIF (".mp4" when ffmpeg is installed)

Pieces: :mod:`~sgdlab.lab.landscape.functions` (the test functions, :func:`get_function`),
:mod:`~sgdlab.lab.landscape.trajectories` (:func:`run_trajectory`), :mod:`~sgdlab.lab.landscape.plots`
and, for real networks, :mod:`~sgdlab.lab.landscape.network` (1-D interpolations, filter-normalized
2-D slices, Hessian sharpness).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sgdlab.lab.landscape.functions import (
    FUNCTIONS,
    Function2D,
    LeastSquares2D,
    UnknownFunctionError,
    function_names,
    get_function,
)
from sgdlab.lab.landscape.trajectories import Trajectory, run_trajectories, run_trajectory

__all__ = [
    "FUNCTIONS",
    "Function2D",
    "Landscape2D",
    "LeastSquares2D",
    "Trajectory",
    "UnknownFunctionError",
    "explore",
    "function_names",
    "get_function",
    "run_trajectories",
    "run_trajectory",
]


@dataclass
class Landscape2D:
    """Paths of several optimizers on one 2-D function, with helpers to grid, plot and save them."""

    function: Function2D
    trajectories: list[Trajectory]

    def grid(self, resolution: int = 200):
        """``(X, Y, Z)``: the function over its window (float64 arrays of shape (n, n))."""
        return self.function.grid(resolution)

    def distance_to_minimum(self, trajectory: Trajectory) -> float | None:
        """Euclidean distance from the path's end to the nearest known minimum (None if unknown)."""
        if not self.function.minima:
            return None
        minima = np.asarray(self.function.minima)
        return float(np.min(np.linalg.norm(minima - trajectory.final, axis=1)))

    def plot(self, path: str | Path | None = None, **options: Any):
        """The contour map with the paths and the loss-per-step panel (see ``plots.plot_paths``)."""
        from sgdlab.lab.landscape.plots import plot_paths

        return plot_paths(self.function, self.trajectories, path, **options)

    def animate(self, path: str | Path, **options: Any) -> Path:
        """Write an animated GIF (or MP4 with ffmpeg) of the paths (see ``plots.animate_paths``)."""
        from sgdlab.lab.landscape.plots import animate_paths

        return animate_paths(self.function, self.trajectories, path, **options)

    def save(self, path: str | Path) -> Path:
        """Write the paths and losses to an ``.npz`` (``path_<i>``, ``losses_<i>``, ``labels``)."""
        arrays: dict[str, np.ndarray] = {"labels": np.array([t.label for t in self.trajectories])}
        for i, t in enumerate(self.trajectories):
            arrays[f"path_{i}"] = t.path
            arrays[f"losses_{i}"] = t.losses
            if t.reference is not None:
                arrays[f"reference_path_{i}"] = t.reference.path
                arrays[f"reference_losses_{i}"] = t.reference.losses
        np.savez_compressed(path, **arrays)
        return Path(path)


def explore(
    function: str | Callable | Function2D = "rosenbrock",
    optimizers: Iterable[Any] = ("sgd:lr=1e-3", "momentum:lr=1e-3", "adam:lr=0.05"),
    *,
    steps: int = 500,
    start: Sequence[float] | None = None,
    noise: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    xlim: Sequence[float] | None = None,
    ylim: Sequence[float] | None = None,
) -> Landscape2D:
    """Run every optimizer on ``function`` from the same start; return the paths.

    ``function``: a name (:func:`function_names`), an expression in ``x`` and ``y`` or a callable
    ``f(x, y) -> Tensor``. ``optimizers``: spec strings (``"sgd:lr=0.1,momentum=0.9"``, any name
    of :func:`sgdlab.lab.specs.optimizer_names` or ``torch.<Class>``), ``OptimizerSpec``s, or
    factories ``params -> torch.optim.Optimizer``. ``noise``, ``batch_size`` and ``seed`` are
    those of :func:`run_trajectory`; ``xlim`` / ``ylim`` override the plotting window.
    """
    fn = get_function(function, xlim=xlim, ylim=ylim, start=start, seed=seed)
    trajectories = run_trajectories(
        fn, list(optimizers), steps=steps, noise=noise, batch_size=batch_size, seed=seed
    )
    return Landscape2D(fn, trajectories)
