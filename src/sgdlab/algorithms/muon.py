"""Muon: momentum whose update for each weight matrix is orthogonalized by Newton-Schulz.

Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"
(kellerjordan.github.io/posts/muon), with the learning-rate adjustments of torch.optim.Muon and of
Liu et al. 2025, "Muon is Scalable for LLM Training" (arXiv 2502.16982). For a weight matrix W of
shape A x B, gradient G_t, momentum mu, learning rate gamma, weight decay lambda:

    B_t = mu B_{t-1} + (1 - mu) G_t            momentum, "average" form (torch.optim.Muon)
    B_t = mu B_{t-1} + G_t                      "sum" form (keras.optimizers.Muon)
    M_t = (1 - mu) G_t + mu B_t  or  G_t + mu B_t   Nesterov (in the same form); M_t = B_t without
    O_t = NS_k(M_t)                             k Newton-Schulz steps, below
    W_t = W_{t-1} (1 - gamma lambda) - gamma s(A, B) O_t     decoupled decay, scaled step

The two momentum forms differ by the factor 1 / (1 - mu) in M_t, which NS removes (it divides by
the norm first), so they give the same update up to the epsilon of that division.

Newton-Schulz (the post's quintic iteration): X_0 = M / max(||M||_F, eps) (or ||M||_F + eps),
transposed first when A > B so that the Gram matrix X X^T is the smaller one, then k times

    X <- a X + (b X X^T + c (X X^T)^2) X            (a, b, c) = (3.4445, -4.7750, 2.0315)

which drives every singular value of X towards roughly 1 (into about [0.7, 1.2], not exactly 1:
the coefficients trade convergence for a steep slope at 0), so O ~ U V^T of M = U S V^T.
torch.optim.Muon runs it in bfloat16; Keras in the tensors' dtype.

The step's scale s(A, B) ("adjust_lr_fn"):

    "original" (or None)   sqrt(max(1, A / B))       the post: RMS of the update independent of A/B
    "match_rms_adamw"      rms_rate sqrt(max(A, B))   Liu et al. 2025: the RMS of AdamW's update
                                                      (rms_rate 0.2): AdamW's lr, decay carry over
    "none"                 1

Everything but NS is elementwise, and NS works on the last two axes: a stack of same-shape
matrices (leading axes) is updated in one call, each matrix as if alone.
"""

from __future__ import annotations

import math
from typing import Any

from sgdlab.algorithms._checks import as_float, in_unit_interval, invalid
from sgdlab.algorithms.adam import ADAM, adam, validate_adam
from sgdlab.algorithms.conventions import validate_convention
from sgdlab.algorithms.decay import decay
from sgdlab.algorithms.fused import addmm, fma, lerp
from sgdlab.algorithms.rule import Hyperparameter, Route, Rule, StateEntry

State = dict[str, Any]

#: The post's quintic coefficients (a, b, c), steps and epsilon (torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "none")


def newton_schulz(x: Any, *, coefficients: Any = NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = EPS, dtype: str | None = "bfloat16", eps_form: str = "clamp",
                  ops: Any) -> Any:
    """NS_k(x): x (a matrix, or a stack of them on leading axes) orthogonalized; see the module
    docstring. ``dtype`` is the precision of the iteration (None: x's own); ``eps_form`` "clamp"
    divides by max(norm, eps) (torch), "add" by norm + eps (Keras)."""
    a, b, c = coefficients
    if dtype is not None:
        x = ops.cast(x, dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = ops.transpose(x)
    norm = ops.norm(x, axis=(-2, -1), keepdims=True)
    x = x / (ops.maximum(norm, eps) if eps_form == "clamp" else norm + eps)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        polynomial = addmm(gram, gram, gram, beta=b, alpha=c, ops=ops)  # b A + c A A
        x = addmm(x, polynomial, x, beta=a, alpha=1, ops=ops)  # a X + (b A + c A A) X
    return ops.transpose(x) if tall else x


def lr_scale(shape: Any, adjust_lr_fn: str | None = None, rms_rate: float | None = 0.2) -> float:
    """s(A, B) for a matrix (or stack of matrices) of ``shape``; see the module docstring
    (``rms_rate=None`` turns "match_rms_adamw" off, as in Keras)."""
    rows, columns = int(shape[-2]), int(shape[-1])
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / columns))
    if adjust_lr_fn == "match_rms_adamw" and rms_rate is not None:
        return rms_rate * math.sqrt(max(rows, columns))
    return 1.0


def muon(
    param: Any,
    grad: Any,
    state: State,
    *,
    lr: Any,
    weight_decay: Any = 0.1,
    momentum: Any = 0.95,
    nesterov: bool = True,
    ns_a: float = NS_COEFFICIENTS[0],
    ns_b: float = NS_COEFFICIENTS[1],
    ns_c: float = NS_COEFFICIENTS[2],
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: str | None = None,
    rms_rate: float | None = 0.2,
    momentum_form: str = "average",
    ns_dtype: str | None = "bfloat16",
    eps_form: str = "clamp",
    ops: Any,
) -> tuple[Any, State]:
    """One Muon step on a matrix (or a stack of same-shape matrices); returns the new parameter
    and state (``momentum_buffer``) without modifying the inputs."""
    buf = state["momentum_buffer"]
    if momentum_form == "average":  # torch.optim.Muon: buf.lerp_(grad, 1 - momentum)
        buf = lerp(buf, grad, 1 - momentum, ops)
        update = lerp(grad, buf, momentum, ops) if nesterov else buf
    else:  # Keras: m += g + (mu - 1) m
        buf = buf + (grad + buf * (momentum - 1))
        update = grad + momentum * buf if nesterov else buf
    update = newton_schulz(update, coefficients=(ns_a, ns_b, ns_c), steps=ns_steps, eps=eps,
                           dtype=ns_dtype, eps_form=eps_form, ops=ops)
    param, _ = decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=True, ops=ops)
    step = -lr * lr_scale(param.shape, adjust_lr_fn, rms_rate)
    return fma(step, update, param, ops), {"momentum_buffer": buf}


def muon_options(convention: str) -> dict[str, Any]:
    """Keyword options of :func:`muon` that give Muon the named framework's formulas:
    torch.optim.Muon averages momentum, runs NS in bfloat16, clamps the norm and scales the step
    by ``adjust_lr_fn`` (default "original"); Keras sums momentum, runs NS in the tensors' dtype,
    adds eps to the norm and scales the step as "match_rms_adamw" with its ``rms_rate`` (None:
    unscaled). (Which parameters Muon updates is a matter of routes.)"""
    validate_convention(convention)
    if convention == "keras":
        return {"momentum_form": "sum", "ns_dtype": None, "eps_form": "add",
                "adjust_lr_fn": "match_rms_adamw"}
    return {}


def validate_muon(
    *,
    lr: Any,
    weight_decay: Any = 0.1,
    momentum: Any = 0.95,
    ns_coefficients: Any = NS_COEFFICIENTS,
    ns_steps: Any = NS_STEPS,
    adjust_lr_fn: Any = None,
    momentum_form: str = "average",
    **_: Any,
) -> None:
    """Raise what torch.optim.Muon raises, in its words, for an invalid hyperparameter; its
    step-time checks (NS steps, coefficients) here, before anything trains. NaN never passes."""
    numel = getattr(lr, "numel", None)
    if numel is not None and numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    for name, value, words in (("lr", lr, "Learning rate"), ("momentum", momentum, "momentum"),
                               ("weight_decay", weight_decay, "weight decay")):
        if not as_float(name, value, words) >= 0.0:
            raise invalid(f"{words} should be >= 0 but is: {value}", name=name, value=value,
                          requirement=">= 0")
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"Invalid ns_steps: {ns_steps!r} (expected an int >= 0)")
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(tuple(ns_coefficients)) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    if momentum_form not in ("average", "sum"):
        raise ValueError(
            f"Invalid momentum_form: {momentum_form!r} (expected 'average' or 'sum')")


MUON = Rule(
    name="muon",
    update=muon,
    hyperparameters=(
        Hyperparameter("lr", keras="learning_rate"),
        Hyperparameter("weight_decay"),
        Hyperparameter("momentum"),
        Hyperparameter("nesterov"),
        Hyperparameter("ns_a", torch="ns_coefficients[0]", keras="muon_a"),
        Hyperparameter("ns_b", torch="ns_coefficients[1]", keras="muon_b"),
        Hyperparameter("ns_c", torch="ns_coefficients[2]", keras="muon_c"),
        Hyperparameter("eps", keras=None),
        Hyperparameter("ns_steps"),
        Hyperparameter("adjust_lr_fn", keras=None),
        Hyperparameter("rms_rate", torch=None),
    ),
    # torch.optim.Muon creates the buffer as zeros before the first step.
    state=(StateEntry("momentum_buffer", keras="momentum"),),
    validate=validate_muon,
    conventions=muon_options,
    # Newton-Schulz is a matrix operation: tensor by tensor (or stacks of same-shape matrices).
    elementwise=False,
    stacks=True,
    # bfloat16 or 8-bit momentum, widened (decoded) and rounded back (encoded) by the stacked path.
    compact_state=("bfloat16", "uint8"),
)


# --- the usual recipe: Muon for matrices, AdamW for the rest ------------------------------------
def adamw_beside_muon(param: Any, grad: Any, state: State, *, lr: Any, adam_lr_ratio: Any = 1.0,
                      ops: Any, **hyperparameters: Any) -> tuple[Any, State]:
    """AdamW for the parameters Muon does not take, at ``lr * adam_lr_ratio`` (Keras's Muon)."""
    return adam(param, grad, state, lr=lr * adam_lr_ratio, decoupled_weight_decay=True, ops=ops,
                **hyperparameters)


def validate_muon_with_adamw(*, adam_betas: Any = (0.9, 0.999), adam_eps: Any = 1e-8,
                             adam_weight_decay: Any = 0.01, adam_lr_ratio: Any = 1.0,
                             **values: Any) -> None:
    validate_muon(**values)
    validate_adam(lr=values.get("lr", 1e-3), betas=adam_betas, eps=adam_eps,
                  weight_decay=adam_weight_decay)
    if not as_float("adam_lr_ratio", adam_lr_ratio, "adam_lr_ratio") >= 0.0:
        raise ValueError(f"Invalid adam_lr_ratio: {adam_lr_ratio} (expected >= 0)")
    in_unit_interval("momentum", values.get("momentum", 0.95), "momentum value")


def _adam_beside_muon_options(convention: str) -> dict[str, Any]:
    validate_convention(convention)
    return {"eps_hat": True} if convention == "keras" else {}


def is_matrix(param: Any) -> bool:
    """Muon's parameters in the usual recipe: 2-D weights (conv filters should be reshaped)."""
    return len(param.shape) == 2


#: Muon for 2-D parameters, AdamW (decoupled decay, its own ``adam_*`` hyperparameters) for the
#: rest: the recipe of the post and of keras.optimizers.Muon, as one declaration.
MUON_WITH_ADAMW = Rule(
    name="muon_with_adamw",
    update=adamw_beside_muon,
    hyperparameters=(
        Hyperparameter("lr", keras="learning_rate"),
        Hyperparameter("adam_lr_ratio"),
        Hyperparameter("beta1", torch="adam_betas[0]", keras="adam_beta_1"),
        Hyperparameter("beta2", torch="adam_betas[1]", keras="adam_beta_2"),
        Hyperparameter("eps", torch="adam_eps", keras="epsilon"),
        Hyperparameter("weight_decay", torch="adam_weight_decay", keras="adam_weight_decay"),
    ),
    state=ADAM.state,
    validate=validate_muon_with_adamw,
    conventions=_adam_beside_muon_options,
    routes=(Route(is_matrix, MUON, "2-D weights"),),
)
