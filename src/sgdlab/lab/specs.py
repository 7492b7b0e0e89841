"""Optimizers by name, with hyperparameters: the ``--opt`` language of every lab command.

A spec is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE,...``::

    gd                                 full-batch gradient descent (batch = the whole training set)
    sgd:lr=0.1                         mini-batch SGD
    momentum:lr=0.01                   SGD with momentum 0.9 (a preset; momentum=0.5 overrides it)
    adamw:lr=1e-3,weight_decay=0.01
    adam:betas=(0.9,0.99)              tuples in parentheses; True/False/None; numbers
    torch.RMSprop:lr=1e-3              any torch.optim class, by its class name after "torch."
    sgd:lr=0.3,label=sgd-fast          ``label`` names the optimizer in tables and plots
    adamw:state=8bit,label=adamw-8bit  compact optimizer state (sgdlab optimizers): state=bf16 or
                                       8bit (min_8bit_size=N: 8-bit only for tensors of >= N)
    sgd:lr=0.1,momentum=0.9,schedule=cosine,warmup=0.05
                                       a learning-rate schedule (constant, step, linear, cosine)
                                       with linear warmup: see :mod:`sgdlab.lab.schedules`

``NAME`` is a registered optimizer (``optimizer_names()``) or ``torch.<Class>``. Parsing checks the
name and the hyperparameter names against the optimizer's signature; :func:`parse_spec` with
``check=True`` (the default) also builds the optimizer once on a dummy parameter, so invalid values
(``lr=-1``) are rejected before anything trains. Errors are :class:`SpecError` (a ``ValueError``)
with one line listing the valid choices.

When a spec gives no ``lr``, the task's hint for the optimizer (``Task.lr``, looked up by name and
then by family) is used, then the registry entry's preset, then the class's own default.

Adding an optimizer is one line (here, or in your module followed by an import of it)::

    register_optimizer("swats", "sgdlab.optim:SWATS", family="adam", description="Adam, then SGD")

The factory is a callable ``factory(params, **hyperparameters) -> torch.optim.Optimizer`` or a
``"module:attribute"`` string resolved on first use (no import cost, no import cycles). Optimizers
whose ``step`` needs a closure (SAM, L-BFGS) work: the lab always calls ``step(closure)``.
Optimizers with ``train()`` / ``eval()`` methods (schedule-free) are switched accordingly around
evaluations.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import math
from typing import Any, Callable, Iterable, Mapping

import torch

from sgdlab.lab.schedules import SCHEDULE_KEYS, Schedule, check_schedule, schedule_of

Factory = Callable[..., torch.optim.Optimizer]

RESERVED_KEYS = ("label",)
# Keys that set how an sgdlab optimizer stores its state (sgdlab.optim.compact_state), not
# constructor arguments.
STATE_KEYS = ("state", "min_8bit_size")
STATE_FORMATS = {"float32": None, "fp32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "8bit": torch.uint8}


class SpecError(ValueError):
    """A spec that names an unknown optimizer or hyperparameter, or gives an invalid value."""


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: how to build it and what it is."""

    name: str
    factory: Factory | str
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    full_batch: bool = False
    family: str | None = None
    description: str = ""

    def resolve(self) -> Factory:
        if isinstance(self.factory, str):
            module, _, attribute = self.factory.partition(":")
            return getattr(importlib.import_module(module), attribute)
        return self.factory


OPTIMIZERS: dict[str, OptimizerEntry] = {}
DEFAULT_RACE: list[str] = []


def register_optimizer(
    name: str,
    factory: Factory | str,
    *,
    defaults: Mapping[str, Any] | None = None,
    full_batch: bool = False,
    family: str | None = None,
    description: str = "",
    default_race: bool = False,
    replace: bool = False,
) -> OptimizerEntry:
    """Register ``name`` for specs. ``defaults`` are preset hyperparameters (a spec overrides them);
    ``full_batch`` trains on the whole training set per step; ``family`` keys the tasks' learning
    rate hints (``"sgd"``, ``"adam"``); ``default_race`` adds it to the optimizers raced when none
    are named."""
    if not name or any(c in name for c in ":,= ") or name.startswith("torch."):
        raise ValueError(f"invalid optimizer name {name!r} (no ':', ',', '=', spaces or 'torch.' prefix)")
    if name in OPTIMIZERS and not replace:
        raise ValueError(f"an optimizer named {name!r} is already registered (pass replace=True)")
    entry = OptimizerEntry(name, factory, dict(defaults or {}), full_batch, family, description)
    OPTIMIZERS[name] = entry
    if default_race and name not in DEFAULT_RACE:
        DEFAULT_RACE.append(name)
    return entry


def optimizer_names() -> list[str]:
    """Registered names (``torch.<Class>`` names are accepted too; see :func:`torch_optimizer_names`)."""
    return list(OPTIMIZERS)


def torch_optimizer_names() -> list[str]:
    return sorted(
        f"torch.{name}"
        for name, value in vars(torch.optim).items()
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer
    )


def lookup(name: str) -> OptimizerEntry:
    """The entry for a registered name or ``torch.<Class>``; SpecError listing valid names otherwise."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if name.startswith("torch."):
        torch_names = {n.lower(): n for n in torch_optimizer_names()}
        canonical = torch_names.get(name.lower())
        if canonical is not None:
            cls = getattr(torch.optim, canonical.removeprefix("torch."))
            return OptimizerEntry(canonical, cls, description=f"torch.optim.{cls.__name__}")
        raise SpecError(
            f"unknown optimizer {name!r}{_did_you_mean(name, torch_optimizer_names())}; "
            f"torch.optim classes: {', '.join(torch_optimizer_names())}"
        )
    raise SpecError(
        f"unknown optimizer {name!r}{_did_you_mean(name, optimizer_names())}; valid: "
        f"{', '.join(optimizer_names())}, or torch.<Class> for any torch.optim class (e.g. torch.RMSprop)"
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hyperparameter_names(factory: Factory) -> list[str] | None:
    """Keyword arguments the factory accepts besides ``params``; None when it takes ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(parameter.name)
    return [n for n in names if n not in ("self", "params")]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer with hyperparameters: ``OptimizerSpec("sgd", {"lr": 0.1})``.

    ``label`` names it in tables, plots and files (default: the spec text). ``build(params, task)``
    returns a ready ``torch.optim.Optimizer``.
    """

    name: str
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""
    # The registry entry, looked up once: a spec sent to a worker process carries its optimizer,
    # even one registered only in the parent.
    _entry: OptimizerEntry | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", dict(self.hyperparameters))
        if self._entry is None:
            object.__setattr__(self, "_entry", lookup(self.name))
        if not self.label:
            object.__setattr__(self, "label", self.text)

    @property
    def entry(self) -> OptimizerEntry:
        return self._entry if self._entry is not None else lookup(self.name)

    @property
    def full_batch(self) -> bool:
        return self.entry.full_batch

    @property
    def family(self) -> str | None:
        return self.entry.family

    @property
    def text(self) -> str:
        """The canonical spec text (sorted keys, Python literals): parses back to an equal spec."""
        if not self.hyperparameters:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format(v)}" for k, v in sorted(self.hyperparameters.items()))

    def resolved(self, task: Any = None) -> dict[str, Any]:
        """The hyperparameters ``build`` passes: entry presets, the task's lr hint, the spec's own."""
        entry = self.entry
        values = dict(entry.defaults)
        if "lr" not in self.hyperparameters and task is not None:
            hint = task.lr_hint(entry.name, self.name, entry.family)
            if hint is not None:
                values["lr"] = hint
        values.update(self.hyperparameters)
        return values

    def schedule(self, task: Any = None) -> Schedule:
        """The learning-rate schedule the runner attaches (constant unless the spec names one)."""
        return schedule_of(self.resolved(task))

    def build(self, params: Any, task: Any = None) -> torch.optim.Optimizer:
        """The optimizer (without its schedule, which needs the run's length: see the runner)."""
        values = self.resolved(task)
        for key in SCHEDULE_KEYS:
            values.pop(key, None)
        storage = {key: values.pop(key) for key in STATE_KEYS if key in values}
        optimizer = self.entry.resolve()(params, **values)
        if storage:
            _apply_state_format(optimizer, self.label, **storage)
        return optimizer

    def check(self, task: Any = None) -> None:
        """Build once on a dummy parameter: invalid values raise SpecError before any run starts."""
        entry = self.entry
        try:
            factory = entry.resolve()
        except (ImportError, AttributeError) as error:
            raise SpecError(f"optimizer {self.name!r} cannot be loaded from {entry.factory!r}: {error}") from None
        accepted = _hyperparameter_names(factory)
        if accepted is not None:
            unknown = sorted(set(self.hyperparameters) - set(accepted) - set(STATE_KEYS) - set(SCHEDULE_KEYS))
            if unknown:
                raise SpecError(
                    f"unknown hyperparameter {unknown[0]!r} for {self.name}"
                    f"{_did_you_mean(unknown[0], accepted)}; valid: {', '.join(accepted)}"
                )
        try:
            check_schedule(self.resolved(task), _innermost_factory(entry, self.resolved(task)))
        except ValueError as error:
            raise SpecError(f"invalid schedule in {self.label!r}: {error}") from None
        dummy = torch.zeros(2, requires_grad=True)
        try:
            self.build([dummy], task)
        except SpecError:
            raise
        except (ValueError, TypeError, RuntimeError) as error:
            raise SpecError(f"invalid hyperparameters in {self.label!r}: {error}") from None

    def __hash__(self) -> int:
        return hash((self.text, self.label))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hyperparameters": {k: _jsonable(v) for k, v in self.hyperparameters.items()},
                "label": self.label, "text": self.text}


def _innermost_factory(entry: OptimizerEntry, values: Mapping[str, Any]) -> Any:
    """The optimizer class a spec trains with: a wrapper's (SAM's) base, else the entry's own."""
    factory = entry.resolve()
    base = values.get("base")
    if isinstance(base, str) and base:
        try:
            return lookup(base).resolve()
        except (SpecError, ImportError, AttributeError):
            return factory
    return factory


def _apply_state_format(optimizer: torch.optim.Optimizer, label: str, state: Any = "float32",
                        min_8bit_size: Any = None) -> None:
    from sgdlab.optim import RuleOptimizer, compact_state

    if state not in STATE_FORMATS:
        raise SpecError(f"invalid state={state!r} in {label!r}; valid: {', '.join(STATE_FORMATS)}")
    dtype = STATE_FORMATS[state]
    if min_8bit_size is not None and dtype != torch.uint8:
        raise SpecError(f"min_8bit_size in {label!r} needs state=8bit")
    if dtype is None:
        return
    if not isinstance(optimizer, RuleOptimizer):
        raise SpecError(f"state={state} in {label!r} needs an sgdlab optimizer, not "
                        f"{type(optimizer).__name__}")
    compact_state(optimizer, dtype, min_8bit_size=min_8bit_size)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ",".join(_format(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses/brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


# Numbers Python's literals lack: lr=inf arrives as the float inf, not the string "inf".
_NUMBER_WORDS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}


class _NumberWords(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        number = _NUMBER_WORDS.get(node.id.lower())
        return node if number is None else ast.Constant(number)


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        value = ast.literal_eval(_NumberWords().visit(ast.parse(text, mode="eval")))
    except (ValueError, TypeError, SyntaxError):
        return text  # a bare word, e.g. a mode name
    return tuple(value) if isinstance(value, list) else value


def parse_spec(text: str, *, check: bool = True, task: Any = None) -> OptimizerSpec:
    """Parse ``NAME[:KEY=VALUE,...]``; with ``check``, also reject invalid values (see module doc)."""
    text = text.strip()
    name, _, arguments = text.partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"empty optimizer name in spec {text!r}; valid: {', '.join(optimizer_names())}")
    lookup(name)
    hyperparameters: dict[str, Any] = {}
    label = ""
    if arguments.strip():
        for item in _split_top_level(arguments):
            key, equals, value = item.partition("=")
            key = key.strip()
            if not equals or not key or not value.strip():
                raise SpecError(f"malformed hyperparameter {item.strip()!r} in {text!r}; expected KEY=VALUE")
            if key in hyperparameters or (key == "label" and label):
                raise SpecError(f"hyperparameter {key!r} given twice in {text!r}")
            if key == "label":
                label = value.strip()
            else:
                hyperparameters[key] = _parse_value(value.strip())
                if key == "lr" and isinstance(hyperparameters[key], str):
                    raise SpecError(f"invalid lr={value.strip()} in {text!r}: expected a number "
                                    "(e.g. lr=1e-3, lr=inf)")
    spec = OptimizerSpec(name if name in OPTIMIZERS else lookup(name).name, hyperparameters, label)
    if check:
        spec.check(task)
    return spec


def parse_specs(texts: Iterable[str], *, check: bool = True, task: Any = None) -> list[OptimizerSpec]:
    """Parse several specs; labels must be distinct (they name runs and files)."""
    specs = [parse_spec(t, check=check, task=task) for t in texts]
    seen: set[str] = set()
    for spec in specs:
        if spec.label in seen:
            raise SpecError(f"optimizer {spec.label!r} is given twice; add label=... to tell them apart")
        seen.add(spec.label)
    return specs


def default_specs() -> list[OptimizerSpec]:
    """The optimizers raced when none are named."""
    return [OptimizerSpec(name) for name in DEFAULT_RACE]


# --- built-in optimizers. One line each; `family` keys the tasks' learning-rate hints. ------------
_SGD, _ADAM, _ADAMW = "sgdlab.optim:SGD", "sgdlab.optim:Adam", "sgdlab.optim:AdamW"
register_optimizer("gd", _SGD, defaults={"lr": 0.1}, full_batch=True, family="sgd", default_race=True,
                   description="full-batch gradient descent: sgdlab.SGD on the whole training set per step")
register_optimizer("sgd", _SGD, defaults={"lr": 0.01}, family="sgd", default_race=True,
                   description="mini-batch SGD (sgdlab.SGD)")
register_optimizer("momentum", _SGD, defaults={"lr": 0.01, "momentum": 0.9}, family="sgd", default_race=True,
                   description="SGD with heavy-ball momentum 0.9")
register_optimizer("nesterov", _SGD, defaults={"lr": 0.01, "momentum": 0.9, "nesterov": True}, family="sgd",
                   default_race=True, description="SGD with Nesterov momentum 0.9")
register_optimizer("adam", _ADAM, family="adam", default_race=True, description="Adam (sgdlab.Adam)")
register_optimizer("adamw", _ADAMW, defaults={"weight_decay": 0.01}, family="adam", default_race=True,
                   description="Adam with decoupled weight decay 0.01 (sgdlab.AdamW)")
register_optimizer("amsgrad", _ADAM, defaults={"amsgrad": True}, family="adam",
                   description="Adam with the AMSGrad maximum (sgdlab.Adam(amsgrad=True))")
register_optimizer("sgdw", _SGD, defaults={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                           "decoupled_weight_decay": True}, family="sgd",
                   description="SGD with momentum and decoupled weight decay (SGDW)")
# Beyond torch.optim (issue 7). Schedule-free methods are switched to eval() around evaluations by
# the runner; SAM takes two gradients per step (the runner always passes a closure).
register_optimizer("swats", "sgdlab.optim:SWATS", family="adam",
                   description="SWATS: Adam, then SGD with momentum once Adam's implied SGD rate settles")
# No task lr hints for schedule-free: the classes' defaults are the reference package's (lr 1.0 / 2.5e-3).
register_optimizer("schedulefree_sgd", "sgdlab.optim:ScheduleFreeSGD",
                   description="schedule-free SGD (Defazio et al. 2024), lr 1.0, momentum 0.9, no LR schedule")
register_optimizer("schedulefree_adamw", "sgdlab.optim:ScheduleFreeAdamW",
                   description="schedule-free AdamW (Defazio et al. 2024), lr 2.5e-3, no LR schedule")
register_optimizer("muon", "sgdlab.optim:MuonWithAdamW",
                   defaults={"lr": 0.02, "weight_decay": 0.01, "adam_lr_ratio": 0.05},
                   description="Muon (Jordan et al. 2024) for 2-D weights, AdamW (lr x 0.05) for "
                               "biases and the rest (sgdlab.optim.MuonWithAdamW)")
register_optimizer("sam", "sgdlab.lab.sam:build_sam",
                   description="SAM (rho 0.05) around base=momentum; sam:base=adamw,lr=1e-3 wraps another spec")
register_optimizer("asam", "sgdlab.lab.sam:build_asam",
                   description="adaptive SAM (ASAM, rho 0.5) around base=momentum; base=... as for sam")
