"""8-bit optimizer state: blockwise-scaled 8-bit floating-point codes (the bitsandbytes idea).

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization": each block of ``BLOCK``
consecutive elements of a state tensor is stored as 8-bit codes plus one float32 scale, its
largest magnitude, so an outlier only costs precision in its own block. Codes are non-linear
(floating point), because optimizer state spans orders of magnitude within a block:

* a block with both signs (momentum, Adam's first moment) stores ``y = x / scale`` as
  sign + 4-bit exponent + 3-bit mantissa: 2^-14 <= |y| <= 1, 12.5 % steps;
* a nonnegative block (Adam's second moment) stores ``y = sqrt(x / scale)`` as 5-bit exponent +
  3-bit mantissa: x / scale down to 2^-60. The square root keeps small second moments (which
  set the largest steps, through ``1 / sqrt(v)``) from being flushed to zero. Such blocks are
  marked by a negative scale.

Rounding is stochastic (unbiased) like the bfloat16 state's: noise from a hash of the element's
position in the flat state, the step's seed and the entry, added below the kept mantissa bits.
A state entry ``key`` is stored as ``state[key]`` (uint8 codes, shaped like the parameter) and
``state[key + ".absmax"]`` (float32 scales, one per block of that tensor).

The codec exists twice, on purpose, side by side: in PyTorch operations (:func:`encode`,
:func:`decode`; the CUDA and fallback path, and the tests' reference) and as C for the CPU loop
(:data:`C_CODEC`). The tests require the two to agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 256
SUFFIX = ".absmax"
_HASH = 2654435761  # Knuth's multiplicative hash constant, 2^32 / golden ratio
_SALT = 0x9E3779B9  # decorrelates the rounding noise of different state entries


def entry_seed(seed: int, slot: int) -> int:
    """The rounding seed of state entry ``slot`` in the step with ``seed``."""
    return (seed + slot * _SALT) & 0xFFFFFFFF


def encode(x: Tensor, seed: int, position: int) -> tuple[Tensor, Tensor]:
    """Quantize 1-D float32 ``x`` (its first element at flat ``position``): (codes, scales)."""
    n = x.numel()
    blocks = -(-n // BLOCK)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = x
    padded = padded.view(blocks, BLOCK)
    bits = padded.view(torch.int32).long() & 0xFFFFFFFF
    amax = (bits & 0x7FFFFFFF).amax(dim=1).to(torch.int32).view(torch.float32)
    nonnegative = ~((bits >> 31).bool().any(dim=1))
    inverse = torch.where(amax == 0, torch.zeros_like(amax), 1.0 / amax)
    y = padded * inverse[:, None]
    rooted = torch.sqrt(y.double()).float()  # correctly rounded, as C's sqrtf
    y = torch.where(nonnegative[:, None], rooted, y)

    index = torch.arange(blocks * BLOCK, device=x.device, dtype=torch.int64).view(blocks, BLOCK)
    noise = (((index + seed + position) & 0xFFFFFFFF) * _HASH & 0xFFFFFFFF) >> 12
    b = ((y.view(torch.int32).long() & 0xFFFFFFFF) + noise) & 0xFFFFFFFF
    exponent = ((b >> 23) & 0xFF) - 127
    mantissa = (b >> 20) & 7
    sign = b >> 31
    signed_e = exponent + 15
    signed = torch.where(signed_e <= 0, 0, (sign << 7) | (signed_e << 3) | mantissa)
    unsigned_e = exponent + 31
    unsigned = torch.where(unsigned_e <= 0, 0, (unsigned_e << 3) | mantissa)
    codes = torch.where(nonnegative[:, None], unsigned, signed) & 0xFF
    scales = torch.where(nonnegative, -amax, amax)
    return codes.reshape(-1)[:n].to(torch.uint8), scales


def decode(codes: Tensor, scales: Tensor) -> Tensor:
    """The float32 values of 1-D ``codes`` (uint8) with their blocks' ``scales``."""
    n = codes.numel()
    c = codes.long()
    scale = scales.repeat_interleave(BLOCK)[:n]
    nonnegative = torch.signbit(scale)
    signed_e = (c >> 3) & 15
    unsigned_e = c >> 3
    mantissa = c & 7
    signed_bits = ((c >> 7) << 31) | ((signed_e + 112) << 23) | (mantissa << 20)
    unsigned_bits = ((unsigned_e + 96) << 23) | (mantissa << 20)
    bits = torch.where(nonnegative, unsigned_bits, signed_bits)
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
    y = bits.view(torch.float32)
    zero = torch.where(nonnegative, unsigned_e == 0, signed_e == 0)
    y = torch.where(zero, torch.zeros_like(y), y)
    return torch.where(nonnegative, y * y * scale.abs(), y * scale)


# The same codec, element by element, for sgdlab.optim.native's loop.
C_CODEC = r"""
#define Q8_BLOCK Q8_BLOCK_SIZE
/* A code's exponent and mantissa bits are a float's, shifted: (code & magnitude_mask) + bias,
   shifted left by 20, is the float's exponent and top 3 mantissa bits. A block's code type is
   fixed, so the per-element decode is straight-line integer and float arithmetic (no branches:
   the compiler vectorizes the loop around it). */
typedef struct {
    uint32_t magnitude_mask, bias, sign_mask, zero_mask, square_mask; float scale;
} q8_block;
static inline q8_block q8_block_of(float scale) {
    q8_block b;
    int nonnegative = signbit(scale) != 0;
    b.magnitude_mask = nonnegative ? 0xFFu : 0x7Fu;
    b.bias = nonnegative ? 96u << 3 : 112u << 3;  /* (127 - 31) and (127 - 15), as exponent bits */
    b.sign_mask = nonnegative ? 0u : 1u;
    b.zero_mask = nonnegative ? 0xF8u : 0x78u;    /* exponent bits of the code: 0 means zero */
    b.square_mask = nonnegative ? 0xFFFFFFFFu : 0u;
    b.scale = nonnegative ? fabsf(scale) : scale;
    return b;
}
static inline float q8_decode(uint8_t code, q8_block b) {
    uint32_t c = code;
    uint32_t bits = (((c & b.magnitude_mask) + b.bias) << 20) | (((c >> 7) & b.sign_mask) << 31);
    bits &= 0u - (uint32_t)((c & b.zero_mask) != 0);
    uint32_t factor_bits = (bits & b.square_mask) | (0x3F800000u & ~b.square_mask);  /* y or 1 */
    float y, factor;
    memcpy(&y, &bits, 4);
    memcpy(&factor, &factor_bits, 4);
    return y * factor * b.scale;
}
/* The block's largest magnitude and whether any sign bit is set, from float bit patterns
   (integer max and or: the compiler vectorizes them); accumulated while the values are made. */
static inline void q8_observe(float x, uint32_t* amax_bits, uint32_t* signs) {
    uint32_t b; memcpy(&b, &x, 4);
    uint32_t magnitude = b & 0x7FFFFFFFu;
    *amax_bits = magnitude > *amax_bits ? magnitude : *amax_bits;
    *signs |= b;
}
static inline void q8_encode(const float* x, int64_t n, uint8_t* codes, float* scale_out,
                             uint32_t amax_bits, uint32_t signs, uint32_t seed, int64_t position) {
    float amax; memcpy(&amax, &amax_bits, 4);
    int nonnegative = !(signs >> 31);
    float inverse = amax == 0.0f ? 0.0f : 1.0f / amax;
    uint32_t base = seed + (uint32_t)position;
    if (nonnegative) {
        for (int64_t j = 0; j < n; j++) {
            float y = sqrtf(x[j] * inverse);
            uint32_t b; memcpy(&b, &y, 4);
            b += ((base + (uint32_t)j) * 2654435761u) >> 12;
            /* exponent and mantissa bits, rebased: (exponent - 127 + 31) << 3 | mantissa */
            int32_t t = (int32_t)((b >> 20) & 0x7FFu) - (96 << 3);
            codes[j] = (uint8_t)(t < 8 ? 0 : t);
        }
        *scale_out = -amax;
    } else {
        for (int64_t j = 0; j < n; j++) {
            float y = x[j] * inverse;
            uint32_t b; memcpy(&b, &y, 4);
            b += ((base + (uint32_t)j) * 2654435761u) >> 12;
            int32_t t = (int32_t)((b >> 20) & 0x7FFu) - (112 << 3);
            codes[j] = (uint8_t)(t < 8 ? 0 : (int32_t)((b >> 31) << 7) | t);
        }
        *scale_out = amax;
    }
}
"""
