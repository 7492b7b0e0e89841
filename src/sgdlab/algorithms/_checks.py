"""Hyperparameter checks shared by the validate_* functions.

Every message names the argument and the offending value; NaN never passes (comparisons with NaN
are false, so each check is written as "must satisfy" rather than "must not violate").
"""

from __future__ import annotations

import math
from typing import Any


def as_float(name: str, value: Any, what: str) -> float:
    """The float value of a hyperparameter (a number or a 1-element tensor)."""
    numel = getattr(value, "numel", None)
    if numel is not None:
        if numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got {numel()} elements")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {what}: {name}={value!r} is not a number") from None
    if math.isnan(number):
        raise ValueError(f"Invalid {what}: {name}={value!r} (NaN is not allowed)")
    return number


def at_least(name: str, value: Any, low: float, what: str) -> None:
    if not as_float(name, value, what) >= low:
        raise ValueError(f"Invalid {what}: {name}={_show(value)} (expected {name} >= {low:g})")


def in_unit_interval(name: str, value: Any, what: str) -> None:
    """0 <= value < 1, the domain of a decay rate (beta, momentum averaging)."""
    number = as_float(name, value, what)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"Invalid {what}: {name}={_show(value)} (expected 0 <= {name} < 1)")


def _show(value: Any) -> str:
    item = getattr(value, "item", None)
    return repr(item()) if item is not None else repr(value)
