"""A rule declared once, as data: what every face and fast path needs to know about an algorithm.

An algorithm's math is a pure function (``update``); its declaration, a :class:`Rule` written
beside it in the same file, says everything else once:

* its **hyperparameters**, each under its canonical name (the update function's keyword) with
  the name each face gives it: torch's param-group key (``betas[0]`` is the first element of
  torch's ``betas`` pair) and Keras's argument (``beta_1``);
* its per-parameter **state**: the entries, how each starts (zeros, a copy of the parameter, or
  created by the update from the first gradient), under which hyperparameters it exists, and
  the name of the Keras variable holding it; counters (step counts) are entries too: torch
  keeps one per parameter, Keras derives it from the optimizer's iterations;
* its **validation** (torch.optim's words; the Keras face rewords the same checks, see
  :func:`sgdlab.algorithms._checks.invalid`) and the options of each framework
  **convention**;
* its **capabilities**: ``elementwise`` (the update is a function of each element alone, so the
  grouped fast path may run it over concatenated tensors and populations may vectorize it; a
  rule that reduces over a tensor or a group is not) and ``compact_state`` (whether its state
  may be stored in bfloat16 or 8 bits: True for both, or a tuple naming those it takes, e.g.
  ``("bfloat16",)``);
* ``stacks``: whether the update takes a stack of same-shape tensors on leading axes and updates
  each as if alone (Muon's Newton-Schulz, batched matrix products): the torch face then runs a
  non-elementwise rule once per shape instead of once per tensor;
* its **routes**, for an optimizer that updates different parameters with different rules
  (Muon for matrices, AdamW for the rest): a list of (predicate, rule) tried in order.

The adapters (:mod:`sgdlab.optim`, :mod:`sgdlab.keras`) read these declarations; none of them
keeps its own table of names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: A state entry's starting value.
ZEROS = "zeros"  # zeros like the parameter (in the compact storage dtype, where chosen)
COPY = "copy"  # a copy of the parameter (schedule-free's z)
FROM_GRADIENT = "from gradient"  # made by the update at the first step (SGD's momentum buffer)
COUNTER = "counter"  # a step count, 0 at the start (torch: a 0-d tensor per parameter; Keras: the
#                      optimizer's iterations)


@dataclass(frozen=True)
class Hyperparameter:
    """One keyword argument of the update function and its names in each face."""

    name: str
    #: torch's param-group key; ``"betas[0]"`` is element 0 of the pair under ``betas``.
    #: ``None``: not a param-group key (a value the optimizer derives each step, e.g. a
    #: schedule's learning rate).
    torch: str | None = ""
    #: Keras's argument name; ``None``: the Keras face does not take it.
    keras: str | None = ""

    @property
    def torch_key(self) -> str | None:
        return self.name if self.torch == "" else self.torch

    @property
    def keras_key(self) -> str | None:
        return self.name if self.keras == "" else self.keras


@dataclass(frozen=True)
class StateEntry:
    """One per-parameter state tensor."""

    key: str  # torch.optim's state key, and the update function's
    start: str = ZEROS
    keras: str = ""  # the Keras variable's name (default: key)
    #: Whether the entry exists, given the canonical hyperparameters (e.g. AMSGrad's maximum).
    when: Callable[[Mapping[str, Any]], bool] | None = None
    #: Keras creates variables group by group (its own optimizers' order, so checkpoints load).
    keras_group: int = 0

    def exists(self, hyperparameters: Mapping[str, Any]) -> bool:
        return self.when is None or bool(self.when(hyperparameters))


@dataclass(frozen=True)
class Route:
    """Parameters for which ``applies(param)`` is true are updated by ``rule``."""

    applies: Callable[[Any], bool]
    rule: "Rule"
    description: str = ""


@dataclass(frozen=True)
class Rule:
    """An algorithm, declared: see the module docstring."""

    name: str
    update: Callable[..., tuple[Any, dict[str, Any]]]
    hyperparameters: tuple[Hyperparameter, ...] = ()
    state: tuple[StateEntry, ...] = ()
    validate: Callable[..., None] = field(default=lambda **_: None)
    #: Keyword options of ``update`` that give it a framework's formulas (torch/keras).
    conventions: Callable[[str], dict[str, Any]] = field(default=lambda convention: {})
    elementwise: bool = True
    compact_state: bool | tuple[str, ...] = True
    stacks: bool = False
    routes: tuple[Route, ...] = ()

    # --- names ------------------------------------------------------------------------------
    def arguments(self, values: Mapping[str, Any], face: str) -> dict[str, Any]:
        """The update's keyword arguments from a face's values (a torch param group, or a
        Keras optimizer's attributes as a mapping), canonical names in declaration order.
        Hyperparameters the face does not name, or whose value is absent, are left out (the
        update's default, or a value the adapter adds)."""
        arguments: dict[str, Any] = {}
        # Once per group and step: the names are parsed once per declaration (_keys).
        for name, base, index in self._keys(face):
            if base in values:
                value = values[base]
                arguments[name] = value if index is None else value[index]
        return arguments

    def _keys(self, face: str) -> list[tuple[str, str, int | None]]:
        cache = self.__dict__.setdefault("_parsed_keys", {})
        keys = cache.get(face)
        if keys is None:
            keys = cache[face] = [
                (h.name, *_split(key)) for h in self.hyperparameters
                if (key := h.torch_key if face == "torch" else h.keras_key) is not None]
        return keys

    def face_name(self, name: str, face: str) -> str:
        """What ``face`` calls the hyperparameter that torch calls ``name`` (or that is
        canonically ``name``); ``name`` itself if the declaration does not know it."""
        for hyperparameter in self.hyperparameters:
            if name in (hyperparameter.name, hyperparameter.torch_key):
                key = hyperparameter.torch_key if face == "torch" else hyperparameter.keras_key
                return key or name
        return name

    def torch_values(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical values arranged as torch's param-group keys (``betas`` as a pair), the
        form ``validate`` takes."""
        values: dict[str, Any] = {}
        pairs: dict[str, dict[int, Any]] = {}
        for hyperparameter in self.hyperparameters:
            key = hyperparameter.torch_key
            if key is None or hyperparameter.name not in arguments:
                continue
            value = arguments[hyperparameter.name]
            base, index = _split(key)
            if index is None:
                values[base] = value
            else:
                pairs.setdefault(base, {})[index] = value
        for base, items in pairs.items():
            values[base] = tuple(items[i] for i in sorted(items))
        return values

    # --- state ------------------------------------------------------------------------------
    @property
    def counters(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.state if entry.start == COUNTER)

    def entries(self, arguments: Mapping[str, Any]) -> list[StateEntry]:
        """The state entries a parameter has under these canonical hyperparameters."""
        return [entry for entry in self.state if entry.exists(arguments)]

    def init_state(self, param: Any, arguments: Mapping[str, Any], *,
                   zeros_like: Callable[[Any], Any], clone: Callable[[Any], Any]) -> dict[str, Any]:
        """A parameter's state before its first step: counters at 0, the entries that start as
        zeros or as a copy (those made from the first gradient are left out)."""
        state: dict[str, Any] = {}
        for entry in self.entries(arguments):
            if entry.start == COUNTER:
                state[entry.key] = 0
            elif entry.start == ZEROS:
                state[entry.key] = zeros_like(param)
            elif entry.start == COPY:
                state[entry.key] = clone(param)
        return state

    # --- routes -----------------------------------------------------------------------------
    def route(self, param: Any) -> "Rule":
        """The rule that updates ``param``: the first route that applies, else this rule."""
        for route in self.routes:
            if route.applies(param):
                return route.rule
        return self


def _split(key: str) -> tuple[str, int | None]:
    if key.endswith("]") and "[" in key:
        base, index = key[:-1].split("[", 1)
        return base, int(index)
    return key, None
