"""Keras 3 ``SGD``, ``Adam`` and ``AdamW`` executing :mod:`sgdlab.algorithms` (the machinery they
share is :class:`sgdlab.keras.base.RuleOptimizer`).

``convention`` picks whose formulas the hyperparameters mean (see
:mod:`sgdlab.algorithms.conventions` and docs/conventions.md):

* ``"keras"`` (default): the numbers of ``keras.optimizers.SGD`` / ``Adam`` / ``AdamW``.
* ``"torch"``: the numbers of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` given the same values,
  so a PyTorch recipe keeps its trajectory in Keras (L2 weight decay for SGD and Adam, momentum
  buffer without the learning rate, epsilon outside the bias correction). Defaults stay Keras's
  (e.g. ``epsilon=1e-7``; torch's is 1e-8): pass the recipe's values.
"""

from __future__ import annotations

from typing import Any

import keras

from sgdlab import algorithms
from sgdlab.keras._arguments import check_momentum, check_weight_decay
from sgdlab.keras.base import RuleOptimizer, base_arguments

__all__ = ["SGD", "Adam", "AdamW", "RuleOptimizer"]


@keras.saving.register_keras_serializable(package="sgdlab")
class SGD(RuleOptimizer):
    """Gradient descent with (Nesterov) momentum: ``keras.optimizers.SGD``'s signature and numbers.

    Runs :func:`sgdlab.algorithms.sgd`; with the default ``convention="keras"`` momentum is the
    velocity ``v = momentum * v - lr * g``, ``w += v`` (Nesterov: ``w += momentum * v - lr * g``)
    and ``weight_decay`` is decoupled. ``convention="torch"`` gives ``torch.optim.SGD``'s formulas.
    """

    declaration = algorithms.SGD

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
        momentum = check_momentum(momentum)  # Keras's own limit (<= 1), in its words
        super().__init__(
            learning_rate,
            # Keras accepts nesterov without momentum, where it changes nothing.
            hyperparameters={"momentum": momentum, "nesterov": bool(nesterov) and momentum != 0},
            convention=convention,
            **base_arguments(locals()),
            **kwargs,
        )
        self.nesterov = bool(nesterov)


@keras.saving.register_keras_serializable(package="sgdlab")
class Adam(RuleOptimizer):
    """Adam / AMSGrad: ``keras.optimizers.Adam``'s signature and numbers.

    Runs :func:`sgdlab.algorithms.adam`; with the default ``convention="keras"`` epsilon is the
    paper's epsilon-hat, ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)``, and
    ``weight_decay`` is decoupled. ``convention="torch"`` gives ``torch.optim.Adam``'s formulas
    (epsilon outside the bias correction, ``weight_decay`` as L2 added to the gradient).
    """

    declaration = algorithms.ADAM

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
        super().__init__(
            learning_rate,
            hyperparameters={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                             "amsgrad": bool(amsgrad)},
            convention=convention,
            **base_arguments(locals()),
            **kwargs,
        )
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)


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
        check_weight_decay(weight_decay)  # required here, in keras.optimizers.AdamW's words
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            **base_arguments(locals()),
            convention=convention,
            **kwargs,
        )
