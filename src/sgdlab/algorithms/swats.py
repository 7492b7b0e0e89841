"""SWATS: start with Adam, switch to SGD with momentum once Adam's implied learning rate settles.

Keskar & Socher 2017, "Improving Generalization Performance by Switching from Adam to SGD",
Algorithm 1. SWATS is not a new update rule but a composition of two existing ones, so it reuses
:func:`sgdlab.algorithms.adam.adam` and :func:`sgdlab.algorithms.sgd.sgd` unchanged and adds only
the switching logic below. In the Adam phase, after each Adam step p_k (the change Adam made to
the parameters) with gradient g_k, the SGD learning rate that would have moved as far along
-g_k as Adam's step did, measured by the projection of p_k on g_k, is

    gamma_k = p_k^T p_k / (-p_k^T g_k)                               (only when p_k^T g_k != 0)
    lambda_k = beta2 lambda_{k-1} + (1 - beta2) gamma_k              an exponential average
    Lambda_k = lambda_k / (1 - beta2^k)                              its bias-corrected value

and the method switches when the estimate has converged, |Lambda_k - gamma_k| < epsilon, k > 1.
From then on it runs SGD with heavy-ball momentum beta1, v_k = beta1 v_{k-1} + g_k starting from
v = 0, and x_k = x_{k-1} - (1 - beta1) Lambda v_k: that is exactly ``sgd`` with momentum beta1
and learning rate (1 - beta1) Lambda, whose first buffer is the gradient itself.

Where the dot products are taken. Algorithm 1 treats all parameters as one vector; the authors
note that the estimate can be made per layer instead. sgdlab takes them over a *param group*:
with the usual single group this is Algorithm 1 as printed, and a user who wants the per-layer
variant gives each layer its own group. Groups therefore switch independently, each with its own
switch step and SGD learning rate.

Departures from Algorithm 1, all small and deliberate:
- the Adam step is sgdlab's (PyTorch's) Adam, with eps added to sqrt(v_k / (1 - beta2^k)) rather
  than to sqrt(v_k); the difference is eps * (1 - sqrt(1 - beta2^k)) in the denominator;
- the switch also requires Lambda_k > 0: a negative estimate (Adam's step pointing uphill on
  average, possible with noisy gradients) can never be a learning rate;
- ``switch_at`` (for experiments) replaces the criterion by a fixed number of Adam steps.
With L2 weight decay, g_k is the gradient including the decay term, the one both phases follow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sgdlab.algorithms import scalar_ops
from sgdlab.algorithms._checks import as_float, at_least
from sgdlab.algorithms.adam import ADAM, adam, validate_adam
from sgdlab.algorithms.rule import COUNTER, FROM_GRADIENT, Hyperparameter, Rule, StateEntry
from sgdlab.algorithms.sgd import sgd


def swats(
    param: Any,
    grad: Any,
    state: dict[str, Any],
    *,
    lr: Any,
    beta1: Any = 0.9,
    beta2: Any = 0.999,
    eps: float = 1e-9,
    weight_decay: Any = 0.0,
    sgd_lr: Any = None,
    switched: Any = False,
    ops: Any,
) -> tuple[Any, dict[str, Any]]:
    """One SWATS step: Adam before the switch, then ``sgd`` with momentum beta1 at ``sgd_lr``.

    ``switched`` is a bool where the phase is known in Python (the PyTorch adapter: only the
    current phase runs, and the state holds only its entries), or a traced boolean (Keras,
    inside a compiled step: both phases run and each entry keeps the current phase's value;
    the SGD buffer is zero until the switch, and beta1 * 0 + g = g is sgd's first buffer).
    """
    adam_state = {key: state[key] for key in ("step", "exp_avg", "exp_avg_sq") if key in state}
    sgd_state = {"momentum_buffer": state.get("momentum_buffer")}
    if switched is True:
        return sgd(param, grad, sgd_state, lr=sgd_lr, momentum=beta1, weight_decay=weight_decay,
                   ops=ops)
    new_param, new_state = adam(param, grad, adam_state, lr=lr, beta1=beta1, beta2=beta2,
                                eps=eps, weight_decay=weight_decay, ops=ops)
    if switched is False:
        return new_param, new_state
    sgd_param, sgd_new = sgd(param, grad, sgd_state, lr=sgd_lr, momentum=beta1,
                             weight_decay=weight_decay, ops=ops)
    kept = {key: ops.where(switched, adam_state[key], new_state[key])
            for key in ("exp_avg", "exp_avg_sq")}
    kept["momentum_buffer"] = ops.where(switched, sgd_new["momentum_buffer"],
                                        sgd_state["momentum_buffer"])
    return ops.where(switched, sgd_param, new_param), kept


def projection_terms(old_param: Any, new_param: Any, grad: Any, *, weight_decay: Any = 0.0,
                     ops: Any) -> tuple[Any, Any]:
    """This tensor's share of p^T p and p^T g, with p = new_param - old_param (Adam's step) and
    g the gradient Adam followed (with the L2 term)."""
    if weight_decay != 0:
        grad = grad + weight_decay * old_param
    p = new_param - old_param
    return ops.sum(p * p), ops.sum(p * grad)


class Estimate(NamedTuple):
    lr_estimate: Any  # lambda_k, the running (not bias-corrected) average
    gamma: Any  # gamma_k (meaningless where not has_estimate)
    has_estimate: Any  # p_k^T g_k != 0: this step gave an estimate


def update_lr_estimate(
    lr_estimate: Any, step_sq: Any, step_dot_grad: Any, *, beta2: float, ops: Any = scalar_ops
) -> Estimate:
    """lambda_k from lambda_{k-1} and the group's p_k^T p_k and p_k^T g_k.

    Scalars in, scalars out: Python floats by default, tensors with ``ops=keras.ops``.
    """
    has_estimate = step_dot_grad != 0
    gamma = step_sq / ops.where(has_estimate, -step_dot_grad, 1.0)
    averaged = beta2 * lr_estimate + (1 - beta2) * gamma
    return Estimate(ops.where(has_estimate, averaged, lr_estimate), gamma, has_estimate)


def corrected_lr_estimate(lr_estimate: Any, *, beta2: float, step: Any) -> Any:
    """Lambda_k = lambda_k / (1 - beta2^k)."""
    return lr_estimate / (1 - beta2**step)


def should_switch(estimate: Estimate, *, beta2: float, step: Any, tolerance: float) -> Any:
    """The paper's criterion, plus Lambda_k > 0 (see the module docstring)."""
    corrected = corrected_lr_estimate(estimate.lr_estimate, beta2=beta2, step=step)
    return (
        estimate.has_estimate
        & (step > 1)
        & (corrected > 0)
        & (abs(corrected - estimate.gamma) < tolerance)
    )


def sgd_learning_rate(lr_estimate: Any, *, beta1: float, beta2: float, step: Any) -> Any:
    """The ``lr`` of ``sgd`` (momentum beta1) equal to Algorithm 1's step (1 - beta1) Lambda_k."""
    return (1 - beta1) * corrected_lr_estimate(lr_estimate, beta2=beta2, step=step)


def validate_swats(
    *,
    lr: Any,
    betas: Any = (0.9, 0.999),
    eps: Any = 1e-9,
    weight_decay: Any = 0.0,
    switch_tol: Any = 1e-9,
    switch_at: Any = None,
    **_: Any,
) -> None:
    """Raise ValueError naming the argument for any invalid SWATS hyperparameter."""
    validate_adam(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    at_least("switch_tol", switch_tol, 0.0, "switch tolerance")
    as_float("switch_tol", switch_tol, "switch tolerance")
    if switch_at is not None and (
        isinstance(switch_at, bool) or not isinstance(switch_at, int) or switch_at < 1
    ):
        raise ValueError(
            f"Invalid switch_at: switch_at={switch_at!r} "
            "(expected None or an integer >= 1: the number of Adam steps before switching)"
        )


def _in_adam_phase(h: Any) -> bool:
    return h.get("sgd_lr") is None


# The dot products of the projection run over a whole param group (Keras: all variables), so
# the rule is not elementwise: it runs tensor by tensor, and its state stays in float32.
SWATS = Rule(
    name="swats",
    update=swats,
    hyperparameters=(
        # Adam's, under Adam's names (L2 weight decay only: no decoupled decay, no AMSGrad)
        *(h for h in ADAM.hyperparameters
          if h.name in ("lr", "beta1", "beta2", "eps", "weight_decay")),
        Hyperparameter("sgd_lr", keras=None),  # set at the switch
        Hyperparameter("switched", torch=None, keras=None),  # the phase, known each step
    ),
    state=(
        StateEntry("step", COUNTER, when=_in_adam_phase),
        StateEntry("exp_avg", keras="momentum", when=_in_adam_phase),
        StateEntry("exp_avg_sq", keras="velocity", when=_in_adam_phase),
        StateEntry("momentum_buffer", FROM_GRADIENT, keras="sgd_momentum", keras_group=1),
    ),
    validate=validate_swats,
    elementwise=False,
    compact_state=False,
)
