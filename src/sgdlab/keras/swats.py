"""Keras 3 ``SWATS``: the same composition as ``sgdlab.SWATS`` (Keskar & Socher 2017) with Keras's
argument names; the math is :func:`sgdlab.algorithms.adam`, :func:`sgdlab.algorithms.sgd` and the
switching functions of :mod:`sgdlab.algorithms.swats`, run with ``ops=keras.ops``.

Keras updates one variable at a time within a step, and the step may be compiled, so the phase
cannot be a Python branch: each variable's update computes the Adam step, and the SGD step once
the optimizer has switched, and keeps the one of the current phase (``ops.where``), adding its
share of p^T p and p^T g to the step's projection while in the Adam phase. After all variables,
the estimate and the switching test run once on those sums. The dot products thus run over all
the variables the optimizer updates (the paper's Algorithm 1; the PyTorch class can also do it per
param group). Phase, estimate, switch step and SGD learning rate are optimizer variables, saved
with the optimizer's other variables.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from sgdlab.algorithms import adam, sgd
from sgdlab.algorithms.swats import (
    projection_terms,
    sgd_learning_rate,
    should_switch,
    update_lr_estimate,
    validate_swats,
)
from sgdlab.keras.optimizers import _OPS, RuleOptimizer, _value
from sgdlab.keras._arguments import check_betas, check_epsilon


@keras.saving.register_keras_serializable(package="sgdlab")
class SWATS(RuleOptimizer):
    """SWATS for Keras: Adam (``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon`` placed as in
    PyTorch, L2 ``weight_decay``), then SGD with momentum ``beta_1`` once the projection estimate
    has converged (``switch_tol``) or after ``switch_at`` steps. ``switch_step`` and ``sgd_lr``
    read the switch (None before it)."""

    rule = staticmethod(adam)

    def __init__(
        self,
        learning_rate: Any = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-9,
        weight_decay: float | None = 0.0,
        switch_tol: float = 1e-9,
        switch_at: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        weight_decay = weight_decay or 0.0  # Keras configs write "no decay" as None
        check_betas(beta_1, beta_2)
        check_epsilon(epsilon)
        validate_swats(
            lr=0.0,  # learning_rate is checked (under its Keras name) by the base class
            betas=(beta_1, beta_2),
            eps=epsilon,
            weight_decay=weight_decay,
            switch_tol=switch_tol,
            switch_at=switch_at,
        )
        super().__init__(learning_rate, weight_decay=weight_decay or None, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.l2 = float(weight_decay)
        self.switch_tol = float(switch_tol)
        self.switch_at = switch_at

    def slot_groups(self) -> list[dict[str, str]]:
        return [{"exp_avg": "momentum", "exp_avg_sq": "velocity"}, {"momentum_buffer": "sgd_momentum"}]

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self._switched = self.add_variable((), initializer="zeros", name="switched")
        self._lr_estimate = self.add_variable((), initializer="zeros", name="lr_estimate")
        self._switch_step = self.add_variable((), initializer="zeros", name="switch_step")
        self._sgd_lr = self.add_variable((), initializer="zeros", name="sgd_lr")

    # --- what users read ---------------------------------------------------------------------------
    @property
    def switch_step(self) -> int | None:
        """The Adam step after which the optimizer switched to SGD (None: not yet)."""
        if not self.built or float(ops.convert_to_numpy(self._switched)) == 0:
            return None
        return int(ops.convert_to_numpy(self._switch_step))

    @property
    def sgd_lr(self) -> float | None:
        """The SGD phase's learning rate, (1 - beta_1) Lambda (None before the switch)."""
        if self.switch_step is None:
            return None
        return float(ops.convert_to_numpy(self._sgd_lr))

    # --- the step -------------------------------------------------------------------------------------
    def _apply_weight_decay(self, variables: list[Any]) -> None:
        pass  # L2, inside both rules, as in the PyTorch class

    def _backend_update_step(self, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        self._projection = [0.0, 0.0]  # this step's p^T p and p^T g, summed by update_step
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        step_sq, step_dot_grad = self._projection
        k = ops.cast(self.iterations + 1, "float32")
        in_adam = _value(self._switched) == 0
        estimate = update_lr_estimate(
            _value(self._lr_estimate), step_sq, step_dot_grad, beta2=self.beta_2, ops=ops
        )
        if self.switch_at is not None:
            criterion = k >= self.switch_at
        else:
            criterion = should_switch(estimate, beta2=self.beta_2, step=k, tolerance=self.switch_tol)
        switch_now = ops.logical_and(in_adam, criterion)
        rate = sgd_learning_rate(estimate.lr_estimate, beta1=self.beta_1, beta2=self.beta_2, step=k)
        self.assign(self._lr_estimate, ops.where(in_adam, estimate.lr_estimate, _value(self._lr_estimate)))
        self.assign(self._sgd_lr, ops.where(switch_now, ops.maximum(rate, 0.0), _value(self._sgd_lr)))
        self.assign(self._switch_step, ops.where(switch_now, k, _value(self._switch_step)))
        self.assign(self._switched, ops.where(switch_now, 1.0, _value(self._switched)))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        value, grad = _value(variable), ops.cast(gradient, dtype)
        l2 = self.l2 if self.l2 and self._use_weight_decay(variable) else 0.0
        exp_avg, exp_avg_sq = _value(self._slots["exp_avg"][index]), _value(self._slots["exp_avg_sq"][index])
        buffer = _value(self._slots["momentum_buffer"][index])

        adam_value, adam_state = adam(
            value,
            grad,
            {"step": ops.cast(self.iterations, dtype), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
            lr=ops.cast(learning_rate, dtype),
            beta1=self.beta_1,
            beta2=self.beta_2,
            eps=self.epsilon,
            weight_decay=l2,
            ops=_OPS,
        )
        # The buffer is zero until the switch, and beta1 * 0 + g = g is sgd's first buffer.
        sgd_value, sgd_state = sgd(
            value,
            grad,
            {"momentum_buffer": buffer},
            lr=ops.cast(_value(self._sgd_lr), dtype),
            momentum=self.beta_1,
            weight_decay=l2,
            ops=_OPS,
        )
        # Before any assignment: on some backends ``value`` is a view of the variable itself.
        followed = grad + l2 * value if l2 else grad
        sq, dot = projection_terms(value, adam_value, followed, ops=ops)
        self._projection[0] = self._projection[0] + ops.cast(sq, "float32")
        self._projection[1] = self._projection[1] + ops.cast(dot, "float32")

        switched = _value(self._switched) != 0
        new_exp_avg = ops.where(switched, exp_avg, adam_state["exp_avg"])
        new_exp_avg_sq = ops.where(switched, exp_avg_sq, adam_state["exp_avg_sq"])
        new_buffer = ops.where(switched, sgd_state["momentum_buffer"], buffer)
        self.assign(variable, ops.where(switched, sgd_value, adam_value))
        self.assign(self._slots["exp_avg"][index], new_exp_avg)
        self.assign(self._slots["exp_avg_sq"][index], new_exp_avg_sq)
        self.assign(self._slots["momentum_buffer"][index], new_buffer)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("convention", None)
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.l2,
                "switch_tol": self.switch_tol,
                "switch_at": self.switch_at,
            }
        )
        return config
