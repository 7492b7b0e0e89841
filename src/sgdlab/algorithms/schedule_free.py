"""Schedule-free SGD and AdamW.

Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky 2024, "The Road Less Scheduled". Instead of
decaying the learning rate, schedule-free methods keep three sequences (Algorithm 1):

    y_t     = (1 - beta) z_t + beta x_t              the point where the gradient is evaluated
    z_{t+1} = z_t - gamma_t d_t                       a plain (SGD or Adam-normalized) step at y_t
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}     an online weighted average of the z's

and the model is *evaluated* at x (the average), but *trained* at y (an interpolation between the
average and the fast iterate, which plays the role of momentum). The averaging weight is

    c_{t+1} = w_{t+1} / sum_{i <= t+1} w_i,     w_t = t^r * (max_{i <= t} gamma_i)^weight_lr_power

so with r = 0 and a constant learning rate x is the uniform average of the z's; during a linear
warmup the larger later learning rates get larger weights (Section 4.3).

Only y is stored in the parameter (with z in the optimizer state), as the reference
implementation does: x never needs its own buffer because the three points are collinear,
x = (y - (1 - beta) z) / beta, and y_{t+1} follows from y_t and z_t in one update:

    y_{t+1} = lerp(y_t, z_t, c_{t+1}) + gamma_t (beta (1 - c_{t+1}) - 1) d_t

``schedule_free_eval_point`` and ``schedule_free_train_point`` move a parameter between y and x;
the adapters call them from ``optimizer.eval()`` / ``optimizer.train()``.

The direction d_t is the gradient plus L2 weight decay for SGD, and for AdamW the gradient
divided by the bias-corrected RMS (no first moment: the y/x interpolation is the momentum) plus
a decoupled decay lambda * y, evaluated at y and not divided by the RMS. These conventions,
the warmup (gamma_t = gamma (t + 1) / warmup_steps while t < warmup_steps) and the weights follow
the ``schedulefree`` package (Meta), which the tests use as the numerical reference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sgdlab.algorithms import scalar_ops
from sgdlab.algorithms.rule import COPY, Hyperparameter, Rule, StateEntry
from sgdlab.algorithms._checks import as_float, at_least, in_unit_interval, invalid

State = dict[str, Any]


class Schedule(NamedTuple):
    """One step's learning rate and averaging weight, plus the running sums they update."""

    lr: Any  # gamma_t, after warmup
    ckp1: Any  # c_{t+1}, the weight of the new z in the average x
    lr_max: Any
    weight_sum: Any


def schedule_free_schedule(
    k: Any,
    *,
    lr: Any,
    warmup_steps: int,
    r: float,
    weight_lr_power: float,
    lr_max: Any,
    weight_sum: Any,
    ops: Any = scalar_ops,
) -> Schedule:
    """The learning rate and averaging weight of step ``k + 1`` (``k`` steps already taken).

    Scalars in, scalars out: Python floats by default, tensors with ``ops=keras.ops``.
    """
    scheduled_lr = lr * ops.minimum((k + 1) / warmup_steps, 1.0) if warmup_steps > 0 else lr
    lr_max = ops.maximum(scheduled_lr, lr_max)
    weight = (k + 1) ** r * lr_max**weight_lr_power
    weight_sum = weight_sum + weight
    # All weights are zero only with lr = 0 (then weight = 0 too, and c = 0: x stays put).
    ckp1 = weight / ops.where(weight_sum > 0, weight_sum, 1.0)
    return Schedule(scheduled_lr, ckp1, lr_max, weight_sum)


def _lerp(start: Any, end: Any, weight: Any, ops: Any = None) -> Any:
    # torch.lerp's formula, branch included: for weight >= 0.5 it steps back from ``end``, which
    # is what makes c = 1 (the first step) land exactly on z. A traced weight (Keras inside a
    # compiled step) cannot be branched on in Python, so both forms are computed and one is kept.
    if isinstance(weight, (int, float)):
        if weight < 0.5:
            return start + weight * (end - start)
        return end - (end - start) * (1 - weight)
    return ops.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


def _interpolate(
    y: Any, z: Any, direction: Any, *, lr: Any, beta: float, ckp1: Any, ops: Any
) -> Any:
    """y_{t+1} from y_t, z_t and the step direction d_t (the module docstring's last equation)."""
    return _lerp(y, z, ckp1, ops) + (lr * (beta * (1 - ckp1) - 1)) * direction


def schedule_free_sgd(
    param: Any,
    grad: Any,
    state: State,
    *,
    lr: float,
    ckp1: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    ops: Any = None,
) -> tuple[Any, State]:
    """One schedule-free SGD step on y (``param``); ``lr`` and ``ckp1`` come from the schedule."""
    if weight_decay != 0:
        grad = grad + weight_decay * param  # L2 at y, where the gradient was taken
    z = state["z"]
    y = _interpolate(param, z, grad, lr=lr, beta=momentum, ckp1=ckp1, ops=ops)
    return y, {"z": z - lr * grad}


def schedule_free_adamw(
    param: Any,
    grad: Any,
    state: State,
    *,
    lr: float,
    ckp1: float,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    ops: Any,
) -> tuple[Any, State]:
    """One schedule-free AdamW step on y (``param``); ``step`` counts from 1 for the bias correction."""
    exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * (grad * grad)
    denom = ops.sqrt(exp_avg_sq / (1 - beta2**step)) + eps
    direction = grad / denom
    if weight_decay != 0:
        # Decoupled: the decay is taken at y and is not rescaled by the RMS denominator.
        direction = direction + weight_decay * param
    z = state["z"]
    y = _interpolate(param, z, direction, lr=lr, beta=beta1, ckp1=ckp1, ops=ops)
    return y, {"z": z - lr * direction, "exp_avg_sq": exp_avg_sq}


def schedule_free_eval_point(y: Any, z: Any, *, beta: float) -> Any:
    """x = (y - (1 - beta) z) / beta, the average at which the model is evaluated."""
    return _lerp(y, z, 1 - 1 / beta)


def schedule_free_train_point(x: Any, z: Any, *, beta: float) -> Any:
    """y = (1 - beta) z + beta x, the point at which gradients are taken."""
    return _lerp(x, z, 1 - beta)


def _validate_schedule(lr: Any, weight_decay: Any, warmup_steps: Any, r: Any, power: Any) -> None:
    at_least("lr", lr, 0.0, "learning rate")
    at_least("weight_decay", weight_decay, 0.0, "weight_decay value")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(
            f"Invalid warmup_steps: warmup_steps={warmup_steps!r} (expected an integer >= 0)"
        )
    as_float("r", r, "averaging power")
    at_least("weight_lr_power", power, 0.0, "weight_lr_power value")


def _open_unit_interval(name: str, value: Any, what: str) -> None:
    # beta = 0 would make x = (y - z) / 0 in eval(): the interpolation must be strict.
    if not 0 < as_float(name, value, what) < 1:
        raise invalid(
            f"Invalid {what}: {name}={value!r} (expected 0 < {name} < 1)",
            name=name, value=value, requirement="in (0, 1)",
        )


def validate_schedule_free_sgd(
    *,
    lr: Any,
    momentum: Any = 0.9,
    weight_decay: Any = 0.0,
    warmup_steps: Any = 0,
    r: Any = 0.0,
    weight_lr_power: Any = 2.0,
    **_: Any,
) -> None:
    """Raise ValueError naming the argument for any invalid schedule-free SGD hyperparameter."""
    _validate_schedule(lr, weight_decay, warmup_steps, r, weight_lr_power)
    _open_unit_interval("momentum", momentum, "momentum value")


def validate_schedule_free_adamw(
    *,
    lr: Any,
    betas: Any = (0.9, 0.999),
    eps: Any = 1e-8,
    weight_decay: Any = 0.0,
    warmup_steps: Any = 0,
    r: Any = 0.0,
    weight_lr_power: Any = 2.0,
    **_: Any,
) -> None:
    """Raise ValueError naming the argument for any invalid schedule-free AdamW hyperparameter."""
    _validate_schedule(lr, weight_decay, warmup_steps, r, weight_lr_power)
    at_least("eps", eps, 0.0, "epsilon value")
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))") from None
    _open_unit_interval("betas[0]", beta1, "beta parameter at index 0")
    in_unit_interval("betas[1]", beta2, "beta parameter at index 1")


# Declarations. ``lr`` is the schedule's (warmup included) and ``ckp1``, ``step`` come from the
# schedule too: the adapters compute them once per step (group-level hooks) and pass them on.
# z starts at the initial weights (x = y = z before the first step). No compact state: z is an
# iterate of the weights, not a moment, and rounding it is rounding the weights (8-bit z moved
# a small MLP's parameters as far from the float32 run as training itself moved them,
# tests/test_group_hooks.py's model, 6 steps).
_SCHEDULED = (
    Hyperparameter("lr", torch="scheduled_lr", keras=None),
    Hyperparameter("ckp1", torch=None, keras=None),
)

SCHEDULE_FREE_SGD = Rule(
    name="schedule_free_sgd",
    update=schedule_free_sgd,
    hyperparameters=(*_SCHEDULED, Hyperparameter("momentum"), Hyperparameter("weight_decay")),
    state=(StateEntry("z", COPY),),
    validate=validate_schedule_free_sgd,
    compact_state=False,
)

SCHEDULE_FREE_ADAMW = Rule(
    name="schedule_free_adamw",
    update=schedule_free_adamw,
    hyperparameters=(
        *_SCHEDULED,
        Hyperparameter("step", torch=None, keras=None),
        Hyperparameter("beta1", torch="betas[0]", keras="beta_1"),
        Hyperparameter("beta2", torch="betas[1]", keras="beta_2"),
        Hyperparameter("eps", keras="epsilon"),
        Hyperparameter("weight_decay"),
    ),
    state=(StateEntry("z", COPY), StateEntry("exp_avg_sq")),
    validate=validate_schedule_free_adamw,
    compact_state=False,
)
