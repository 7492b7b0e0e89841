"""``sgdlab.SWATS``: Adam that hands over to SGD with momentum (Keskar & Socher 2017).

The two phases run the existing rules, ``sgdlab.algorithms.adam`` then ``sgdlab.algorithms.sgd``;
the switching logic (projection, running estimate, criterion) is in
:mod:`sgdlab.algorithms.swats`. This adapter only gathers each param group's dot products (the
base class's group-level hooks, so ``step()`` and optimizer-in-backward both switch), keeps the
group-level quantities in the param group (so they are part of ``state_dict()``) and replaces
the Adam state by SGD's at the switch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from sgdlab import algorithms
from sgdlab.algorithms.swats import (
    corrected_lr_estimate,
    projection_terms,
    sgd_learning_rate,
    should_switch,
    update_lr_estimate,
)
from sgdlab.optim import sharded, torch_ops
from sgdlab.optim.base import RuleOptimizer


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


class SWATS(RuleOptimizer):
    """SWATS: Adam until its implied SGD learning rate has converged, then SGD with momentum.

    Arguments are Adam's (``lr``, ``betas``, ``eps`` with the paper's default 1e-9, L2
    ``weight_decay``) plus ``switch_tol``, the criterion's epsilon (the paper uses the same 1e-9),
    and ``switch_at``, which forces the switch after that many Adam steps instead.

    Each param group decides on its own (the dot products of the projection run over the group's
    parameters; one group = the paper's Algorithm 1, one group per layer = its per-layer variant).
    After a group switches it is updated exactly as ``sgdlab.SGD(lr=group["sgd_lr"],
    momentum=beta1, weight_decay=weight_decay)`` started at that point would update it.

    Per group, in ``param_groups`` and therefore in ``state_dict()``: ``adam_step`` (Adam steps
    taken), ``lr_estimate`` (the running average lambda_k), ``switch_step`` (the Adam step after
    which the group switched, or None) and ``sgd_lr`` (the SGD learning rate, (1 - beta1) Lambda,
    or None). ``optimizer.switch_step`` and ``optimizer.sgd_lr`` read the first group's.
    """

    declaration = algorithms.SWATS

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-9,
        weight_decay: float = 0,
        *,
        switch_tol: float = 1e-9,
        switch_at: int | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "switch_tol": switch_tol,
            "switch_at": switch_at,
            "adam_step": 0,
            "lr_estimate": 0.0,
            "switch_step": None,
            "sgd_lr": None,
        }
        super().__init__(params, defaults)
        # Built by ZeroRedundancyOptimizer: this rank holds a partition of the parameters, and
        # the dot products are summed over the ranks (FSDP2 shards say so themselves).
        self._zero_group = sharded.zero_process_group()

    # --- what users read ------------------------------------------------------------------------
    @property
    def switch_step(self) -> int | None:
        """The Adam step after which the first param group switched to SGD (None: not yet)."""
        return self.param_groups[0]["switch_step"]

    @property
    def sgd_lr(self) -> float | None:
        """The first param group's SGD learning rate (None until it switches)."""
        return self.param_groups[0]["sgd_lr"]

    def lr_estimate(self, group_index: int = 0) -> float | None:
        """Lambda_k, the current bias-corrected estimate of a group's SGD-equivalent step size."""
        group = self.param_groups[group_index]
        if group["adam_step"] == 0:
            return None
        return corrected_lr_estimate(
            group["lr_estimate"], beta2=group["betas"][1], step=group["adam_step"]
        )

    def step_arguments(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"switched": group["switch_step"] is not None}

    def check_grad(self, param: Tensor, grad: Tensor) -> None:
        if grad.is_sparse:
            raise RuntimeError("SWATS does not support sparse gradients")

    # --- the switch: a reduction over the group, around the Adam steps ------------------------
    def before_update(self, group: dict[str, Any], params: list[Tensor],
                      grads: list[Tensor]) -> Any:
        if group["switch_step"] is None:
            return [sharded.local(param).clone() for param in params]
        return None

    def after_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     before: Any) -> None:
        if before is None:
            return
        # The projection uses the gradient Adam followed, L2 term included. The terms are kept
        # per parameter and summed in the group's order in after_group, so that updates one
        # parameter at a time (in backward) give the very same sums as one run over the group.
        terms = self.__dict__.setdefault("_projection_terms", {}).setdefault(id(group), {})
        for old, param, grad in zip(before, params, grads):
            # This rank's shard of the sums (all of them without sharding): after_group adds
            # the shards' parts.
            sq, dot = projection_terms(_real(old), _real(sharded.local(param)),
                                       _real(sharded.local(grad)),
                                       weight_decay=group["weight_decay"], ops=torch_ops)
            terms[id(param)] = (float(sq), float(dot))

    def after_group(self, group: dict[str, Any]) -> None:
        terms = self.__dict__.get("_projection_terms", {}).pop(id(group), None) or {}
        if group["switch_step"] is not None:
            return
        step_sq = step_dot_grad = 0.0
        for param in group["params"]:
            if id(param) in terms:
                sq, dot = terms[id(param)]
                step_sq += sq
                step_dot_grad += dot
        updated = len(terms)
        zero_group = self.__dict__.get("_zero_group")
        if zero_group is not None or any(map(sharded.is_dtensor, group["params"])):
            # Every rank takes part, with or without parameters of its own in this group.
            step_sq, step_dot_grad, updated = sharded.global_sum(
                [step_sq, step_dot_grad, float(updated)], group["params"], zero_group)
        if not updated:
            return  # no Adam step for this group in this step

        beta1, beta2 = group["betas"]
        k = group["adam_step"] + 1
        estimate = update_lr_estimate(group["lr_estimate"], step_sq, step_dot_grad, beta2=beta2)
        group["adam_step"] = k
        group["lr_estimate"] = estimate.lr_estimate
        if group["switch_at"] is not None:
            switch = k >= group["switch_at"]
        else:
            switch = should_switch(estimate, beta2=beta2, step=k, tolerance=group["switch_tol"])
        if switch:
            self._switch(group, sgd_learning_rate(estimate.lr_estimate, beta1=beta1, beta2=beta2, step=k))

    def _switch(self, group: dict[str, Any], sgd_lr: float) -> None:
        if not sgd_lr > 0:
            warnings.warn(
                f"SWATS switched to SGD after {group['adam_step']} Adam steps with a non-positive "
                f"learning-rate estimate ({sgd_lr!r}); the SGD phase uses lr=0 and will not move "
                "(switch later, or let the criterion decide)",
                RuntimeWarning,
                stacklevel=5,  # the caller of step(): _switch, after_group, step, its wrapper
            )
            sgd_lr = 0.0
        group["switch_step"] = group["adam_step"]
        group["sgd_lr"] = sgd_lr
        # SGD starts afresh: its momentum buffer is created from the next gradient (v_k = 0 in
        # Algorithm 1, then v = beta1 * 0 + g), and Adam's moments are no longer needed.
        for param in group["params"]:
            self.state.pop(param, None)
