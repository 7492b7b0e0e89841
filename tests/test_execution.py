"""Execution strategies run the one rule; the fast paths give the reference's numbers.

The reference is the per-tensor path (``foreach=False``): one eager rule call per tensor. The
grouped path runs the same rule, traced once per step, over the whole group: as one C loop on
CPU (:mod:`sgdlab.optim.native`), or eagerly / compiled by Inductor on concatenated small tensors
and on big tensors in place. Eager grouped execution is bit-identical to the reference. The C
loop and Inductor are bit-identical to the reference run with a correctly rounded sqrt: eager
PyTorch's CPU sqrt is not (torch.optim's fused Adam differs from its for-loop Adam the same way).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math

import pytest
import torch

import sgdlab
from sgdlab.algorithms import adam, sgd
from sgdlab.optim import RuleOptimizer, execution, native, program, runners, torch_ops
from sgdlab.optim import grouped as grouped_execution

# A 0-d tensor, small tensors of several ranks and one tensor above BIG_TENSOR_NUMEL (updated in
# place rather than concatenated).
SHAPES = [(), (7,), (5, 3), (2, 3, 2, 2), (execution.BIG_TENSOR_NUMEL + 3,)]


def run(cls, options, steps=6, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    optimizer = cls(params, **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
        optimizer.step()
    return params, optimizer


def sgd_options():
    for momentum, dampening, nesterov, weight_decay, maximize, decoupled in itertools.product(
        [0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.1], [False, True], [False, True]
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        yield dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=weight_decay, maximize=maximize, decoupled_weight_decay=decoupled)


def adam_options():
    for cls, amsgrad, weight_decay, maximize in itertools.product(
        [sgdlab.Adam, sgdlab.AdamW], [False, True], [0.0, 0.1], [False, True]
    ):
        yield cls, dict(lr=0.01, amsgrad=amsgrad, weight_decay=weight_decay, maximize=maximize)


def assert_identical(ours, reference):
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def step_alike(a, b, *, steps, seed):
    """Step optimizers ``a`` and ``b`` ``steps`` times with the same random gradients."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, q in zip(a.param_groups[0]["params"], b.param_groups[0]["params"], strict=True):
            q.grad = torch.randn(p.shape, generator=g)
            p.grad = q.grad.clone()
        a.step()
        b.step()


class CorrectlyRoundedOps:
    """The per-tensor path's ops (torch's, with torch.optim's fused multiply-adds) with a
    correctly rounded sqrt (Python's ``math.sqrt`` for float64; float32 through float64, which
    rounds float32 square roots exactly): the arithmetic of the C and Inductor paths."""

    def __getattr__(self, name):
        return getattr(torch_ops, name)

    @staticmethod
    def sqrt(x):
        if x.dtype == torch.float32:
            return torch.sqrt(x.double()).float()
        exact = [math.sqrt(v) for v in x.reshape(-1).tolist()]
        return torch.tensor(exact, dtype=x.dtype).reshape(x.shape)


@pytest.fixture
def eager_grouped(monkeypatch):
    monkeypatch.setenv("SGDLAB_NATIVE", "0")


@pytest.fixture
def correctly_rounded_reference(monkeypatch):
    monkeypatch.setattr(execution, "per_tensor",
                        functools.partial(execution.per_tensor, ops=CorrectlyRoundedOps()))


def assert_same_state(opt, ref_opt, params, reference):
    for p, q in zip(params, reference):
        for key, value in ref_opt.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("options", list(sgd_options()), ids=str)
def test_default_sgd_is_bit_identical_to_per_tensor(options, dtype):
    grouped, opt = run(sgdlab.SGD, options, dtype=dtype)
    reference, ref_opt = run(sgdlab.SGD, {**options, "foreach": False}, dtype=dtype)
    assert_identical(grouped, reference)
    assert_same_state(opt, ref_opt, grouped, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cls, options", list(adam_options()), ids=str)
def test_default_adam_is_bit_identical_to_per_tensor_with_a_correctly_rounded_sqrt(
    cls, options, dtype, correctly_rounded_reference
):
    grouped, opt = run(cls, options, dtype=dtype)
    reference, ref_opt = run(cls, {**options, "foreach": False}, dtype=dtype)
    assert_identical(grouped, reference)
    assert_same_state(opt, ref_opt, grouped, reference)


@pytest.mark.parametrize("cls, options", list(adam_options()), ids=str)
def test_eager_grouped_adam_is_bit_identical_to_per_tensor(cls, options, eager_grouped):
    grouped, opt = run(cls, options)
    reference, ref_opt = run(cls, {**options, "foreach": False})
    assert_identical(grouped, reference)
    assert_same_state(opt, ref_opt, grouped, reference)


def test_grouped_path_is_taken_by_default(monkeypatch):
    taken = []
    original = execution.grouped
    monkeypatch.setattr(execution, "grouped", lambda *a, **k: taken.append(original(*a, **k)))
    run(sgdlab.AdamW, dict(lr=0.01), steps=2)
    assert taken == [True, True]


def test_many_small_tensors_cost_one_kernel_call(monkeypatch):
    calls = []
    original = native.Plan.run
    monkeypatch.setattr(native.Plan, "run",
                        lambda self, *a: (calls.append(self.rows), original(self, *a)))
    shapes = [(3, 4)] * 50 + [(execution.BIG_TENSOR_NUMEL,)] * 2
    run(sgdlab.SGD, dict(lr=0.1, momentum=0.9), steps=3, shapes=shapes)
    assert calls == [52, 52, 52]


def test_many_small_tensors_cost_one_eager_program_call(monkeypatch, eager_grouped):
    calls = []
    original = runners.eager

    def counting(prog):
        function = original(prog)
        return lambda *args: (calls.append(len(args[0][0])), function(*args))

    monkeypatch.setattr(runners, "eager", counting)
    shapes = [(3, 4)] * 50 + [(execution.BIG_TENSOR_NUMEL,)] * 2
    run(sgdlab.SGD, dict(lr=0.1, momentum=0.9), steps=1, shapes=shapes)
    # One call for the 50 concatenated small tensors, one per big tensor.
    assert sorted(calls) == [600, execution.BIG_TENSOR_NUMEL, execution.BIG_TENSOR_NUMEL]


def test_state_keeps_torch_layout_and_lives_in_one_buffer():
    params, optimizer = run(sgdlab.Adam, dict(lr=0.01), steps=2)
    states = [optimizer.state[p] for p in params]
    for p, state in zip(params, states):
        assert state["exp_avg"].shape == p.shape and state["step"].shape == ()
    bases = {s["exp_avg"].untyped_storage().data_ptr() for s in states}
    assert len(bases) == 1


def test_learning_rate_changes_do_not_change_the_program():
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    first = program.trace(adam, ["exp_avg", "exp_avg_sq"], {"step": 3}, hyper)
    later = program.trace(adam, ["exp_avg", "exp_avg_sq"], {"step": 9}, {**hyper, "lr": 0.01})
    assert first.source == later.source
    assert first.scalars != later.scalars  # the numbers travel as inputs


def test_a_branch_of_the_rule_is_a_different_program():
    hyper = dict(lr=0.1, momentum=0.9)
    plain = program.trace(sgd, ["momentum_buffer"], {}, hyper)
    decayed = program.trace(sgd, ["momentum_buffer"], {}, {**hyper, "weight_decay": 0.1})
    assert plain.source != decayed.source


def _normalized_rule(param, grad, state, *, lr, ops):
    # A reduction over the tensor: running it on a concatenation would change its meaning.
    return param - lr * grad / ops.sqrt((grad * grad).sum()), {}


class NormalizedSGD(RuleOptimizer):
    rule = staticmethod(_normalized_rule)
    validate = staticmethod(lambda **_: None)

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    def rule_hyperparameters(self, group):
        return {"lr": group["lr"]}

    def init_state(self, param, group):
        return {}


def test_a_rule_that_reduces_falls_back_to_per_tensor():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 4.0, 0.0])
    params[1].grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
    NormalizedSGD(params, lr=1.0).step()
    torch.testing.assert_close(params[0], torch.tensor([-0.6, -0.8, 0.0]))
    torch.testing.assert_close(params[1], torch.tensor([-1.0, 0.0, 0.0, 0.0]))


def test_checkpoint_from_torch_adamw_continues_identically():
    theirs, torch_opt = run(torch.optim.AdamW, dict(lr=0.01, foreach=False), steps=3)
    ours_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    ours = sgdlab.AdamW(ours_params, lr=0.01)
    # torch's load_state_dict keeps tensors that need no cast (step): load copies, not aliases.
    ours.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    reference = sgdlab.AdamW([torch.nn.Parameter(p.detach().clone()) for p in theirs], lr=0.01,
                             foreach=False)
    reference.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    step_alike(ours, reference, steps=3, seed=5)
    assert_identical(ours_params, reference.param_groups[0]["params"])


# --- compiled (Inductor) path: one compile per program text per test session -------------------
@pytest.fixture
def compile_everything(monkeypatch):
    monkeypatch.setattr(grouped_execution, "COMPILE_MIN_NUMEL", 0)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")  # Inductor is the fallback of the C path


def test_compiled_sgd_is_bit_identical(compile_everything, monkeypatch):
    # Three big tensors in batches of two: one full batch, one padded with scratch tensors.
    monkeypatch.setattr(grouped_execution, "BATCH_SLOTS", 2)
    big = execution.BIG_TENSOR_NUMEL
    shapes = [(7,), (300, 3), (big,), (big + 5,), (big + 1,)]
    options = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)
    compiled, _ = run(sgdlab.SGD, options, shapes=shapes)
    reference, _ = run(sgdlab.SGD, {**options, "foreach": False}, shapes=shapes)
    assert_identical(compiled, reference)


@pytest.mark.parametrize("options", [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.1)],
                         ids=str)
def test_compiled_adamw_is_bit_identical_to_per_tensor_with_a_correctly_rounded_sqrt(
    options, compile_everything, correctly_rounded_reference
):
    compiled, opt = run(sgdlab.AdamW, options, shapes=[(7,), (300, 3)])
    reference, ref_opt = run(sgdlab.AdamW, {**options, "foreach": False}, shapes=[(7,), (300, 3)])
    assert_identical(compiled, reference)
    assert_same_state(opt, ref_opt, compiled, reference)


def test_without_a_c_compiler_the_step_warns_once_and_stays_correct(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_unavailable", [])
    monkeypatch.setattr(native, "_kernels", {})
    monkeypatch.setenv("SGDLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="C optimizer step is unavailable"):
        fallback, _ = run(sgdlab.SGD, dict(lr=0.05, momentum=0.9, nesterov=True))
    reference, _ = run(sgdlab.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, foreach=False))
    assert_identical(fallback, reference)
    assert len(native._unavailable) == 1


def test_step_counters_become_views_of_one_tensor_and_checkpoints_still_load():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), steps=3)
    steps = [optimizer.state[p]["step"] for p in params]
    assert all(s.shape == () and s.item() == 3 for s in steps)
    assert len({s.untyped_storage().data_ptr() for s in steps}) == 1  # one tensor: one add a step
    theirs = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.01)
    theirs.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p in theirs.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    theirs.step()  # torch.optim advances each view on its own: still counts right
    assert [s["step"].item() for s in theirs.state.values()] == [4.0] * len(params)


@pytest.mark.parametrize("which", ["all", "one"])
def test_step_counters_written_in_place_between_steps_are_read_again(which):
    # The grouped path remembers the count it wrote rather than reading it back each step; a
    # count someone else wrote in place (all of them, or one: then the group's counts differ)
    # must be read, exactly as if it had come from a checkpoint.
    params, ours = run(sgdlab.AdamW, dict(lr=0.01), steps=3)
    saved = copy.deepcopy(ours.state_dict())
    counters = [ours.state[p]["step"] for p in params]
    for counter in counters if which == "all" else counters[:1]:
        counter.fill_(100.0)
    for index, entry in saved["state"].items():
        if which == "all" or index == 0:
            entry["step"] = torch.tensor(100.0)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = sgdlab.AdamW(copies, lr=0.01)
    loaded.load_state_dict(saved)
    step_alike(ours, loaded, steps=1, seed=1)
    assert_identical(params, copies)
    assert [ours.state[p]["step"].item() for p in params] == [
        loaded.state[q]["step"].item() for q in copies]
    assert ours.state[params[-1]]["step"].item() == (101.0 if which == "all" else 4.0)


def test_compiled_bfloat16_state_rounds_like_the_eager_program(compile_everything, monkeypatch):
    # The CUDA path for compact state is Inductor; on CPU the same code runs here.
    options = dict(lr=0.05, momentum=0.9)
    shapes = [(7,), (300, 3), (execution.BIG_TENSOR_NUMEL + 1,)]

    def states():
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(1)))
                  for s in shapes]
        optimizer = sgdlab.SGD([{"params": params, "state_dtype": torch.bfloat16}], **options)
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        return params, [optimizer.state[p]["momentum_buffer"] for p in params]

    compiled_params, compiled = states()
    monkeypatch.setattr(grouped_execution, "COMPILE_MIN_NUMEL", 1 << 62)  # the same run, eagerly
    eager_params, eager = states()
    for a, b in zip(compiled, eager):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    assert_identical(compiled_params, eager_params)


def test_compiled_eight_bit_state_matches_the_eager_program(compile_everything, monkeypatch):
    # 8-bit state without the C loop: decode, the (compiled) float program, encode.
    shapes = [(7,), (300, 3), (execution.BIG_TENSOR_NUMEL + 1,)]

    def states():
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(1)))
                  for s in shapes]
        optimizer = sgdlab.SGD([{"params": params, "state_dtype": torch.uint8}], lr=0.05,
                               momentum=0.9)
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        return params, [dict(optimizer.state[p]) for p in params]

    compiled_params, compiled = states()
    monkeypatch.setattr(grouped_execution, "COMPILE_MIN_NUMEL", 1 << 62)
    eager_params, eager = states()
    for a, b in zip(compiled, eager):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert_identical(compiled_params, eager_params)
