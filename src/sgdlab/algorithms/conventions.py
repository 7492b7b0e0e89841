"""Framework conventions as options of the one rule per algorithm.

PyTorch and Keras give the same names (learning rate, momentum, weight decay, epsilon) to slightly
different formulas. Both sgdlab adapters accept ``convention="torch"`` or ``convention="keras"``
and translate it here into the rules' keyword options, so a recipe moved from one framework to the
other keeps its trajectory. The formulas, side by side, are in docs/conventions.md.

=============  ==========================================  =========================================
               ``"torch"`` (torch.optim)                   ``"keras"`` (keras.optimizers)
=============  ==========================================  =========================================
SGD momentum   b = mu b + g;  theta -= lr b                v = mu v - lr g;  theta += v
weight decay   SGD/Adam: L2, g += wd theta;                always decoupled, applied before the
               AdamW: decoupled theta *= 1 - lr wd         step: theta -= lr wd theta
Adam epsilon   lr/(1-b1^t) m / (sqrt(v/(1-b2^t)) + eps)    lr sqrt(1-b2^t)/(1-b1^t) m/(sqrt(v)+eps)
=============  ==========================================  =========================================
"""

from __future__ import annotations

from typing import Any

CONVENTIONS = ("torch", "keras")


def validate_convention(convention: Any) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"Invalid convention: convention={convention!r} (expected 'torch' or 'keras')"
        )


def sgd_options(convention: str) -> dict[str, Any]:
    """Keyword options of ``algorithms.sgd`` that give SGD the named framework's formulas."""
    validate_convention(convention)
    if convention == "keras":
        return {"momentum_form": "velocity", "decoupled_weight_decay": True}
    return {}


def adam_options(convention: str) -> dict[str, Any]:
    """Keyword options of ``algorithms.adam`` that give Adam the named framework's formulas."""
    validate_convention(convention)
    if convention == "keras":
        return {"eps_hat": True, "decoupled_weight_decay": True}
    return {}
