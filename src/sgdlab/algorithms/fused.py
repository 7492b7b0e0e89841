"""Multiply-adds rounded once, where the backend rounds them once.

torch.optim's for-loop and foreach paths update parameters and moments with ``add_(x, alpha=a)``,
``addcmul_`` and ``lerp_``, and PyTorch's CPU kernels compute each of these ``a * b + c`` as one
fused multiply-add: one rounding instead of two (measured with torch 2.13's AVX-512 kernels:
``benchmarks/torch_bit_parity.py``). Written with ``*`` and ``+`` the same formula rounds twice,
and differs from torch.optim in the last bit of about one element in ten. Rules use these
functions where torch.optim uses those operations, in the same order, and get its numbers.

An ``ops`` namespace that provides ``fma`` (sgdlab's torch ops, :mod:`sgdlab.optim.torch_ops`,
and the tracer of :mod:`sgdlab.optim.program`, whose C printer emits C's ``fma``) computes them
rounded once. Any other (``keras.ops``, ``numpy``, plain ``torch``) computes the same formula
with separate operations: the same value up to the last bit.
"""

from __future__ import annotations

from typing import Any


def fma(a: Any, b: Any, c: Any, ops: Any) -> Any:
    """``a * b + c``, rounded once where ``ops`` can (torch's ``c.add(b, alpha=a)``)."""
    fused = getattr(ops, "fma", None)
    if fused is not None:
        return fused(a, b, c)
    return a * b + c


def addcmul(x: Any, tensor1: Any, tensor2: Any, value: Any, ops: Any) -> Any:
    """``x + value * tensor1 * tensor2``, as ``torch.addcmul`` computes it where ``ops`` can (on
    CPU: ``value * tensor1`` rounded, then one multiply-add)."""
    if getattr(ops, "fma", None) is not None:
        return ops.addcmul(x, tensor1, tensor2, value)
    return x + value * tensor1 * tensor2


def addcdiv(x: Any, tensor1: Any, tensor2: Any, value: Any, ops: Any) -> Any:
    """``x + value * tensor1 / tensor2``, as ``torch.addcdiv`` computes it where ``ops`` can (in
    float32 for bfloat16 tensors, rounded once at the end; float32 and float64 round each step,
    as here)."""
    if getattr(ops, "fma", None) is not None:
        return ops.addcdiv(x, tensor1, tensor2, value)
    return x + value * tensor1 / tensor2


def lerp(start: Any, end: Any, weight: Any, ops: Any) -> Any:
    """``start + weight * (end - start)``: the exponential moving average of ``end`` with
    ``weight = 1 - beta``, as ``torch.lerp`` computes it where ``ops`` can (one rounding, and
    stepping back from ``end`` when ``weight >= 0.5``)."""
    if getattr(ops, "fma", None) is not None:
        return ops.lerp(start, end, weight)
    return start + weight * (end - start)


def addmm(c: Any, a: Any, b: Any, *, beta: Any, alpha: Any, ops: Any) -> Any:
    """``beta * c + alpha * (a @ b)`` (matrices, or stacks of them), as torch.addmm computes it
    where ``ops`` can (one kernel; in bfloat16, one rounding of the sum)."""
    fused = getattr(ops, "addmm", None)
    if fused is not None:
        return fused(c, a, b, beta, alpha)
    product = ops.matmul(a, b)
    return beta * c + (product if alpha == 1 else alpha * product)
