"""``ops`` for plain Python numbers.

Some formulas run once per step on a few scalars rather than on every tensor: schedule-free's
warmup and averaging weight, SWATS's learning-rate estimate and switching test. They are written
with ``ops.maximum`` / ``ops.minimum`` / ``ops.where`` so that the same function runs on Python
floats here (the PyTorch adapters keep these numbers in the param groups, as Python floats, like
torch.optim's ``lr``) and on backend tensors with ``ops=keras.ops`` (the Keras adapters keep them
in optimizer variables, inside compiled train steps).
"""

from __future__ import annotations

from typing import Any


def maximum(a: Any, b: Any) -> Any:
    return a if a >= b else b


def minimum(a: Any, b: Any) -> Any:
    return a if a <= b else b


def where(condition: Any, x: Any, y: Any) -> Any:
    return x if condition else y
