"""``sgdlab.Adam`` and ``sgdlab.AdamW``: drop-in ``torch.optim.Adam`` / ``AdamW`` running
``sgdlab.algorithms.adam``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sgdlab import algorithms
from sgdlab.optim.base import RuleOptimizer, step_dtype


def _scalars(betas: Any) -> Any:
    # As torch.optim.Adam stores them: 1-element tensors of any shape become 0-d views.
    if not isinstance(betas, (list, tuple)):
        return betas  # validate_adam names what is wrong with it
    return tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() else b for b in betas)


class Adam(RuleOptimizer):
    """Adam (Kingma & Ba, 2015), optionally AMSGrad and decoupled weight decay (AdamW).

    Same signature, defaults, param-group keys, state layout and numbers as ``torch.optim.Adam``.
    ``foreach``, ``fused`` and ``capturable`` only choose how the update is executed (``capturable``
    keeps the step count on the parameter's device, as in torch). The math and its references
    are in :mod:`sgdlab.algorithms.adam`. ``convention="keras"`` gives ``keras.optimizers.Adam``'s
    formulas instead (epsilon-hat placement, decoupled weight decay; see
    :mod:`sgdlab.algorithms.conventions`).
    """

    declaration = algorithms.ADAM
    group_defaults = {
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
        "fused": None,
    }

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        convention: str = "torch",
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": _scalars(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if convention != "torch":  # torch's convention keeps torch.optim.Adam's param-group keys
            defaults["convention"] = convention
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            fused = group["fused"]
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if param_state and not torch.is_tensor(param_state["step"]):
                    # Checkpoints from old PyTorch versions stored the step as a Python number.
                    on_device = group["capturable"] or fused
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]),
                        dtype=step_dtype(bool(fused)),
                        device=param.device if on_device else None,
                    )

    def check_grad(self, param: Tensor, grad: Tensor) -> None:
        if grad.is_sparse:
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients, "
                "please consider SparseAdam instead"
            )


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, default 1e-2.

    A drop-in ``torch.optim.AdamW``: same signature, defaults, state layout and numbers.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        convention: str = "torch",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            convention=convention,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
