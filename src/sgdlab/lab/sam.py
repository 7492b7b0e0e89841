"""SAM in the lab's ``--opt`` language: sharpness-aware minimization around another spec.

    sam                                SAM (rho 0.05) around ``momentum`` (SGD, momentum 0.9)
    sam:base=adamw,lr=1e-3,rho=0.1     around AdamW; every other key goes to the base optimizer
    asam:rho=0.5                       the adaptive variant (ASAM, weight scale |w| + eta)

The base is any registered name or ``torch.<Class>``, with that entry's presets. SAM evaluates two
gradients per step, so at equal epochs it costs about twice the time of its base optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

from sgdlab.optim.sam import SAM


def build_sam(
    params: Any,
    base: str = "momentum",
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.01,
    **hyperparameters: Any,
) -> torch.optim.Optimizer:
    """``SAM(<base spec built on params>, rho=rho, adaptive=adaptive, eta=eta)``."""
    from sgdlab.lab.specs import OptimizerSpec  # the registry imports this module lazily

    inner = OptimizerSpec(base, hyperparameters)
    if inner.entry.factory in (build_sam, build_asam) or inner.entry.resolve() in (build_sam, build_asam):
        raise ValueError(f"Invalid base: base={base!r} (SAM cannot wrap SAM)")
    return SAM(inner.build(params), rho=rho, adaptive=adaptive, eta=eta)


def build_asam(
    params: Any,
    base: str = "momentum",
    rho: float = 0.5,
    eta: float = 0.01,
    **hyperparameters: Any,
) -> torch.optim.Optimizer:
    """ASAM (Kwon et al. 2021), whose paper uses a larger neighbourhood than SAM (rho 0.5 for SGD)."""
    return build_sam(params, base, rho=rho, adaptive=True, eta=eta, **hyperparameters)
