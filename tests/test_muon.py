"""sgdlab.Muon against torch.optim.Muon: numbers over a grid of options and shapes, checkpoints
both ways, signature and errors; the Keras convention against Keras's formulas; same-shape
stacking; MuonWithAdamW against torch.optim.Muon + AdamW."""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch

import sgdlab
from sgdlab.algorithms.muon import NS_COEFFICIENTS, muon, newton_schulz
from sgdlab.algorithms.ops import NUMPY
from sgdlab.optim import MuonWithAdamW, compact_state, optimizer_in_backward, torch_ops

# torch's own float32 tolerance (assert_close's defaults).
RTOL, ATOL = 1.3e-6, 1e-5
SHAPES = [(16, 8), (8, 16), (16, 8), (8, 16), (12, 12), (5, 3), (12, 12), (12, 12)]
OPTIONS = [
    {},
    {"lr": 0.02, "nesterov": False},
    {"weight_decay": 0.0, "momentum": 0.8},
    {"adjust_lr_fn": "original"},
    {"adjust_lr_fn": "match_rms_adamw", "lr": 0.01},
    {"ns_steps": 3, "ns_coefficients": (3.4, -4.7, 2.0)},
    {"eps": 1e-3, "ns_steps": 0},
    {"lr": torch.tensor(0.01)},
]


def _params(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _grads(params, step):
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def _train(cls, values, kwargs, steps, optimizer=None):
    if optimizer is None:
        params = [torch.nn.Parameter(v.clone()) for v in values]
        optimizer = cls(params, **copy.deepcopy(kwargs))
    else:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    for step in range(steps):
        for param, grad in zip(params, _grads(params, step)):
            param.grad = grad
        optimizer.step()
    return params, optimizer


def _close(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=RTOL, atol=ATOL)


def _option_id(kwargs):
    return ",".join(f"{key}={value}" for key, value in kwargs.items()) or "defaults"


@pytest.mark.parametrize("kwargs", OPTIONS, ids=_option_id)
def test_steps_like_torch_over_options_and_shapes(kwargs):
    values = [v * 0.5 for v in _params(SHAPES)]
    theirs, _ = _train(torch.optim.Muon, values, kwargs, 4)
    ours, optimizer = _train(sgdlab.Muon, values, kwargs, 4)
    _close(ours, theirs)
    assert all(not torch.equal(p, v) for p, v in zip(ours, values))  # it moved


def test_same_shapes_are_orthogonalized_together(monkeypatch):
    seen = []
    original = torch_ops.addmm
    monkeypatch.setattr(torch_ops, "addmm", lambda c, *a: seen.append(c.dim()) or original(c, *a))
    values = _params([(256, 128)] * 3 + [(4, 4)])
    ours, _ = _train(sgdlab.Muon, values, {"ns_steps": 2}, 1)
    # One stacked run for the three 256x128 matrices, one alone for the 4x4; 2 products per NS
    # step, 2 steps.
    assert sorted(seen) == [2] * 4 + [3] * 4
    # The stack's numbers are the one-by-one numbers (each matrix in a group of its own).
    alone = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = sgdlab.Muon([{"params": [p]} for p in alone], ns_steps=2)
    _train(None, values, {}, 1, optimizer=optimizer)
    _close(ours, alone)


def test_checkpoints_load_both_ways_and_continue_alike():
    values = _params(SHAPES[:4])
    kwargs = {"lr": 0.02, "momentum": 0.9}
    theirs, torch_optimizer = _train(torch.optim.Muon, values, kwargs, 3)
    ours, our_optimizer = _train(sgdlab.Muon, values, kwargs, 3)
    saved, their_saved = our_optimizer.state_dict(), torch_optimizer.state_dict()
    assert saved["param_groups"] == their_saved["param_groups"]
    assert saved["state"].keys() == their_saved["state"].keys()
    for key, entry in their_saved["state"].items():
        assert saved["state"][key].keys() == entry.keys() == {"momentum_buffer"}
        torch.testing.assert_close(saved["state"][key]["momentum_buffer"],
                                   entry["momentum_buffer"], rtol=RTOL, atol=ATOL)
    # torch's checkpoint into sgdlab, sgdlab's into torch; both continue as the originals.
    ours_from_torch = sgdlab.Muon([torch.nn.Parameter(p.detach().clone()) for p in theirs],
                                  **kwargs)
    ours_from_torch.load_state_dict(copy.deepcopy(their_saved))
    torch_from_ours = torch.optim.Muon([torch.nn.Parameter(p.detach().clone()) for p in ours],
                                       **kwargs)
    torch_from_ours.load_state_dict(copy.deepcopy(saved))
    continued = {}
    runs = (("theirs", torch_optimizer), ("ours", our_optimizer),
            ("ours_from_torch", ours_from_torch), ("torch_from_ours", torch_from_ours))
    for name, optimizer in runs:
        params = optimizer.param_groups[0]["params"]
        for step in range(3, 5):
            for param, grad in zip(params, _grads(params, step)):
                param.grad = grad
            optimizer.step()
        continued[name] = params
    _close(continued["ours_from_torch"], continued["theirs"])
    _close(continued["torch_from_ours"], continued["ours"])
    _close(continued["ours"], continued["theirs"])


def test_signature_is_torchs_plus_keyword_only_convention():
    ours = inspect.signature(sgdlab.Muon).parameters
    theirs = inspect.signature(torch.optim.Muon).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        assert (ours[name].kind, ours[name].default) == (parameter.kind, parameter.default), name
    assert [(n, p.kind) for n, p in ours.items() if n not in theirs] == [
        ("convention", inspect.Parameter.KEYWORD_ONLY)]


@pytest.mark.parametrize("params, kwargs", [
    ([torch.zeros(2, 3)], {"lr": -1.0}),
    ([torch.zeros(2, 3)], {"momentum": -0.5}),
    ([torch.zeros(2, 3)], {"weight_decay": -0.1}),
    ([torch.zeros(2, 3)], {"adjust_lr_fn": "arbitrary"}),
    ([torch.zeros(2, 3)], {"lr": torch.tensor([1e-3, 1e-3])}),
    ([torch.zeros(2, 3, 4)], {}),
    ([torch.zeros(3)], {}),
    ([torch.zeros(2, 3), torch.zeros(())], {}),
])
def test_bad_input_raises_what_torch_raises(params, kwargs):
    with pytest.raises(Exception) as theirs:
        torch.optim.Muon([torch.nn.Parameter(p) for p in params], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        sgdlab.Muon([torch.nn.Parameter(p) for p in params], **kwargs)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("make", ["complex", "sparse"])
def test_bad_gradients_raise_what_torch_raises_at_step(make):
    for cls in (torch.optim.Muon, sgdlab.Muon):
        if make == "complex":
            param = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.complex64))
            param.grad = torch.ones_like(param)
        else:
            param = torch.nn.Parameter(torch.zeros(2, 3))
            param.grad = torch.ones(2, 3).to_sparse()
        optimizer = cls([param])
        with pytest.raises(RuntimeError, match=f"Muon does not support {make}"):
            optimizer.step()


def test_step_time_checks_of_torch_come_at_construction():
    with pytest.raises(ValueError, match="Number of steps must be less than 100"):
        sgdlab.Muon([torch.nn.Parameter(torch.zeros(2, 3))], ns_steps=100)
    with pytest.raises(ValueError, match="Coefficients must be a tuple of exactly 3 values"):
        sgdlab.Muon([torch.nn.Parameter(torch.zeros(2, 3))], ns_coefficients=(1.0, 2.0))


def _keras_muon_reference(values, steps, lr, momentum, nesterov, weight_decay, rms_rate):
    """keras.optimizers.Muon's update for 2-D variables, transcribed from its formulas in float64
    NumPy: summed momentum, NS in the variable's dtype with norm + 1e-7, step scaled by
    rms_rate sqrt(max(A, B)), decoupled decay first."""
    a, b, c = NS_COEFFICIENTS
    params = [v.double().numpy().copy() for v in values]
    buffers = [np.zeros_like(p) for p in params]
    for step in range(steps):
        for i, grad in enumerate(_grads(values, step)):
            grad = grad.double().numpy()
            params[i] = params[i] - params[i] * weight_decay * lr
            buffers[i] = buffers[i] + (grad + buffers[i] * (momentum - 1))
            x = grad + momentum * buffers[i] if nesterov else buffers[i]
            tall = x.shape[0] > x.shape[1]
            x = x.T if tall else x
            x = x / (np.linalg.norm(x) + 1e-7)
            for _ in range(5):
                gram = x @ x.T
                x = a * x + (b * gram + c * gram @ gram) @ x
            x = x.T if tall else x
            params[i] = params[i] - lr * x * math.sqrt(max(x.shape)) * rms_rate
    return params


@pytest.mark.parametrize("nesterov", [True, False])
def test_keras_convention_follows_keras_formulas(nesterov):
    values = [v.double() for v in _params(SHAPES[:5])]
    kwargs = {"lr": 0.01, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 0.004,
              "adjust_lr_fn": "match_rms_adamw", "convention": "keras"}
    ours, _ = _train(sgdlab.Muon, values, kwargs, 3)
    expected = _keras_muon_reference(values, 3, 0.01, 0.9, nesterov, 0.004, 0.2)
    for param, reference in zip(ours, expected):
        np.testing.assert_allclose(param.detach().numpy(), reference, rtol=1e-10, atol=1e-12)


def test_the_rule_runs_on_numpy_through_the_contract():
    values = _params([(6, 4), (6, 4)])
    stack = torch.stack(values)
    grad = torch.stack(_grads(values, 0))
    options = {"lr": 0.02, "ns_dtype": "bfloat16"}
    mine, state = muon(stack, grad, {"momentum_buffer": torch.zeros_like(stack)},
                                      ops=torch_ops, **options)
    theirs, numpy_state = muon(
        stack.numpy(), grad.numpy(), {"momentum_buffer": np.zeros(stack.shape, np.float32)},
        ops=NUMPY, **options)
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs, np.float32), rtol=0, atol=2e-3)
    np.testing.assert_allclose(state["momentum_buffer"].numpy(), numpy_state["momentum_buffer"])


def test_newton_schulz_orthogonalizes():
    matrix = _params([(32, 16)])[0].double()
    x = newton_schulz(matrix, steps=10, dtype=None, ops=torch_ops)
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic's band around 1
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.sum(x * (u @ vh)) > 0.85 * 16  # and points along U V^T


def test_in_backward_steps_as_step():
    values = _params([(8, 4), (8, 4), (4, 4)])
    inputs = torch.randn(3, 4)

    def model_loss(params):
        h = inputs
        for p in params:
            h = torch.tanh(h @ p.T) if p.shape[1] == h.shape[1] else h
        return h.pow(2).sum()

    stepped = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = sgdlab.Muon(stepped, lr=0.05)
    in_backward = [torch.nn.Parameter(v.clone()) for v in values]
    handle = optimizer_in_backward(sgdlab.Muon(in_backward, lr=0.05))
    for _ in range(2):
        optimizer.zero_grad()
        model_loss(stepped).backward()
        optimizer.step()
        model_loss(in_backward).backward()
    _close(in_backward, stepped)
    handle.remove()


def _train_compact(cls, values, dtype, steps=12):
    params = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = cls(params, lr=0.02)
    if dtype is not None:
        compact_state(optimizer, dtype)
    return _train(None, values, {}, steps, optimizer=optimizer)


@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.05), (torch.uint8, 0.25)],
                         ids=["bfloat16", "8-bit"])
@pytest.mark.parametrize("cls", [sgdlab.Muon, MuonWithAdamW], ids=["Muon", "MuonWithAdamW"])
def test_compact_momentum_trains_within_its_rounding(cls, dtype, bound):
    values = [v * 0.1 for v in _params([(256, 128)] * 2 + [(8, 4)])]
    if cls is MuonWithAdamW:
        values.append(torch.randn(4096) * 0.1)  # AdamW's part: the grouped path's codecs
    reference, _ = _train_compact(cls, values, None)
    params, optimizer = _train_compact(cls, values, dtype)
    stored = {v.dtype for s in optimizer.state.values() for k, v in s.items() if v.dim()
              and not k.endswith(".absmax")}
    assert dtype in stored and stored <= {dtype, torch.float32}  # small tensors: float32
    moved = max((r - v).abs().max().item() for r, v in zip(reference, values))
    difference = max((p - r).abs().max().item() for p, r in zip(params, reference))
    assert 0 < difference < bound * moved  # rounding noise, not a different trajectory


def test_8bit_momentum_resumes_bit_for_bit_from_a_checkpoint():
    values = _params([(256, 128)] * 2 + [(96, 64)])

    def make(params):
        return sgdlab.Muon([{"params": params, "state_dtype": torch.uint8, "min_8bit_size": 0}],
                           lr=0.02)

    generator = torch.Generator().manual_seed(3)
    grads = [[torch.randn(v.shape, generator=generator) for v in values] for _ in range(4)]

    def steps(optimizer, params, which):
        for i in which:
            for p, g in zip(params, grads[i]):
                p.grad = g.clone()
            optimizer.step()

    straight = [torch.nn.Parameter(v.clone()) for v in values]
    steps(make(straight), straight, range(4))
    first = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = make(first)
    steps(optimizer, first, range(2))
    saved = copy.deepcopy(optimizer.state_dict())
    assert all(isinstance(entry["momentum_buffer"], dict) for entry in saved["state"].values())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    again = make(resumed)
    again.load_state_dict(saved)
    steps(again, resumed, range(2, 4))
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)


def test_bfloat16_checkpoints_load_into_torch_and_back():
    values = _params([(256, 128)] * 2)
    params, optimizer = _train_compact(sgdlab.Muon, values, torch.bfloat16, steps=2)
    theirs = torch.optim.Muon([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.02)
    theirs.load_state_dict(optimizer.state_dict())  # widened to the parameters' dtype by torch
    ours = sgdlab.Muon([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.02)
    compact_state(ours, torch.bfloat16)
    ours.load_state_dict(theirs.state_dict())
    _train(None, values, {}, 1, optimizer=ours)
    assert {s["momentum_buffer"].dtype for s in ours.state.values()} == {torch.bfloat16}


def test_muon_with_adamw_is_muon_for_matrices_and_adamw_for_the_rest():
    shapes = [(8, 4), (8,), (4, 8), (4,)]
    values = _params(shapes)
    kwargs = {"lr": 0.02, "adam_betas": (0.8, 0.99), "adam_eps": 1e-6,
              "adam_weight_decay": 0.05, "adam_lr_ratio": 0.5}
    ours, optimizer = _train(MuonWithAdamW, values, kwargs, 3)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    matrices = torch.optim.Muon([params[0], params[2]], lr=0.02)
    adamw = torch.optim.AdamW([params[1], params[3]], lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                              weight_decay=0.05)
    for step in range(3):
        for param, grad in zip(params, _grads(params, step)):
            param.grad = grad
        matrices.step()
        adamw.step()
    _close(ours, params)
    assert set(optimizer.state[ours[1]]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        MuonWithAdamW(ours, adam_betas=(1.5, 0.9))


def test_lab_spec_builds_the_recipe_and_checks_values():
    from sgdlab.lab.specs import SpecError, parse_spec

    spec = parse_spec("muon:lr=0.05,adam_lr_ratio=0.1")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = spec.build(model.parameters())
    assert isinstance(optimizer, MuonWithAdamW)
    assert sgdlab.MuonWithAdamW is MuonWithAdamW  # tune's "ready to paste" code says sgdlab.<Class>
    model(torch.randn(5, 4)).pow(2).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert set(optimizer.state[model[0].weight]) == {"momentum_buffer"}
    assert set(optimizer.state[model[0].bias]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(SpecError, match="Learning rate should be >= 0"):
        parse_spec("muon:lr=-1")


def test_bench_times_muon_against_torch_muon():
    from sgdlab import bench

    result = bench.run(["tests.test_muon:_bench_shapes"], ["muon"],
                       ["sgdlab", "torch for-loop", "torch fused"], device="cpu", rounds=1, steps=1)
    rows = result.rows_for("tests.test_muon:_bench_shapes", "muon")
    assert set(rows) == {"sgdlab", "torch for-loop"}  # torch.optim.Muon has no fused path
    assert rows["torch for-loop"].ratio_to_torch_fused == 1.0
    assert rows["sgdlab"].reference == "torch for-loop" and rows["sgdlab"].ratio_to_torch_fused > 0


def _bench_shapes():
    return [(8, 4), (8,), (8, 4)]  # the 1-D tensor is left out for Muon


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_fsdp2_sharded_matrices_are_refused_naming_the_shape(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        fully_shard(model, mesh=mesh)
        weights = [p for p in model.parameters() if p.ndim == 2]
        with pytest.raises(ValueError, match=r"DTensor .*global shape \[8, 4\]"):
            sgdlab.Muon(weights)
        optimizer = MuonWithAdamW(model.parameters())
        model(torch.randn(3, 4)).sum().backward()
        with pytest.raises(ValueError, match="Newton-Schulz needs each whole matrix"):
            optimizer.step()
    finally:
        dist.destroy_process_group()
