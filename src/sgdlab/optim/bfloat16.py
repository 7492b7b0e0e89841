"""Stochastic rounding of float32 state to bfloat16, and the noise hash every codec shares.

The same noise (a hash of seed and element position) is used by the bfloat16 and 8-bit codecs
on every path: the PyTorch programs here, and the C loop (:mod:`sgdlab.optim.native`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# The rounding noise's hash multiplier (Knuth's, 2^32 / golden ratio), for every codec and path:
# bfloat16 and 8-bit, PyTorch and C.
HASH = 2654435761


def round_to_bfloat16(x: Tensor, seed: Any) -> Tensor:
    """Round float32 ``x`` to bfloat16 stochastically (unbiased in expectation).

    Round-to-nearest would freeze slow averages: with beta2 = 0.999, Adam's second moment changes
    by 0.1 % per step, below half a bfloat16 ulp (0.2-0.4 %), so it could only grow. Adding uniform
    noise below the cut bits before truncating makes each stored value correct on average. The
    noise is a hash of the element's index and ``seed``: deterministic, no generator state.
    """
    # Multiplicative (Fibonacci) hashing of (index + seed), keeping the well-mixed high bits;
    # int32 arithmetic wraps on overflow in PyTorch and in Inductor's vector code.
    h = (torch.arange(x.shape[0], device=x.device, dtype=torch.int32) + seed) * (HASH - 2**32)
    noise = (h >> 16) & 0xFFFF
    bits = (x.view(torch.int32) + noise) & -65536
    return bits.view(torch.float32).to(torch.bfloat16)
