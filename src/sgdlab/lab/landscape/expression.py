"""A safe evaluator for user functions of ``x`` and ``y`` such as ``"(1 - x)**2 + 10*(y - x**2)**2"``.

The text is parsed with :mod:`ast` and only a small whitelist of node types is accepted: numbers,
the names ``x``, ``y``, ``pi`` and ``e``, arithmetic operators and calls of a fixed set of math
functions. Everything else (attribute access, subscripts, strings, lambdas, comprehensions, keyword
arguments, unknown names) is rejected with a ``ValueError`` before anything runs, and so are
expressions that do not use ``x`` or ``y`` (nothing to descend), that nest more than
:data:`MAX_DEPTH` levels deep, or whose constant parts overflow (``10**10**10``). The accepted tree
is turned into a closure over ``torch`` operations -- ``eval`` is never called -- so the result is
differentiable and works elementwise on tensors of any shape. Constant parts are computed once, in
double precision.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable

import torch
from torch import Tensor

__all__ = ["ALLOWED_FUNCTIONS", "MAX_DEPTH", "compile_expression"]

#: Functions an expression may call, by the name it uses.
ALLOWED_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "arcsin": torch.asin,
    "asin": torch.asin,
    "arccos": torch.acos,
    "acos": torch.acos,
    "arctan": torch.atan,
    "atan": torch.atan,
    "atan2": torch.atan2,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "log": torch.log,
    "log1p": torch.log1p,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sign": torch.sign,
    "minimum": torch.minimum,
    "maximum": torch.maximum,
    "min": torch.minimum,
    "max": torch.maximum,
}
_ARITY = {"atan2": 2, "minimum": 2, "maximum": 2, "min": 2, "max": 2}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_VARIABLES = ("x", "y")
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_LENGTH = 1000
#: How deeply an expression may nest (operators and calls): compiling and evaluating recurse once
#: per level, and Python's stack is limited (about 1000 frames), so deeper trees are refused up front.
MAX_DEPTH = 100
_TOO_LARGE = "is too large for a floating-point number (overflow)"


def compile_expression(text: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Turn ``text``, an arithmetic expression in ``x`` and ``y``, into ``f(x, y) -> Tensor``.

    Raises ``ValueError`` naming the offending part when the text is not a plain arithmetic
    expression over the allowed names and functions (see :data:`ALLOWED_FUNCTIONS`).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expression must be a non-empty string, got {text!r}")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"expression is {len(text)} characters long; the limit is {_MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (RecursionError, MemoryError):
        raise ValueError(f"expression {_short(text)} is nested too deeply; the limit is {MAX_DEPTH} levels") from None
    except SyntaxError as error:
        raise ValueError(f"expression {_short(text)} is not valid Python arithmetic: {error}") from None
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ValueError(
            f"expression {_short(text)} is nested {depth} levels deep; the limit is {MAX_DEPTH}"
        )
    node = _compile(tree.body, text)
    if not isinstance(node, Compiled):
        raise ValueError(
            f"expression {text!r} does not depend on x or y (it is the constant {node:g}); "
            "give a function of x and y, e.g. 'x**2 + 10*y**2'"
        )

    def f(x: Tensor, y: Tensor) -> Tensor:
        return node(x, y)

    f.__name__ = "expression"
    f.__doc__ = text
    return f


class Compiled:
    """A compiled part of an expression that depends on ``x`` or ``y``: ``part(x, y) -> Tensor``.
    Parts that do not are folded into a plain ``float`` when compiled."""

    def __init__(self, function: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.function = function

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.function(x, y)


def _value(part: "Compiled | float", x: Tensor, y: Tensor) -> "Tensor | float":
    return part(x, y) if isinstance(part, Compiled) else part


def _compile(node: ast.AST, text: str) -> "Compiled | float":
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"expression {text!r}: only numbers are allowed, not {node.value!r}")
        # Constants are floats so that e.g. "9**9**9" overflows at once instead of computing a
        # huge Python integer.
        return _finite(float(node.value), node, text)
    if isinstance(node, ast.Name):
        if node.id == "x":
            return Compiled(lambda x, y: x)
        if node.id == "y":
            return Compiled(lambda x, y: y)
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ValueError(
            f"expression {text!r}: unknown name {node.id!r}; use x, y, pi, e or one of the "
            f"functions {', '.join(sorted(ALLOWED_FUNCTIONS))}"
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, text), _compile(node.right, text)
        if not isinstance(left, Compiled) and not isinstance(right, Compiled):
            return _fold(op, (left, right), node, text)
        return Compiled(lambda x, y: op(_value(left, x, y), _value(right, x, y)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op = _UNARY[type(node.op)]
        operand = _compile(node.operand, text)
        if not isinstance(operand, Compiled):
            return op(operand)
        return Compiled(lambda x, y: op(operand(x, y)))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_FUNCTIONS:
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ValueError(
                f"expression {text!r}: calling {called!r} is not allowed; allowed functions: "
                f"{', '.join(sorted(ALLOWED_FUNCTIONS))}"
            )
        name = node.func.id
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ValueError(f"expression {text!r}: {name}() takes plain positional arguments only")
        arity = _ARITY.get(name, 1)
        if len(node.args) != arity:
            raise ValueError(
                f"expression {text!r}: {name}() takes {arity} argument(s), got {len(node.args)}"
            )
        function = ALLOWED_FUNCTIONS[name]
        args = [_compile(a, text) for a in node.args]
        if not any(isinstance(a, Compiled) for a in args):
            return _fold(lambda *values: float(function(*(torch.tensor(v, dtype=torch.float64) for v in values))),
                         args, node, text, infinite="is infinite")

        def call(x: Tensor, y: Tensor) -> Tensor:
            return function(*(_as_tensor(_value(a, x, y), x) for a in args))

        return Compiled(call)
    raise ValueError(
        f"expression {text!r}: {type(node).__name__} ({ast.unparse(node)!r}) is not allowed; "
        "only numbers, x, y, pi, e, + - * / ** % and math functions are"
    )


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, value)


def _fold(op: Callable[..., float], values: "list[float] | tuple[float, ...]", node: ast.AST, text: str,
          infinite: str = _TOO_LARGE) -> float:
    """The value of a constant part, computed once in double precision."""
    try:
        result = op(*values)
    except OverflowError:
        result = math.inf
    except ZeroDivisionError:
        raise ValueError(f"expression {text!r}: {_part(node, text)} divides by zero") from None
    if isinstance(result, complex):  # a negative number to a fractional power
        raise ValueError(f"expression {text!r}: {_part(node, text)} is not a real number")
    return _finite(float(result), node, text, infinite)


def _finite(value: float, node: ast.AST, text: str, infinite: str = _TOO_LARGE) -> float:
    if math.isinf(value):
        raise ValueError(f"expression {text!r}: {_part(node, text)} {infinite}")
    if math.isnan(value):
        raise ValueError(f"expression {text!r}: {_part(node, text)} is not a number (NaN)")
    return value


def _part(node: ast.AST, text: str) -> str:
    """The text of ``node`` as the user wrote it."""
    return ast.get_source_segment(text.strip(), node) or ast.unparse(node)


def _depth(root: ast.AST) -> int:
    """How many levels deep the tree nests, counted without recursion (a deep tree is what we guard against)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                     if not isinstance(child, (ast.operator, ast.unaryop, ast.expr_context)))
    return deepest


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
