"""Hyperparameter checks shared by the validate_* functions.

Messages start with torch.optim's own wording (``Invalid learning rate: -0.1``), so that code and
tests written against torch.optim's errors match sgdlab's, and then name the argument and what it
must satisfy. NaN never passes (comparisons with NaN are false, so each check is written as "must
satisfy" rather than "must not violate"); a value that is not a number at all (``lr="1e-3"``) is a
TypeError, the exception torch.optim raises when it compares it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Invalid(NamedTuple):
    """What an invalid-hyperparameter error is about, for a face to word it its own way (the
    Keras face says ``Argument `beta_1` must be a float in [0, 1).``)."""

    name: str  # torch's name (``betas[0]``)
    value: Any
    requirement: str  # ">= 0", "in [0, 1)", "in (0, 1)"


def invalid(message: str, *, name: str, value: Any, requirement: str) -> ValueError:
    """A ValueError (exactly: torch.optim raises exactly that) with torch.optim's message, and
    its subject as ``error.invalid``."""
    error = ValueError(message)
    error.invalid = Invalid(name, value, requirement)  # type: ignore[attr-defined]
    return error


def as_float(name: str, value: Any, what: str) -> float:
    """The float value of a hyperparameter (a number or a 1-element tensor of any shape)."""
    numel = getattr(value, "numel", None)
    if numel is not None:
        if numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element (got {numel()} elements)")
        value = value.item()
    # Strings have no __float__: float("1e-3") would parse one, torch.optim refuses it.
    if not hasattr(type(value), "__float__"):
        raise TypeError(
            f"Invalid {what}: {value!r} ({name}={value!r} is a {type(value).__name__}; expected "
            "a number or a 1-element Tensor)"
        )
    number = float(value)
    if math.isnan(number):
        raise invalid(
            f"Invalid {what}: {_show(value)} ({name}=nan, NaN is not allowed)",
            name=name, value=value, requirement="a number, not NaN",
        )
    return number


def at_least(name: str, value: Any, low: float, what: str) -> None:
    if not as_float(name, value, what) >= low:
        raise invalid(
            f"Invalid {what}: {_show(value)} ({name}={_plain(value)}, expected {name} >= {low:g})",
            name=name, value=value, requirement=f">= {low:g}",
        )


def in_unit_interval(name: str, value: Any, what: str) -> None:
    """0 <= value < 1, the domain of a decay rate (beta, momentum averaging)."""
    number = as_float(name, value, what)
    if not 0.0 <= number < 1.0:
        raise invalid(
            f"Invalid {what}: {_show(value)} ({name}={_plain(value)}, expected 0 <= {name} < 1)",
            name=name, value=value, requirement="in [0, 1)",
        )


def is_tensor(value: Any) -> bool:
    return getattr(value, "numel", None) is not None


def tensor_needs_capturable(name: str, value: Any, foreach: Any, capturable: Any) -> None:
    """torch.optim's for-each kernels take a tensor hyperparameter only when capturable."""
    if foreach and not capturable and is_tensor(value):
        raise ValueError(
            f"{name} as a Tensor is not supported for capturable=False and foreach=True"
        )


def _show(value: Any) -> str:
    # As torch.optim formats the value (f"{lr}"): -0.1, and a 0-d tensor as its item.
    return format(value)


def _plain(value: Any) -> str:
    item = getattr(value, "item", None)
    return repr(item()) if item is not None else repr(value)
