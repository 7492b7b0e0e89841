"""The ``ops`` contract: every function a rule may call on its tensors, and nothing else.

A rule computes with Python's operators (``+ - * / **``, unary ``-``, comparisons) and with the
functions below, taken from the ``ops`` argument it is given. Each framework supplies a thin shim
with these exact meanings: :mod:`sgdlab.optim.torch_ops` (torch, with torch.optim's rounding),
``sgdlab.keras._ops`` (``keras.ops`` on any backend), :data:`NUMPY` here (references and tests).
``tests/test_core_declarations.py`` checks that every rule in :mod:`sgdlab.algorithms` calls only these
names and that every shim provides them with the same meaning.

Elementwise (the grouped fast path and populations can run these over concatenated or stacked
tensors): ``sqrt``, ``abs``, ``sign``, ``maximum``, ``minimum``, ``where`` (``maximum`` and
``minimum`` also take a Python number as their second argument), ``cast(x, dtype)`` (``x`` in the
floating-point type named ``"bfloat16"``, ``"float32"`` or ``"float64"``: Muon's Newton-Schulz
runs in bfloat16, as torch.optim.Muon's).

Reductions and matrix operations (a rule that uses them declares ``elementwise=False``):
``sum(x, axis=None, keepdims=False)``, ``norm(x, axis=None, keepdims=False)`` (the 2-norm of all
elements, or over ``axis``: Frobenius for a matrix, ``axis=(-2, -1)`` for each of a stack),
``matmul(a, b)`` (batched over leading axes), ``transpose(x)`` (swaps the last two axes).

Optional multiply-adds (:mod:`sgdlab.algorithms.fused`): a shim that rounds ``a * b + c`` once,
as torch.optim's kernels do, provides ``fma``, ``addcmul``, ``addcdiv`` and ``lerp``, and
``addmm(c, a, b, beta, alpha)`` (``beta c + alpha a @ b``, as torch.addmm / baddbmm round it);
a rule never calls them directly, only through :mod:`sgdlab.algorithms.fused`, which falls back
to the operators when they are absent.
"""

from __future__ import annotations

from typing import Any, Protocol

ELEMENTWISE = ("sqrt", "abs", "sign", "maximum", "minimum", "where", "cast")
REDUCTIONS = ("sum", "norm", "matmul", "transpose")
OPERATIONS = ELEMENTWISE + REDUCTIONS
FUSED = ("fma", "addcmul", "addcdiv", "lerp", "addmm")
#: The dtype names ``cast`` takes.
DTYPES = ("bfloat16", "float32", "float64")


class Ops(Protocol):
    """What a rule may call; see the module docstring for each function's meaning."""

    def sqrt(self, x: Any) -> Any: ...
    def abs(self, x: Any) -> Any: ...
    def sign(self, x: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def where(self, condition: Any, x: Any, y: Any) -> Any: ...
    def cast(self, x: Any, dtype: str) -> Any: ...
    def sum(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any: ...
    def norm(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any: ...
    def matmul(self, a: Any, b: Any) -> Any: ...
    def transpose(self, x: Any) -> Any: ...


class _NumPy:
    """The contract on NumPy arrays (float64 references, tests)."""

    def __init__(self) -> None:
        import numpy

        self._np = numpy

    def sqrt(self, x: Any) -> Any: return self._np.sqrt(x)
    def abs(self, x: Any) -> Any: return self._np.abs(x)
    def sign(self, x: Any) -> Any: return self._np.sign(x)
    def maximum(self, a: Any, b: Any) -> Any: return self._np.maximum(a, b)
    def minimum(self, a: Any, b: Any) -> Any: return self._np.minimum(a, b)
    def where(self, condition: Any, x: Any, y: Any) -> Any: return self._np.where(condition, x, y)

    def sum(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self._np.sum(x, axis=axis, keepdims=keepdims)

    def cast(self, x: Any, dtype: str) -> Any:
        if dtype == "bfloat16":  # NumPy has no bfloat16; ml_dtypes (a Keras dependency) does
            import ml_dtypes

            return self._np.asarray(x).astype(ml_dtypes.bfloat16)
        return self._np.asarray(x).astype(dtype)

    def norm(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        # Summed in float32 at least, rounded back to x's dtype (as torch's bfloat16 norm).
        wide = self._np.asarray(x).astype(self._np.promote_types(x.dtype, self._np.float32))
        return self._np.sqrt(self._np.sum(self._np.square(wide), axis=axis,
                                          keepdims=keepdims)).astype(x.dtype)
    def matmul(self, a: Any, b: Any) -> Any: return self._np.matmul(a, b)
    def transpose(self, x: Any) -> Any: return self._np.swapaxes(x, -1, -2)


NUMPY: Ops = _NumPy()
