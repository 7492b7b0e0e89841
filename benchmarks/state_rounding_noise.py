"""How far does compact state drift from the exact moving averages it stores?

Adam keeps m = EMA(g, beta1) and v = EMA(g^2, beta2). Stored compactly, each step rounds them
(stochastically: unbiased). A rounding error in v persists with weight beta2 = 0.999, so the
errors of many steps add up like a random walk; a coarser grid (8-bit: 3 mantissa bits) walks
further. This runs the two averages on Gaussian gradients in float32 and through each storage
format (the library's own codecs) and prints the spread of log(stored / exact) after warm-up,
for v also in sqrt(v), the form in which it scales Adam's step.

    .venv/bin/python benchmarks/state_rounding_noise.py
"""

from __future__ import annotations

import argparse
import math

import torch

from sgdlab.optim import quantized
from sgdlab.optim.program import round_to_bfloat16


def store(x: torch.Tensor, fmt: str, seed: int) -> torch.Tensor:
    if fmt == "bfloat16":
        return round_to_bfloat16(x, seed).float()
    codes, scales = quantized.encode(x, seed, 0)
    return quantized.decode(codes, scales)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16 * quantized.BLOCK)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--warmup", type=int, default=3000, help="steps before measuring")
    args = parser.parse_args()
    beta1, beta2 = 0.9, 0.999
    generator = torch.Generator().manual_seed(0)
    scale = torch.logspace(-2, 0, args.elements)  # gradient sizes spread over 2 decades
    print(f"{args.elements} elements, {args.steps} steps (measured after {args.warmup}), "
          f"beta1 {beta1}, beta2 {beta2}; std of log(stored / exact):")
    print("| state | m | v | sqrt(v) |\n|---|---|---|---|")
    for fmt in ("bfloat16", "8-bit"):
        m = torch.zeros(args.elements)
        v = torch.full((args.elements,), 1e-4) * scale**2
        m_exact, v_exact = m.clone(), v.clone()
        errors_m, errors_v = [], []
        for step in range(args.steps):
            g = torch.randn(args.elements, generator=generator) * scale
            m_exact = beta1 * m_exact + (1 - beta1) * g
            v_exact = beta2 * v_exact + (1 - beta2) * g * g
            m = store(beta1 * m + (1 - beta1) * g, fmt, 2 * step)
            v = store(beta2 * v + (1 - beta2) * g * g, fmt, 2 * step + 1)
            if step >= args.warmup:
                # m changes sign: compare where it is not near zero
                big = m_exact.abs() > 0.1 * scale
                errors_m.append(torch.log(m[big] / m_exact[big]))
                errors_v.append(torch.log(v / v_exact))
        spread_m = torch.cat(errors_m).std().item()
        spread_v = torch.cat(errors_v).std().item()
        print(f"| {fmt} | {spread_m:.3f} | {spread_v:.3f} | {spread_v / 2:.3f} |")
    print(f"\n(a step of the 8-bit grid is 2^-3 = 12.5 %; log 1.125 = {math.log(1.125):.3f})")


if __name__ == "__main__":
    main()
