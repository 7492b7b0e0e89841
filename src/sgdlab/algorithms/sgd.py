"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

With momentum mu, dampening tau, L2 coefficient lambda and learning rate gamma (PyTorch's
formulation, Sutskever et al. 2013, "On the importance of initialization and momentum in deep
learning", eq. 1-2 rewritten with the learning rate outside the buffer):

    g_t = grad f(theta_{t-1})            (negated when maximizing)
    g_t = g_t + lambda * theta_{t-1}     (L2 penalty; or decoupled, below)
    b_t = g_t                            at t = 1
    b_t = mu * b_{t-1} + (1 - tau) g_t   after
    d_t = g_t + mu * b_t                 Nesterov;  d_t = b_t  otherwise
    theta_t = theta_{t-1} - gamma d_t

Decoupled weight decay (SGDW, Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization",
Algorithm 1 line 12) shrinks the parameter directly, theta <- theta (1 - gamma lambda), instead
of adding lambda theta to the gradient, so the decay is not amplified by the momentum buffer.

Velocity form (``momentum_form="velocity"``; Sutskever et al. 2013 eq. 1 and 3-4, the form of
Keras and TensorFlow): the learning rate enters the velocity when the gradient is added to it,

    v_t = mu * v_{t-1} - gamma_t g_t      (v_0 = 0)
    theta_t = theta_{t-1} + v_t                         plain momentum
    theta_t = theta_{t-1} + mu * v_t - gamma_t g_t      Nesterov

With a constant learning rate v_t = -gamma b_t and both forms give the same trajectory; when the
learning rate changes, the buffer form rescales all past gradients by the new rate while the
velocity form keeps each gradient scaled by the rate of its own step. docs/conventions.md
compares the two with numbers.

Full-batch gradient descent is this rule with momentum 0 and the gradient of the whole data set.
"""

from __future__ import annotations

from typing import Any

from sgdlab.algorithms._checks import at_least
from sgdlab.algorithms.conventions import sgd_options
from sgdlab.algorithms.decay import decay
from sgdlab.algorithms.fused import fma
from sgdlab.algorithms.rule import FROM_GRADIENT, Hyperparameter, Rule, StateEntry

State = dict[str, Any]


def sgd(
    param: Any,
    grad: Any,
    state: State,
    *,
    lr: Any,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: Any = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    momentum_form: str = "buffer",
    ops: Any = None,
) -> tuple[Any, State]:
    """One SGD step; returns the new parameter and state without modifying the inputs.

    ``momentum_form="buffer"`` (PyTorch) keeps ``state["momentum_buffer"]``; ``"velocity"`` (Keras)
    keeps ``state["velocity"]``, which has the learning rate already applied.
    """
    param, grad = decay(param, grad, lr=lr, weight_decay=weight_decay,
                        decoupled=decoupled_weight_decay, maximize=maximize, ops=ops)
    new_state: State = {}
    if momentum != 0 and momentum_form == "velocity":
        velocity = state.get("velocity")
        velocity = -lr * grad if velocity is None else momentum * velocity - lr * grad
        new_state["velocity"] = velocity
        step = momentum * velocity - lr * grad if nesterov else velocity
        return param + step, new_state
    if momentum != 0:
        buf = state.get("momentum_buffer")
        # The first buffer is the gradient itself, not (1 - dampening) * gradient: PyTorch's choice,
        # kept so that checkpoints and trajectories agree with torch.optim.SGD.
        buf = grad if buf is None else fma(1 - dampening, grad, momentum * buf, ops)
        new_state["momentum_buffer"] = buf
        grad = fma(momentum, buf, grad, ops) if nesterov else buf
    # Multiply-adds rounded once, as torch.optim's add_(..., alpha=...) rounds them
    # (sgdlab.algorithms.fused): the same numbers as torch.optim.SGD, bit for bit.
    return fma(-lr, grad, param, ops), new_state


def validate_sgd(
    *,
    lr: Any,
    momentum: Any = 0.0,
    dampening: Any = 0.0,
    weight_decay: Any = 0.0,
    nesterov: bool = False,
    momentum_form: str = "buffer",
    **_: Any,
) -> None:
    """Raise what torch.optim.SGD raises, in its order and words, for an invalid hyperparameter
    (and NaN, which torch.optim.SGD lets through)."""
    at_least("lr", lr, 0.0, "learning rate")
    at_least("momentum", momentum, 0.0, "momentum value")
    at_least("weight_decay", weight_decay, 0.0, "weight_decay value")
    at_least("dampening", dampening, float("-inf"), "dampening value")
    if nesterov and (float(momentum) <= 0 or float(dampening) != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening "
            f"(got momentum={momentum}, dampening={dampening})"
        )
    if momentum_form not in ("buffer", "velocity"):
        raise ValueError(
            f"Invalid momentum_form: {momentum_form!r} (expected 'buffer' or 'velocity')"
        )
    if momentum_form == "velocity" and float(dampening) != 0:
        # The velocity form (Keras) has no dampening; a made-up one would have no reference.
        raise ValueError(
            f"Invalid dampening value: {dampening} (the velocity form of momentum, "
            "the Keras convention, has no dampening; expected dampening=0)"
        )


def _momentum_form(form: str) -> Any:
    return lambda h: h.get("momentum", 0) != 0 and h.get("momentum_form", "buffer") == form


SGD = Rule(
    name="sgd",
    update=sgd,
    hyperparameters=(
        Hyperparameter("lr", keras="learning_rate"),
        Hyperparameter("momentum"),
        Hyperparameter("dampening", keras=None),
        Hyperparameter("weight_decay"),
        Hyperparameter("nesterov"),
        Hyperparameter("maximize", keras=None),
        Hyperparameter("decoupled_weight_decay", keras=None),
    ),
    # Created from the first gradient (PyTorch's convention): no state at all without momentum.
    state=(
        StateEntry("momentum_buffer", FROM_GRADIENT, keras="momentum",
                   when=_momentum_form("buffer")),
        StateEntry("velocity", FROM_GRADIENT, keras="momentum", when=_momentum_form("velocity")),
    ),
    validate=validate_sgd,
    conventions=sgd_options,
)
