"""Two-dimensional test functions with known minima, for watching optimizers move.

Each :class:`Function2D` is an elementwise ``f(x, y)`` over torch tensors (so it is differentiable
and evaluates a whole grid at once), a plotting window, a default start point and the points worth
marking: global minima where they are known, and saddle points for the saddles.
:func:`get_function` resolves a name from :data:`FUNCTIONS`, an expression in ``x`` and ``y``
(parsed safely, see :mod:`sgdlab.lab.landscape.expression`) or a Python callable.

:class:`LeastSquares2D` is the one finite-sum problem: ``(1/2n) * sum_i (a_i . w - b_i)^2`` over
``n`` data points, whose mini-batch gradients carry real sampling noise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from sgdlab.lab.landscape.expression import compile_expression

__all__ = [
    "FUNCTIONS",
    "Function2D",
    "LeastSquares2D",
    "UnknownFunctionError",
    "function_names",
    "get_function",
]

Point = tuple[float, float]


class UnknownFunctionError(ValueError):
    """A function name that is not in :data:`FUNCTIONS` (the message lists the choices)."""


@dataclass(frozen=True, eq=False)
class Function2D:
    """A scalar function of two variables, with what is known about it.

    ``f`` maps two tensors of the same shape to a tensor of that shape, elementwise.
    ``minima`` are the known global minimizers (empty when unknown or unbounded below);
    ``saddles`` are stationary points that are not minima, worth marking. ``log_scale`` says
    whether contour levels are log-spaced in ``f - min f`` (sensible for functions bounded below)
    or linear around 0; ``None`` decides from the grid: log-spaced when the lowest grid value lies
    inside the window rather than on its edge.
    """

    name: str
    f: Callable[[Tensor, Tensor], Tensor]
    xlim: Point
    ylim: Point
    start: Point
    minima: tuple[Point, ...] = ()
    saddles: tuple[Point, ...] = ()
    min_value: float | None = None
    log_scale: bool | None = True
    description: str = ""
    formula: str = ""

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.f(x, y)

    def value(self, xy: Tensor) -> Tensor:
        """``f`` at a point given as a tensor of shape ``(2,)`` (or ``(..., 2)``)."""
        return self.f(xy[..., 0], xy[..., 1])

    def gradient(self, point: Sequence[float]) -> np.ndarray:
        """The exact gradient at ``point`` (float64, by autograd)."""
        xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(self.value(xy), xy)
        return grad.numpy()

    def grid(self, n: int = 200, xlim: Point | None = None, ylim: Point | None = None):
        """``(X, Y, Z)``: ``f`` on an ``n`` x ``n`` grid over the window, as float64 numpy arrays."""
        xlim, ylim = xlim or self.xlim, ylim or self.ylim
        xs = torch.linspace(xlim[0], xlim[1], n, dtype=torch.float64)
        ys = torch.linspace(ylim[0], ylim[1], n, dtype=torch.float64)
        X, Y = torch.meshgrid(xs, ys, indexing="xy")
        with torch.no_grad():
            Z = self.f(X, Y)
        return X.numpy(), Y.numpy(), Z.numpy()

    # Finite-sum problems override these two; for a plain function the "data" is a single term.
    @property
    def n_samples(self) -> int:
        return 1

    def batch_value(self, xy: Tensor, indices: Tensor | None) -> Tensor:
        """The loss on a mini-batch of data points (the full function for plain functions)."""
        return self.value(xy)


@dataclass(frozen=True, eq=False)
class LeastSquares2D(Function2D):
    """``f(w) = (1/2n) * sum_i (a_i . w - b_i)^2`` with ``w = (x, y)``: a finite sum with real data.

    A mini-batch gradient averages over a random subset of the ``n`` terms, so SGD on it shows
    the genuine sampling noise of mini-batch training; the full-batch minimum is the ordinary
    least-squares solution.
    """

    A: Tensor = field(default=None, repr=False)  # (n, 2)
    b: Tensor = field(default=None, repr=False)  # (n,)

    @property
    def n_samples(self) -> int:
        return int(self.A.shape[0])

    def batch_value(self, xy: Tensor, indices: Tensor | None) -> Tensor:
        A, b = (self.A, self.b) if indices is None else (self.A[indices], self.b[indices])
        residual = A.to(xy.dtype) @ xy - b.to(xy.dtype)
        return 0.5 * (residual**2).mean()


def least_squares(n: int = 64, seed: int = 0, condition: float = 10.0) -> LeastSquares2D:
    """A random 2-D least-squares problem with ``n`` data points and a moderately elongated bowl."""
    generator = torch.Generator().manual_seed(seed)
    # Features with different scales (and some correlation) make the bowl elongated and tilted.
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.0], [0.6, 1.0 / math.sqrt(condition)]], dtype=torch.float64)
    A = z @ mix.T
    w_true = torch.tensor([1.0, -1.0], dtype=torch.float64)
    b = A @ w_true + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
    w_star = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    residual = A @ w_star - b
    f_star = float(0.5 * (residual**2).mean())
    A_, b_ = A, b

    def f(x: Tensor, y: Tensor) -> Tensor:
        # Expanded quadratic form, so a whole grid evaluates without looping over data points.
        H = (A_.T @ A_) / n
        g = (A_.T @ b_) / n
        c = 0.5 * float((b_**2).mean())
        H, g = H.to(x.dtype), g.to(x.dtype)
        return 0.5 * (H[0, 0] * x * x + 2 * H[0, 1] * x * y + H[1, 1] * y * y) - g[0] * x - g[1] * y + c

    wx, wy = float(w_star[0]), float(w_star[1])
    return LeastSquares2D(
        name="least-squares",
        f=f,
        xlim=(wx - 3.0, wx + 3.0),
        ylim=(wy - 3.0, wy + 3.0),
        start=(wx - 2.5, wy + 2.5),
        minima=((wx, wy),),
        min_value=f_star,
        description=f"finite-sum least squares, n={n} data points (mini-batch noise is real)",
        formula=r"$\frac{1}{2n}\sum_i (a_i^\top w - b_i)^2$",
        A=A,
        b=b,
    )


# --- the catalogue ----------------------------------------------------------------------------

_ROT = 1.0 / math.sqrt(2.0)


def _quadratic(x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (x**2 + 2.0 * y**2)


def _ill_quadratic(x: Tensor, y: Tensor) -> Tensor:
    # Eigenvalues 1 and 25 along the diagonals: rotated, so per-coordinate scaling (Adam) gets
    # no free preconditioning from the axes.
    u, v = _ROT * (x + y), _ROT * (x - y)
    return 0.5 * (u**2 + 25.0 * v**2)


def _ravine(x: Tensor, y: Tensor) -> Tensor:
    # A long, almost flat valley floor along x with steep walls in y (curvatures 0.02 and 8).
    return 0.01 * x**2 + 4.0 * y**2


def _rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _himmelblau(x: Tensor, y: Tensor) -> Tensor:
    return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2


def _beale(x: Tensor, y: Tensor) -> Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rastrigin(x: Tensor, y: Tensor) -> Tensor:
    two_pi = 2.0 * math.pi
    return 20.0 + x**2 - 10.0 * torch.cos(two_pi * x) + y**2 - 10.0 * torch.cos(two_pi * y)


def _saddle(x: Tensor, y: Tensor) -> Tensor:
    return x**2 - y**2


def _monkey_saddle(x: Tensor, y: Tensor) -> Tensor:
    return x**3 - 3.0 * x * y**2


FUNCTIONS: dict[str, Function2D] = {
    fn.name: fn
    for fn in [
        Function2D(
            "quadratic", _quadratic, (-2.0, 2.0), (-2.0, 2.0), (-1.8, 1.6), ((0.0, 0.0),),
            min_value=0.0, description="well-conditioned quadratic bowl (condition number 2)",
            formula=r"$\frac{1}{2}(x^2 + 2y^2)$",
        ),
        Function2D(
            "ill-quadratic", _ill_quadratic, (-2.0, 2.0), (-2.0, 2.0), (-1.5, -1.0), ((0.0, 0.0),),
            min_value=0.0,
            description="ill-conditioned quadratic, rotated 45 degrees (condition number 25)",
            formula=r"$\frac{1}{2}(u^2 + 25v^2),\ u,v = (x \pm y)/\sqrt{2}$",
        ),
        Function2D(
            "ravine", _ravine, (-10.0, 10.0), (-2.0, 2.0), (-9.0, 1.5), ((0.0, 0.0),),
            min_value=0.0, description="narrow ravine: flat floor along x, steep walls in y",
            formula=r"$0.01x^2 + 4y^2$",
        ),
        Function2D(
            "rosenbrock", _rosenbrock, (-2.0, 2.0), (-1.0, 3.0), (-1.5, 2.0), ((1.0, 1.0),),
            min_value=0.0, description="Rosenbrock's curved banana valley",
            formula=r"$(1-x)^2 + 100(y-x^2)^2$",
        ),
        Function2D(
            "himmelblau", _himmelblau, (-5.0, 5.0), (-5.0, 5.0), (0.0, 0.0),
            (
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.283185991286170),
                (3.584428340330492, -1.848126526964404),
            ),
            min_value=0.0, description="Himmelblau's function: four global minima",
            formula=r"$(x^2+y-11)^2 + (x+y^2-7)^2$",
        ),
        Function2D(
            "beale", _beale, (-4.5, 4.5), (-4.5, 4.5), (1.0, 1.4), ((3.0, 0.5),),
            min_value=0.0, description="Beale's function: flat plateaus and steep walls",
            formula=r"$(1.5-x+xy)^2 + (2.25-x+xy^2)^2 + (2.625-x+xy^3)^2$",
        ),
        Function2D(
            "rastrigin", _rastrigin, (-5.12, 5.12), (-5.12, 5.12), (-3.3, 4.2), ((0.0, 0.0),),
            min_value=0.0, description="Rastrigin: a bowl covered in local minima",
            formula=r"$20 + \sum (x_i^2 - 10\cos 2\pi x_i)$",
        ),
        Function2D(
            "saddle", _saddle, (-2.0, 2.0), (-2.0, 2.0), (-1.8, 0.01), (), saddles=((0.0, 0.0),),
            log_scale=False, description="saddle point at the origin, unbounded below along y",
            formula=r"$x^2 - y^2$",
        ),
        Function2D(
            "monkey-saddle", _monkey_saddle, (-2.0, 2.0), (-2.0, 2.0), (1.5, 0.05), (),
            saddles=((0.0, 0.0),), log_scale=False,
            description="monkey saddle: a flat, degenerate saddle at the origin (three valleys)",
            formula=r"$x^3 - 3xy^2$",
        ),
    ]
}


def function_names() -> list[str]:
    """Names :func:`get_function` accepts (``least-squares`` is built on request)."""
    return [*FUNCTIONS, "least-squares"]


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def get_function(
    spec: str | Callable[[Tensor, Tensor], Tensor] | Function2D,
    *,
    xlim: Point | None = None,
    ylim: Point | None = None,
    start: Point | None = None,
    minima: Sequence[Point] | None = None,
    seed: int = 0,
) -> Function2D:
    """Resolve ``spec`` to a :class:`Function2D`.

    ``spec`` is a name from :func:`function_names`, an expression in ``x`` and ``y`` such as
    ``"x**2 + 10*y**2"``, a callable ``f(x, y) -> Tensor`` working elementwise on tensors, or a
    ``Function2D``. The keyword arguments override the window, the start point and the known
    minima (for expressions and callables the defaults are the square [-3, 3]^2, start (-2.5, 2.5)
    and no known minima). ``seed`` draws the data of ``least-squares``.
    """
    if isinstance(spec, Function2D):
        fn = spec
    elif callable(spec):
        name = getattr(spec, "__name__", "function")
        fn = Function2D(name if name != "<lambda>" else "function", spec, (-3.0, 3.0), (-3.0, 3.0),
                        (-2.5, 2.5), log_scale=None, description="user function")
    elif isinstance(spec, str):
        key = spec.strip().lower().replace("_", "-")
        if key in FUNCTIONS:
            fn = FUNCTIONS[key]
        elif key in ("least-squares", "lstsq"):
            fn = least_squares(seed=seed)
        elif _NAME.match(spec.strip()) and spec.strip() not in ("x", "y"):
            raise UnknownFunctionError(
                f"unknown function {spec!r}; choose one of: {', '.join(function_names())} "
                "(or give an expression in x and y, e.g. 'x**2 + 10*y**2')"
            )
        else:
            f = compile_expression(spec)
            fn = Function2D(spec.strip(), f, (-3.0, 3.0), (-3.0, 3.0), (-2.5, 2.5),
                            log_scale=None, description="user expression",
                            formula=spec.strip())
            _check_evaluates(fn)
    else:
        raise TypeError(f"function must be a name, an expression or a callable, got {spec!r}")
    changes = {}
    if xlim is not None:
        changes["xlim"] = _limits("xlim", xlim)
    if ylim is not None:
        changes["ylim"] = _limits("ylim", ylim)
    if start is not None:
        changes["start"] = (float(start[0]), float(start[1]))
    if minima is not None:
        changes["minima"] = tuple((float(a), float(b)) for a, b in minima)
    if changes:
        fn = _replace(fn, **changes)
    return fn


def _replace(fn: Function2D, **changes) -> Function2D:
    from dataclasses import replace

    return replace(fn, **changes)


def _limits(name: str, value: Sequence[float]) -> Point:
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be two finite numbers low < high, got {tuple(value)!r}")
    return lo, hi


def _check_evaluates(fn: Function2D) -> None:
    x = torch.zeros(3, dtype=torch.float64)
    try:
        out = fn(x, x)
    except Exception as error:  # noqa: BLE001 - report any evaluation failure as bad input
        raise ValueError(f"expression {fn.name!r} cannot be evaluated: {error}") from None
    if not isinstance(out, Tensor) or out.shape != x.shape:
        raise ValueError(f"expression {fn.name!r} must give one number per point (x, y)")

