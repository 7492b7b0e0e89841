"""``sgdlab.ScheduleFreeSGD`` and ``sgdlab.ScheduleFreeAdamW`` running
``sgdlab.algorithms.schedule_free`` (Defazio et al. 2024, "The Road Less Scheduled").

No learning-rate scheduler is needed (nor wanted): give a constant ``lr`` and, if you like, a
linear ``warmup_steps``. The parameters hold the *training* point y while training and must be
moved to the *averaged* point x before evaluating or saving, so call ``optimizer.train()`` next
to ``model.train()`` and ``optimizer.eval()`` next to ``model.eval()``::

    optimizer = sgdlab.ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=100)
    for epoch in range(epochs):
        model.train(); optimizer.train()
        for x, y in loader:
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        model.eval(); optimizer.eval()
        evaluate(model)                 # at x, the average
    torch.save(optimizer.state_dict(), path)   # in eval mode, like the model's weights

An optimizer starts in eval mode (nothing to move yet) and ``step`` refuses to run outside train
mode. Param-group keys and state follow the ``schedulefree`` package (``k``, ``train_mode``,
``weight_sum``, ``lr_max``, ``scheduled_lr``; state ``z`` and ``exp_avg_sq``), so checkpoints load
both ways. Models with BatchNorm need their running statistics recomputed at x before
evaluation (a few forward passes in train mode after ``optimizer.eval()``), as the paper notes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sgdlab.algorithms.schedule_free import (
    SCHEDULE_FREE_ADAMW,
    SCHEDULE_FREE_SGD,
    schedule_free_eval_point,
    schedule_free_schedule,
    schedule_free_train_point,
)
from sgdlab.optim import sharded
from sgdlab.optim.base import RuleOptimizer


class _ScheduleFree(RuleOptimizer):
    """The part shared by both methods: the schedule (group-level hooks) and train/eval
    switching."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        defaults.update(k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        super().__init__(params, defaults)
        # Built by ZeroRedundancyOptimizer: train() and eval() move this rank's partition, then
        # share it with the other ranks.
        self._zero = sharded.constructing_zero()

    def interpolation_beta(self, group: dict[str, Any]) -> float:
        """The beta of y = (1 - beta) z + beta x for this group."""
        raise NotImplementedError

    @property
    def train_mode(self) -> bool:
        """True while the parameters hold the training point y."""
        return all(group["train_mode"] for group in self.param_groups)

    @torch.no_grad()
    def eval(self) -> None:
        """Move the parameters to x, the average, for evaluation and checkpoints."""
        self._move(to_train=False)

    @torch.no_grad()
    def train(self, mode: bool = True) -> None:
        """Move the parameters to y, where training takes gradients (``train(False)`` = ``eval()``)."""
        self._move(to_train=mode)

    def _move(self, *, to_train: bool) -> None:
        move = schedule_free_train_point if to_train else schedule_free_eval_point
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta = self.interpolation_beta(group)
            for param in group["params"]:
                z = self.state.get(param, {}).get("z")
                if z is not None:
                    param.copy_(move(param, z.to(param.device), beta=beta))
            group["train_mode"] = to_train
        if self.__dict__.get("_zero") is not None:
            sharded.sync_zero(self._zero)

    # The schedule advances for every group at every step, with or without gradients, as in the
    # reference implementation (the averaging weights depend on the step count only). As
    # group-level hooks, it runs in step() and in optimizer-in-backward alike.
    def before_group(self, group: dict[str, Any]) -> None:
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode: call optimizer.train() "
                "before training steps and optimizer.eval() before evaluating or saving "
                "(the parameters hold a different point in each mode)"
            )
        schedule = schedule_free_schedule(
            group["k"],
            lr=group["lr"],
            warmup_steps=group["warmup_steps"],
            r=group["r"],
            weight_lr_power=group["weight_lr_power"],
            lr_max=group["lr_max"],
            weight_sum=group["weight_sum"],
        )
        group["scheduled_lr"] = schedule.lr
        group["lr_max"] = schedule.lr_max
        group["weight_sum"] = schedule.weight_sum
        # This step's averaging weight, for the rule (not in __init__: a copy or unpickled
        # optimizer has only what torch.optim's __getstate__ keeps).
        self.__dict__.setdefault("_ckp1", {})[id(group)] = schedule.ckp1

    def after_group(self, group: dict[str, Any]) -> None:
        self._ckp1.pop(id(group), None)  # set by before_group, which every step runs first
        group["k"] += 1

    def step_arguments(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"ckp1": self._ckp1[id(group)]}


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (Defazio et al. 2024): momentum by interpolation, no LR schedule.

    Same arguments, defaults and numbers as ``schedulefree.SGDScheduleFree``. ``momentum`` is the
    interpolation beta (0 < momentum < 1), ``weight_decay`` an L2 term taken at y, ``r`` and
    ``weight_lr_power`` shape the averaging weights, ``foreach`` is accepted for compatibility.
    The math is in :mod:`sgdlab.algorithms.schedule_free`.
    """

    declaration = SCHEDULE_FREE_SGD

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "r": r,
            "warmup_steps": warmup_steps,
            "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def interpolation_beta(self, group: dict[str, Any]) -> float:
        return group["momentum"]



class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (Defazio et al. 2024): Adam's RMS normalization, no LR schedule.

    Same arguments, defaults and numbers as ``schedulefree.AdamWScheduleFree``. ``betas[0]`` is the
    interpolation beta, ``betas[1]`` the RMS decay; ``weight_decay`` is decoupled and taken at y.
    The math is in :mod:`sgdlab.algorithms.schedule_free`.
    """

    declaration = SCHEDULE_FREE_ADAMW

    def __init__(
        self,
        params: Any,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            "eps": eps,
            "r": r,
            "warmup_steps": warmup_steps,
            "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def interpolation_beta(self, group: dict[str, Any]) -> float:
        return group["betas"][0]

    def step_arguments(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super().step_arguments(group), "step": group["k"] + 1}
