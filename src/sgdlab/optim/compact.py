"""Compact optimizer state: momentum and Adam moments stored in bfloat16.

An optimizer step is memory traffic; storing the state in 16 bits halves the state's share of it
and of the optimizer's memory. The rule still computes in float32: each stored value is widened
on load and rounded back on store. The rounding is *stochastic* (:func:`sgdlab.optim.program.
round_to_bfloat16`): with round-to-nearest, Adam's second moment (beta2 = 0.999, a 0.1 % change
per step, less than half a bfloat16 ulp) could never decrease.

    optimizer = sgdlab.AdamW(model.parameters(), lr=1e-3)
    sgdlab.optim.compact_state(optimizer)                      # every group, bfloat16
    # or per group: sgdlab.AdamW([{"params": ..., "state_dtype": torch.bfloat16}], lr=1e-3)

``state_dict()`` holds the bfloat16 tensors in torch.optim's layout; ``load_state_dict`` (which
casts them to the parameter dtype, as torch.optim does) restores them exactly, because every
bfloat16 value is a float32 value.
"""

from __future__ import annotations

import torch

from sgdlab.optim.base import RuleOptimizer

STATE_DTYPES = (torch.bfloat16, torch.uint8)


def compact_state(optimizer: RuleOptimizer, dtype: torch.dtype = torch.bfloat16) -> RuleOptimizer:
    """Store ``optimizer``'s tensor state in ``dtype`` from the next step on; returns it."""
    if dtype not in STATE_DTYPES:
        raise ValueError(
            f"Invalid state_dtype: {dtype!r} (supported: torch.bfloat16; torch.uint8 for 8-bit "
            "blockwise-quantized state)"
        )
    if not isinstance(optimizer, RuleOptimizer):
        raise TypeError(f"compact_state needs an sgdlab optimizer, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        group["state_dtype"] = dtype
    return optimizer
