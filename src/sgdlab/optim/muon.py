"""``sgdlab.Muon``: a drop-in ``torch.optim.Muon``; ``sgdlab.optim.MuonWithAdamW``: the usual
recipe (Muon for 2-D weights, AdamW for the rest) as one optimizer. Both run
:mod:`sgdlab.algorithms.muon`; same-shape matrices go through Newton-Schulz together."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sgdlab.algorithms.muon import EPS, MUON, MUON_WITH_ADAMW, NS_COEFFICIENTS, NS_STEPS
from sgdlab.optim.base import RuleOptimizer


class Muon(RuleOptimizer):
    """Muon: momentum orthogonalized by Newton-Schulz, for 2-D parameters.

    Same signature, defaults, param-group keys, state layout (``momentum_buffer``) and errors as
    ``torch.optim.Muon`` (non-2-D parameters are refused at construction, in its words).
    ``convention="keras"`` (keyword only) gives ``keras.optimizers.Muon``'s formulas instead
    (summed momentum, Newton-Schulz in the parameters' dtype); ``adjust_lr_fn="none"`` leaves
    the step unscaled. Parameters of one shape in a group are orthogonalized together, one
    batched matrix product per Newton-Schulz step. The math is in :mod:`sgdlab.algorithms.muon`.
    """

    declaration = MUON

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        convention: str = "torch",
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        if convention != "torch":  # torch's convention keeps torch.optim.Muon's param-group keys
            defaults["convention"] = convention
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim != 2:
                    raise ValueError(
                        "Muon only supports 2D parameters whereas we found a parameter with "
                        f"size: {param.size()}"
                    )
                _refuse_shards(param)

    def check_grad(self, param: Tensor, grad: Tensor) -> None:
        # torch.optim.Muon's checks at each step, in its words.
        if param.is_complex():
            raise RuntimeError("Muon does not support complex parameters")
        if grad.is_sparse:
            raise RuntimeError("Muon does not support sparse gradients")
        if grad.ndim != 2:
            raise ValueError("Param gradient must be a 2D matrix")
        _refuse_shards(param)


def _refuse_shards(param: Tensor) -> None:
    """Newton-Schulz needs each whole matrix; a DTensor (FSDP2) holds a shard of it, and
    gathering the shards around the update is not implemented: refused rather than
    orthogonalizing each shard on its own."""
    if type(param).__name__ == "DTensor":
        raise ValueError(
            f"Muon does not take DTensor (FSDP2-sharded) parameters (a parameter of global shape "
            f"{list(param.shape)}): Newton-Schulz needs each whole matrix, and sgdlab does not "
            "gather the shards; use it on unsharded (e.g. DDP) parameters"
        )


class MuonWithAdamW(RuleOptimizer):
    """Muon for 2-D parameters, AdamW for every other (biases, norm scales): the usual recipe
    in one optimizer, as ``keras.optimizers.Muon`` does it. Muon's hyperparameters are
    torch.optim.Muon's; AdamW's are ``adam_*`` (its lr is ``lr * adam_lr_ratio``). Embeddings
    and output heads are 2-D too: put them in a plain :class:`sgdlab.AdamW` to keep them off
    Muon, as the post recommends."""

    declaration = MUON_WITH_ADAMW

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.01,
        adam_lr_ratio: float = 1.0,
        convention: str = "torch",
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
            "adam_betas": adam_betas,
            "adam_eps": adam_eps,
            "adam_weight_decay": adam_weight_decay,
            "adam_lr_ratio": adam_lr_ratio,
        }
        if convention != "torch":
            defaults["convention"] = convention
        super().__init__(params, defaults)

    def check_grad(self, param: Tensor, grad: Tensor) -> None:
        if param.ndim == 2:
            _refuse_shards(param)
