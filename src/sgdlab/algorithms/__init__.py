"""The math of every sgdlab optimizer, written once.

Each algorithm is a pure function ``rule(param, grad, state, *, ops, **hyperparameters) ->
(new_param, new_state)`` over array-like values. It uses Python's arithmetic operators plus the
functions of the ``ops`` contract (:mod:`sgdlab.algorithms.ops`: ``sqrt``, ``maximum``, ``sum``,
``matmul``, ...), so the same definition runs on torch tensors, on Keras tensors of any backend
and on NumPy arrays, each through a thin shim. Beside each function, its declaration
(:class:`sgdlab.algorithms.rule.Rule`: ``SGD``, ``ADAM``, ...) says once what the adapters need:
hyperparameter names per framework, state, validation, capabilities. The framework adapters
(``sgdlab.optim``, ``sgdlab.keras``) and the fast paths only decide *where and how* a rule is
executed; none of them contains optimizer math.

``validate_*`` functions check hyperparameters once, at the edge (constructors, CLI parsing).
"""

from sgdlab.algorithms.adam import ADAM, adam, validate_adam
from sgdlab.algorithms.muon import MUON, MUON_WITH_ADAMW, muon, newton_schulz, validate_muon
from sgdlab.algorithms.rule import Hyperparameter, Route, Rule, StateEntry
from sgdlab.algorithms.sgd import SGD, sgd, validate_sgd
from sgdlab.algorithms.sam import validate_sam
from sgdlab.algorithms.schedule_free import (
    SCHEDULE_FREE_ADAMW,
    SCHEDULE_FREE_SGD,
    schedule_free_adamw,
    schedule_free_schedule,
    schedule_free_sgd,
    validate_schedule_free_adamw,
    validate_schedule_free_sgd,
)
from sgdlab.algorithms.swats import SWATS, swats, validate_swats

#: Every declared rule, by name.
RULES = {rule.name: rule for rule in (SGD, ADAM, SCHEDULE_FREE_SGD, SCHEDULE_FREE_ADAMW, SWATS,
                                         MUON, MUON_WITH_ADAMW)}

__all__ = [
    "RULES",
    "Rule",
    "Hyperparameter",
    "StateEntry",
    "Route",
    "SGD",
    "ADAM",
    "SCHEDULE_FREE_SGD",
    "SCHEDULE_FREE_ADAMW",
    "SWATS",
    "MUON",
    "MUON_WITH_ADAMW",
    "muon",
    "newton_schulz",
    "validate_muon",
    "adam",
    "validate_adam",
    "sgd",
    "validate_sgd",
    "swats",
    "schedule_free_sgd",
    "schedule_free_adamw",
    "schedule_free_schedule",
    "validate_schedule_free_sgd",
    "validate_schedule_free_adamw",
    "validate_swats",
    "validate_sam",
]
