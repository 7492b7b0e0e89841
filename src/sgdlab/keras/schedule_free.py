"""Keras 3 ``ScheduleFreeSGD`` / ``ScheduleFreeAdamW``: the rules of
:mod:`sgdlab.algorithms.schedule_free`, the same numbers as ``sgdlab.ScheduleFreeSGD`` /
``ScheduleFreeAdamW`` (and the ``schedulefree`` package) given the same gradients.

The model variables hold the training point y; call ``optimizer.eval()`` before evaluating or
saving (they then hold the average x) and ``optimizer.train()`` before training again. With
``model.fit``, pass ``callbacks=[sgdlab.keras.ScheduleFreeCallback()]``: it switches to x around
each validation pass, back to y for training, and leaves x in the model when ``fit`` ends (as
``fit`` already does by calling ``finalize_variable_values``). Unlike the PyTorch classes, which
mirror the reference package, a Keras optimizer starts in train mode, so a plain ``fit`` works.

The warmup and averaging weights are computed once per step from two optimizer variables
(``lr_max``, ``weight_sum``) by the same ``schedule_free_schedule`` the PyTorch classes use, with
``ops=keras.ops``, so they work inside compiled train steps, and with learning-rate schedules
(the warmup multiplies the scheduled value). Weight decay is the method's own (L2 at y for SGD,
decoupled at y for AdamW), not Keras's pre-step decay; ``exclude_from_weight_decay`` is honoured.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from sgdlab.algorithms.schedule_free import (
    SCHEDULE_FREE_ADAMW,
    SCHEDULE_FREE_SGD,
    schedule_free_eval_point,
    schedule_free_schedule,
    schedule_free_train_point,
)
from sgdlab.keras.base import RuleOptimizer, value_of


class _ScheduleFree(RuleOptimizer):
    takes_convention = False
    weight_decay_in_rule = True  # the method's own decay (see the module docstring)

    def __init__(
        self,
        learning_rate: Any,
        *,
        hyperparameters: dict[str, Any],
        warmup_steps: int,
        r: float,
        weight_lr_power: float,
        weight_decay: float | None,
        **base_kwargs: Any,
    ) -> None:
        weight_decay = weight_decay or 0.0  # Keras configs write "no decay" as None
        super().__init__(
            learning_rate,
            hyperparameters=hyperparameters,
            schedule={"warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power},
            weight_decay=weight_decay or None,
            **base_kwargs,
        )
        self.warmup_steps = int(warmup_steps)
        self.r = float(r)
        self.weight_lr_power = float(weight_lr_power)
        self.train_mode = True
        self._schedule = None

    def interpolation_beta(self) -> float:
        raise NotImplementedError

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)  # z starts at the weights (a COPY entry of the declaration)
        self._lr_max = self.add_variable((), initializer=keras.initializers.Constant(-1.0), name="lr_max")
        self._weight_sum = self.add_variable((), initializer="zeros", name="weight_sum")

    # --- the schedule: once per step, before the per-variable updates use it ---------------------
    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__} was asked to apply gradients in eval mode: call "
                "optimizer.train() before training (and optimizer.eval() before evaluating)"
            )
        return super().apply(grads, trainable_variables)

    def before_step(self, learning_rate: Any) -> None:
        self._schedule = schedule_free_schedule(
            ops.cast(self.iterations, "float32"),
            lr=ops.cast(learning_rate, "float32"),
            warmup_steps=self.warmup_steps,
            r=self.r,
            weight_lr_power=self.weight_lr_power,
            lr_max=value_of(self._lr_max),
            weight_sum=value_of(self._weight_sum),
            ops=ops,
        )

    def step_arguments(self, variable: Any, dtype: Any) -> dict[str, Any]:
        return {"lr": ops.cast(self._schedule.lr, dtype), "ckp1": ops.cast(self._schedule.ckp1, dtype)}

    def after_step(self) -> None:
        self.assign(self._lr_max, self._schedule.lr_max)
        self.assign(self._weight_sum, self._schedule.weight_sum)

    # --- train / eval ----------------------------------------------------------------------------
    def eval(self) -> None:
        """Move the model variables to x, the average (for evaluation and saving)."""
        self._move(to_train=False)

    def train(self) -> None:
        """Move the model variables to y, where gradients are taken."""
        self._move(to_train=True)

    def _move(self, *, to_train: bool) -> None:
        if self.train_mode == to_train:
            return
        if self.built:
            move = schedule_free_train_point if to_train else schedule_free_eval_point
            beta = self.interpolation_beta()
            for variable, z in zip(self._trainable_variables, self._slots["z"]):
                if z is not None:
                    variable.assign(move(value_of(variable), value_of(z), beta=beta))
        self.train_mode = to_train

    def finalize_variable_values(self, var_list: Any) -> None:
        super().finalize_variable_values(var_list)
        self.eval()  # model.fit ends with the average in the model, like an EMA would

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"warmup_steps": self.warmup_steps, "r": self.r, "weight_lr_power": self.weight_lr_power}
        )
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (Defazio et al. 2024) for Keras; arguments as ``sgdlab.ScheduleFreeSGD``
    with Keras's names (``learning_rate``) and base-class options (clipping, schedules, ...)."""

    declaration = SCHEDULE_FREE_SGD

    def __init__(
        self,
        learning_rate: Any = 1.0,
        momentum: float = 0.9,
        weight_decay: float | None = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            hyperparameters={"momentum": momentum},
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            weight_decay=weight_decay,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)

    def interpolation_beta(self) -> float:
        return self.momentum


@keras.saving.register_keras_serializable(package="sgdlab")
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (Defazio et al. 2024) for Keras; arguments as
    ``sgdlab.ScheduleFreeAdamW`` with Keras's names (``learning_rate``, ``beta_1``, ``beta_2``,
    ``epsilon``, whose default here is the method's 1e-8)."""

    declaration = SCHEDULE_FREE_ADAMW

    def __init__(
        self,
        learning_rate: Any = 0.0025,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float | None = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            hyperparameters={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            weight_decay=weight_decay,
            name=name,
            **kwargs,
        )
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def interpolation_beta(self) -> float:
        return self.beta_1

    def step_arguments(self, variable: Any, dtype: Any) -> dict[str, Any]:
        return {**super().step_arguments(variable, dtype),
                "step": ops.cast(self.iterations + 1, dtype)}


class ScheduleFreeCallback(keras.callbacks.Callback):
    """For ``model.fit`` with a schedule-free optimizer: trains at y, validates and ends at x."""

    def _optimizer(self) -> Any:
        optimizer = getattr(self.model, "optimizer", None)
        return optimizer if isinstance(optimizer, _ScheduleFree) else None

    def _switch(self, mode: str) -> None:
        optimizer = self._optimizer()
        if optimizer is not None:
            getattr(optimizer, mode)()

    def on_train_begin(self, logs: Any = None) -> None:
        self._switch("train")

    def on_test_begin(self, logs: Any = None) -> None:
        optimizer = self._optimizer()
        self._was_training = optimizer is not None and optimizer.train_mode
        self._switch("eval")

    def on_test_end(self, logs: Any = None) -> None:
        if getattr(self, "_was_training", False):  # validation inside fit: back to training
            self._switch("train")

    def on_train_end(self, logs: Any = None) -> None:
        self._switch("eval")
