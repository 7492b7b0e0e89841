"""Search spaces: what ``sgdlab tune search`` varies, and the ``--space`` language to change it.

Every optimizer gets a default space from the hyperparameters it accepts (its signature)::

    lr             log-uniform; SGD family 1e-3..1, Adam family 1e-5..1e-1, others class default /100..x30
    momentum       0.5..0.99, log-uniform in 1 - momentum (0.9 -> 0.99 is as big a step as 0.5 -> 0.9)
    weight_decay   log-uniform; 1e-6..1e-2 as an L2 penalty, 1e-4..0.3 when decoupled (AdamW, SGDW)
    beta1, beta2   Adam's betas: 0.5..0.99 and 0.9..0.9999, log-uniform in 1 - beta
    schedule       the learning-rate schedule: constant, cosine, linear or step (see
                   :mod:`sgdlab.lab.schedules`); not for schedule-free optimizers, which have none
    warmup         linear warmup, 0..0.1 of the run (uniform)
    batch_size     powers of two from a quarter to four times the task's batch size (not for ``gd``)

plus the optimizer's own hyperparameters registered with :func:`register_space` (e.g. SAM's
``rho``). Hyperparameters fixed in the ``--opt`` spec (``sgd:momentum=0.9``) are not searched.

``--space`` overrides or adds dimensions, comma-separated::

    lr=1e-4:1                 a range; the scale is the name's default (log for lr)
    momentum=0.8:0.99         momentum keeps its 1 - momentum log scale
    eps=1e-10:1e-6:log        an explicit scale: log, linear or log1m (log-uniform in 1 - x)
    batch_size=32|64|128      a choice (any type: nesterov=True|False)
    weight_decay=0            a fixed value: not searched
    beta2=default             not searched: keep the default configuration's value

Errors are :class:`SpaceError` (a ``ValueError``) naming the dimension, the value and what was
expected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from sgdlab.lab.schedules import SCHEDULE_KEYS, SCHEDULES, is_schedule_free
from sgdlab.lab.specs import OptimizerSpec, _did_you_mean, _hyperparameter_names, _innermost_factory, _parse_value

SCALES = ("log", "linear", "log1m")
_TRAINING = ("batch_size",)  # searched, but not optimizer hyperparameters
_BETAS = ("beta1", "beta2")  # searched one by one, passed to the optimizer as betas=(beta1, beta2)


class SpaceError(ValueError):
    """A ``--space`` entry that names an unknown dimension or gives an invalid range."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched (or fixed) hyperparameter.

    ``kind`` is ``"float"`` (``low``..``high`` on ``scale``), ``"int"`` (integers, log scale),
    ``"choice"`` (one of ``choices``) or ``"fixed"`` (``value``, not searched).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    scale: str = "log"
    choices: tuple[Any, ...] = ()
    value: Any = None

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    @property
    def optuna_name(self) -> str:
        """The parameter's name in the Optuna study (log1m dimensions are stored as ``1-name``)."""
        return f"1-{self.name}" if self.kind == "float" and self.scale == "log1m" else self.name

    def suggest(self, trial: Any) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=True)
        if self.scale == "log1m":
            return 1.0 - trial.suggest_float(self.optuna_name, 1.0 - self.high, 1.0 - self.low, log=True)
        return trial.suggest_float(self.name, self.low, self.high, log=self.scale == "log")

    def from_params(self, params: Mapping[str, Any]) -> Any:
        """The value a finished trial used, from its ``params``."""
        if self.kind == "fixed":
            return self.value
        value = params[self.optuna_name]
        return 1.0 - value if self.optuna_name != self.name else value

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name} = {self.value!r} (fixed)"
        if self.kind == "choice":
            return f"{self.name} in {{{', '.join(repr(c) for c in self.choices)}}}"
        if self.kind == "int":
            return f"{self.name} in [{int(self.low)}, {int(self.high)}], integers, log-uniform"
        how = {"log": "log-uniform", "linear": "uniform", "log1m": "log-uniform in 1 - " + self.name}[self.scale]
        return f"{self.name} in [{self.low:.4g}, {self.high:.4g}], {how}"

    def text(self) -> str:
        """This dimension in the ``--space`` language."""
        if self.kind == "fixed":
            return f"{self.name}={self.value!r}"
        if self.kind == "choice":
            return f"{self.name}=" + "|".join(repr(c) if isinstance(c, str) else str(c) for c in self.choices)
        if self.kind == "int":
            return f"{self.name}={int(self.low)}:{int(self.high)}"
        return f"{self.name}={self.low:g}:{self.high:g}:{self.scale}"


def _float_dimension(name: str, low: float, high: float, scale: str) -> Dimension:
    if scale not in SCALES:
        raise SpaceError(f"{name}: unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SpaceError(f"{name}: bounds must be finite numbers, got {low!r}:{high!r}")
    if not low < high:
        raise SpaceError(f"{name}: the lower bound must be below the upper bound, got {low:g}:{high:g}")
    if scale == "log" and low <= 0:
        raise SpaceError(f"{name}: a log scale needs a positive lower bound, got {low:g} (use :linear for 0)")
    if scale == "log1m" and high >= 1:
        raise SpaceError(f"{name}: the log1m scale (log-uniform in 1 - {name}) needs an upper bound < 1, got {high:g}")
    return Dimension(name, "float", float(low), float(high), scale)


# Default ranges by hyperparameter name; "lr" and "weight_decay" depend on the optimizer (below).
_GENERIC: dict[str, tuple[float, float, str]] = {
    "momentum": (0.5, 0.99, "log1m"),
    "beta1": (0.5, 0.99, "log1m"),
    "beta2": (0.9, 0.9999, "log1m"),
}
_LR_BY_FAMILY = {"sgd": (1e-3, 1.0), "adam": (1e-5, 1e-1)}
_SPACES: dict[str, dict[str, Dimension]] = {}


def register_space(optimizer: str, **dimensions: tuple[float, float, str] | tuple[Any, ...] | Dimension) -> None:
    """Default ranges for an optimizer's own hyperparameters, e.g.
    ``register_space("sam", rho=(0.01, 0.5, "log"))``; a tuple ``(low, high, scale)`` is a float
    range, a :class:`Dimension` is used as is. They override the generic defaults above."""
    entries = _SPACES.setdefault(optimizer, {})
    for name, value in dimensions.items():
        entries[name] = value if isinstance(value, Dimension) else _float_dimension(name, *value)


_LOG_BY_DEFAULT = ("lr", "weight_decay", "eps")


def _scale_for(name: str, low: float) -> str:
    if name in _GENERIC:
        return _GENERIC[name][2]
    return "log" if low > 0 or name in _LOG_BY_DEFAULT else "linear"


@dataclasses.dataclass
class SearchSpace:
    """The dimensions searched for one optimizer spec on one task, in a stable order."""

    spec: OptimizerSpec
    dimensions: dict[str, Dimension]
    accepted: list[str] | None

    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions.values() if d.searched]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one configuration: ``{name: value}`` for every dimension (fixed ones included)."""
        return {name: dim.suggest(trial) for name, dim in self.dimensions.items()}

    def values_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {name: dim.from_params(params) for name, dim in self.dimensions.items()}

    def configuration(self, values: Mapping[str, Any], task: Any = None) -> tuple[OptimizerSpec, int | None]:
        """The optimizer spec and batch size a sampled configuration trains with."""
        hyperparameters = dict(self.spec.hyperparameters)
        batch_size = None
        betas = None
        for name, value in values.items():
            if name == "batch_size":
                batch_size = int(value)
            elif name in _BETAS:
                if betas is None:
                    betas = list(self.spec.resolved(task).get("betas", (0.9, 0.999)))
                betas[_BETAS.index(name)] = float(value)
            else:
                hyperparameters[name] = value
        if betas is not None:
            hyperparameters["betas"] = tuple(betas)
        return OptimizerSpec(self.spec.name, hyperparameters), batch_size

    def text(self) -> str:
        return ",".join(d.text() for d in self.dimensions.values())

    def describe(self) -> list[str]:
        return [d.describe() for d in self.dimensions.values()]


def _schedulable(spec: OptimizerSpec, task: Any = None) -> bool:
    return not is_schedule_free(_innermost_factory(spec.entry, spec.resolved(task)))


def _valid_names(spec: OptimizerSpec, accepted: list[str] | None) -> list[str]:
    names = list(accepted or [])
    if _schedulable(spec):
        names += list(SCHEDULE_KEYS)
    if "betas" in names:
        names.remove("betas")
        names += list(_BETAS)
    if not spec.full_batch:
        names.append("batch_size")
    return names


def default_space(spec: OptimizerSpec, task: Any = None) -> dict[str, Dimension]:
    """The default dimensions for ``spec`` (see module docstring), before ``--space`` overrides."""
    entry = spec.entry
    factory = entry.resolve()
    accepted = _hyperparameter_names(factory)
    known = set(accepted) if accepted is not None else {"lr", "momentum", "weight_decay"}
    resolved = spec.resolved(task)
    fixed = set(spec.hyperparameters)
    dims: dict[str, Dimension] = {}

    family = entry.family
    base = resolved.get("base", _signature_default(factory, "base"))
    if isinstance(base, str):  # a wrapper (SAM): searched like its base optimizer, plus its own knobs
        from sgdlab.lab.specs import lookup

        base_entry = lookup(base)
        family = family or base_entry.family
        base_accepted = _hyperparameter_names(base_entry.resolve())
        if base_accepted is not None:
            known = set(base_accepted)
    if "lr" in known and "lr" not in fixed:
        if family in _LR_BY_FAMILY:
            low, high = _LR_BY_FAMILY[family]
        else:
            base = float(resolved.get("lr", _signature_default(factory, "lr") or 1e-3))
            low, high = base / 100, base * 30
        dims["lr"] = _float_dimension("lr", low, high, "log")
    if _schedulable(spec, task):  # the rate's shape over the run is as much a choice as its size
        if "schedule" not in fixed:
            dims["schedule"] = Dimension("schedule", "choice", choices=SCHEDULES)
        if "warmup" not in fixed:
            dims["warmup"] = _float_dimension("warmup", 0.0, 0.1, "linear")
    if "momentum" in known and "momentum" not in fixed:
        dims["momentum"] = _float_dimension("momentum", *_GENERIC["momentum"])
    if "betas" in known and "betas" not in fixed:
        dims["beta1"] = _float_dimension("beta1", *_GENERIC["beta1"])
        dims["beta2"] = _float_dimension("beta2", *_GENERIC["beta2"])
    if "weight_decay" in known and "weight_decay" not in fixed:
        decoupled = bool(resolved.get("decoupled_weight_decay")) or entry.name.lower().endswith("adamw") or str(base).lower().endswith("adamw") or (
            getattr(factory, "__name__", "") == "AdamW"
        )
        low, high = (1e-4, 0.3) if decoupled else (1e-6, 1e-2)
        dims["weight_decay"] = _float_dimension("weight_decay", low, high, "log")
    for name, dim in _SPACES.get(entry.name, {}).items():
        if name not in fixed:
            dims[name] = dim
    if not spec.full_batch and task is not None:
        base = int(task.batch_size)
        choices = sorted({min(task.n_train, max(4, base * 2**k // 4)) for k in range(5)})
        if len(choices) > 1:
            dims["batch_size"] = Dimension("batch_size", "choice", choices=tuple(choices))
    return dims


def _signature_default(factory: Any, name: str) -> Any:
    import inspect

    try:
        parameter = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SpaceError(f"{name}: {text!r} is not a number") from None


def parse_space(text: str | None, spec: OptimizerSpec, task: Any = None) -> SearchSpace:
    """The default space of ``spec`` with the ``--space`` overrides in ``text`` applied."""
    dims = default_space(spec, task)
    accepted = _hyperparameter_names(spec.entry.resolve())
    valid = _valid_names(spec, accepted)
    seen: set[str] = set()
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, equals, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name or not value:
            raise SpaceError(f"malformed --space entry {item!r}; expected NAME=LOW:HIGH, NAME=A|B|C or NAME=VALUE")
        if name in seen:
            raise SpaceError(f"{name} is given twice in --space")
        seen.add(name)
        if name == "betas":
            raise SpaceError("betas: search beta1 and beta2 separately, e.g. beta1=0.8:0.95,beta2=0.99:0.9999")
        if accepted is not None and name not in valid:
            why = " (full-batch optimizers train on the whole training set)" if name == "batch_size" else ""
            raise SpaceError(
                f"unknown hyperparameter {name!r} for {spec.name}{why}{_did_you_mean(name, valid)}; "
                f"valid: {', '.join(valid)}"
            )
        hyperparameter = "betas" if name in _BETAS else name
        if hyperparameter in spec.hyperparameters:
            raise SpaceError(
                f"{name} is fixed by the --opt spec ({spec.text}) and also given in --space; drop one of them"
            )
        if value == "default":
            dims.pop(name, None)
            continue
        if "|" in value:
            choices = tuple(_parse_value(c.strip()) for c in value.split("|"))
            if any(c == "" for c in choices) or len(set(map(repr, choices))) != len(choices):
                raise SpaceError(f"{name}: choices must be distinct and non-empty, got {value!r}")
            if name == "batch_size" and not all(isinstance(c, int) and c >= 1 for c in choices):
                raise SpaceError(f"batch_size: choices must be positive integers, got {value!r}")
            dims[name] = Dimension(name, "choice", choices=choices)
        elif ":" in value:
            parts = [p.strip() for p in value.split(":")]
            if len(parts) not in (2, 3):
                raise SpaceError(f"{name}: expected LOW:HIGH or LOW:HIGH:SCALE, got {value!r}")
            low, high = _number(name, parts[0]), _number(name, parts[1])
            if name == "batch_size":
                if len(parts) == 3 or low != int(low) or high != int(high) or low < 1 or not low < high:
                    raise SpaceError(f"batch_size: expected integers 1 <= LOW < HIGH (log-uniform), got {value!r}")
                dims[name] = Dimension(name, "int", low, high)
            else:
                dims[name] = _float_dimension(name, low, high, parts[2] if len(parts) == 3 else _scale_for(name, low))
        else:
            fixed = _parse_value(value)
            if name == "batch_size" and not (isinstance(fixed, int) and fixed >= 1):
                raise SpaceError(f"batch_size: expected a positive integer, got {value!r}")
            dims[name] = Dimension(name, "fixed", value=fixed)
    space = SearchSpace(spec, dims, accepted)
    if not space.searched():
        raise SpaceError(f"nothing to search for {spec.text}: every dimension is fixed (see --space)")
    _check_builds(space, task)
    return space


def _check_builds(space: SearchSpace, task: Any) -> None:
    """Build the optimizer at the corners of the space, so an impossible range (momentum=0.5:1.5
    given as linear, a negative lr) fails now, not in trial 17."""
    import torch

    corners: list[dict[str, Any]] = [{}, {}]
    for name, dim in space.dimensions.items():
        if dim.kind == "fixed":
            values = (dim.value, dim.value)
        elif dim.kind == "choice":
            values = (dim.choices[0], dim.choices[-1])
        else:
            values = (dim.low, dim.high)
        corners[0][name], corners[1][name] = values
    for corner in corners:
        spec, _ = space.configuration(corner, task)
        try:
            spec.build([torch.zeros(2, requires_grad=True)], task)
        except (ValueError, TypeError, RuntimeError) as error:
            shown = ", ".join(f"{k}={v!r}" for k, v in corner.items() if k != "batch_size")
            raise SpaceError(f"the space reaches invalid values for {space.spec.name} ({shown}): {error}") from None


# --- optimizers' own hyperparameters ----------------------------------------------------------------
# SAM's neighbourhood radius: Foret et al. (2021) use 0.01-0.5 for SGD bases; ASAM's radius is in
# units of |w| and is about ten times larger (Kwon et al., 2021, use 0.5-2).
register_space("sam", rho=(0.01, 0.5, "log"))
register_space("asam", rho=(0.05, 2.0, "log"))
