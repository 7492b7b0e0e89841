"""The ops contract (:mod:`sgdlab.algorithms.ops`) on Keras tensors, for every backend.

``keras.ops`` everywhere except on the torch backend, whose tensors are torch tensors: there
``keras.ops.maximum`` promotes two float64 inputs to float32 (Keras 3.15), which would round
AMSGrad's running maximum, so torch's own functions are used. Neither rounds multiply-adds once
(no ``fma``): Keras's own optimizers do not either.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops as _ops


class KerasOps:
    """The contract through ``keras.ops``."""

    sqrt = staticmethod(_ops.sqrt)
    abs = staticmethod(_ops.abs)
    sign = staticmethod(_ops.sign)
    maximum = staticmethod(_ops.maximum)
    minimum = staticmethod(_ops.minimum)
    where = staticmethod(_ops.where)
    matmul = staticmethod(_ops.matmul)

    @staticmethod
    def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return _ops.sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def cast(x: Any, dtype: str) -> Any:
        return _ops.cast(x, dtype)

    @staticmethod
    def norm(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return _ops.sqrt(_ops.sum(_ops.square(x), axis=axis, keepdims=keepdims))

    @staticmethod
    def transpose(x: Any) -> Any:
        return _ops.swapaxes(x, -1, -2)


def _torch_ops() -> Any:
    import torch

    class TorchOps:
        """The contract through torch, for Keras's torch backend."""

        sqrt = staticmethod(torch.sqrt)
        abs = staticmethod(torch.abs)
        sign = staticmethod(torch.sign)
        maximum = staticmethod(torch.maximum)
        minimum = staticmethod(torch.minimum)
        where = staticmethod(torch.where)
        matmul = staticmethod(torch.matmul)

        @staticmethod
        def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
            return torch.sum(x) if axis is None else torch.sum(x, dim=axis, keepdim=keepdims)

        @staticmethod
        def cast(x: Any, dtype: str) -> Any:
            return x.to(getattr(torch, dtype))

        @staticmethod
        def norm(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
            return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

        @staticmethod
        def transpose(x: Any) -> Any:
            return x.mT

    return TorchOps


#: What the rules get as ``ops`` under the current Keras backend.
OPS: Any = _torch_ops() if keras.config.backend() == "torch" else KerasOps
