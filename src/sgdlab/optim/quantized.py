"""8-bit optimizer state: blockwise-scaled 8-bit floating-point codes (the bitsandbytes idea).

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization": each block of ``BLOCK``
consecutive elements of a state tensor is stored as 8-bit codes plus one float32 scale, its
largest magnitude, so an outlier only costs precision in its own block. Codes are non-linear
(floating point), because optimizer state spans orders of magnitude within a block:

* a block with both signs (momentum, Adam's first moment) stores ``y = x / scale`` as
  sign + 4-bit exponent + 3-bit mantissa: 2^-14 <= |y| <= 1, 12.5 % steps (a block whose
  largest magnitude is subnormal, below 1.2e-38, is stored as zeros: ``1 / scale`` overflows);
* a nonnegative block (Adam's second moment) stores ``y = sqrt(x) / sqrt(scale)`` as 5-bit
  exponent + 3-bit mantissa: x / scale down to 2^-60. The square root keeps small second moments (which
  set the largest steps, through ``1 / sqrt(v)``) from being flushed to zero. Such blocks are
  marked by a negative scale.

Rounding is stochastic (unbiased) like the bfloat16 state's: noise from a hash of the element's
position in the flat state, the step's seed and the entry, added below the kept mantissa bits.
A state entry ``key`` is stored as ``state[key]`` (uint8 codes, shaped like the parameter) and
``state[key + ".absmax"]`` (float32 scales, one per block of that tensor).

Non-finite values (a NaN or infinite gradient) stay in their element, as in float32 state: a
block's scale and sign are taken over its finite values (NaN's sign bit says nothing), and a
NaN or infinity is stored as a reserved code that no finite value reaches (a finite value's
``y`` is at most 1 plus a rounding error, which codes as 1.0 or 1.125 at most: magnitude 121 in a
signed block, 249 in a nonnegative one): a signed block stores NaN as ``0x7E`` and an infinity
as ``0x7F`` with its sign bit; a nonnegative block NaN as ``0xFE`` and +inf as ``0xFF`` (a -inf
makes its block signed).

The codec exists twice, on purpose, side by side: in PyTorch operations (:func:`encode`,
:func:`decode`; the CUDA and fallback path, and the tests' reference) and as C for the CPU loop
(:data:`C_CODEC`, whose loops also have AVX2 forms: on 2 cores the 8-bit step is bound by this
arithmetic, not by memory). The tests require them all to agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgdlab.optim import sharded
from sgdlab.optim.bfloat16 import HASH

BLOCK = 256
SUFFIX = ".absmax"
SALT = 0x9E3779B9  # decorrelates the rounding noise of different state entries
SMALLEST_NORMAL = 2.0**-126  # float32; a signed block with a smaller largest magnitude is zeros
INFINITY_BITS = 0x7F800000  # float32 magnitudes from here up are infinite (equal) or NaN (above)


def entry_seed(seed: int, slot: int) -> int:
    """The rounding seed of state entry ``slot`` in the step with ``seed``."""
    return (seed + slot * SALT) & 0xFFFFFFFF


def encode(x: Tensor, seed: int | Tensor, position: int | Tensor) -> tuple[Tensor, Tensor]:
    """Quantize 1-D float32 ``x`` (its first element at flat ``position``): (codes, scales)."""
    n = x.numel()
    blocks = -(-n // BLOCK)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = x
    padded = padded.view(blocks, BLOCK)
    bits = padded.view(torch.int32).long() & 0xFFFFFFFF
    magnitude = bits & 0x7FFFFFFF
    finite = magnitude < INFINITY_BITS
    # Scale and sign from the finite values: a NaN gradient must not make its block's scale NaN
    # (and every block-mate with it); an infinity's sign counts (-inf needs the signed format).
    amax = torch.where(finite, magnitude, 0).amax(dim=1).to(torch.int32).view(torch.float32)
    signed_values = (bits >> 31).bool() & (magnitude <= INFINITY_BITS)
    nonnegative = ~signed_values.any(dim=1)
    # 1 / amax overflows for a subnormal amax (a long-dead unit's decayed momentum): such a
    # block is stored as zeros, as hardware flushes subnormals.
    inverse = torch.where(amax < SMALLEST_NORMAL, torch.zeros_like(amax), 1.0 / amax)
    # Square-root domain: sqrt(x) * (1 / sqrt(amax)), each correctly rounded like C's sqrtf,
    # so the C loop can reuse a sqrt(v) the rule already computed (Adam's denominator).
    root_inverse = torch.where(amax == 0, torch.zeros_like(amax), 1.0 / _sqrt(amax))
    y = torch.where(nonnegative[:, None], _sqrt(padded) * root_inverse[:, None],
                    padded * inverse[:, None])

    index = torch.arange(blocks * BLOCK, device=x.device, dtype=torch.int64).view(blocks, BLOCK)
    noise = (((index + seed + position) & 0xFFFFFFFF) * HASH & 0xFFFFFFFF) >> 12
    b = ((y.view(torch.int32).long() & 0xFFFFFFFF) + noise) & 0xFFFFFFFF
    # Exponent and top 3 mantissa bits, rebased to the code's exponent bias and clamped at 0:
    # values below the smallest exponent land in the exponent-0 row, which decodes as zero.
    signed = (((b >> 20) & 0x7FF) - ((127 - 15) << 3)).clamp(min=0) | ((b >> 31) << 7)
    unsigned = ((b >> 20) - ((127 - 31) << 3)).clamp(min=0)
    codes = torch.where(nonnegative[:, None], unsigned, signed)
    # The reserved codes (module docstring): 0x7E / 0xFE NaN, 0x7F / 0xFF an infinity.
    # (A NaN's sign is not kept: a rule's NaN may come out with either sign, path by path.)
    nan = magnitude > INFINITY_BITS
    top = torch.where(nonnegative[:, None], 0x80, torch.where(nan, 0, (bits >> 31) << 7))
    codes = torch.where(finite, codes, torch.where(nan, 0x7E, 0x7F) | top)
    scales = torch.where(nonnegative, -amax, amax)
    return codes.reshape(-1)[:n].to(torch.uint8), scales


def _sqrt(x: Tensor) -> Tensor:
    return torch.sqrt(x.double()).float()  # correctly rounded, as C's sqrtf


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
    values = torch.where(nonnegative, y * y * scale.abs(), y * scale)
    # Reserved codes: NaN and the infinities (whatever the scale, which may be 0).
    special = torch.where(nonnegative, c >= 0xFE, (c & 0x7F) >= 0x7E)
    infinity = torch.where(nonnegative | (c < 0x80), torch.inf, -torch.inf)
    infinity = torch.where((c & 1).bool(), infinity, torch.nan)
    return torch.where(special, infinity, values)


_compiled: list = []


def compiled_codec() -> tuple:
    """(encode, decode) compiled by Inductor once per process, for any size (the 8-bit path of
    CUDA and of large groups without the C loop); ``seed`` and ``position`` must be tensors."""
    if not _compiled:
        _compiled.extend(torch.compile(f, dynamic=True, fullgraph=True) for f in (encode, decode))
    return _compiled[0], _compiled[1]


# The same codec, element by element, for sgdlab.optim.native's loop.
C_CODEC = r"""
#define Q8_BLOCK Q8_BLOCK_SIZE
#if defined(__AVX2__) && defined(__GNUC__) && !defined(__clang__)
#define Q8_VECTORS 1
/* The codec's loops written out for AVX2 (the compiler's own vectorization of them spends twice
   the instructions on widening bytes, 64-bit indices and packing). Codes are handled as 16-bit
   lanes holding a float's top half. Encoding: the clamp at 0 is a saturating subtraction, the
   16- and 8-bit packing saturating packs (values fit: no change). Written with GCC's vector
   extensions and four of its AVX2 builtins rather than <immintrin.h>, whose parsing alone takes
   seconds per compiled kernel. */
typedef float q8_f32x8 __attribute__((vector_size(32)));
typedef uint32_t q8_u32x8 __attribute__((vector_size(32)));
typedef int q8_i32x8 __attribute__((vector_size(32)));
typedef short q8_i16x16 __attribute__((vector_size(32)));
typedef uint16_t q8_u16x16 __attribute__((vector_size(32)));
typedef uint8_t q8_u8x16 __attribute__((vector_size(16)));
typedef char q8_i8x16 __attribute__((vector_size(16)));
/* 16 codes, widened to 16-bit lanes in the order q8_widen16's unpacks restore */
static inline q8_u16x16 q8_load16(const uint8_t* codes) {
    q8_u8x16 raw;
    memcpy(&raw, codes, 16);
    q8_u16x16 wide = (q8_u16x16)__builtin_ia32_pmovzxbw256((q8_i8x16)raw);  /* vpmovzxbw */
    return __builtin_shufflevector(wide, wide, 0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
}
/* 16 floats from their top halves (unpacked with zeros), squared or not, times scale, then or'ed
   with special's (the top halves of NaN and infinities, in lanes whose top is zero) */
#define Q8_LOW(v) __builtin_shufflevector(zero, v, 0, 16, 1, 17, 2, 18, 3, 19, \
                                          8, 24, 9, 25, 10, 26, 11, 27)
#define Q8_HIGH(v) __builtin_shufflevector(zero, v, 4, 20, 5, 21, 6, 22, 7, 23, \
                                           12, 28, 13, 29, 14, 30, 15, 31)
static inline void q8_widen16(q8_u16x16 top, q8_u16x16 special, float scale, int square,
                              float* values) {
    const q8_u16x16 zero = {0};
    q8_f32x8 a = (q8_f32x8)Q8_LOW(top), b = (q8_f32x8)Q8_HIGH(top);
    if (square) {
        a = a * a;
        b = b * b;
    }
    a = a * scale;
    b = b * scale;
    q8_u32x8 a_bits = (q8_u32x8)a | (q8_u32x8)Q8_LOW(special);
    q8_u32x8 b_bits = (q8_u32x8)b | (q8_u32x8)Q8_HIGH(special);
    memcpy(values, &a_bits, 32);
    memcpy(values + 8, &b_bits, 32);
}
static inline q8_u32x8 q8_noisy_bits(const float* x, float inverse, q8_u32x8* hash) {
    q8_f32x8 y;
    memcpy(&y, x, 32);
    y = y * inverse;
    q8_u32x8 b = (q8_u32x8)y + (*hash >> 12);
    *hash += 8u * SGDLAB_HASH;
    return b;
}
static inline void q8_store32(q8_i16x16 low, q8_i16x16 high, uint8_t* codes) {
    /* per 128-bit lane: put the dwords in order */
    const q8_i32x8 order = {0, 4, 1, 5, 2, 6, 3, 7};
    q8_i32x8 c = __builtin_ia32_permvarsi256((q8_i32x8)__builtin_ia32_packuswb256(low, high),
                                             order);
    memcpy(codes, &c, 32);
}
static inline q8_i16x16 q8_pack16(q8_u32x8 a, q8_u32x8 b) {
    return __builtin_ia32_packusdw256((q8_i32x8)a, (q8_i32x8)b);
}
/* 32 codes of either kind: bias is the kind's exponent bias in code units; a nonnegative
   block's source has no sign bits, so the same operations serve it. */
static inline void q8_encode32(const float* source, float inverse, short bias, q8_u32x8* hash,
                               uint8_t* codes) {
    q8_u32x8 w[4];
    for (int k = 0; k < 4; k++) w[k] = q8_noisy_bits(source + 8 * k, inverse, hash) >> 16;
    const q8_i16x16 biases = (q8_i16x16){0} + bias;
    q8_i16x16 half[2];
    for (int k = 0; k < 2; k++) {
        q8_u16x16 top = (q8_u16x16)q8_pack16(w[2 * k], w[2 * k + 1]);  /* float bits 31..16 */
        q8_i16x16 t = __builtin_ia32_psubusw256((q8_i16x16)((top & 0x7FFF) >> 4), biases);
        half[k] = t | (q8_i16x16)((top >> 8) & 0x80);
    }
    q8_store32(half[0], half[1], codes);
}
static inline q8_u32x8 q8_hash8(uint32_t hash) {
    const q8_u32x8 lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    return hash + lanes * SGDLAB_HASH;
}
#endif
/* A code's exponent and mantissa bits are a float's, shifted: code magnitude + bias, shifted
   left by 20, is the float's exponent and top 3 mantissa bits. A block is decoded into floats
   before the rule's loop, which then runs on floats only (with bytes in it, the compiler
   vectorizes it 32 elements wide and runs out of registers). A reserved code (NaN, an infinity:
   see the module docstring) decodes as zero, or'ed with the special value's bits: no branch,
   and right whatever the scale (0 * inf would be NaN). */
static inline float q8_or_bits(float x, uint32_t bits) {
    uint32_t b; memcpy(&b, &x, 4);
    b |= bits;
    memcpy(&x, &b, 4);
    return x;
}
static inline void q8_decode_block(const uint8_t* restrict codes, int64_t n, float stored_scale,
                                   float* restrict values) {
    float scale = fabsf(stored_scale);
    int64_t j = 0;
    if (signbit(stored_scale)) {  /* nonnegative block: codes of square roots */
#if defined(Q8_VECTORS)
        for (; j + 16 <= n; j += 16) {
            q8_u16x16 c = q8_load16(codes + j);
            q8_u16x16 special = (q8_u16x16)((q8_i16x16)c > 0xFD);
            q8_u16x16 normal = (q8_u16x16)((q8_i16x16)c > 7) & ~special;
            q8_widen16((c << 4 | 0x3000) & normal, special & (0x7F80 | (~c & 1) << 6), scale, 1,
                       values + j);
        }
#endif
        for (; j < n; j++) {
            uint32_t c = codes[j];
            uint32_t special = 0u - (uint32_t)(c >= 0xFEu);
            uint32_t bits = (c + (96u << 3)) << 20;
            bits &= (0u - (uint32_t)(c >= 8u)) & ~special;  /* exponent 0: zero */
            float y; memcpy(&y, &bits, 4);
            values[j] = q8_or_bits(y * y * scale, special & (0x7F800000u | (~c & 1u) << 22));
        }
    } else {
#if defined(Q8_VECTORS)
        for (; j + 16 <= n; j += 16) {
            q8_u16x16 c = q8_load16(codes + j), magnitude = c & 0x7F;
            q8_u16x16 sign = (c & 0x80) << 8;
            q8_u16x16 special = (q8_u16x16)((q8_i16x16)magnitude > 0x7D);
            q8_u16x16 normal = (q8_u16x16)((q8_i16x16)magnitude > 7) & ~special;
            q8_u16x16 top = (magnitude << 4 | 0x3800) | sign;
            q8_u16x16 infinity = c & 1;  /* else NaN, without a sign */
            q8_widen16(top & normal, special & (0x7F80 | (infinity ^ 1) << 6 | sign * infinity),
                       scale, 0, values + j);
        }
#endif
        for (; j < n; j++) {
            uint32_t c = codes[j], magnitude = c & 0x7Fu;
            uint32_t special = 0u - (uint32_t)(magnitude >= 0x7Eu);
            uint32_t bits = ((magnitude + (112u << 3)) << 20) | ((c & 0x80u) << 24);
            bits &= (0u - (uint32_t)(magnitude >= 8u)) & ~special;
            float y; memcpy(&y, &bits, 4);
            uint32_t infinity = c & 1u;  /* else NaN, without a sign */
            values[j] = q8_or_bits(y * scale, special & (0x7F800000u | (infinity ^ 1u) << 22
                                                         | (c & 0x80u) * infinity << 24));
        }
    }
}
/* The block's largest magnitude and whether any sign bit is set, from float bit patterns
   (integer max and or: the compiler vectorizes them); accumulated while the values are made. */
static inline void q8_observe(float x, uint32_t* amax_bits, uint32_t* signs) {
    uint32_t b; memcpy(&b, &x, 4);
    uint32_t magnitude = b & 0x7FFFFFFFu;
    *amax_bits = magnitude > *amax_bits ? magnitude : *amax_bits;
    *signs |= b;
}

/* Encode one block: x its new values, root their square roots where the rule computed them
   (else NULL), amax_bits and signs from q8_observe. */
static inline void q8_encode(const float* x, const float* root, int64_t n, uint8_t* codes,
                             float* scale_out, uint32_t amax_bits, uint32_t signs, uint32_t seed,
                             int64_t position) {
    uint32_t count = (uint32_t)n;
    int special = amax_bits >= 0x7F800000u;
    if (special) {  /* a NaN or infinity (rare): scale and sign from the finite values */
        amax_bits = signs = 0;
        for (uint32_t j = 0; j < count; j++) {
            uint32_t b; memcpy(&b, x + j, 4);
            uint32_t magnitude = b & 0x7FFFFFFFu;
            if (magnitude < 0x7F800000u && magnitude > amax_bits) amax_bits = magnitude;
            if (magnitude <= 0x7F800000u) signs |= b;  /* NaN's sign says nothing */
        }
    }
    float amax; memcpy(&amax, &amax_bits, 4);
    uint32_t hash = (seed + (uint32_t)position) * SGDLAB_HASH;
    float roots[Q8_BLOCK];
    const float* source = x;
    float inverse;
    uint32_t bias;
    if (!(signs >> 31)) {  /* nonnegative: the square-root domain */
        if (!root) {
            for (uint32_t j = 0; j < count; j++) roots[j] = sqrtf(x[j]);
            root = roots;
        }
        source = root;
        inverse = amax == 0.0f ? 0.0f : 1.0f / sqrtf(amax);
        bias = 96u << 3;
        *scale_out = -amax;
    } else {
        inverse = amax < 0x1p-126f ? 0.0f : 1.0f / amax;  /* SMALLEST_NORMAL: see encode */
        bias = 112u << 3;
        *scale_out = amax;
    }
    uint32_t j = 0;
#if defined(Q8_VECTORS)
    q8_u32x8 hash8 = q8_hash8(hash);
    for (; j + 32 <= count; j += 32)
        q8_encode32(source + j, inverse, (short)bias, &hash8, codes + j);
    hash += j * SGDLAB_HASH;
#endif
    for (; j < count; j++, hash += SGDLAB_HASH) {
        float y = source[j] * inverse;
        uint32_t b; memcpy(&b, &y, 4);
        b += hash >> 12;
        uint32_t t = (b >> 20) & 0x7FFu;  /* exponent and top 3 mantissa bits */
        codes[j] = (uint8_t)((t > bias ? t - bias : 0u) | ((b >> 24) & 0x80u));
    }
    if (special) {  /* the reserved codes: 0x7E / 0xFE NaN, 0x7F / 0xFF an infinity */
        uint32_t top = signs >> 31 ? 0u : 0x80u;  /* nonnegative block: 0xFE, 0xFF */
        for (j = 0; j < count; j++) {
            uint32_t b; memcpy(&b, x + j, 4);
            uint32_t magnitude = b & 0x7FFFFFFFu;
            if (magnitude >= 0x7F800000u)
                codes[j] = (uint8_t)(magnitude > 0x7F800000u ? 0x7Eu | top
                                                               : 0x7Fu | top | (b >> 24 & 0x80u));
        }
    }
}
"""


# --- checkpoints ----------------------------------------------------------------------------------
# In a state_dict an 8-bit entry is one dict under the entry's own name: {"codes": uint8 codes
# shaped like the parameter, "absmax": the block scales, "block": BLOCK}. torch.optim casts every
# tensor of a state_dict it loads to the parameter's dtype: codes stored where torch.optim looks
# for a moment would become moments of up to 255, and train silently; a dict where it expects a
# tensor (or None) fails at its first step, in every variant (for-loop, foreach, fused).
# ``widened`` turns the entries into torch.optim's float32 ones (sgdlab.optim.widen_state_dict).
CODES, SCALES, BLOCK_KEY = "codes", "absmax", "block"


def is_packed(value: object) -> bool:
    """Whether ``value`` is an 8-bit entry as a state_dict holds it."""
    return isinstance(value, dict) and CODES in value


def pack(state: dict) -> dict:
    """A parameter's state as its state_dict holds it: each 8-bit entry (codes, and scales
    under ``key + SUFFIX``) as one dict. Shares the tensors; ``state`` itself is not changed."""
    if not any(isinstance(key, str) and key.endswith(SUFFIX) for key in state):
        return state
    packed = {}
    for key, value in state.items():
        if isinstance(key, str) and key.endswith(SUFFIX) and key[:-len(SUFFIX)] in state:
            continue
        scales = state.get(key + SUFFIX) if isinstance(key, str) else None
        if scales is not None and sharded.is_dtensor(value):  # an FSDP2 shard's codes
            scales = sharded.global_scales(value, scales, BLOCK)
        packed[key] = value if scales is None else {CODES: value, SCALES: scales,
                                                    BLOCK_KEY: BLOCK}
    return packed


def unpack(state: dict) -> None:
    """Undo :func:`pack` in place (torch.optim's load_state_dict has made the codes floats;
    they are integers 0..255 and come back exactly)."""
    for key, value in list(state.items()):
        if is_packed(value):
            state[key] = value[CODES].to(torch.uint8)
            scales = value[SCALES]
            if sharded.is_dtensor(scales):
                scales = sharded.local_scales(value[CODES], scales, BLOCK)
            state[key + SUFFIX] = scales


def widened(state: dict) -> dict:
    """``state`` (live, or as a state_dict holds it, of this or an older sgdlab) with every
    8-bit entry decoded to float32 and every bfloat16 tensor widened to float32: the state a
    float32-state optimizer, sgdlab's or torch.optim's, would hold. Other values are shared."""
    result = {}
    for key, value in state.items():
        if isinstance(key, str) and key.endswith(SUFFIX) and key[:-len(SUFFIX)] in state:
            continue
        scales = state.get(key + SUFFIX) if isinstance(key, str) else None
        if is_packed(value):
            value, scales = value[CODES], value[SCALES]
        if scales is not None and sharded.is_dtensor(value):  # an FSDP2 shard's codes
            if sharded.is_dtensor(scales):
                scales = sharded.local_scales(value, scales, BLOCK)
            shard = value.to_local()
            wide = decode(shard.reshape(-1).to(torch.uint8), scales.to(torch.float32))
            value = sharded.DTensor.from_local(
                wide.view(shard.shape), value.device_mesh, value.placements, run_check=False,
                shape=value.shape, stride=value.stride())
        elif scales is not None:
            codes = value.reshape(-1).to(torch.uint8)
            value = decode(codes, scales.to(torch.float32)).view(value.shape)
        elif isinstance(value, Tensor) and value.dtype == torch.bfloat16:
            value = value.float()
        result[key] = value
    return result


def mismatch(param: Tensor, state: dict) -> str | None:
    """What is wrong with the 8-bit entries of a saved ``state`` for ``param``, or None.

    Both layouts are read: :func:`pack`'s, and older sgdlab's (codes under the entry's name,
    scales under ``key + SUFFIX``)."""
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if is_packed(value):
            codes, scales, block = value.get(CODES), value.get(SCALES), value.get(BLOCK_KEY, BLOCK)
            scales_name = repr(SCALES)
        elif key.endswith(SUFFIX):
            if key[:-len(SUFFIX)] not in state:
                return f"block scales {key!r} without the codes {key[:-len(SUFFIX)]!r}"
            continue
        elif isinstance(value, Tensor) and value.dtype == torch.uint8 and key != "step":
            codes, scales, block = value, state.get(key + SUFFIX), BLOCK
            scales_name = repr(key + SUFFIX)
        elif isinstance(value, Tensor) and key + SUFFIX in state:
            codes, scales, block = value, state[key + SUFFIX], BLOCK
            scales_name = repr(key + SUFFIX)
        else:
            continue
        entry = f"8-bit state entry {key!r}"
        if not isinstance(codes, Tensor):
            return f"{entry} has no codes"
        if not isinstance(scales, Tensor):
            return f"{entry} has no block scales ({scales_name} is missing)"
        if block != BLOCK:
            return (f"{entry} has blocks of {block} elements (this sgdlab reads blocks of "
                    f"{BLOCK})")
        if codes.shape != param.shape:
            return (f"{entry} has codes of shape {list(codes.shape)}, expected the parameter's "
                    f"{list(param.shape)}")
        blocks = -(-param.numel() // BLOCK)
        if sharded.is_dtensor(scales) and sharded.is_dtensor(param):
            blocks = sharded.expected_scales(param, BLOCK)
        if scales.numel() != blocks:
            return (f"{entry} has {scales.numel()} block scales, expected {blocks} (one per "
                    f"{BLOCK} elements)")
    return None


def widen_in_place(states: list[dict]) -> None:
    """Decode the 8-bit entries of live ``states`` to float32 in place (for a path that runs
    on float state: a group whose state_dtype was changed after 8-bit steps)."""
    for state in states:
        if any(isinstance(key, str) and key.endswith(SUFFIX) for key in state):
            wide = widened(state)
            state.clear()
            state.update(wide)
