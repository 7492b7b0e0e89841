"""The math of every sgdlab optimizer, written once.

Each algorithm is a pure function ``rule(param, grad, state, *, ops, **hyperparameters) ->
(new_param, new_state)`` over array-like values. It uses Python's arithmetic operators plus the
two functions it names from ``ops`` (``ops.sqrt``, ``ops.maximum``), so the same definition runs on
torch tensors (``ops=torch``), on Keras tensors of any backend (``ops=keras.ops``) and on NumPy
arrays (``ops=numpy``). The framework adapters (``sgdlab.optim``, ``sgdlab.keras``) and the fast
paths only decide *where and how* a rule is executed; none of them contains optimizer math.

``validate_*`` functions check hyperparameters once, at the edge (constructors, CLI parsing).
"""

from sgdlab.algorithms.adam import adam, adam_init, validate_adam
from sgdlab.algorithms.sgd import sgd, sgd_init, validate_sgd
from sgdlab.algorithms.sam import validate_sam
from sgdlab.algorithms.schedule_free import (
    schedule_free_adamw,
    schedule_free_schedule,
    schedule_free_sgd,
    validate_schedule_free_adamw,
    validate_schedule_free_sgd,
)
from sgdlab.algorithms.swats import validate_swats

__all__ = [
    "adam",
    "adam_init",
    "validate_adam",
    "sgd",
    "sgd_init",
    "validate_sgd",
    "schedule_free_sgd",
    "schedule_free_adamw",
    "schedule_free_schedule",
    "validate_schedule_free_sgd",
    "validate_schedule_free_adamw",
    "validate_swats",
    "validate_sam",
]
