"""Compact (bfloat16) optimizer state: half the bytes, float32 arithmetic, unbiased rounding."""

from __future__ import annotations

import copy

import pytest
import torch

import sgdlab
from sgdlab.optim import compact_state
from sgdlab.optim.program import round_to_bfloat16

SHAPES = [(7,), (20, 10), (3, 4, 5)]


def run(cls, options, state_dtype=None, steps=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    group = {"params": params}
    if state_dtype is not None:
        group["state_dtype"] = state_dtype
    optimizer = cls([group], **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return params, optimizer


CASES = [
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9)),
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.Adam, dict(lr=0.01)),
    (sgdlab.AdamW, dict(lr=0.01, amsgrad=True)),
]


@pytest.mark.parametrize("cls, options", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bfloat16_state_is_stored_in_bfloat16_and_halves_the_bytes(cls, options):
    _, compact = run(cls, options, torch.bfloat16, steps=2)
    _, full = run(cls, options, steps=2)

    def tensor_bytes(opt):
        return sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")

    for state in compact.state.values():
        for key, value in state.items():
            if key != "step":
                assert value.dtype == torch.bfloat16
    assert tensor_bytes(compact) * 2 == tensor_bytes(full)


@pytest.mark.parametrize("cls, options", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bfloat16_state_follows_the_float32_trajectory(cls, options):
    compact, _ = run(cls, options, torch.bfloat16)
    full, _ = run(cls, options)
    start, _ = run(cls, options, steps=0)
    for a, b, a0 in zip(compact, full, start):
        # bfloat16 keeps 8 significant bits (0.4 % relative error per stored value, unbiased):
        # the distance travelled agrees to about 1 %.
        travelled = (b - a0).abs().max()
        torch.testing.assert_close(a - a0, b - a0, rtol=0, atol=0.01 * travelled.item())


def test_compact_state_helper_converts_an_existing_optimizer():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), steps=2)
    compact_state(optimizer)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in optimizer.state.values())


def test_state_dict_round_trips_the_compact_state_exactly():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), torch.bfloat16, steps=3)
    saved = copy.deepcopy(optimizer.state_dict())
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = sgdlab.AdamW([{"params": clone, "state_dtype": torch.bfloat16}], lr=0.01)
    restored.load_state_dict(saved)
    for p in clone:
        p.grad = torch.zeros_like(p)
    restored.step()  # the loaded (float32-cast) state is taken back into bfloat16 storage
    for p, q in zip(params, clone):
        original, reloaded = optimizer.state[p], restored.state[q]
        assert reloaded["exp_avg"].dtype == torch.bfloat16
        # One step with a zero gradient: exp_avg <- beta1 * exp_avg, from the exact saved values.
        expected = original["exp_avg"].float() * 0.9
        torch.testing.assert_close(reloaded["exp_avg"].float(), expected, rtol=2**-7, atol=0)
    assert saved["param_groups"][0]["state_dtype"] == torch.bfloat16


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2**-10)  # 1/8 of a bfloat16 ulp above 1
    rounded = round_to_bfloat16(x, torch.tensor(7, dtype=torch.int32)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - (1.0 + 2**-10)) < 2e-5


def test_a_slow_average_still_decays_in_bfloat16():
    # Adam's second moment with a zero gradient: v <- 0.999 v. Round-to-nearest would keep v.
    params = [torch.nn.Parameter(torch.zeros(4096))]
    optimizer = sgdlab.Adam([{"params": params, "state_dtype": torch.bfloat16}], lr=0.0)
    params[0].grad = torch.ones(4096)
    optimizer.step()
    for _ in range(200):
        params[0].grad = torch.zeros(4096)
        optimizer.step()
    v = optimizer.state[params[0]]["exp_avg_sq"].float().mean().item()
    assert v == pytest.approx(0.001 * 0.999**200, rel=0.02)


def test_invalid_state_dtype_is_rejected_naming_it():
    params = [torch.nn.Parameter(torch.zeros(3))]
    params[0].grad = torch.ones(3)
    optimizer = sgdlab.SGD([{"params": params, "state_dtype": torch.float16}], lr=0.1,
                           momentum=0.9)
    with pytest.raises(ValueError, match="state_dtype"):
        optimizer.step()
    with pytest.raises(ValueError, match="state_dtype"):
        compact_state(sgdlab.SGD(params, lr=0.1), torch.int8)


@pytest.mark.parametrize("cls, options", [
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.AdamW, dict(lr=0.01)),
], ids=["sgd", "adamw"])
def test_c_loop_rounds_exactly_like_the_pytorch_program(cls, options, monkeypatch):
    # The C loop (default on CPU) and the PyTorch program (CUDA, no compiler) draw the same
    # rounding noise for the same element and step: the stored state is bit for bit the same.
    _, native = run(cls, options, torch.bfloat16, steps=5)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    _, eager = run(cls, options, torch.bfloat16, steps=5)
    for a, b in zip(native.state.values(), eager.state.values()):
        for key in a:
            if key != "step":
                assert a[key].dtype == torch.bfloat16
                assert torch.equal(a[key], b[key]), key
