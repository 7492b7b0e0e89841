"""A traced program's text turned into something to call: eager or compiled, cached per text.

The eager function runs the program's PyTorch operations as written (bit-identical to the
per-tensor reference); :func:`compiled` and :func:`compiled_batch` hand it to ``torch.compile``
(Inductor) once per process and text. The program's numbers are inputs (:func:`scalar_inputs`),
so a schedule or the step count never triggers a recompile.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from sgdlab.optim import torch_ops
from sgdlab.optim.bfloat16 import round_to_bfloat16
from sgdlab.optim.tracing import Program

_lock = threading.Lock()
_eager: dict[str, Callable[..., None]] = {}
_compiled: dict[str, Callable[..., None]] = {}


def _function(source: str) -> Callable[..., None]:
    namespace: dict[str, Any] = {"torch": torch, "ops": torch_ops,
                                 "round_to_bfloat16": round_to_bfloat16}
    exec(compile(source, "<sgdlab program>", "exec"), namespace)  # noqa: S102 - our own text
    return namespace["program"]


def eager(program: Program) -> Callable[..., None]:
    with _lock:
        function = _eager.get(program.source)
        if function is None:
            function = _eager[program.source] = _function(program.source)
    return function


_seen: set[str] = set()


def worth_compiling(program: Program) -> bool:
    """True from the second time a program text is run: a text used once (SGD's first step,
    which creates the momentum buffer) is not worth seconds of compilation."""
    with _lock:
        if program.source in _seen:
            return True
        _seen.add(program.source)
        return False


def compiled(program: Program) -> Callable[..., None]:
    """The program compiled once per process (per text); sizes are dynamic."""
    with _lock:
        function = _compiled.get(program.source)
        if function is None:
            function = torch.compile(
                _function(program.source), dynamic=True, fullgraph=True, mode="default"
            )
            _compiled[program.source] = function
    return function


def compiled_batch(program: Program, slots: int) -> Callable[..., None]:
    """The program over ``slots`` tensors per call, ``batch(ts, s, cs)``: ``ts[i]`` and
    ``cs[i]`` are one tensor's ``t`` and ``c``. One call costs the same Python overhead as a
    single tensor's, so large groups of tensors pay it once per ``slots`` tensors."""
    key = f"{program.source}\n# slots={slots}"
    with _lock:
        function = _compiled.get(key)
        if function is None:
            # A fresh code object per program: torch.compile caches (and limits recompiles)
            # per code object, so a closure shared by all programs would hit that limit.
            namespace: dict[str, Any] = {"single": _function(program.source)}
            source = "def batch(ts, s, cs):\n    for t, c in zip(ts, cs):\n        single(t, s, c)\n"
            exec(compile(source, f"<sgdlab batch {len(_compiled)}>", "exec"), namespace)  # noqa: S102
            function = torch.compile(namespace["batch"], dynamic=True, fullgraph=True)
            _compiled[key] = function
    return function


def scalar_inputs(program: Program, device: torch.device, *, as_tensor: bool,
                  dtype: torch.dtype = torch.float64) -> Any:
    """The ``s`` argument: Python numbers for the eager program (exactly the reference's
    arithmetic), a vector for the compiled one (inputs, not constants).

    Every number of the program meets a tensor (numbers among themselves were combined in
    Python), so PyTorch rounds it to the tensor's dtype first; rounding it here, once, gives the
    same values and spares the kernel a conversion per vector of elements."""
    if not as_tensor:
        return program.scalars
    values = torch.tensor([float(v) for v in program.scalars] or [0.0], dtype=torch.float64)
    return values.to(dtype).to(device)
