"""The gradient's preamble shared by the SGD and Adam families: maximize, then weight decay.

Written once and called first by each rule, in torch.optim's order (negate the gradient when
maximizing, then decay):

    g <- -g                                  maximize
    g <- g + lambda theta                    L2 penalty (classic SGD and Adam)
    theta <- theta (1 - gamma lambda)        decoupled (SGDW, AdamW: Loshchilov & Hutter 2019,
                                             Algorithm 2 line 12), not amplified by momentum or
                                             divided by Adam's second moment
"""

from __future__ import annotations

from typing import Any

from sgdlab.algorithms.fused import fma


def decay(param: Any, grad: Any, *, lr: Any, weight_decay: Any, decoupled: bool,
          maximize: bool = False, ops: Any = None) -> tuple[Any, Any]:
    """The parameter and gradient a rule continues with."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            # Rounded once where ops can, as torch.optim's grad.add(param, alpha=weight_decay).
            grad = fma(weight_decay, param, grad, ops)
    return param, grad
