"""A rule, traced into an elementwise program that runs on whole groups of tensors at once.

The fast execution strategies do not restate any optimizer math. They call the rule itself, once
per step, with stand-ins (:class:`Lazy`) for its tensors and the real Python numbers for its
hyperparameters and counters. Everything the rule computes from numbers alone (bias corrections,
``lr / (1 - beta1**t)``, ...) is computed right there, in Python double precision, exactly as in
the reference per-tensor path; every operation that touches a tensor is recorded as one line of
a small Python function. That function (the *program*) then runs (:mod:`sgdlab.optim.runners`)

* eagerly on flattened, concatenated tensors: the same PyTorch operations as the reference path,
  on more elements per call, hence bit-identical results; or
* compiled by ``torch.compile`` (Inductor) into a single loop that reads each input once and
  writes each output once: the memory-traffic minimum of the update.

The program's numbers arrive as inputs (``s``: a float64 vector, ``c``: 0-d tensors), so a
learning-rate schedule or the step count never changes the code and never triggers a recompile.
The program text depends only on the rule's branches (``weight_decay != 0``, ``nesterov``, the
first momentum step, ...), so each optimizer configuration compiles once per process, and
Inductor's on-disk FX graph cache makes the next process start fast.

Only elementwise operations are accepted (:data:`ELEMENTWISE`): a rule that reduces over a tensor
(a norm, a mean) or branches on tensor values cannot be traced, and :func:`trace` raises
:class:`TraceError`, upon which the caller falls back to the per-tensor path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

# torch functions a rule may call through ``ops``: elementwise, so that running the rule on a
# concatenation of tensors is the same as running it on each tensor.
ELEMENTWISE = frozenset(
    {"sqrt", "rsqrt", "maximum", "minimum", "abs", "sign", "exp", "log", "where", "clamp",
     "square", "reciprocal", "tanh", "sigmoid", "neg", "lerp", "copysign", "fma", "addcmul",
     "addcdiv"}
)
# Those the program calls from :mod:`sgdlab.optim.torch_ops` (the multiply-adds torch.optim rounds
# once, :mod:`sgdlab.algorithms.fused`), the rest from torch.
_TORCH_OPS = frozenset({"fma", "addcmul", "addcdiv", "lerp"})


class TraceError(Exception):
    """The rule did something a flattened elementwise program cannot reproduce."""


class _Tracer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scalars: list[int | float] = []
        self.tensor_scalars: list[Tensor] = []
        # The same lines, structured: (result, operation, operands), for other code generators
        # (:mod:`sgdlab.optim.native`). Operands are names (``x0``, ``v3``, ``s[1]``, ``c[0]``)
        # or, for a constant exponent, the literal.
        self.nodes: list[tuple[str, str, tuple[Any, ...]]] = []
        # Where each number of ``s`` came from, when the rule's numbers are recorded
        # (:mod:`sgdlab.optim.replay`); a plain number is its own constant.
        self.scalar_refs: list[Any] = []
        self.number_type: type | None = None
        self._count = 0

    def operand(self, value: Any) -> str:
        if isinstance(value, Lazy):
            if value._tracer is not self:
                raise TraceError("a value from another trace")
            return value._name
        ref = None
        if self.number_type is not None and isinstance(value, self.number_type):
            value, ref = value.value, value.ref
        if isinstance(value, bool):
            raise TraceError("a boolean used as a number")
        if isinstance(value, (int, float)):
            self.scalars.append(value)
            self.scalar_refs.append(ref or ("k", value))
            return f"s[{len(self.scalars) - 1}]"
        if isinstance(value, Tensor) and value.dim() == 0:
            self.tensor_scalars.append(value)
            return f"c[{len(self.tensor_scalars) - 1}]"
        raise TraceError(f"unsupported operand {type(value).__name__}")

    def emit(self, expression: str, operation: str, operands: tuple[Any, ...]) -> Lazy:
        name = f"v{self._count}"
        self._count += 1
        self.lines.append(f"    {name} = {expression}")
        self.nodes.append((name, operation, operands))
        return Lazy(self, name)


class Lazy:
    """A tensor-valued expression recorded while tracing a rule."""

    __slots__ = ("_tracer", "_name")
    __hash__ = object.__hash__
    # Make ``tensor * lazy`` (a 0-d tensor learning rate) defer to Lazy's reflected operators.
    __array_priority__ = 1000

    def __init__(self, tracer: _Tracer, name: str) -> None:
        self._tracer = tracer
        self._name = name

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        # Tensor.__mul__(lazy) and friends land here; route them to the reflected operator.
        name = getattr(func, "__name__", "")
        if not kwargs and len(args) == 2 and isinstance(args[1], Lazy) and name in _REFLECTED:
            return getattr(args[1], _REFLECTED[name])(args[0])
        raise TraceError(f"torch.{name} called on a traced value (not through ops)")

    def _binary(self, other: Any, symbol: str, *, reflected: bool = False) -> Lazy:
        a, b = self._name, self._tracer.operand(other)
        if reflected:
            a, b = b, a
        return self._tracer.emit(f"{a} {symbol} {b}", symbol, (a, b))

    def __add__(self, other): return self._binary(other, "+")
    def __radd__(self, other): return self._binary(other, "+", reflected=True)
    def __sub__(self, other): return self._binary(other, "-")
    def __rsub__(self, other): return self._binary(other, "-", reflected=True)
    def __mul__(self, other): return self._binary(other, "*")
    def __rmul__(self, other): return self._binary(other, "*", reflected=True)
    def __truediv__(self, other): return self._binary(other, "/")
    def __rtruediv__(self, other): return self._binary(other, "/", reflected=True)
    def __lt__(self, other): return self._binary(other, "<")
    def __le__(self, other): return self._binary(other, "<=")
    def __gt__(self, other): return self._binary(other, ">")
    def __ge__(self, other): return self._binary(other, ">=")
    def __neg__(self): return self._tracer.emit(f"-{self._name}", "neg", (self._name,))
    def __abs__(self): return self._tracer.emit(f"torch.abs({self._name})", "abs", (self._name,))

    def __pow__(self, other):
        # A constant exponent stays a literal: ``x ** 2`` must stay x*x, as in eager PyTorch.
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return self._tracer.emit(f"{self._name} ** {other!r}", "pow_literal",
                                     (self._name, other))
        return self._binary(other, "**")

    def __rpow__(self, other): return self._binary(other, "**", reflected=True)

    def __bool__(self) -> bool:
        raise TraceError("the rule branches on tensor values")

    def __getattr__(self, name: str) -> Any:
        raise TraceError(f"the rule uses tensor attribute {name!r}")


_REFLECTED = {
    "__mul__": "__rmul__", "__add__": "__radd__", "__sub__": "__rsub__",
    "__truediv__": "__rtruediv__", "__div__": "__rtruediv__", "__pow__": "__rpow__",
    "mul": "__rmul__", "add": "__radd__", "sub": "__rsub__", "div": "__rtruediv__",
}


class _Ops:
    """The ``ops`` namespace a rule sees while traced: elementwise torch functions only."""

    def __init__(self, tracer: _Tracer) -> None:
        self._tracer = tracer

    def __getattr__(self, name: str) -> Callable[..., Lazy]:
        if name not in ELEMENTWISE:
            raise TraceError(f"ops.{name} is not an elementwise operation")

        module = "ops" if name in _TORCH_OPS else "torch"

        def call(*args: Any) -> Lazy:
            operands = tuple(self._tracer.operand(a) for a in args)
            return self._tracer.emit(f"{module}.{name}({', '.join(operands)})", name, operands)

        return call


@dataclass
class Program:
    """A traced rule: the source of the program and what it needs and produces."""

    source: str
    scalars: list[int | float]
    tensor_scalars: list[Tensor]
    new_keys: list[str]  # state entries the rule creates (need buffers before the run)
    numbers: dict[str, Any] = field(default_factory=dict)  # non-tensor state results (step)
    # The structure behind ``source``: the operations in order, and which value each output
    # slot of ``t`` receives (state entries first, the parameter, slot 0, last).
    nodes: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    outputs: list[tuple[int, str]] = field(default_factory=list)
    compact: bool = False


def trace(
    rule: Callable[..., tuple[Any, dict[str, Any]]],
    state_keys: list[str],
    numbers: dict[str, Any],
    hyperparameters: dict[str, Any],
    *,
    compact: bool = False,
    recording: bool = False,
) -> Any:
    """Trace ``rule`` for one param group.

    ``state_keys`` are the tensor entries of the state (inputs ``t[2:]``, in order); ``numbers``
    the non-tensor entries (Adam's step, as a Python number). The program's signature is
    ``program(t, s, c)``: ``t = [param, grad, *state tensors, *new state tensors]`` (flat
    views), ``s`` the numbers, ``c`` 0-d tensors. With ``compact`` every tensor state entry is
    stored in bfloat16: the rule sees float32, the stored value is rounded stochastically
    (seed ``c[0]``).

    ``recording``: numbers may be :class:`sgdlab.optim.replay.Num`; returns the program (with
    plain numbers) and where its numbers came from (see :func:`sgdlab.optim.replay.trace`).
    """
    tracer = _Tracer()
    if recording:
        from sgdlab.optim.replay import Num

        tracer.number_type = Num
    if compact:
        tracer.tensor_scalars.append(torch.zeros((), dtype=torch.int32))  # c[0]: rounding seed
    reads: list[str] = ["    x0 = t[0]", "    x1 = t[1]"]
    state: dict[str, Any] = dict(numbers)
    for i, key in enumerate(state_keys, start=2):
        cast = ".float()" if compact else ""
        reads.append(f"    x{i} = t[{i}]{cast}")
        state[key] = Lazy(tracer, f"x{i}")
    param, grad = Lazy(tracer, "x0"), Lazy(tracer, "x1")
    try:
        new_param, new_state = rule(param, grad, state, ops=_Ops(tracer), **hyperparameters)
    except TraceError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means "not traceable", never a wrong result
        raise TraceError(f"{type(error).__name__}: {error}") from error

    writes: list[str] = []
    outputs: list[tuple[int, str]] = []
    new_keys: list[str] = []
    results: dict[str, Any] = {}
    result_refs: dict[str, Any] = {}
    slot = {key: i for i, key in enumerate(state_keys, start=2)}
    for key, value in new_state.items():
        if tracer.number_type is not None and isinstance(value, tracer.number_type):
            value, result_refs[key] = value.value, value.ref
        elif recording and value is not None and not isinstance(value, Lazy):
            result_refs[key] = ("k", value)
        if isinstance(value, Lazy):
            if key not in slot:
                new_keys.append(key)
                slot[key] = 2 + len(state_keys) + len(new_keys) - 1
            index = slot[key]
            stored = f"round_to_bfloat16({value._name}, c[0])" if compact else value._name
            writes.append(f"    t[{index}].copy_({stored})")
            outputs.append((index, value._name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            results[key] = value
        elif value is None and key not in slot:
            results[key] = None
        else:
            raise TraceError(f"state entry {key!r} is neither traced nor a number")
    if not isinstance(new_param, Lazy):
        raise TraceError("the rule did not return a tensor expression for the parameter")
    # State first: a state entry that is the bare input parameter must see its old value.
    if new_param is not param:
        writes.append(f"    t[0].copy_({new_param._name})")
        outputs.append((0, new_param._name))
    source = "\n".join(["def program(t, s, c):", *reads, *tracer.lines, *writes])
    program = Program(source, tracer.scalars, tracer.tensor_scalars, new_keys, results,
                      tracer.nodes, outputs, compact)
    if recording:
        return program, tracer.scalar_refs, {k: result_refs.get(k) for k in results}
    return program

