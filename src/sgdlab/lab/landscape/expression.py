"""A safe evaluator for user functions of ``x`` and ``y`` such as ``"(1 - x)**2 + 10*(y - x**2)**2"``.

The text is parsed with :mod:`ast` and only a small whitelist of node types is accepted: numbers,
the names ``x``, ``y``, ``pi`` and ``e``, arithmetic operators and calls of a fixed set of math
functions. Everything else (attribute access, subscripts, strings, lambdas, comprehensions, keyword
arguments, unknown names) is rejected with a ``ValueError`` before anything runs. The accepted tree
is turned into a closure over ``torch`` operations -- ``eval`` is never called -- so the result is
differentiable and works elementwise on tensors of any shape.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable

import torch
from torch import Tensor

__all__ = ["ALLOWED_FUNCTIONS", "compile_expression"]

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

Node = Callable[[Tensor, Tensor], "Tensor | float"]


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
    except (SyntaxError, RecursionError, MemoryError) as error:
        raise ValueError(f"expression {text!r} is not valid Python arithmetic: {error}") from None
    node = _compile(tree.body, text)

    def f(x: Tensor, y: Tensor) -> Tensor:
        value = node(x, y)
        if not isinstance(value, Tensor):  # a constant expression such as "2"
            value = torch.full_like(x, float(value))
        return value

    f.__name__ = "expression"
    f.__doc__ = text
    return f


def _compile(node: ast.AST, text: str) -> Node:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"expression {text!r}: only numbers are allowed, not {node.value!r}")
        # Constants are floats so that e.g. "9**9**9" overflows at once instead of computing a
        # huge Python integer.
        value = float(node.value)
        return lambda x, y: value
    if isinstance(node, ast.Name):
        if node.id == "x":
            return lambda x, y: x
        if node.id == "y":
            return lambda x, y: y
        if node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
            return lambda x, y: value
        raise ValueError(
            f"expression {text!r}: unknown name {node.id!r}; use x, y, pi, e or one of the "
            f"functions {', '.join(sorted(ALLOWED_FUNCTIONS))}"
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, text), _compile(node.right, text)

        def binary(x: Tensor, y: Tensor) -> Tensor | float:
            a, b = left(x, y), right(x, y)
            if not isinstance(a, Tensor) and not isinstance(b, Tensor):
                a = torch.tensor(a, dtype=x.dtype)  # float ** float could raise OverflowError
            return op(a, b)

        return binary
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op = _UNARY[type(node.op)]
        operand = _compile(node.operand, text)
        return lambda x, y: op(operand(x, y))
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

        def call(x: Tensor, y: Tensor) -> Tensor:
            return function(*(_as_tensor(a(x, y), x) for a in args))

        return call
    raise ValueError(
        f"expression {text!r}: {type(node).__name__} ({ast.unparse(node)!r}) is not allowed; "
        "only numbers, x, y, pi, e, + - * / ** % and math functions are"
    )


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, value)
