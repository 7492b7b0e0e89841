"""Optimizer in backward: update each parameter as soon as its gradient is complete.

Autograd calls a parameter's *post-accumulate-grad hook* once its ``.grad`` holds the full
gradient of the backward pass. Running the optimizer rule for that one parameter right there and
dropping the gradient means gradients never all exist at once: the peak memory of a training step
loses (nearly) one model-size of gradients. The numbers are those of ``optimizer.step()`` (the
same rule, the same state); what changes is when each parameter is updated.

    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-3)
    handle = sgdlab.optim.optimizer_in_backward(optimizer)
    for x, y in data:
        loss_fn(model(x), y).backward()   # parameters are updated during this call
        # no optimizer.step() / zero_grad(): gradients are already applied and released
    handle.remove()                      # back to ordinary step() training

Caveats (as for every optimizer-in-backward scheme): gradient clipping by the global norm and
gradient accumulation over several backward passes are impossible (no moment sees all
gradients); a parameter used twice in the graph still gets a single update, after its last use,
because the hook fires once its gradient is accumulated. Learning-rate schedulers keep working:
they edit ``param_groups``, which each update reads.

Each backward pass that reaches a parameter is one step of the optimizer, group-level work
included: a group's ``before_group`` runs before its first parameter is updated, and when the
backward pass ends (an autograd callback) every group's ``after_group`` runs, as in ``step()``,
so SWATS switches and schedule-free advances its schedule exactly as with ``step()``. SAM needs
two gradients per step and cannot run in backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Variable

from sgdlab.optim import sharded
from sgdlab.optim.base import RuleOptimizer
from sgdlab.optim.sam import SAM


class InBackwardHandle:
    """Returned by :func:`optimizer_in_backward`; ``remove()`` restores step()-based training."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def optimizer_in_backward(optimizer: RuleOptimizer) -> InBackwardHandle:
    """Apply ``optimizer``'s update to each parameter during ``backward()`` (see module doc)."""
    if isinstance(optimizer, SAM):
        raise TypeError(
            "optimizer_in_backward does not support SAM: a SAM step needs two gradients (at w, "
            "then at the perturbed point), hence two backward passes and a step between them; "
            "train it with step(closure), or first_step() and second_step()"
        )
    if not isinstance(optimizer, RuleOptimizer):
        raise TypeError(
            f"optimizer_in_backward needs an sgdlab optimizer, got {type(optimizer).__name__}"
        )
    sharded.check_in_backward(
        [param for group in optimizer.param_groups for param in group["params"]])
    # The graph task (backward pass) whose end is already scheduled to end the optimizer's step.
    scheduled: list[int | None] = [None]

    def begin(task: int) -> None:
        if task != scheduled[0]:
            # A step still open here was left by a backward pass that failed before its end.
            optimizer.finish_parameter_step()
            if task != -1:
                scheduled[0] = task
                Variable._execution_engine.queue_callback(optimizer.finish_parameter_step)

    handles = []
    for index, group in enumerate(optimizer.param_groups):
        for param in group["params"]:
            if not param.requires_grad:
                continue

            def hook(param: Tensor, index: int = index) -> None:
                if not optimizer.has_group_hooks:
                    optimizer.step_parameter(param, index)
                    return
                task = torch._C._current_graph_task_id()
                begin(task)
                optimizer.step_parameter(param, index)
                if task == -1:  # called outside a backward pass: the step is this update
                    optimizer.finish_parameter_step()

            handles.append(param.register_post_accumulate_grad_hook(hook))
    return InBackwardHandle(handles)
