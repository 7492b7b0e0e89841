"""Same-shape tensors stacked: one rule call per shape instead of one per tensor.

For a rule that is not elementwise but takes stacks (``Rule.stacks``: each matrix of a stack on
leading axes is updated as if alone; Muon's Newton-Schulz becomes batched matrix products), a
transformer's dozens of matrices of a few shapes become a handful of large operations. Nothing
is computed differently: the rule sees ``torch.stack`` of the parameters, gradients and state
tensors, and its results are copied back into each tensor. A tensor that cannot be stacked with
another (alone of its shape, complex, a subclass such as DTensor, state of another form) goes
through the per-tensor reference.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from sgdlab.optim import bfloat16, execution, quantized, torch_ops

# On a CPU, a batched bfloat16 matrix product costs about 15 ms more per call than the same
# products one by one, whatever the size (torch 2.13, 2 shared cores, /tmp measurements in
# docs/optimizers/muon.md), and beats them only for larger matrices (192 x 576: 35 ms batched
# against 290 ms one by one; 48 x 144: 30 ms against 1.5 ms). Smaller CPU tensors go one by one.
# On GPUs, stacking always pays: one launch instead of one per matrix.
CPU_MIN_NUMEL = 32768


def stacked(
    rule: Callable[..., Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    *,
    rounding_step: int | None = None,
) -> None:
    """Run ``rule`` once per stack of same-shape tensors, the rest one by one.

    ``rounding_step`` (the group's count of compact steps): the state is stored in bfloat16, or
    as 8-bit blockwise codes (:mod:`sgdlab.optim.quantized`, the same codec as the grouped path,
    blocks counted from each tensor's first element); the rule sees it in float32 and its new
    state is rounded back stochastically, with noise seeded by the step and each element's
    position in the group (as the grouped path does)."""
    stacks: dict[Any, list[int]] = {}
    alone: list[int] = []
    for i, (param, grad, state) in enumerate(zip(params, grads, states)):
        key = _stack_key(param, grad, state)
        if key is None:
            alone.append(i)
        else:
            stacks.setdefault(key, []).append(i)
    runs = []
    for indices in stacks.values():
        if len(indices) == 1:
            alone += indices
        else:
            runs.append(indices)
    if rounding_step is None and alone:
        alone.sort()
        execution.per_tensor(rule, [params[i] for i in alone], [grads[i] for i in alone],
                             [states[i] for i in alone], hyperparameters)
    elif alone:
        runs += [[i] for i in sorted(alone)]
    offsets = [0]
    for param in params:
        offsets.append(offsets[-1] + param.numel())
    seed = None if rounding_step is None else (rounding_step * 0x632BE5AB) & 0xFFFFFFFF
    for indices in runs:
        members = [params[i] for i in indices]
        member_states = [states[i] for i in indices]
        state = {key: torch.stack([_widened(s, key) for s in member_states])
                 for key in member_states[0] if not key.endswith(quantized.SUFFIX)}
        new_param, new_state = rule(
            torch.stack(members), torch.stack([grads[i] for i in indices]), state,
            ops=torch_ops, **hyperparameters)
        for param, value in zip(members, new_param.unbind()):
            param.copy_(value)
        for slot, (key, value) in enumerate(new_state.items()):
            for i, stored, entry in zip(indices, member_states, value.unbind()):
                old = stored.get(key)
                if seed is not None and isinstance(old, Tensor) and old.dtype == torch.uint8:
                    codes, scales = quantized.encode(
                        entry.reshape(-1).to(torch.float32).contiguous(),
                        quantized.entry_seed(seed, slot), offsets[i])
                    old.copy_(codes.view(old.shape))
                    stored[key + quantized.SUFFIX] = scales
                    continue
                if seed is not None and isinstance(old, Tensor) and old.dtype in (
                        torch.bfloat16, torch.float32):
                    entry = _rounded(entry, seed, offsets[i])
                    if old.dtype == torch.float32:  # loaded from a float32 checkpoint
                        stored[key] = entry
                        continue
                execution.write_back(stored, {key: entry})


def _widened(state: dict[str, Any], key: str) -> Any:
    """State entry ``key`` in float32: bfloat16 widened, 8-bit codes decoded (zeros before the
    first step, when the entry has no block scales yet)."""
    value = state[key]
    if not isinstance(value, Tensor):
        return value
    if value.dtype == torch.bfloat16:
        return value.float()
    if value.dtype == torch.uint8:
        scales = state.get(key + quantized.SUFFIX)
        if scales is None:
            return torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        return quantized.decode(value.reshape(-1), scales).view(value.shape)
    return value


def _rounded(value: Tensor, seed: int, offset: int) -> Tensor:
    """``value`` rounded stochastically to bfloat16, element noise at its position in the group."""
    start = (seed + offset) & 0xFFFFFFFF
    start -= (start >> 31) << 32  # as a signed int32, as the grouped path's programs take it
    flat = value.reshape(-1).to(torch.float32).contiguous()
    return bfloat16.round_to_bfloat16(flat, start).view(value.shape)


def _stack_key(param: Tensor, grad: Tensor, state: dict[str, Any]) -> Any:
    """What tensors must share to be stacked (None: not stackable): plain dense real tensors of
    one shape, dtype and device, with state tensors of the parameter's shape."""
    plain = (torch.Tensor, torch.nn.Parameter)
    if param.device.type == "cpu" and param.numel() < CPU_MIN_NUMEL:
        return None
    if (type(param) not in plain or type(grad) not in plain or param.is_complex()
            or grad.layout != torch.strided or grad.shape != param.shape
            or grad.dtype != param.dtype or grad.device != param.device):
        return None
    entries = []
    for key, value in state.items():
        if key.endswith(quantized.SUFFIX):
            continue  # an 8-bit entry's block scales, one per 256 elements
        if (not isinstance(value, Tensor) or type(value) not in plain
                or value.shape != param.shape or value.device != param.device):
            return None
        entries.append((key, value.dtype))
    return (tuple(param.shape), param.dtype, param.device, tuple(entries))
