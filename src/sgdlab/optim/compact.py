"""Compact optimizer state: momentum and Adam moments in bfloat16 or in 8 bits.

An optimizer step is memory traffic; storing the state in fewer bits cuts the state's share of it
and of the optimizer's memory. The rule still computes in float32: each stored value is widened
on load and rounded back on store, *stochastically* (unbiased): with round-to-nearest, Adam's
second moment (beta2 = 0.999, a 0.1 % change per step, less than half a bfloat16 ulp) could
never decrease.

* ``torch.bfloat16``: half the bytes (:func:`sgdlab.optim.program.round_to_bfloat16`).
* ``torch.uint8``: a quarter (plus a float32 scale per 256 elements): 8-bit blockwise-quantized
  codes, the bitsandbytes idea (:mod:`sgdlab.optim.quantized`). As in bitsandbytes and torchao,
  tensors under 4096 elements (the group's ``"min_8bit_size"``) keep float32 state.

    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-3)
    sgdlab.optim.compact_state(optimizer)                      # every group, bfloat16
    sgdlab.optim.compact_state(optimizer, torch.uint8)         # every group, 8-bit
    # or per group: sgdlab.AdamW([{"params": ..., "state_dtype": torch.bfloat16}], lr=1e-3)

``state_dict()`` holds the compact tensors in torch.optim's layout (8-bit entries come with a
``"<key>.absmax"`` entry of block scales); ``load_state_dict`` restores them exactly. The
rounding noise is seeded by a count of the group's compact steps, kept in the param group
(``"compact_state_step"``), so a resumed run rounds exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from sgdlab.optim.base import RuleOptimizer, check_min_8bit_size
from sgdlab.optim.execution import COMPACT_DTYPES


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
