"""Compact state is rounded without bias, on every path that stores it.

Stochastic rounding stores x as one of its two neighbours on the storage grid, the upper one with
probability (x - lower) / ulp, so the stored value is x on average. A biased change (truncating,
rounding to nearest, noise of the wrong width or offset) moves every stored value the same way
and accumulates: these tests measure the mean rounding error, in ulps of the storage format, over
tens of thousands of elements and several steps (so several noise seeds), and require it to be
within a few standard errors of zero.

The state is set through the optimizer, as users set it: SGD with momentum 1/2 stores
``buffer = buffer / 2 + gradient``, computed exactly or with one float32 rounding from values the
test knows, so the exact value that was rounded is known. It is read back through
``sgdlab.optim.widen_state_dict``.

* bfloat16 keeps 8 significant bits: the ulp of x is 2^(floor(log2 |x|) - 7).
* 8-bit state (sgdlab.optim.quantized) stores y = x / amax (blocks with both signs) or
  y = sqrt(x / amax) (nonnegative blocks) with 3 mantissa bits: the ulp of y is
  2^(floor(log2 y) - 3). The rounding is unbiased in y, so the error is measured in y.
  (|y| below 2^-14 is flushed to zero by design; such elements are left out.)

The first step stores values placed at chosen fractions of an ulp above a grid point, where
rounding to nearest or truncating is off by a known fraction of an ulp; later steps store
values the previous steps left, at arbitrary fractions.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import sgdlab
from sgdlab.optim import widen_state_dict

BLOCK = 256  # elements per 8-bit block (sgdlab.optim.quantized.BLOCK)
BLOCKS = 64
N = BLOCK * BLOCKS
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 0.875)  # of an ulp above the grid point
MANTISSA_BITS = {torch.bfloat16: 7, torch.uint8: 3}
STEPS = 6
Z_LIMIT = 5.0  # standard errors


def _module_with(attribute: str, names: tuple[str, ...]):
    for name in names:
        try:
            module = importlib.import_module(f"sgdlab.optim.{name}")
        except ModuleNotFoundError:
            continue
        if attribute in vars(module):
            return module
    raise AssertionError(f"no sgdlab.optim module among {names} defines {attribute}")


def _use_path(path: str, monkeypatch) -> None:
    """Select the execution path that stores the state (see sgdlab.optim's module docs)."""
    monkeypatch.setenv("SGDLAB_NATIVE", "1" if path in ("c-loop", "portable-c") else "0")
    if path == "portable-c":  # the C codec without its AVX2 loops (as on ARM)
        native = importlib.import_module("sgdlab.optim.native")
        monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx2"])
        monkeypatch.setattr(native, "_kernels", {})
    if path == "compiled":  # Inductor (the CUDA path; C++ on CPU)
        module = _module_with("COMPILE_MIN_NUMEL", ("grouped", "execution"))
        monkeypatch.setattr(module, "COMPILE_MIN_NUMEL", 0)


def _first_values(state_dtype: torch.dtype, nonnegative: bool, seed: int) -> torch.Tensor:
    """Values at FRACTIONS of an ulp above grid points, each block led by its largest, 1.0
    (so y = x, or y = sqrt(x) in a nonnegative block, and y's grid is the format's own)."""
    g = torch.Generator().manual_seed(seed)
    bits = MANTISSA_BITS[state_dtype]
    mantissa = torch.randint(0, 2**bits, (N,), generator=g, dtype=torch.float64)
    fraction = torch.tensor(FRACTIONS, dtype=torch.float64).repeat_interleave(
        -(-N // len(FRACTIONS)))[:N]
    fraction = fraction[torch.randperm(N, generator=g)]
    exponent = torch.randint(1, 9, (N,), generator=g, dtype=torch.float64)
    y = (1 + (mantissa + fraction) / 2**bits) * torch.exp2(-exponent)
    if nonnegative:
        x = y * y if state_dtype == torch.uint8 else y
    else:
        sign = torch.where(torch.rand(N, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        x = sign * y
    x = x.view(BLOCKS, BLOCK)
    x[:, 0] = 1.0
    return x.reshape(-1).float()


def _errors_in_ulps(state_dtype, stored: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """(|stored| - |exact|) / ulp, in the domain the format rounds in, for the elements it
    rounds stochastically (not the flushed-to-zero range of 8-bit blocks)."""
    stored, exact = stored.double(), exact.double()
    if state_dtype == torch.bfloat16:
        keep = exact != 0
        y, y_stored = exact[keep], stored[keep]
    else:
        blocks = exact.view(BLOCKS, BLOCK)
        amax = blocks.abs().amax(dim=1, keepdim=True)
        nonnegative = (blocks >= 0).all(dim=1, keepdim=True)
        y = torch.where(nonnegative, (blocks / amax).sqrt(), blocks / amax).reshape(-1)
        y_stored = torch.where(nonnegative, (stored.view(BLOCKS, BLOCK) / amax).clamp(min=0)
                               .sqrt(), stored.view(BLOCKS, BLOCK) / amax).reshape(-1)
        keep = y.abs() >= 2.0**-12
        y, y_stored = y[keep], y_stored[keep]
    ulp = torch.exp2(torch.floor(torch.log2(y.abs())) - MANTISSA_BITS[state_dtype])
    # Signed: rounding acts on magnitudes, and a bias toward or away from zero would cancel
    # between positive and negative values in the plain error.
    return torch.sign(y) * (y_stored - y) / ulp


def _z(errors: torch.Tensor) -> float:
    """The mean error in standard errors of the mean."""
    spread = errors.std().item()
    assert spread > 0.05, "no rounding noise at all: the values were not rounded stochastically"
    return errors.mean().item() / (spread / errors.numel() ** 0.5)


def _stored(optimizer, param) -> torch.Tensor:
    state = widen_state_dict(optimizer.state_dict())["state"][0]
    return state["momentum_buffer"].reshape(-1).float()


def _rounding_errors(state_dtype, nonnegative, seed):
    """Per step, the rounding errors (ulps) of the momentum buffer; the first step's split by
    the fraction of an ulp the exact values had."""
    param = torch.nn.Parameter(torch.zeros(N))
    group = {"params": [param], "state_dtype": state_dtype, "min_8bit_size": 0,
             "compact_state_step": 1000 * seed}
    optimizer = sgdlab.SGD([group], lr=0.01, momentum=0.5)
    first = _first_values(state_dtype, nonnegative, seed)
    param.grad = first.clone()
    optimizer.step()  # buffer = gradient
    stored = _stored(optimizer, param)
    errors = _errors_in_ulps(state_dtype, stored, first)
    g = torch.Generator().manual_seed(seed)
    later = []
    for _ in range(STEPS - 1):
        grad = torch.randn(N, generator=g)
        if nonnegative:
            grad = grad.abs()
        exact = stored * 0.5 + grad  # one float32 rounding, as the rule's
        param.grad = grad
        optimizer.step()
        stored = _stored(optimizer, param)
        later.append(_errors_in_ulps(state_dtype, stored, exact))
    return first, errors, torch.cat(later)


def _check_unbiased(state_dtype, nonnegative, seed):
    first, errors, later = _rounding_errors(state_dtype, nonnegative, seed)
    # Each stored value is one of the two neighbours of the exact value (or the value itself).
    assert errors.abs().max() < 1 + 1e-3 and later.abs().max() < 1 + 1e-3
    # At each fraction f of an ulp: mean error 0 (nearest: -f or 1 - f; truncation: -f).
    y = first.double().abs()
    if state_dtype == torch.uint8 and nonnegative:
        y = y.sqrt()
    mantissa = y / torch.exp2(torch.floor(torch.log2(y))) - 1
    offset = (mantissa * 2 ** MANTISSA_BITS[state_dtype]) % 1
    if state_dtype == torch.uint8:
        offset = offset[y >= 2.0**-12]
    else:
        offset = offset[first != 0]
    for fraction in FRACTIONS:
        at = (offset - fraction).abs() < 1e-3
        assert at.sum() > N // (2 * len(FRACTIONS))
        z = _z(errors[at])
        assert abs(z) < Z_LIMIT, f"fraction {fraction}: mean error {errors[at].mean():.4f} ulp " \
                                 f"({z:.1f} standard errors)"
    z = _z(later)
    assert abs(z) < Z_LIMIT, f"later steps: mean error {later.mean():.4f} ulp ({z:.1f} s.e.)"


EIGHT_BIT_PATHS = ["c-loop", "portable-c", "pytorch"]
BF16_PATHS = ["c-loop", "pytorch"]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("nonnegative", [False, True], ids=["signed-blocks", "nonnegative-blocks"])
@pytest.mark.parametrize("path", EIGHT_BIT_PATHS)
def test_eight_bit_codec_rounds_without_bias(path, nonnegative, seed, monkeypatch):
    _use_path(path, monkeypatch)
    _check_unbiased(torch.uint8, nonnegative, seed)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("nonnegative", [False, True], ids=["both-signs", "nonnegative"])
@pytest.mark.parametrize("path", BF16_PATHS)
def test_bfloat16_state_rounds_without_bias(path, nonnegative, seed, monkeypatch):
    _use_path(path, monkeypatch)
    _check_unbiased(torch.bfloat16, nonnegative, seed)


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", [torch.uint8, torch.bfloat16], ids=["8bit", "bf16"])
def test_compiled_path_rounds_without_bias(state_dtype, monkeypatch):
    _use_path("compiled", monkeypatch)
    _check_unbiased(state_dtype, nonnegative=False, seed=3)
    _check_unbiased(state_dtype, nonnegative=True, seed=4)
