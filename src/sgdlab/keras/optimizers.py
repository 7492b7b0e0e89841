"""Keras 3 adapters: ``keras.optimizers.Optimizer`` subclasses that execute ``sgdlab.algorithms``.

Keras's base class already owns everything that is not the update itself: the iteration count,
learning-rate schedules, gradient clipping (``clipnorm``, ``clipvalue``, ``global_clipnorm``),
the moving average of the weights (``use_ema``), gradient accumulation, loss scaling, decoupled
weight decay and ``exclude_from_weight_decay``. These classes only create the per-variable state
in ``build()`` and, in ``update_step``, call the same rule that ``sgdlab.SGD`` / ``sgdlab.Adam``
run on torch, with ``ops=keras.ops``, then assign what it returns. They hold no optimizer math.

``convention`` picks whose formulas the hyperparameters mean (see
:mod:`sgdlab.algorithms.conventions` and docs/conventions.md):

* ``"keras"`` (default): the numbers of ``keras.optimizers.SGD`` / ``Adam`` / ``AdamW``.
* ``"torch"``: the numbers of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` given the same values,
  so a PyTorch recipe keeps its trajectory in Keras (L2 weight decay for SGD and Adam, momentum
  buffer without the learning rate, epsilon outside the bias correction). Defaults stay Keras's
  (e.g. ``epsilon=1e-7``; torch's is 1e-8): pass the recipe's values.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar

import keras
from keras import ops

from sgdlab.algorithms import adam, sgd
from sgdlab.algorithms.conventions import adam_options, sgd_options, validate_convention
from sgdlab.keras._arguments import (
    check_betas,
    check_epsilon,
    check_learning_rate,
    check_momentum,
    check_weight_decay,
)
from sgdlab.keras._gradients import gradients

State = dict[str, Any]

# What the rules call as ops.sqrt / ops.maximum. keras.ops everywhere except on the torch backend,
# whose tensors are torch tensors: there keras.ops.maximum promotes two float64 inputs to float32
# (Keras 3.15), which would round AMSGrad's running maximum, so torch's own functions are used.
# There, too, an update must not record an autograd graph (apply_gradients may run with grad
# enabled, e.g. from minimize), as Keras's own torch optimizers ensure with no_grad.
if keras.config.backend() == "torch":
    import torch as _OPS

    _no_grad = _OPS.no_grad
else:
    _OPS = ops
    _no_grad = contextlib.nullcontext

# The rules take dense tensors. On TensorFlow, the gradient of a row lookup (an Embedding layer)
# is a tf.IndexedSlices: the rows looked up, once per lookup, and their indices. The rules get its
# dense form (a row looked up twice: the sum of its two slices), the gradient itself, which is
# what they get on the torch and jax backends. Keras's own Adam on TensorFlow squares each slice
# on its own instead, so there it differs for rows looked up more than once (docs/drop-in.md).
if keras.config.backend() == "tensorflow":
    import tensorflow as _tf

    def _dense(gradient: Any) -> Any:
        if isinstance(gradient, _tf.IndexedSlices):
            return _tf.convert_to_tensor(gradient)
        return gradient

else:

    def _dense(gradient: Any) -> Any:
        return gradient


def _value(variable: Any) -> Any:
    # The backend tensor behind a Keras variable. Arithmetic on a Keras variable itself converts
    # Python numbers at floatx (float32) first, which would round 0.9 for a float64 variable.
    return variable.value if isinstance(variable, keras.Variable) else variable


class RuleOptimizer(keras.optimizers.Optimizer):
    """Base class: runs ``rule`` in ``update_step`` with the state created by ``slot_groups``."""

    rule: ClassVar[Callable[..., tuple[Any, State]]]
    #: torch.optim decouples this class's weight decay (AdamW) instead of adding it as L2.
    torch_decouples_weight_decay: ClassVar[bool] = False

    def __init__(self, learning_rate: Any, *, convention: str = "keras", **base_kwargs: Any):
        validate_convention(convention)
        check_learning_rate(learning_rate)
        check_weight_decay(base_kwargs.get("weight_decay"))
        super().__init__(learning_rate=learning_rate, **base_kwargs)
        self.convention = convention

    # --- what a subclass provides -------------------------------------------------------------
    def slot_groups(self) -> list[dict[str, str]]:
        """Per-variable state: groups of {rule state key: Keras variable name}.

        Variables are created group by group, interleaved over the model variables within a
        group, which reproduces keras.optimizers' variable order (so their checkpoints load).
        """
        raise NotImplementedError

    def rule_hyperparameters(self) -> dict[str, Any]:
        """The rule's keyword arguments other than ``lr``, ``weight_decay`` and ``ops``."""
        raise NotImplementedError

    def counters(self, dtype: Any) -> State:
        """State shared by all variables, e.g. Adam's step count (Keras keeps it in the base)."""
        return {}

    # --- Keras's contract ----------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        slots: dict[str, list[Any]] = {}
        for group in self.slot_groups():
            for key in group:
                slots[key] = []
            for variable in variables:
                # Variables that Keras overwrites with their gradient never reach update_step.
                skip = getattr(variable, "overwrite_with_gradient", False)
                for key, name in group.items():
                    slots[key].append(
                        None if skip else self.add_variable_from_reference(variable, name=name)
                    )
        self._slots = slots

    def _backend_update_step(self, grads: Any, variables: Any, learning_rate: Any) -> None:
        # After the base class has clipped (Keras clips a tf.IndexedSlices as one), accumulated and
        # decayed, and before any update_step: so every subclass's update_step sees dense tensors.
        grads = [_dense(gradient) for gradient in grads]
        super()._backend_update_step(grads, variables, learning_rate)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        state = {key: _value(slots[index]) for key, slots in self._slots.items()}
        state.update(self.counters(dtype))
        with _no_grad():
            new_variable, new_state = type(self).rule(
                _value(variable),
                ops.cast(gradient, dtype),
                state,
                lr=ops.cast(learning_rate, dtype),
                weight_decay=self._l2_coefficient(variable),
                ops=_OPS,
                **self.rule_hyperparameters(),
            )
            self.assign(variable, new_variable)
            for key, slots in self._slots.items():
                self.assign(slots[index], new_state[key])

    # --- weight decay: Keras's base decouples it; torch's SGD and Adam add it to the gradient ---
    @property
    def _weight_decay_in_rule(self) -> bool:
        return self.convention == "torch" and not self.torch_decouples_weight_decay

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # The base's decay, theta -= lr * wd * theta before the step, is Keras's formula and also
        # torch.optim.AdamW's. Under torch's convention SGD and Adam use L2 instead (in the rule).
        if not self._weight_decay_in_rule:
            super()._apply_weight_decay(variables)

    def _l2_coefficient(self, variable: Any) -> float:
        if not (self._weight_decay_in_rule and self.weight_decay):
            return 0.0
        # _use_weight_decay honours exclude_from_weight_decay(), as the base's own decay does.
        return self.weight_decay if self._use_weight_decay(variable) else 0.0

    # --- the TF2-era API --------------------------------------------------------------------------
    def minimize(self, loss: Any, var_list: Any, tape: Any = None) -> Any:
        """Compute the gradients of ``loss`` for ``var_list`` and apply them (one step).

        ``loss`` is a zero-argument callable returning the value to minimize, or (tensorflow
        backend, with the ``tape`` that recorded it; torch backend) a scalar tensor. ``var_list``
        is a list of variables or a zero-argument callable returning one. Returns the iteration
        count, as ``tf.keras.optimizers.Optimizer.minimize`` did in TensorFlow 2.
        """
        grads, variables = gradients(loss, var_list, tape=tape, scale=self.scale_loss)
        self.apply_gradients(zip(grads, variables))
        return self.iterations

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["convention"] = self.convention
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class SGD(RuleOptimizer):
    """Gradient descent with (Nesterov) momentum: ``keras.optimizers.SGD``'s signature and numbers.

    Runs :func:`sgdlab.algorithms.sgd`; with the default ``convention="keras"`` momentum is the
    velocity ``v = momentum * v - lr * g``, ``w += v`` (Nesterov: ``w += momentum * v - lr * g``)
    and ``weight_decay`` is decoupled. ``convention="torch"`` gives ``torch.optim.SGD``'s formulas.
    """

    rule = staticmethod(sgd)

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        *,
        convention: str = "keras",
        **kwargs: Any,
    ) -> None:
        momentum = check_momentum(momentum)
        super().__init__(
            learning_rate,
            convention=convention,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def slot_groups(self) -> list[dict[str, str]]:
        if self.momentum == 0:
            return []
        key = "velocity" if self.convention == "keras" else "momentum_buffer"
        return [{key: "momentum"}]

    def rule_hyperparameters(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            **sgd_options(self.convention),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class Adam(RuleOptimizer):
    """Adam / AMSGrad: ``keras.optimizers.Adam``'s signature and numbers.

    Runs :func:`sgdlab.algorithms.adam`; with the default ``convention="keras"`` epsilon is the
    paper's epsilon-hat, ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)``, and
    ``weight_decay`` is decoupled. ``convention="torch"`` gives ``torch.optim.Adam``'s formulas
    (epsilon outside the bias correction, ``weight_decay`` as L2 added to the gradient).
    """

    rule = staticmethod(adam)

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        *,
        convention: str = "keras",
        **kwargs: Any,
    ) -> None:
        check_betas(beta_1, beta_2)
        check_epsilon(epsilon)
        super().__init__(
            learning_rate,
            convention=convention,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)

    def slot_groups(self) -> list[dict[str, str]]:
        groups = [{"exp_avg": "momentum", "exp_avg_sq": "velocity"}]
        if self.amsgrad:
            groups.append({"max_exp_avg_sq": "velocity_hat"})
        return groups

    def counters(self, dtype: Any) -> State:
        # The rule counts this step as step + 1; Keras's base increments iterations afterwards.
        return {"step": ops.cast(self.iterations, dtype)}

    def rule_hyperparameters(self) -> dict[str, Any]:
        return {
            "beta1": self.beta_1,
            "beta2": self.beta_2,
            "eps": self.epsilon,
            "amsgrad": self.amsgrad,
            **adam_options(self.convention),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="sgdlab")
class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (default 0.004), ``keras.optimizers.AdamW``'s
    signature and numbers. Decoupled decay is also torch.optim.AdamW's, so here the two
    conventions differ only in where epsilon sits."""

    torch_decouples_weight_decay = True

    def __init__(
        self,
        learning_rate: Any = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        *,
        convention: str = "keras",
        **kwargs: Any,
    ) -> None:
        check_weight_decay(weight_decay, required=True)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            convention=convention,
            **kwargs,
        )
