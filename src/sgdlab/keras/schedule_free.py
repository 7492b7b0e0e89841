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

from typing import Any, Callable, ClassVar

import keras
from keras import ops

from sgdlab.algorithms.schedule_free import (
    schedule_free_adamw,
    schedule_free_eval_point,
    schedule_free_schedule,
    schedule_free_sgd,
    schedule_free_train_point,
    validate_schedule_free_adamw,
    validate_schedule_free_sgd,
)
from sgdlab.keras._arguments import check_betas, check_epsilon
from sgdlab.keras.optimizers import _OPS, RuleOptimizer, _value


class _ScheduleFree(RuleOptimizer):
    rule: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        learning_rate: Any,
        *,
        warmup_steps: int,
        r: float,
        weight_lr_power: float,
        weight_decay: float,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, weight_decay=weight_decay or None, **base_kwargs)
        self.warmup_steps = int(warmup_steps)
        self.r = float(r)
        self.weight_lr_power = float(weight_lr_power)
        self.train_mode = True
        self._schedule = None

    def interpolation_beta(self) -> float:
        raise NotImplementedError

    # --- state ---------------------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        for variable, z in zip(variables, self._slots["z"]):
            if z is not None:
                # z starts at the initial weights (x = y = z), in a buffer of its own: JAX
                # donates optimizer and model buffers to the train step, never the same one twice.
                z.assign(ops.copy(_value(variable)))
        self._lr_max = self.add_variable((), initializer=keras.initializers.Constant(-1.0), name="lr_max")
        self._weight_sum = self.add_variable((), initializer="zeros", name="weight_sum")

    # --- the step ------------------------------------------------------------------------------
    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__} was asked to apply gradients in eval mode: call "
                "optimizer.train() before training (and optimizer.eval() before evaluating)"
            )
        return super().apply(grads, trainable_variables)

    def _backend_update_step(self, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        # The schedule is computed once per step, before the per-variable updates use it.
        self._schedule = schedule_free_schedule(
            ops.cast(self.iterations, "float32"),
            lr=ops.cast(learning_rate, "float32"),
            warmup_steps=self.warmup_steps,
            r=self.r,
            weight_lr_power=self.weight_lr_power,
            lr_max=_value(self._lr_max),
            weight_sum=_value(self._weight_sum),
            ops=ops,
        )
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        self.assign(self._lr_max, self._schedule.lr_max)
        self.assign(self._weight_sum, self._schedule.weight_sum)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        state = {key: _value(slots[index]) for key, slots in self._slots.items()}
        decay = self.weight_decay if self.weight_decay and self._use_weight_decay(variable) else 0.0
        new_variable, new_state = type(self).rule(
            _value(variable),
            ops.cast(gradient, dtype),
            state,
            lr=ops.cast(self._schedule.lr, dtype),
            ckp1=ops.cast(self._schedule.ckp1, dtype),
            weight_decay=decay,
            ops=_OPS,
            **self.rule_hyperparameters(dtype),
        )
        self.assign(variable, new_variable)
        for key, slots in self._slots.items():
            self.assign(slots[index], new_state[key])

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        pass  # the rule applies the method's own decay (see the module docstring)

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
                    variable.assign(move(_value(variable), _value(z), beta=beta))
        self.train_mode = to_train

    def finalize_variable_values(self, var_list: Any) -> None:
        super().finalize_variable_values(var_list)
        self.eval()  # model.fit ends with the average in the model, like an EMA would

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("convention", None)
        config.update(
            {"warmup_steps": self.warmup_steps, "r": self.r, "weight_lr_power": self.weight_lr_power}
        )
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (Defazio et al. 2024) for Keras; arguments as ``sgdlab.ScheduleFreeSGD``
    with Keras's names (``learning_rate``) and base-class options (clipping, schedules, ...)."""

    rule = staticmethod(schedule_free_sgd)

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
        weight_decay = weight_decay or 0.0  # Keras configs write "no decay" as None
        validate_schedule_free_sgd(
            lr=0.0,  # learning_rate is checked (under its Keras name) by the base class
            momentum=momentum,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
        )
        super().__init__(
            learning_rate,
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

    def slot_groups(self) -> list[dict[str, str]]:
        return [{"z": "z"}]

    def rule_hyperparameters(self, dtype: Any = None) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (Defazio et al. 2024) for Keras; arguments as
    ``sgdlab.ScheduleFreeAdamW`` with Keras's names (``learning_rate``, ``beta_1``, ``beta_2``,
    ``epsilon``, whose default here is the method's 1e-8)."""

    rule = staticmethod(schedule_free_adamw)

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
        weight_decay = weight_decay or 0.0  # Keras configs write "no decay" as None
        # beta_1 in (0, 1), as the rule requires (validate_schedule_free_adamw), under its Keras name.
        check_betas(beta_1, beta_2, beta_1_may_be_zero=False)
        check_epsilon(epsilon)
        validate_schedule_free_adamw(
            lr=0.0,  # learning_rate is checked (under its Keras name) by the base class
            betas=(beta_1, beta_2),
            eps=epsilon,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
        )
        super().__init__(
            learning_rate,
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

    def slot_groups(self) -> list[dict[str, str]]:
        return [{"z": "z", "exp_avg_sq": "exp_avg_sq"}]

    def rule_hyperparameters(self, dtype: Any = None) -> dict[str, Any]:
        return {
            "beta1": self.beta_1,
            "beta2": self.beta_2,
            "eps": self.epsilon,
            "step": ops.cast(self.iterations + 1, dtype),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


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
