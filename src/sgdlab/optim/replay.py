"""Tracing a rule once per configuration instead of once per step.

A traced program depends on the rule's branches (``weight_decay != 0``, ``nesterov``); its
numbers (``lr / (1 - beta1**t)``, ...) change every step. Tracing costs a rule call with stand-ins
(tens of microseconds, most of a small model's step), so :func:`trace` traces a configuration
once with its numbers wrapped in :class:`Num`, which computes the real values *and* records how
each was computed and which comparisons decided a branch. A later step with other numbers
replays that record: the same Python operations on the new values (hence the same doubles as a
fresh trace), then checks that every branch would go the same way. If one would not, or the rule
did something the record cannot replay (``float(x)``, ``math.sqrt(x)``), the rule is traced
afresh, which is always correct.
"""

from __future__ import annotations

import operator
import threading
from typing import Any, Callable

from torch import Tensor

from sgdlab.optim import tracing

Ref = tuple[str, Any]  # ("in", name) an input, ("k", value) a constant, ("n", i) a recorded result


class Tape:
    def __init__(self) -> None:
        self.operations: list[tuple[Callable[..., Any], list[Ref]]] = []
        self.guards: list[tuple[Ref, bool]] = []
        self.replayable = True

    def apply(self, function: Callable[..., Any], *arguments: Any) -> Num:
        values = [a.value if isinstance(a, Num) else a for a in arguments]
        refs = [a.ref if isinstance(a, Num) else ("k", a) for a in arguments]
        result = Num(self, function(*values), ("n", len(self.operations)))
        self.operations.append((function, refs))
        return result


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Num:
    """A number while a rule is traced: its value, and where it came from."""

    __slots__ = ("_tape", "value", "ref")

    def __init__(self, tape: Tape, value: Any, ref: Ref) -> None:
        self._tape, self.value, self.ref = tape, value, ref

    def _op(self, function: Callable[..., Any], other: Any, reflected: bool = False) -> Any:
        if not (_is_number(other) or isinstance(other, Num)):
            return NotImplemented  # a traced tensor (tracing.Lazy) takes over
        return self._tape.apply(function, *((other, self) if reflected else (self, other)))

    def __add__(self, o): return self._op(operator.add, o)
    def __radd__(self, o): return self._op(operator.add, o, True)
    def __sub__(self, o): return self._op(operator.sub, o)
    def __rsub__(self, o): return self._op(operator.sub, o, True)
    def __mul__(self, o): return self._op(operator.mul, o)
    def __rmul__(self, o): return self._op(operator.mul, o, True)
    def __truediv__(self, o): return self._op(operator.truediv, o)
    def __rtruediv__(self, o): return self._op(operator.truediv, o, True)
    def __floordiv__(self, o): return self._op(operator.floordiv, o)
    def __rfloordiv__(self, o): return self._op(operator.floordiv, o, True)
    def __mod__(self, o): return self._op(operator.mod, o)
    def __rmod__(self, o): return self._op(operator.mod, o, True)
    def __pow__(self, o): return self._op(operator.pow, o)
    def __rpow__(self, o): return self._op(operator.pow, o, True)
    def __eq__(self, o): return self._op(operator.eq, o)  # type: ignore[override]
    def __ne__(self, o): return self._op(operator.ne, o)  # type: ignore[override]
    def __lt__(self, o): return self._op(operator.lt, o)
    def __le__(self, o): return self._op(operator.le, o)
    def __gt__(self, o): return self._op(operator.gt, o)
    def __ge__(self, o): return self._op(operator.ge, o)
    def __neg__(self): return self._tape.apply(operator.neg, self)
    def __pos__(self): return self
    def __abs__(self): return self._tape.apply(abs, self)

    def __bool__(self) -> bool:
        taken = bool(self.value)
        self._tape.guards.append((self.ref, taken))
        return taken

    def _escape(self) -> Any:  # the value leaves the record: this trace cannot be replayed
        self._tape.replayable = False
        return self.value

    def __float__(self) -> float: return float(self._escape())
    def __int__(self) -> int: return int(self._escape())
    def __index__(self) -> int: return operator.index(self._escape())
    def __hash__(self) -> int: return hash(self._escape())
    def __round__(self, n: Any = None) -> Any: return round(self._escape(), n)
    def __repr__(self) -> str: return f"Num({self.value!r})"


class _Recording:
    """A traced program and its numbers' record, compiled into one small Python function."""

    def __init__(self, program: tracing.Program, tape: Tape, scalar_refs: list[Ref],
                 number_refs: dict[str, Ref | None]) -> None:
        self.program = program
        functions: list[Any] = []
        constants: list[Any] = []

        def text(ref: Ref | None) -> str:
            if ref is None:
                return "None"
            kind, x = ref
            if kind == "in":
                return f"inputs[{x!r}]"
            if kind == "n":
                return f"r{x}"
            constants.append(x)
            return f"k[{len(constants) - 1}]"

        lines = ["def replay(inputs, f, k):"]
        for i, (function, refs) in enumerate(tape.operations):
            functions.append(function)
            lines.append(f"    r{i} = f[{i}]({', '.join(text(r) for r in refs)})")
        for ref, taken in tape.guards:
            lines.append(f"    if bool({text(ref)}) is not {taken}: return None")
        scalars = ", ".join(text(r) for r in scalar_refs)
        numbers = ", ".join(f"{k!r}: {text(r)}" for k, r in number_refs.items())
        lines.append(f"    return [{scalars}], {{{numbers}}}")
        namespace: dict[str, Any] = {}
        exec(compile("\n".join(lines), "<sgdlab replay>", "exec"), namespace)  # noqa: S102
        self._function, self._functions, self._constants = (
            namespace["replay"], functions, constants)

    def replay(self, inputs: dict[str, Any]) -> tracing.Program | None:
        replayed = self._function(inputs, self._functions, self._constants)
        if replayed is None:
            return None
        program = object.__new__(tracing.Program)  # a shallow copy, without __init__'s cost
        program.__dict__.update(self.program.__dict__, scalars=replayed[0], numbers=replayed[1])
        return program


_lock = threading.Lock()
_recordings: dict[Any, list[_Recording]] = {}
_untraceable: set[Any] = set()  # configurations that could not be traced at all
MAX_RECORDINGS = 16  # per configuration: more branch patterns than this are traced each time


def trace(rule: Callable[..., Any], state_keys: list[str], numbers: dict[str, Any],
          hyperparameters: dict[str, Any], *, compact: bool = False) -> tracing.Program:
    """:func:`sgdlab.optim.tracing.trace`, replayed when this configuration was traced before."""
    named = {**{f"number:{k}": v for k, v in numbers.items()},
             **{f"hyper:{k}": v for k, v in hyperparameters.items()}}
    inputs = {k: v for k, v in named.items() if _is_number(v)}
    # (The adapters build these dicts in a fixed order: no need to sort.)
    static = tuple((k, v) for k, v in named.items() if k not in inputs)
    if any(isinstance(v, Tensor) for _, v in static):
        return tracing.trace(rule, state_keys, numbers, hyperparameters, compact=compact)
    try:
        key = (rule, tuple(state_keys), compact, static)
        hash(key)
    except TypeError:  # an unhashable setting: trace every step
        return tracing.trace(rule, state_keys, numbers, hyperparameters, compact=compact)

    if key in _untraceable:  # failed before with this configuration: per tensor, no new attempt
        raise tracing.TraceError(f"{getattr(rule, '__name__', rule)} could not be traced before")
    for recording in _recordings.get(key, ()):
        program = recording.replay(inputs)
        if program is not None:
            return program

    tape = Tape()
    wrapped = {k: Num(tape, v, ("in", k)) for k, v in inputs.items()}
    try:
        program, scalar_refs, number_refs = tracing.trace(
            rule, state_keys,
            {k: wrapped.get(f"number:{k}", v) for k, v in numbers.items()},
            {k: wrapped.get(f"hyper:{k}", v) for k, v in hyperparameters.items()},
            compact=compact, recording=True,
        )
    except tracing.TraceError:
        # Not with stand-in numbers: trace with the plain ones (which may well succeed). A rule
        # that fails with those too is not elementwise in this configuration (a reduction, a
        # matrix product): remembered, so that its later steps go straight to the per-tensor
        # path. (A declared rule says so up front, ``elementwise=False``, and is never traced.)
        try:
            return tracing.trace(rule, state_keys, numbers, hyperparameters, compact=compact)
        except tracing.TraceError:
            with _lock:
                _untraceable.add(key)
            raise
    if tape.replayable:
        with _lock:
            recordings = _recordings.setdefault(key, [])
            if len(recordings) < MAX_RECORDINGS:
                recordings.append(_Recording(program, tape, scalar_refs, number_refs))
    return program
