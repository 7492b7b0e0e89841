"""Learning-rate schedules in the ``--opt`` language, built from ``torch.optim.lr_scheduler``.

Two spec keys, on any optimizer spec::

    sgd:lr=0.1,momentum=0.9,schedule=cosine,warmup=0.05
    adamw:lr=3e-3,schedule=linear                 decay linearly to 0 over the run
    momentum:schedule=step,warmup=100              100 warmup steps, then x0.1 at 1/2 and 3/4 of the rest

``schedule`` is one of

    constant   the spec's lr throughout (the default)
    step       x0.1 at one half and at three quarters of the decay phase (MultiStepLR)
    linear     linear decay to 0 at the last step (LinearLR)
    cosine     cosine decay to 0 at the last step (CosineAnnealingLR; Loshchilov & Hutter 2017)

``warmup`` (default 0) is a linear ramp from ``lr / (W + 1)`` to ``lr`` over the first W steps
(LinearLR, chained to the decay by SequentialLR): a number below 1 is a fraction of the run's steps,
a whole number >= 1 a count of steps. The decay phase is what remains of the run. Schedules count
optimizer steps, so the run's length must be known: a time budget alone cannot have one.

Schedule-free optimizers (Defazio et al. 2024) replace the decay by averaging their iterates, and
their warmup is their own constructor argument ``warmup_steps``: a spec that gives them
``schedule`` other than constant, or ``warmup``, is refused with a message saying so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
from torch.optim import lr_scheduler

SCHEDULES = ("constant", "step", "linear", "cosine")
SCHEDULE_KEYS = ("schedule", "warmup")
STEP_GAMMA = 0.1  # the step schedule's factor at each milestone (He et al. 2016's ResNet recipe)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A schedule by name with its warmup (a fraction of the run below 1, else a step count)."""

    name: str = "constant"
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule={self.name!r}; valid: {', '.join(SCHEDULES)}")
        warmup = self.warmup
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not math.isfinite(warmup) \
                or warmup < 0 or (warmup >= 1 and warmup != int(warmup)):
            raise ValueError(f"invalid warmup={warmup!r}: expected a fraction of the run in [0, 1) "
                             "or a whole number of steps")

    @property
    def constant(self) -> bool:
        return self.name == "constant" and self.warmup == 0

    def warmup_steps(self, total_steps: int) -> int:
        steps = round(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
        return min(steps, max(total_steps - 1, 0))

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> lr_scheduler.LRScheduler | None:
        """The scheduler to ``step()`` after every optimizer step of a ``total_steps`` run (None:
        constant rate)."""
        if self.constant:
            return None
        if total_steps < 1:
            raise ValueError(f"a learning-rate schedule needs a run of at least one step, got {total_steps}")
        warm = self.warmup_steps(total_steps)
        decay = max(total_steps - warm, 1)
        if self.name == "cosine":
            main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay, eta_min=0.0)
        elif self.name == "linear":
            main = lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=decay)
        elif self.name == "step":
            main = lr_scheduler.MultiStepLR(optimizer, milestones=[decay // 2, (3 * decay) // 4], gamma=STEP_GAMMA)
        else:
            main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        if warm == 0:
            return main
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
        return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warm])

    def text(self) -> str:
        if self.constant:
            return "constant"
        return self.name + (f", warmup {self.warmup:g}" if self.warmup else "")


def schedule_of(hyperparameters: Mapping[str, Any]) -> Schedule:
    """The schedule a spec's hyperparameters ask for (ValueError for an invalid one)."""
    name = hyperparameters.get("schedule", "constant")
    if name is None:
        name = "constant"
    return Schedule(str(name), hyperparameters.get("warmup", 0.0) or 0.0)


def is_schedule_free(factory: Any) -> bool:
    """Schedule-free optimizers switch between a training and an evaluation point (train()/eval())."""
    return isinstance(factory, type) and callable(getattr(factory, "train", None)) \
        and callable(getattr(factory, "eval", None))


def check_schedule(hyperparameters: Mapping[str, Any], factory: Any) -> Schedule:
    """Validate the schedule keys of a spec: ValueError naming the problem."""
    schedule = schedule_of(hyperparameters)
    if is_schedule_free(factory):
        if schedule.name != "constant":
            raise ValueError("schedule-free optimizers take no learning-rate schedule (their "
                             f"iterate averaging replaces the decay); drop schedule={schedule.name}")
        if schedule.warmup:
            raise ValueError("schedule-free optimizers warm up with their own argument: "
                             "use warmup_steps=N instead of warmup=")
    return schedule


def run_steps(n_train: int, batch_size: int, epochs: int | None, steps: int | None) -> int | None:
    """Optimizer steps of a run with this budget (None when only a time budget bounds it)."""
    candidates = []
    if epochs is not None:
        candidates.append(epochs * math.ceil(n_train / batch_size))
    if steps is not None:
        candidates.append(steps)
    return min(candidates) if candidates else None
