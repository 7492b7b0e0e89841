"""The Keras face of every sgdlab rule, once: ``RuleOptimizer``, a ``keras.optimizers.Optimizer``.

Keras's base class already owns everything that is not the update itself: the iteration count,
learning-rate schedules, gradient clipping (``clipnorm``, ``clipvalue``, ``global_clipnorm``),
the moving average of the weights (``use_ema``), gradient accumulation, loss scaling, decoupled
weight decay and ``exclude_from_weight_decay``. This class adds, from the rule's declaration
(:class:`sgdlab.algorithms.rule.Rule`): the checks of the hyperparameters (the declaration's
validation, reworded in Keras's style), the per-variable state (``build``), one ``update_step``
that runs the rule with ``ops`` for the backend (:mod:`sgdlab.keras._ops`), and the config. It
holds no optimizer math.

Group-level steps, as in the PyTorch face: ``before_step`` runs before the step's first
variable (e.g. a schedule), ``after_update`` after each variable's update (e.g. gathering a
reduction over the variables), ``after_step`` after the last one. A subclass writes its
signature, and these hooks if its algorithm has any.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import keras
from keras import ops

from sgdlab.algorithms.conventions import validate_convention
from sgdlab.algorithms.rule import COPY, COUNTER, Rule
from sgdlab.keras._gradients import gradients
from sgdlab.keras._ops import OPS

State = dict[str, Any]

#: Hyperparameters Keras's base class owns (schedules, decoupled decay): not attributes here.
BASE_OWNED = ("learning_rate", "weight_decay")

# An update must not record an autograd graph on the torch backend (apply_gradients may run with
# grad enabled, e.g. from minimize), as Keras's own torch optimizers ensure with no_grad.
if keras.config.backend() == "torch":
    import torch as _torch

    _no_grad = _torch.no_grad
else:
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


def value_of(variable: Any) -> Any:
    """The backend tensor behind a Keras variable. Arithmetic on a Keras variable itself converts
    Python numbers at floatx (float32) first, which would round 0.9 for a float64 variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def checked(rule: Rule, keras_values: dict[str, Any], convention: str = "torch",
            **schedule: Any) -> None:
    """Run the declaration's validation on values given under Keras's names (plus, in
    ``schedule``, arguments that are not the rule's, under their own names), and word an
    invalid value as Keras does: ``Argument `beta_1` must be a float in [0, 1). Received:
    beta_1=1.0``."""
    # Every rule validates ``lr``, Keras's learning_rate (a schedule's value, for some rules).
    values = {"lr": keras_values.get("learning_rate", 0.0)}
    for declared in _rules(rule):  # a routed rule's routes have hyperparameters of their own
        canonical = {}
        for hyperparameter in declared.hyperparameters:
            key = hyperparameter.keras_key
            if key is not None and key in keras_values:
                canonical[hyperparameter.name] = keras_values[key]
        values.update(declared.torch_values(canonical))
    values.update({**schedule, **rule.conventions(convention)})
    try:
        rule.validate(**values)
    except ValueError as error:
        invalid = getattr(error, "invalid", None)
        if invalid is None:
            raise
        name = "learning_rate" if invalid.name == "lr" else rule.face_name(invalid.name, "keras")
        requirement = ("a number, not NaN" if invalid.requirement.startswith("a number")
                       else f"a float {invalid.requirement}")
        raise ValueError(
            f"Argument `{name}` must be {requirement}. Received: {name}={invalid.value!r}"
        ) from None


def _rules(rule: Rule) -> list[Rule]:
    """``rule`` and the rules of its routes (each once)."""
    found = [rule]
    for route in rule.routes:
        if all(route.rule is not known for known in found):
            found.append(route.rule)
    return found


#: keras.optimizers.Optimizer's own arguments: every class's signature lists them (Keras's
#: signatures), and hands them on to the base class unchanged.
KERAS_BASE_ARGUMENTS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                        "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                        "gradient_accumulation_steps", "name")


def base_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """The Keras base class's arguments among a constructor's ``locals()``."""
    return {key: values[key] for key in KERAS_BASE_ARGUMENTS if key in values}


def learning_rate_value(learning_rate: Any) -> float:
    """A learning rate to validate: a number as it is; a schedule or callable is Keras's to
    check (0 stands in for it)."""
    if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool):
        return learning_rate
    return 0.0


class RuleOptimizer(keras.optimizers.Optimizer):
    """Base class: runs the declared rule in ``update_step`` on the state it declares."""

    declaration: ClassVar[Rule]
    #: Whether the class takes ``convention`` ("keras" or "torch").
    takes_convention: ClassVar[bool] = True
    #: Where weight decay happens: None, by convention (Keras's base decouples it; torch's SGD and
    #: Adam add it to the gradient, in the rule); True, always in the rule (the method's own).
    weight_decay_in_rule: ClassVar[bool | None] = None
    #: torch.optim decouples this class's weight decay (AdamW) instead of adding it as L2.
    torch_decouples_weight_decay: ClassVar[bool] = False

    def __init__(self, learning_rate: Any, *, hyperparameters: dict[str, Any],
                 schedule: dict[str, Any] | None = None, convention: str = "keras",
                 **base_kwargs: Any) -> None:
        """``hyperparameters``: the rule's, under Keras's names (kept as attributes);
        ``schedule``: arguments that the declaration's validation checks but that are not the
        rule's (a schedule's, kept by the subclass)."""
        if type(self).takes_convention:
            validate_convention(convention)
        weight_decay = base_kwargs.get("weight_decay")
        checked(type(self).declaration,
                {"learning_rate": learning_rate_value(learning_rate),
                 "weight_decay": 0.0 if weight_decay is None else weight_decay,
                 **hyperparameters},
                convention, **(schedule or {}))
        super().__init__(learning_rate=learning_rate, **base_kwargs)
        self.convention = convention
        for key, value in hyperparameters.items():
            setattr(self, key, value)

    # --- state ---------------------------------------------------------------------------------
    def _declared(self, rule: Rule | None = None) -> dict[str, Any]:
        """``rule``'s hyperparameters (default: the declaration's) that this object holds, under
        their canonical names, with the convention's options."""
        rule = rule or type(self).declaration
        values = {}
        for hyperparameter in rule.hyperparameters:
            key = hyperparameter.keras_key
            if key is not None and key not in BASE_OWNED and hasattr(self, key):
                values[key] = getattr(self, key)
        return {**rule.arguments(values, "keras"), **rule.conventions(self.convention)}

    def slot_groups(self) -> list[dict[str, str]]:
        """Per-variable state: groups of {rule state key: Keras variable name}. Variables are
        created group by group, interleaved over the model variables within a group, which
        reproduces keras.optimizers' variable order (so their checkpoints load)."""
        groups: dict[int, dict[str, str]] = {}
        for entry in type(self).declaration.entries(self._declared()):
            if entry.start != COUNTER:
                groups.setdefault(entry.keras_group, {})[entry.key] = entry.keras or entry.key
        return [groups[i] for i in sorted(groups)]

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        copies = {entry.key for entry in type(self).declaration.state if entry.start == COPY}
        slots: dict[str, list[Any]] = {}
        if type(self).declaration.routes:
            self._slots = self._routed_slots(variables)
            return
        for group in self.slot_groups():
            for key in group:
                slots[key] = []
            for variable in variables:
                # Variables that Keras overwrites with their gradient never reach update_step.
                skip = getattr(variable, "overwrite_with_gradient", False)
                for key, name in group.items():
                    slot = None if skip else self.add_variable_from_reference(variable, name=name)
                    if slot is not None and key in copies:
                        # A copy of the weights, in a buffer of its own: JAX donates optimizer
                        # and model buffers to the train step, never the same one twice.
                        slot.assign(ops.copy(value_of(variable)))
                    slots[key].append(slot)
        self._slots = slots

    def rule_for(self, variable: Any) -> Rule:
        """The rule that updates ``variable``: the declaration's route for it (a subclass may
        route on what only it knows, e.g. layer names)."""
        return type(self).declaration.route(variable)

    def _routed_slots(self, variables: list[Any]) -> dict[str, list[Any]]:
        """Slots of a routed declaration, variable by variable (each with its own rule's entries,
        in declaration order), as keras.optimizers.Muon creates them; None where a variable's
        rule has no such entry."""
        slots: dict[str, list[Any]] = {}
        # Decided once, on the Keras variables: update_step may see the backend's own variable.
        self._variable_rules = [self.rule_for(variable) for variable in variables]
        for index, variable in enumerate(variables):
            if getattr(variable, "overwrite_with_gradient", False):
                continue
            rule = self._variable_rules[index]
            for entry in rule.entries(self._declared(rule)):
                if entry.start == COUNTER:
                    continue
                column = slots.setdefault(entry.key, [None] * len(variables))
                column[index] = self.add_variable_from_reference(
                    variable, name=entry.keras or entry.key)
                if entry.start == COPY:
                    column[index].assign(ops.copy(value_of(variable)))
        return slots

    # --- group-level steps ------------------------------------------------------------------------
    def before_step(self, learning_rate: Any) -> None:
        """Called once per step, before the first variable's update."""

    def step_arguments(self, variable: Any, dtype: Any) -> dict[str, Any]:
        """Keyword arguments of the rule that the group-level steps derive for this step."""
        return {}

    def after_update(self, variable: Any, old: Any, gradient: Any, new: Any) -> None:
        """Called after the rule computed ``variable``'s new value ``new`` from ``old`` and
        ``gradient``, before it is assigned."""

    def after_step(self) -> None:
        """Called once per step, after the last variable's update."""

    # --- the step -------------------------------------------------------------------------------
    def _backend_update_step(self, grads: Any, variables: Any, learning_rate: Any) -> None:
        # After the base class has clipped (Keras clips a tf.IndexedSlices as one), accumulated and
        # decayed: every update_step sees dense tensors.
        grads = [_dense(gradient) for gradient in grads]
        self.before_step(learning_rate)
        super()._backend_update_step(grads, variables, learning_rate)
        self.after_step()

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        rule = (self._variable_rules[index] if type(self).declaration.routes
                else type(self).declaration)
        old = value_of(variable)
        grad = ops.cast(gradient, dtype)
        state = {key: value_of(slots[index]) for key, slots in self._slots.items()
                 if slots[index] is not None}
        # The rule counts this step as step + 1; Keras's base increments iterations afterwards.
        state.update({key: ops.cast(self.iterations, dtype) for key in rule.counters})
        arguments = {
            **self._declared(rule),
            "lr": ops.cast(learning_rate, dtype),
            "weight_decay": self._l2_coefficient(variable),
            **self.step_arguments(variable, dtype),
        }
        with _no_grad():
            new, new_state = rule.update(old, grad, state, ops=OPS, **arguments)
            # Before any assignment: on some backends ``old`` is a view of the variable itself.
            self.after_update(variable, old, grad, new)
            self.assign(variable, new)
            for key, slots in self._slots.items():
                if slots[index] is not None:
                    self.assign(slots[index], new_state[key])

    # --- weight decay: Keras's base decouples it; torch's SGD and Adam add it to the gradient ---
    @property
    def _weight_decay_in_rule(self) -> bool:
        if type(self).weight_decay_in_rule is not None:
            return type(self).weight_decay_in_rule
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
        for hyperparameter in (h for rule in _rules(type(self).declaration)
                               for h in rule.hyperparameters):
            key = hyperparameter.keras_key
            if key is not None and key not in BASE_OWNED and hasattr(self, key):
                config[key] = getattr(self, key)
        if type(self).takes_convention:
            config["convention"] = self.convention
        return config
