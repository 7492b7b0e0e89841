"""Adam, AMSGrad and AdamW.

Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1, with the
bias-corrected second moment inside the square root and eps added outside it (the paper's and
PyTorch's placement):

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    theta_t = theta_{t-1} - gamma / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

AMSGrad (Reddi et al. 2018, "On the Convergence of Adam and Beyond", Algorithm 2) normalizes by
the running maximum of v_t instead of v_t.

Weight decay is either an L2 term added to the gradient (Adam's classic form) or, for AdamW
(Loshchilov & Hutter 2019, Algorithm 2 line 12), a decoupled shrink theta <- theta (1 - gamma
lambda) applied before the moment update, as torch.optim.AdamW does.

With ``eps_hat=True`` eps is the paper's "epsilon hat" (Section 2, the formula just before 2.1),
added to sqrt(v_t) before the bias correction of v_t, which Keras and TensorFlow use:

    alpha_t = gamma * sqrt(1 - beta2^t) / (1 - beta1^t)
    theta_t = theta_{t-1} - alpha_t * m_t / (sqrt(v_t) + eps_hat)

This equals the default form with eps = eps_hat / sqrt(1 - beta2^t), a step-dependent epsilon;
the two differ where sqrt(v_t) is not much larger than eps (tiny or sparse gradients).
"""

from __future__ import annotations

from typing import Any

from sgdlab.algorithms._checks import (
    at_least,
    in_unit_interval,
    is_tensor,
    tensor_needs_capturable,
)
from sgdlab.algorithms.conventions import adam_options
from sgdlab.algorithms.decay import decay
from sgdlab.algorithms.fused import addcdiv, addcmul, lerp
from sgdlab.algorithms.rule import COUNTER, Hyperparameter, Rule, StateEntry

State = dict[str, Any]


def adam(
    param: Any,
    grad: Any,
    state: State,
    *,
    lr: Any,
    beta1: Any = 0.9,
    beta2: Any = 0.999,
    eps: float = 1e-8,
    weight_decay: Any = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    eps_hat: bool = False,
    ops: Any,
) -> tuple[Any, State]:
    """One Adam step; returns the new parameter and state without modifying the inputs."""
    # Operations in torch.optim's order, multiply-adds rounded once as its kernels round them
    # (sgdlab.algorithms.fused): the same numbers as torch.optim.Adam, bit for bit.
    step = state["step"] + 1
    param, grad = decay(param, grad, lr=lr, weight_decay=weight_decay,
                        decoupled=decoupled_weight_decay, maximize=maximize, ops=ops)
    exp_avg = lerp(state["exp_avg"], grad, 1 - beta1, ops)
    exp_avg_sq = addcmul(beta2 * state["exp_avg_sq"], grad, grad, 1 - beta2, ops)
    new_state: State = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if amsgrad:
        exp_avg_sq = ops.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new_state["max_exp_avg_sq"] = exp_avg_sq
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    if eps_hat:
        alpha = lr * bias_correction2**0.5 / bias_correction1
        return param - (exp_avg * alpha) / (ops.sqrt(exp_avg_sq) + eps), new_state
    step_size = lr / bias_correction1
    denom = ops.sqrt(exp_avg_sq) / bias_correction2**0.5 + eps
    return addcdiv(param, exp_avg, denom, -step_size, ops), new_state


def validate_adam(
    *,
    lr: Any,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: Any = 1e-8,
    weight_decay: Any = 0.0,
    foreach: Any = None,
    capturable: Any = False,
    **_: Any,
) -> None:
    """Raise what torch.optim.Adam raises, in its order and words, for an invalid hyperparameter.

    Unlike torch.optim, integer betas are accepted (they are numbers) and NaN never is.
    """
    tensor_needs_capturable("lr", lr, foreach, capturable)
    at_least("lr", lr, 0.0, "learning rate")
    at_least("eps", eps, 0.0, "epsilon value")
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))") from None
    in_unit_interval("betas[0]", beta1, "beta parameter at index 0")
    in_unit_interval("betas[1]", beta2, "beta parameter at index 1")
    at_least("weight_decay", weight_decay, 0.0, "weight_decay value")
    if is_tensor(beta1) != is_tensor(beta2):
        raise ValueError("betas must be either both floats or both Tensors")
    tensor_needs_capturable("betas[0]", beta1, foreach, capturable)
    tensor_needs_capturable("betas[1]", beta2, foreach, capturable)


ADAM = Rule(
    name="adam",
    update=adam,
    hyperparameters=(
        Hyperparameter("lr", keras="learning_rate"),
        Hyperparameter("beta1", torch="betas[0]", keras="beta_1"),
        Hyperparameter("beta2", torch="betas[1]", keras="beta_2"),
        Hyperparameter("eps", keras="epsilon"),
        Hyperparameter("weight_decay"),
        Hyperparameter("amsgrad"),
        Hyperparameter("maximize", keras=None),
        Hyperparameter("decoupled_weight_decay", keras=None),
    ),
    # Keras creates its variables in two groups (momentum and velocity for every variable,
    # then velocity_hat): its checkpoints' order.
    state=(
        StateEntry("step", COUNTER),
        StateEntry("exp_avg", keras="momentum"),
        StateEntry("exp_avg_sq", keras="velocity"),
        StateEntry("max_exp_avg_sq", keras="velocity_hat", keras_group=1,
                   when=lambda h: bool(h.get("amsgrad"))),
    ),
    validate=validate_adam,
    conventions=adam_options,
)
