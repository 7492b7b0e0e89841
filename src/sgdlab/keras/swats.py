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

from sgdlab import algorithms
from sgdlab.algorithms.swats import (
    projection_terms,
    sgd_learning_rate,
    should_switch,
    update_lr_estimate,
)
from sgdlab.keras.base import RuleOptimizer, value_of


@keras.saving.register_keras_serializable(package="sgdlab")
class SWATS(RuleOptimizer):
    """SWATS for Keras: Adam (``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon`` placed as in
    PyTorch, L2 ``weight_decay``), then SGD with momentum ``beta_1`` once the projection estimate
    has converged (``switch_tol``) or after ``switch_at`` steps. ``switch_step`` and ``sgd_lr``
    read the switch (None before it)."""

    declaration = algorithms.SWATS
    takes_convention = False
    weight_decay_in_rule = True  # L2, inside both phases, as in the PyTorch class

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
        super().__init__(
            learning_rate,
            hyperparameters={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
            schedule={"switch_tol": switch_tol, "switch_at": switch_at},
            weight_decay=weight_decay or None,
            name=name,
            **kwargs,
        )
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.l2 = float(weight_decay)
        self.switch_tol = float(switch_tol)
        self.switch_at = switch_at

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

    # --- the switch: a reduction over all variables, around their updates --------------------------
    # Keras updates one variable at a time within a step, and the step may be compiled, so the
    # phase cannot be a Python branch: the rule gets it as a traced boolean (algorithms.swats).
    def before_step(self, learning_rate: Any) -> None:
        self._projection = [0.0, 0.0]  # this step's p^T p and p^T g, summed by after_update

    def step_arguments(self, variable: Any, dtype: Any) -> dict[str, Any]:
        return {"switched": value_of(self._switched) != 0,
                "sgd_lr": ops.cast(value_of(self._sgd_lr), dtype)}

    def after_update(self, variable: Any, old: Any, gradient: Any, new: Any) -> None:
        # After the switch the terms are not used (the estimate stays), so the update kept
        # (SGD's then) does not matter.
        sq, dot = projection_terms(old, new, gradient, weight_decay=self._l2_coefficient(variable),
                                   ops=ops)
        self._projection[0] = self._projection[0] + ops.cast(sq, "float32")
        self._projection[1] = self._projection[1] + ops.cast(dot, "float32")

    def after_step(self) -> None:
        step_sq, step_dot_grad = self._projection
        k = ops.cast(self.iterations + 1, "float32")
        in_adam = value_of(self._switched) == 0
        estimate = update_lr_estimate(
            value_of(self._lr_estimate), step_sq, step_dot_grad, beta2=self.beta_2, ops=ops
        )
        if self.switch_at is not None:
            criterion = k >= self.switch_at
        else:
            criterion = should_switch(estimate, beta2=self.beta_2, step=k, tolerance=self.switch_tol)
        switch_now = ops.logical_and(in_adam, criterion)
        rate = sgd_learning_rate(estimate.lr_estimate, beta1=self.beta_1, beta2=self.beta_2, step=k)
        self.assign(self._lr_estimate, ops.where(in_adam, estimate.lr_estimate, value_of(self._lr_estimate)))
        self.assign(self._sgd_lr, ops.where(switch_now, ops.maximum(rate, 0.0), value_of(self._sgd_lr)))
        self.assign(self._switch_step, ops.where(switch_now, k, value_of(self._switch_step)))
        self.assign(self._switched, ops.where(switch_now, 1.0, value_of(self._switched)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"weight_decay": self.l2, "switch_tol": self.switch_tol,
                       "switch_at": self.switch_at})
        return config
