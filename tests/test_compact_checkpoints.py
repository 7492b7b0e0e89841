"""Compact-state checkpoints and torch.optim: bfloat16 state loads into torch.optim as it is,
8-bit state fails loudly there unless widened first, and a checkpoint that does not fit the
parameters is refused naming what does not fit."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import sgdlab
from sgdlab.optim import quantized, widen_state_dict

SHAPES = [(7,), (80, 64), (5000,)]  # under min_8bit_size (float32 state), and 8-bit
PAIRS = [
    (sgdlab.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
]
IDS = ["sgd", "adam-amsgrad", "adamw"]


def params(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def gradients(ps, seed):
    g = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)


def train(optimizer, ps, steps, first_seed=100):
    for k in range(steps):
        gradients(ps, first_seed + k)
        optimizer.step()


def clone(ps):
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def through_torch_save(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def compact(cls, ps, options, state_dtype):
    return cls([{"params": ps, "state_dtype": state_dtype}], **options)


def decoded_state(optimizer, p):
    """``optimizer``'s state of ``p`` in float32, 8-bit entries decoded."""
    return quantized.widened(optimizer.state[p])


# --- sgdlab's own checkpoints --------------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", [torch.uint8, torch.bfloat16], ids=["8bit", "bf16"])
@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_a_compact_checkpoint_resumes_bit_for_bit_through_torch_save_weights_only(
        ours, theirs, options, state_dtype):
    straight = params()
    train(compact(ours, straight, options, state_dtype), straight, 6)
    first = params()
    optimizer = compact(ours, first, options, state_dtype)
    train(optimizer, first, 3)
    saved = through_torch_save(optimizer.state_dict())
    resumed = clone(first)
    restarted = compact(ours, resumed, options, state_dtype)
    restarted.load_state_dict(saved)
    train(restarted, resumed, 3, first_seed=103)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_an_eight_bit_state_dict_holds_each_entry_as_codes_and_scales_in_one_dict():
    ps = params()
    optimizer = compact(sgdlab.AdamW, ps, {}, torch.uint8)
    train(optimizer, ps, 1)
    saved = optimizer.state_dict()["state"]
    small, large = saved[0], saved[2]
    assert small["exp_avg"].dtype == torch.float32  # under min_8bit_size: a float32 tensor
    entry = large["exp_avg"]
    assert set(entry) == {"codes", "absmax", "block"} and entry["block"] == quantized.BLOCK
    assert entry["codes"].dtype == torch.uint8 and entry["codes"].shape == ps[2].shape
    assert set(large) == {"step", "exp_avg", "exp_avg_sq"}  # no key beside torch.optim's
    # The live state keeps its own layout; the state_dict shares its tensors.
    assert entry["codes"] is optimizer.state[ps[2]]["exp_avg"]


def old_layout(state_dict):
    """``state_dict`` as sgdlab saved 8-bit state before: codes under the entry's name, block
    scales under ``<key>.absmax`` beside it."""
    state = {}
    for key, entry in state_dict["state"].items():
        state[key] = {}
        for name, value in entry.items():
            if quantized.is_packed(value):
                state[key][name] = value["codes"]
                state[key][name + quantized.SUFFIX] = value["absmax"]
            else:
                state[key][name] = value
    return {**state_dict, "state": state}


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_an_older_sgdlab_eight_bit_checkpoint_still_resumes_bit_for_bit(ours, theirs, options):
    straight = params()
    train(compact(ours, straight, options, torch.uint8), straight, 6)
    first = params()
    optimizer = compact(ours, first, options, torch.uint8)
    train(optimizer, first, 3)
    saved = through_torch_save(old_layout(optimizer.state_dict()))
    resumed = clone(first)
    restarted = compact(ours, resumed, options, torch.uint8)
    restarted.load_state_dict(saved)
    train(restarted, resumed, 3, first_seed=103)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


# --- sgdlab's compact checkpoints in torch.optim -------------------------------------------------
VARIANTS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=["for-loop", "foreach", "fused"])
@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_torch_optim_refuses_to_step_on_an_eight_bit_checkpoint(ours, theirs, options, variant):
    ps = params()
    optimizer = compact(ours, ps, options, torch.uint8)
    train(optimizer, ps, 2)
    saved = through_torch_save(optimizer.state_dict())
    target = clone(ps)
    before = [p.detach().clone() for p in target]
    torch_optimizer = theirs(target, **options)
    torch_optimizer.load_state_dict(saved)
    torch_optimizer.param_groups[0].update(variant)  # (the checkpoint's groups say foreach=None)
    gradients(target, 7)
    with pytest.raises((TypeError, AttributeError)):
        torch_optimizer.step()
    # Nothing was computed from the codes: a parameter with 8-bit state is as it was, or (torch's
    # for-loop AdamW decays a parameter before it reads its moments) only decayed.
    decay = 1 - options["lr"] * options.get("weight_decay", 0) if theirs is torch.optim.AdamW else 1
    for p, q in zip(target[1:], before[1:]):
        assert torch.equal(p, q) or torch.equal(p, q * decay)
        assert quantized.is_packed(torch_optimizer.state[p].get("exp_avg",
                                   torch_optimizer.state[p].get("momentum_buffer")))


@pytest.mark.parametrize("state_dtype", [torch.uint8, torch.bfloat16], ids=["8bit", "bf16"])
@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_a_widened_compact_checkpoint_loads_into_torch_optim_and_training_continues(
        ours, theirs, options, state_dtype):
    ps = params()
    optimizer = compact(ours, ps, options, state_dtype)
    train(optimizer, ps, 3)
    saved = optimizer.state_dict()
    widened = through_torch_save(widen_state_dict(saved))
    assert "state_dtype" not in widened["param_groups"][0]
    assert "compact_state_step" not in widened["param_groups"][0]
    target = clone(ps)
    torch_optimizer = theirs(target, **options)
    torch_optimizer.load_state_dict(widened)
    for p, q in zip(ps, target):  # torch.optim holds exactly the values sgdlab held
        expected = decoded_state(optimizer, p)
        assert set(torch_optimizer.state[q]) == set(expected)
        for key, value in expected.items():
            assert torch_optimizer.state[q][key].dtype == value.dtype
            assert torch.equal(torch_optimizer.state[q][key], value), key
    # ... and continues as an sgdlab float32-state optimizer from the same checkpoint does.
    reference = clone(ps)
    float_optimizer = ours(reference, **options)
    float_optimizer.load_state_dict(widen_state_dict(saved))
    train(torch_optimizer, target, 3, first_seed=103)
    train(float_optimizer, reference, 3, first_seed=103)
    for p, q in zip(target, reference):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert saved["state"][2]  # widen_state_dict did not change its argument
    if state_dtype == torch.uint8:
        assert quantized.is_packed(next(v for k, v in saved["state"][2].items() if k != "step"))


def test_widen_state_dict_reads_the_older_eight_bit_layout_too():
    ps = params()
    optimizer = compact(sgdlab.AdamW, ps, {}, torch.uint8)
    train(optimizer, ps, 2)
    new, old = (widen_state_dict(sd) for sd in (optimizer.state_dict(),
                                                 old_layout(optimizer.state_dict())))
    for key in new["state"]:
        assert new["state"][key].keys() == old["state"][key].keys()
        for name, value in new["state"][key].items():
            assert torch.equal(value, old["state"][key][name])


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_a_bfloat16_checkpoint_loads_into_torch_optim_as_it_is(ours, theirs, options):
    # torch.optim casts state tensors to the parameter's dtype: bfloat16 widens exactly.
    ps = params()
    optimizer = compact(ours, ps, options, torch.bfloat16)
    train(optimizer, ps, 3)
    target = clone(ps)
    torch_optimizer = theirs(target, **options)
    torch_optimizer.load_state_dict(through_torch_save(optimizer.state_dict()))
    for p, q in zip(ps, target):
        for key, value in decoded_state(optimizer, p).items():
            assert torch.equal(torch_optimizer.state[q][key], value), key
    train(torch_optimizer, target, 2, first_seed=103)
    assert all(p.isfinite().all() for p in target)


# --- torch.optim's (and float32) checkpoints in compact-state optimizers --------------------------
@pytest.mark.parametrize("source", ["torch.optim", "sgdlab-float32"])
@pytest.mark.parametrize("state_dtype", [torch.uint8, torch.bfloat16], ids=["8bit", "bf16"])
@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_a_float32_checkpoint_loads_into_compact_state_and_stays_compact(
        ours, theirs, options, state_dtype, source):
    ps = params()
    torch_optimizer = (theirs if source == "torch.optim" else ours)(ps, **options)
    train(torch_optimizer, ps, 3)
    target = clone(ps)
    optimizer = compact(ours, target, options, state_dtype)
    optimizer.load_state_dict(through_torch_save(torch_optimizer.state_dict()))
    assert optimizer.param_groups[0]["state_dtype"] == state_dtype  # the checkpoint has none
    train(torch_optimizer, ps, 1, first_seed=103)
    train(optimizer, target, 1, first_seed=103)
    large = target[2]
    stored = optimizer.state[large]
    key = "momentum_buffer" if ours is sgdlab.SGD else "exp_avg"
    assert stored[key].dtype == state_dtype
    expected = torch_optimizer.state[ps[2]][key]
    # One step from the (now compact) torch.optim state: within the format's rounding.
    tolerance = 0.13 if state_dtype == torch.uint8 else 2**-7
    got = decoded_state(optimizer, large)[key]
    assert ((got - expected).abs() <= tolerance * expected.abs().max()).all()


# --- checkpoints that do not fit ------------------------------------------------------------------
def eight_bit_checkpoint():
    ps = params()
    optimizer = compact(sgdlab.AdamW, ps, {}, torch.uint8)
    train(optimizer, ps, 2)
    return ps, optimizer.state_dict()


def broken(change):
    _, saved = eight_bit_checkpoint()
    saved = copy.deepcopy(saved)
    change(saved["state"][2])
    return saved


def drop_scales(entry):
    del entry["exp_avg_sq"]["absmax"]


def wrong_codes(entry):
    entry["exp_avg"]["codes"] = entry["exp_avg"]["codes"][:4000]


def wrong_scales(entry):
    entry["exp_avg"]["absmax"] = entry["exp_avg"]["absmax"][:3]


def old_without_scales(entry):
    entry["exp_avg"] = entry["exp_avg"]["codes"]


def other_block_size(entry):
    entry["exp_avg"]["block"] = 128


@pytest.mark.parametrize("change, message", [
    (drop_scales, r"parameter 2 \(param group 0, shape \[5000\]\): 8-bit state entry "
                  r"'exp_avg_sq' has no block scales \('absmax' is missing\)"),
    (wrong_codes, r"'exp_avg' has codes of shape \[4000\], expected the parameter's \[5000\]"),
    (wrong_scales, r"'exp_avg' has 3 block scales, expected 20"),
    (old_without_scales, r"'exp_avg' has no block scales \('exp_avg.absmax' is missing\)"),
    (other_block_size, r"'exp_avg' has blocks of 128 elements \(this sgdlab reads blocks of 256\)"),
], ids=["missing-scales", "codes-shape", "scale-count", "older-layout-missing-scales",
        "block-size"])
def test_an_eight_bit_checkpoint_that_does_not_fit_is_refused_at_load_naming_it(change, message):
    saved = broken(change)
    ps = params()
    optimizer = compact(sgdlab.AdamW, ps, {}, torch.uint8)
    train(optimizer, ps, 1)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="loaded state dict does not fit .*" + message):
        optimizer.load_state_dict(saved)
    after = optimizer.state_dict()  # nothing changed
    assert after["param_groups"] == before["param_groups"]
    for key, entry in before["state"].items():
        for name, value in entry.items():
            value = value["codes"] if quantized.is_packed(value) else value
            other = after["state"][key][name]
            assert torch.equal(value, other["codes"] if quantized.is_packed(other) else other)


def test_an_eight_bit_checkpoint_of_other_parameters_is_refused_naming_the_shapes():
    _, saved = eight_bit_checkpoint()
    other = params(shapes=[(7,), (80, 64), (6000,)])
    optimizer = compact(sgdlab.AdamW, other, {}, torch.uint8)
    with pytest.raises(ValueError, match=r"parameter 2 .*shape \[6000\].*'exp_avg' has codes of "
                                         r"shape \[5000\], expected the parameter's \[6000\]"):
        optimizer.load_state_dict(saved)


def test_a_bfloat16_checkpoint_of_other_parameters_is_refused_naming_the_entry():
    ps = params()
    optimizer = compact(sgdlab.AdamW, ps, {}, torch.bfloat16)
    train(optimizer, ps, 1)
    other = params(shapes=[(7,), (80, 64), (6000,)])
    restored = compact(sgdlab.AdamW, other, {}, torch.bfloat16)
    restored.load_state_dict(optimizer.state_dict())  # torch.optim does not check shapes either
    gradients(other, 1)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 2 of its param group has shape "
                                         r"\[5000\], expected the parameter's \[6000\]"):
        restored.step()


def test_eight_bit_state_stepped_tensor_by_tensor_is_decoded_not_read_as_numbers():
    # After an 8-bit checkpoint, a group switched to float32 state and foreach=False (the
    # per-tensor path): the codes are decoded, never used as the moments themselves.
    ps = params()
    optimizer = compact(sgdlab.SGD, ps, dict(lr=0.01, momentum=0.9), torch.uint8)
    train(optimizer, ps, 2)
    expected = decoded_state(optimizer, ps[2])["momentum_buffer"]
    target = clone(ps)
    plain = sgdlab.SGD(target, lr=0.01, momentum=0.9)
    plain.load_state_dict(optimizer.state_dict())
    plain.param_groups[0].update(state_dtype=None, foreach=False)
    for p in target:
        p.grad = torch.zeros_like(p)
    plain.step()  # buffer <- 0.9 * buffer
    buffer = plain.state[target[2]]["momentum_buffer"]
    assert buffer.dtype == torch.float32 and "momentum_buffer.absmax" not in plain.state[target[2]]
    torch.testing.assert_close(buffer, 0.9 * expected, rtol=1e-6, atol=0)
