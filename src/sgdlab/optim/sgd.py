"""``sgdlab.SGD``: a drop-in ``torch.optim.SGD`` (plus SGDW) running ``sgdlab.algorithms.sgd``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sgdlab import algorithms
from sgdlab.optim.base import RuleOptimizer


class SGD(RuleOptimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and weight decay.

    Same signature, defaults, param-group keys, state layout and numbers as ``torch.optim.SGD``;
    ``decoupled_weight_decay=True`` gives SGDW, where the decay shrinks the weights by
    ``lr * weight_decay`` directly instead of going through the momentum buffer.
    ``foreach`` and ``fused`` only choose how the update is executed, never what it computes.
    ``convention="keras"`` gives ``keras.optimizers.SGD``'s formulas instead (velocity form of
    momentum, decoupled weight decay; see :mod:`sgdlab.algorithms.conventions`).
    The math and its references are in :mod:`sgdlab.algorithms.sgd`.
    """

    declaration = algorithms.SGD
    group_defaults = {
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": False,
        "decoupled_weight_decay": False,  # torch.optim.SGD has no SGDW
    }

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        convention: str = "torch",
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if convention != "torch":  # torch's convention keeps torch.optim.SGD's param-group keys
            defaults["convention"] = convention
        super().__init__(params, defaults)
