"""Keras 3 ``Muon`` executing :mod:`sgdlab.algorithms.muon`: ``keras.optimizers.Muon``'s
signature, defaults, routing and numbers (Muon for 2-D weights, AdamW for the rest).

Its declaration is :data:`sgdlab.algorithms.muon.MUON_WITH_ADAMW`; which variables go to AdamW is
Keras's rule (not 2-D, an embedding when ``exclude_embeddings``, a path matching one of
``exclude_layers``), so this class routes by :meth:`rule_for`. The methods Keras's own Muon
exposes (``zeropower_via_newtonschulz5``, ``lr_adjust``, ``_should_use_adamw``) call the same
functions the update does.
"""

from __future__ import annotations

import re
from typing import Any

import keras
from keras import ops

from sgdlab.algorithms.decay import decay
from sgdlab.algorithms.muon import EPS, MUON, MUON_WITH_ADAMW, lr_scale, newton_schulz
from sgdlab.algorithms.rule import Rule
from sgdlab.keras._ops import OPS
from sgdlab.keras.base import RuleOptimizer, base_arguments, value_of


@keras.saving.register_keras_serializable(package="sgdlab")
class Muon(RuleOptimizer):
    """Muon for hidden 2-D weights, AdamW for the other variables: ``keras.optimizers.Muon``.

    With the default ``convention="keras"``: momentum summed (``m = momentum * m + g``),
    Newton-Schulz in the variables' dtype, the step scaled by ``rms_rate * sqrt(max(A, B))``
    (``rms_rate=None``: unscaled); AdamW with epsilon-hat at ``learning_rate * adam_lr_ratio``;
    decoupled weight decay ``weight_decay`` (Muon) and ``adam_weight_decay`` (AdamW).
    ``convention="torch"`` gives torch.optim.Muon's formulas for the matrices (averaged
    momentum, Newton-Schulz in bfloat16, its "original" scale).
    """

    declaration = MUON_WITH_ADAMW

    def __init__(
        self,
        learning_rate: Any = 0.001,
        adam_beta_1: float = 0.9,
        adam_beta_2: float = 0.999,
        adam_weight_decay: float = 0.004,
        epsilon: float = 1e-7,
        weight_decay: float = 0.004,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        exclude_layers: list[str] | None = None,
        exclude_embeddings: bool = True,
        muon_a: float = 3.4445,
        muon_b: float = -4.7750,
        muon_c: float = 2.0315,
        adam_lr_ratio: float = 1,
        momentum: float = 0.95,
        ns_steps: int = 5,
        nesterov: bool = True,
        rms_rate: float | None = 0.2,
        *,
        convention: str = "keras",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            hyperparameters={
                "adam_beta_1": adam_beta_1, "adam_beta_2": adam_beta_2, "epsilon": epsilon,
                "adam_weight_decay": adam_weight_decay, "adam_lr_ratio": adam_lr_ratio,
                "muon_a": muon_a, "muon_b": muon_b, "muon_c": muon_c, "momentum": momentum,
                "ns_steps": ns_steps, "nesterov": nesterov, "rms_rate": rms_rate,
            },
            convention=convention,
            **base_arguments(locals()),
            **kwargs,
        )
        self.exclude_layers = exclude_layers or []
        self.exclude_embeddings = exclude_embeddings

    # --- routing: Keras's rule ------------------------------------------------------------------
    def _should_use_adamw(self, variable: Any) -> bool:
        """AdamW for a variable that is not 2-D, an embedding (``exclude_embeddings``) or on a
        path matching one of ``exclude_layers``."""
        if len(variable.shape) != 2:
            return True
        if self.exclude_embeddings and "embedding" in variable.path.lower():
            return True
        return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)

    def rule_for(self, variable: Any) -> Rule:
        return type(self).declaration if self._should_use_adamw(variable) else MUON

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # Decoupled, before the step, with each route's own coefficient (Keras's Muon).
        for variable in variables:
            if not self._use_weight_decay(variable):
                continue
            coefficient = (self.adam_weight_decay if self._should_use_adamw(variable)
                           else self.weight_decay)
            if coefficient is None:
                continue
            dtype = variable.dtype
            new, _ = decay(value_of(variable), None, lr=ops.cast(self.learning_rate, dtype),
                           weight_decay=float(coefficient), decoupled=True, ops=OPS)
            variable.assign(new)

    # --- keras.optimizers.Muon's helpers, on the one definition ---------------------------------
    def zeropower_via_newtonschulz5(self, x: Any, steps: int) -> Any:
        """Newton-Schulz orthogonalization of ``x`` (matrices on the last two axes)."""
        if len(ops.shape(x)) < 2:
            raise ValueError(
                "Expected gradient or momentum to have at least 2 dimensions. "
                f"Received: shape={ops.shape(x)}"
            )
        return newton_schulz(x, coefficients=(self.muon_a, self.muon_b, self.muon_c),
                             steps=steps, eps=EPS, dtype=None, eps_form="add", ops=OPS)

    def lr_adjust(self, x: Any) -> Any:
        """``x`` scaled as Muon's step is: ``rms_rate * sqrt(max(A, B))`` (None: unscaled)."""
        return x * lr_scale(ops.shape(x), "match_rms_adamw", self.rms_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"exclude_layers": self.exclude_layers,
                       "exclude_embeddings": self.exclude_embeddings})
        return config
