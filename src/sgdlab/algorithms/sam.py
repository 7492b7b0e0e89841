"""Sharpness-aware minimization (SAM) and its adaptive variant (ASAM): the ascent step.

SAM (Foret, Kleiner, Mobahi & Neyshabur 2021, "Sharpness-Aware Minimization for Efficiently
Improving Generalization", eq. 2 and Algorithm 1 with p = 2) minimizes the worst loss in an
L2 ball of radius rho around the weights. To first order the worst point is w + e(w) with

    e(w) = rho * g / ||g||_2,            g = grad L(w)

and the update is any base optimizer's step taken with the gradient at w + e(w), applied to w.

ASAM (Kwon, Kim, Park & Choi 2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-
Invariant Learning of Deep Neural Networks", eq. 8-9 and Algorithm 1) measures the ball in the
weights' own scale, T_w = |w| + eta elementwise, which makes sharpness invariant to rescaling
the weights:

    e(w) = rho * T_w^2 g / ||T_w g||_2

The norm runs over *all* parameters being optimized (one ball for the whole model), so it is
computed by the adapter from ``scaled_gradient`` of every tensor; ``perturbation`` then gives each
tensor's share of e. A tiny constant keeps a zero gradient from dividing by zero.
"""

from __future__ import annotations

from typing import Any

from sgdlab.algorithms._checks import at_least

NORM_FLOOR = 1e-12  # added to ||T g||: the perturbation of a zero gradient is zero, not NaN


def scaled_gradient(param: Any, grad: Any, *, adaptive: bool, eta: float, ops: Any) -> Any:
    """T_w g: the gradient itself for SAM, (|w| + eta) g for ASAM."""
    if not adaptive:
        return grad
    return (ops.abs(param) + eta) * grad


def perturbation(
    param: Any, grad: Any, *, rho: float, grad_norm: Any, adaptive: bool, eta: float, ops: Any
) -> Any:
    """This tensor's part of e(w), given ``grad_norm`` = ||T_w g|| over all parameters."""
    scale = rho / (grad_norm + NORM_FLOOR)
    if not adaptive:
        return scale * grad
    t = ops.abs(param) + eta
    return scale * (t * t * grad)


def validate_sam(*, rho: Any = 0.05, eta: Any = 0.01, **_: Any) -> None:
    """Raise ValueError naming the argument for an invalid neighbourhood size or ASAM offset."""
    at_least("rho", rho, 0.0, "neighbourhood size")
    at_least("eta", eta, 0.0, "ASAM offset")
