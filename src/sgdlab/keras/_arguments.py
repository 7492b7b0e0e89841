"""The checks of the Keras classes' arguments, once for every ``sgdlab.keras`` optimizer.

Messages follow Keras's own: where ``keras.optimizers`` refuses a value, sgdlab raises the same
exception with the same text (then ``Received: name=value``), so code and tests written against
Keras's messages keep working; where Keras accepts anything (a negative learning rate, a beta of
1), sgdlab refuses it in Keras's style. A learning-rate schedule or callable is Keras's to check,
and so is a learning rate of the wrong type (its base class raises its own message for it).
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


def check_learning_rate(learning_rate: Any) -> None:
    if isinstance(learning_rate, (int, float)) and not learning_rate >= 0:
        _refuse("Argument `learning_rate` must be a float >= 0.", "learning_rate", learning_rate)


def check_momentum(momentum: Any) -> float:
    """SGD's momentum, in [0, 1], with keras.optimizers.SGD's message."""
    number = _number(momentum)
    if not 0.0 <= number <= 1.0:
        _refuse("`momentum` must be a float between [0, 1].", "momentum", momentum)
    return number


def check_weight_decay(weight_decay: Any, *, required: bool = False) -> float | None:
    """None (no decay) unless ``required`` (AdamW, whose message is keras.optimizers.AdamW's)."""
    if weight_decay is None:
        if required:
            _refuse("Argument `weight_decay` must be a float.", "weight_decay", None)
        return None
    number = _number(weight_decay)
    if not number >= 0.0:
        _refuse("Argument `weight_decay` must be a float >= 0.", "weight_decay", weight_decay)
    return number


def check_betas(beta_1: Any, beta_2: Any, *, beta_1_may_be_zero: bool = True) -> None:
    """Decay rates of moving averages, in [0, 1); beta_1 in (0, 1) where the rule needs it > 0."""
    first = _number(beta_1)
    if beta_1_may_be_zero and not 0.0 <= first < 1.0:
        _refuse("Argument `beta_1` must be a float in [0, 1).", "beta_1", beta_1)
    if not beta_1_may_be_zero and not 0.0 < first < 1.0:
        _refuse("Argument `beta_1` must be a float in (0, 1).", "beta_1", beta_1)
    if not 0.0 <= _number(beta_2) < 1.0:
        _refuse("Argument `beta_2` must be a float in [0, 1).", "beta_2", beta_2)


def check_epsilon(epsilon: Any) -> None:
    if not _number(epsilon) >= 0.0:
        _refuse("Argument `epsilon` must be a float >= 0.", "epsilon", epsilon)
