"""Checks of the Keras classes that are Keras's own, not the algorithms'.

The ranges of the hyperparameters come from each rule's declaration (its validation, reworded
in Keras's style by :func:`sgdlab.keras.base.checked`). What remains here is where
``keras.optimizers`` is stricter than the math, or requires what the math does not, with
Keras's own message (then ``Received: name=value``), so that code and tests written against
Keras's messages keep working.
"""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> float:
    """``value`` as a float, NaN for what is not a number (NaN then fails every range check)."""
    try:
        return float(value)
    except (TypeError, ValueError):  # not a number, or a tensor of several elements
        return math.nan


def _refuse(requirement: str, name: str, value: Any) -> None:
    raise ValueError(f"{requirement} Received: {name}={value!r}")


def check_momentum(momentum: Any) -> float:
    """SGD's momentum, in [0, 1] (torch's SGD takes any momentum >= 0), with Keras's message."""
    number = _number(momentum)
    if not 0.0 <= number <= 1.0:
        _refuse("`momentum` must be a float between [0, 1].", "momentum", momentum)
    return number


def check_weight_decay(weight_decay: Any) -> None:
    """AdamW's weight decay, which keras.optimizers.AdamW requires (None is no decay elsewhere)."""
    if weight_decay is None:
        _refuse("Argument `weight_decay` must be a float.", "weight_decay", None)
