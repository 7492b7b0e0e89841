"""The ``ops`` a rule sees on torch tensors: the contract of :mod:`sgdlab.algorithms.ops`, plus
the multiply-adds of :mod:`sgdlab.algorithms.fused` computed by the very kernels torch.optim
calls (``add(alpha=)``, ``addcmul``, ``lerp``), so that a rule written in torch.optim's order
of operations gives torch.optim's bits, on any device.

Under ``torch.compile`` (the grouped path's Inductor programs) those kernels are decomposed, and
Inductor's CPU code rounds ``a * b + c`` twice; there the multiply-adds are Inductor's own fused
multiply-add, so that compiled programs round as eager CPU kernels do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:  # Inductor's fused multiply-add (an internal of torch: without it, Inductor rounds twice)
    from torch._inductor.inductor_prims import fma as _compiled_fma
except Exception:  # noqa: BLE001 - any failure: the decomposed form, still correct
    _compiled_fma = None


def fma(a: Any, b: Any, c: Tensor) -> Tensor:
    """``a * b + c`` rounded once: ``add(alpha=)`` (torch.optim's ``add_(x, alpha=...)``) with a
    number, ``addcmul`` with a 0-d tensor (a tensor learning rate: differentiable, as torch
    .optim's ``addcmul_(grad, lr, value=-1)``) or with two tensors."""
    if _compiled_fma is not None and torch.compiler.is_compiling():
        return _compiled_fma(_as_tensor(a, c), _as_tensor(b, c), c)
    if not isinstance(a, Tensor):
        return torch.add(c, b, alpha=a)
    if not isinstance(b, Tensor):
        return torch.add(c, a, alpha=b)
    return torch.addcmul(c, a, b)


def addcmul(x: Tensor, tensor1: Tensor, tensor2: Tensor, value: Any) -> Tensor:
    """``x + value * tensor1 * tensor2`` as ``torch.addcmul`` computes it (on CPU: the product
    ``value * tensor1`` rounded, then one fused multiply-add)."""
    if _compiled_fma is not None and torch.compiler.is_compiling():
        return _compiled_fma(value * tensor1, tensor2, x)
    if isinstance(value, Tensor):  # a tensor beta2: the same product, kept differentiable
        return torch.addcmul(x, value * tensor1, tensor2)
    return torch.addcmul(x, tensor1, tensor2, value=value)


def addcdiv(x: Tensor, tensor1: Tensor, tensor2: Tensor, value: Any) -> Tensor:
    """``x + value * tensor1 / tensor2`` as ``torch.addcdiv`` computes it."""
    if isinstance(value, Tensor) or torch.compiler.is_compiling():
        return x + value * tensor1 / tensor2  # (a tensor value: differentiable)
    return torch.addcdiv(x, tensor1, tensor2, value=value)


def lerp(start: Tensor, end: Tensor, weight: Any) -> Tensor:
    """``torch.lerp``: one rounding, from ``start`` when ``|weight| < 0.5``, else from ``end``."""
    if _compiled_fma is not None and torch.compiler.is_compiling():
        weight = _as_tensor(weight, start)
        difference = end - start
        return torch.where(weight.abs() < 0.5, fma(weight, difference, start),
                           fma(weight - 1, difference, end))
    if isinstance(weight, Tensor) and weight.dtype != start.dtype:
        # torch.lerp wants a tensor weight in the tensors' dtype; torch.optim casts it alike.
        weight = weight.to(start.dtype)
    return torch.lerp(start, end, weight)


def _as_tensor(x: Any, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.dtype == like.dtype else x.to(like.dtype)
    return torch.tensor(x, dtype=like.dtype, device=like.device)


# --- the rest of the ops contract (sgdlab.algorithms.ops), with its meanings on torch tensors ---
sqrt = torch.sqrt
abs = torch.abs  # noqa: A001 - the contract's name
sign = torch.sign
where = torch.where
matmul = torch.matmul
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def maximum(a: Tensor, b: Any) -> Tensor:
    """The elementwise maximum; ``b`` may be a number (as ``clamp(min=b)``, in ``a``'s dtype)."""
    return torch.maximum(a, b) if isinstance(b, Tensor) else torch.clamp(a, min=b)


def minimum(a: Tensor, b: Any) -> Tensor:
    """The elementwise minimum; ``b`` may be a number (as ``clamp(max=b)``)."""
    return torch.minimum(a, b) if isinstance(b, Tensor) else torch.clamp(a, max=b)


def cast(x: Tensor, dtype: str) -> Tensor:
    """``x`` in the named floating-point dtype."""
    return x.to(_DTYPES[dtype])


def addmm(c: Tensor, a: Tensor, b: Tensor, beta: Any, alpha: Any) -> Tensor:
    """``beta * c + alpha * a @ b`` as torch.addmm (matrices) or torch.baddbmm (a stack of them)
    computes it: torch.optim.Muon's Newton-Schulz steps, one kernel per product."""
    if c.dim() == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    if c.dim() == 3:
        return torch.baddbmm(c, a, b, beta=beta, alpha=alpha)
    return beta * c + alpha * torch.matmul(a, b)


def sum(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """The sum of ``x`` over ``axis`` (all elements when None)."""
    if axis is None:
        return torch.sum(x)
    return torch.sum(x, dim=axis, keepdim=keepdims)


def norm(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """The 2-norm of all elements (Frobenius for a matrix), or over ``axis``."""
    return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)


def transpose(x: Tensor) -> Tensor:
    """``x`` with its last two axes swapped."""
    return x.mT
