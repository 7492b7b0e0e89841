"""Compact optimizer state: momentum and Adam moments in bfloat16 or in 8 bits.

An optimizer step is memory traffic; storing the state in fewer bits cuts the state's share of it
and of the optimizer's memory. The rule still computes in float32: each stored value is widened
on load and rounded back on store, *stochastically* (unbiased): with round-to-nearest, Adam's
second moment (beta2 = 0.999, a 0.1 % change per step, less than half a bfloat16 ulp) could
never decrease.

* ``torch.bfloat16``: half the bytes (:func:`sgdlab.optim.bfloat16.round_to_bfloat16`).
* ``torch.uint8``: a quarter (plus a float32 scale per 256 elements): 8-bit blockwise-quantized
  codes, the bitsandbytes idea (:mod:`sgdlab.optim.quantized`). As in bitsandbytes and torchao,
  tensors under 4096 elements (the group's ``"min_8bit_size"``) keep float32 state.

    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-3)
    sgdlab.optim.compact_state(optimizer)                      # every group, bfloat16
    sgdlab.optim.compact_state(optimizer, torch.uint8)         # every group, 8-bit
    # or per group: sgdlab.AdamW([{"params": ..., "state_dtype": torch.bfloat16}], lr=1e-3)

Checkpoints (what loads where: docs/drop-in.md): ``state_dict()`` holds bfloat16 entries as
bfloat16 tensors, which torch.optim loads correctly (it casts them to the parameter's float32),
and each 8-bit entry as one dict, ``{"codes": uint8, "absmax": float32 block scales, "block":
256}``, which torch.optim refuses at its first step rather than train on codes cast to floats;
:func:`widen_state_dict` makes any of them a float32 checkpoint for torch.optim. An sgdlab
optimizer's ``load_state_dict`` restores compact state exactly, reads the layout of older sgdlab
versions too (codes under the entry's name, scales under ``"<key>.absmax"``), and refuses 8-bit
entries that do not fit a parameter (ValueError naming it). The rounding noise is seeded by a
count of the group's compact steps, kept in the param group (``"compact_state_step"``), so a
resumed run rounds exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from typing import Any

from sgdlab.optim import quantized
from sgdlab.optim.base import ROUNDING_STEP, RuleOptimizer, check_min_8bit_size
from sgdlab.optim.grouped import COMPACT_DTYPES

# Param-group keys of compact state, which a float32 checkpoint does not have.
COMPACT_GROUP_KEYS = ("state_dtype", "min_8bit_size", ROUNDING_STEP)


def compact_state(optimizer: RuleOptimizer, dtype: torch.dtype = torch.bfloat16, *,
                  min_8bit_size: int | None = None) -> RuleOptimizer:
    """Store ``optimizer``'s tensor state in ``dtype`` from the next step on; returns it.

    ``min_8bit_size``: with ``torch.uint8``, tensors with fewer elements keep float32 state
    (default: the group's ``"min_8bit_size"``, else 4096)."""
    if dtype not in COMPACT_DTYPES:
        raise ValueError(
            f"Invalid state_dtype: {dtype!r} (supported: torch.bfloat16; torch.uint8 for 8-bit "
            "blockwise-quantized state)"
        )
    if not isinstance(optimizer, RuleOptimizer):
        raise TypeError(f"compact_state needs an sgdlab optimizer, got {type(optimizer).__name__}")
    optimizer.check_state_dtype(dtype)
    if min_8bit_size is not None:
        check_min_8bit_size(min_8bit_size)
    for group in optimizer.param_groups:
        group["state_dtype"] = dtype
        if min_8bit_size is not None:
            group["min_8bit_size"] = min_8bit_size
    return optimizer


def widen_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` of an sgdlab optimizer with compact state as a float32-state optimizer would
    have saved it: each 8-bit entry decoded, each bfloat16 entry widened to float32, the compact
    param-group keys dropped. torch.optim's class of the same name loads it and continues from
    the same state. Returns a new dict sharing the unchanged tensors; ``state_dict`` is not changed.

        torch.save(sgdlab.optim.widen_state_dict(optimizer.state_dict()), "for_torch.pt")
        torch.optim.AdamW(model.parameters()).load_state_dict(torch.load("for_torch.pt"))

    An sgdlab optimizer with compact state loads the result too (keeping its own state_dtype),
    re-encoding the state: close to, not bit for bit, the compact run it came from."""
    state = {key: quantized.widened(value) if isinstance(value, dict) else value
             for key, value in state_dict["state"].items()}
    groups = [{key: value for key, value in group.items() if key not in COMPACT_GROUP_KEYS}
              for group in state_dict["param_groups"]]
    return {**state_dict, "state": state, "param_groups": groups}
