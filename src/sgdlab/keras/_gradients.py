"""Gradients of a loss with respect to variables, on whichever Keras backend is active.

Only ``minimize`` needs this: ``model.fit`` and ``apply_gradients`` bring their own gradients.
Each backend differentiates differently (a TensorFlow tape, torch autograd, a pure function for
JAX), so the backend is chosen here, once, and the optimizers stay backend-neutral.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras

Loss = Any  # a zero-argument callable returning a scalar, or (TensorFlow, torch) a scalar tensor
VarList = Any  # a sequence of variables, or a zero-argument callable returning one


def gradients(
    loss: Loss,
    var_list: VarList,
    *,
    tape: Any = None,
    scale: Callable[[Any], Any] = lambda value: value,
) -> tuple[list[Any], list[Any]]:
    """``(grads, variables)`` for ``minimize``; ``scale`` is applied to the loss value first."""
    backend = keras.config.backend()
    if tape is not None and backend != "tensorflow":
        raise ValueError(
            f"Invalid tape: tape={tape!r} (a GradientTape is only meaningful with the tensorflow "
            f"backend; the active Keras backend is {backend!r})"
        )
    if backend == "tensorflow":
        return _tensorflow(loss, var_list, tape, scale)
    if backend == "torch":
        return _torch(loss, var_list, scale)
    if backend == "jax":
        return _jax(loss, var_list, scale)
    raise NotImplementedError(
        f"minimize() needs automatic differentiation, which the {backend!r} Keras backend "
        "does not provide; use the tensorflow, torch or jax backend"
    )


def _resolve(var_list: VarList) -> list[Any]:
    variables = list(var_list() if callable(var_list) else var_list)
    if not variables:
        raise ValueError("Invalid var_list: it is empty (expected at least one variable)")
    return variables


def _tensor(variable: Any) -> Any:
    """The backend's own variable or tensor behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _tensorflow(loss, var_list, tape, scale):
    import tensorflow as tf

    if tape is None:
        if not callable(loss):
            raise ValueError(
                "Invalid loss: a tensor loss needs the tf.GradientTape that recorded it "
                "(pass tape=...), or pass a zero-argument callable"
            )
        tape = tf.GradientTape()
    if callable(loss):
        with tape:
            if not callable(var_list):
                # Variables read before the tape started (or not trainable) still get gradients.
                tape.watch([_tensor(v) for v in _resolve(var_list)])
            value = loss()
    else:
        value = loss
    variables = _resolve(var_list)
    with tape:
        value = scale(value)
    return tape.gradient(value, variables), variables


def _torch(loss, var_list, scale):
    import torch

    with torch.enable_grad():
        value = scale(loss() if callable(loss) else loss)
    variables = _resolve(var_list)
    grads = torch.autograd.grad(value, [_tensor(v) for v in variables], allow_unused=True)
    return list(grads), variables


def _jax(loss, var_list, scale):
    import jax

    if not callable(loss):
        raise ValueError(
            "Invalid loss: the jax backend can only differentiate a zero-argument callable, "
            f"got {type(loss).__name__}"
        )
    variables = _resolve(var_list)

    def loss_of(values: Sequence[Any]) -> Any:
        # JAX differentiates pure functions: run the closure with the variables bound to traced
        # values instead of their stored ones.
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return scale(loss())

    grads = jax.grad(loss_of)([v.value for v in variables])
    return list(grads), variables
