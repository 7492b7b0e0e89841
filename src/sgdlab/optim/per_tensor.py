"""The reference execution of a rule: one eager call per tensor, written back in place.

A rule is pure: it returns new values. Writing them back in place keeps the parameters' identity
(hooks, DDP buckets and FSDP2 DTensors keep pointing at the same tensors) and the optimizer state
in torch.optim's layout. Used for ``foreach=False``, ``differentiable``, ``capturable``, complex
or sparse tensors, tensor subclasses (DTensor), mixed devices/dtypes, and any rule that cannot be
traced; the fast path (:mod:`sgdlab.optim.grouped`) is measured against it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from sgdlab.algorithms import RULES
from sgdlab.optim import torch_ops

Rule = Callable[..., tuple[Any, dict[str, Any]]]


# State entries that count steps. torch.optim stores them as 0-d tensors but, unless
# ``capturable``, reads them as Python numbers, which keeps bias corrections in double precision
# whatever the state dtype; rules see them the same way. The declared counters of every rule
# (``step``, which is also what a rule without a declaration may keep).
COUNTERS = tuple(sorted({"step", *(key for rule in RULES.values() for key in rule.counters)}))


def rule_state(state: dict[str, Any], *, capturable: bool) -> dict[str, Any]:
    """The state as a rule sees it: counters as numbers unless ``capturable``."""
    if capturable:
        return dict(state)
    return {
        key: value.item() if key in COUNTERS and isinstance(value, Tensor) else value
        for key, value in state.items()
    }


def write_back(state: dict[str, Any], new_state: dict[str, Any]) -> None:
    """Store a rule's new state in place; entries seen for the first time are copied in."""
    for key, new in new_state.items():
        old = state.get(key)
        if isinstance(old, Tensor):
            if isinstance(new, Tensor):
                old.copy_(new)
            else:
                old.fill_(new)
        else:
            # A fresh entry may alias an input (SGD's first momentum buffer is the gradient):
            # copy it so that zeroing the gradient later cannot change the state.
            state[key] = torch.clone(new).detach() if isinstance(new, Tensor) else new


def per_tensor(
    rule: Rule,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    *,
    capturable: bool = False,
    ops: Any = torch_ops,
) -> None:
    """The reference execution: one rule call per tensor, in eager PyTorch (``ops``)."""
    for param, grad, state in zip(params, grads, states):
        if torch.is_complex(param):
            _complex_step(rule, param, grad, state, hyperparameters, capturable)
            continue
        new_param, new_state = rule(
            param, grad, rule_state(state, capturable=capturable), ops=ops, **hyperparameters
        )
        param.copy_(new_param)
        write_back(state, new_state)


def _complex_step(rule, param, grad, state, hyperparameters, capturable) -> None:
    # Complex parameters are optimized as pairs of reals (torch.optim's convention), so Adam's
    # second moment is taken per real component, not as the complex square g*g.
    real_state = {
        key: torch.view_as_real(value) if isinstance(value, Tensor) and value.is_complex() else value
        for key, value in state.items()
    }
    new_param, new_state = rule(
        torch.view_as_real(param),
        torch.view_as_real(grad),
        rule_state(real_state, capturable=capturable),
        ops=torch_ops,
        **hyperparameters,
    )
    torch.view_as_real(param).copy_(new_param)
    write_back(real_state, new_state)
    for key, value in real_state.items():
        if isinstance(value, Tensor) and not isinstance(state.get(key), Tensor):
            state[key] = torch.view_as_complex(value)

