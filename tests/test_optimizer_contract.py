"""The torch.optim.Optimizer contract beyond the numbers: signatures, hooks, closures,
zero_grad, parameters without gradients, 0-d parameters."""

from __future__ import annotations

import inspect

import pytest
import torch

import sgdlab

CLASSES = [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam), (sgdlab.AdamW, torch.optim.AdamW)]


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=["sgd", "adam", "adamw"])
def test_constructor_signature_is_torchs(ours, theirs):
    mine = inspect.signature(ours.__init__).parameters
    reference = inspect.signature(theirs.__init__).parameters
    for name, parameter in reference.items():
        assert name in mine, name
        assert mine[name].default == parameter.default, name
        assert mine[name].kind == parameter.kind, name
    # Positional parameters come in torch's order, so positional calls mean the same thing.
    positional = [n for n, p in reference.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [n for n, p in mine.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=["sgd", "adam", "adamw"])
def test_default_param_group_matches_torch(ours, theirs):
    p = [torch.nn.Parameter(torch.zeros(1))]
    group_ours, group_theirs = ours(p).param_groups[0], theirs(p).param_groups[0]
    for key, value in group_theirs.items():
        if key != "params":
            assert group_ours[key] == value, key


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam, sgdlab.AdamW])
def test_step_hooks_run_around_each_step(cls):
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = cls([p], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("pre", p.detach().clone())))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", p.detach().clone())))
    p.grad = torch.ones(2)
    optimizer.step()
    assert [c[0] for c in calls] == ["pre", "post"]
    assert torch.equal(calls[0][1], torch.ones(2))
    assert not torch.equal(calls[1][1], torch.ones(2))


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam, sgdlab.AdamW])
def test_closure_loss_is_returned_and_evaluated_with_grad_enabled(cls):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = cls([p], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert p.grad is not None


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam, sgdlab.AdamW])
def test_parameters_without_gradients_are_left_alone(cls):
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = cls([used, unused], lr=0.1, weight_decay=0.1)
    used.grad = torch.ones(2)
    optimizer.step()
    assert torch.equal(unused.detach(), torch.ones(2))
    assert unused not in optimizer.state
    assert not torch.equal(used.detach(), torch.ones(2))


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=["sgd", "adam", "adamw"])
def test_zero_dimensional_parameter(ours, theirs):
    results = []
    for cls in (ours, theirs):
        p = torch.nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
        optimizer = cls([p], lr=0.1)
        for _ in range(5):
            optimizer.zero_grad()
            (p**2).backward()
            optimizer.step()
        results.append(p.item())
    assert results[0] == pytest.approx(results[1], rel=1e-12)
    assert abs(results[0]) < 3.0


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam])
def test_zero_grad_sets_gradients_to_none_by_default(cls):
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    optimizer = cls([p], lr=0.1)
    optimizer.zero_grad()
    assert p.grad is None


def test_first_momentum_buffer_does_not_alias_the_gradient():
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = sgdlab.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(2)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # zeroes p.grad in place
    assert torch.equal(optimizer.state[p]["momentum_buffer"], torch.ones(2))


def test_named_parameters_are_accepted_and_named_in_the_state_dict():
    model = torch.nn.Linear(2, 1)
    optimizer = sgdlab.AdamW(model.named_parameters(), lr=0.01)
    assert optimizer.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


def test_sgdw_decays_weights_independently_of_the_gradient():
    """SGDW: with a zero gradient the weight shrinks by exactly lr * weight_decay per step,
    and the decay never enters the momentum buffer (Loshchilov & Hutter, Algorithm 1)."""
    p = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    optimizer = sgdlab.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5, decoupled_weight_decay=True)
    for _ in range(4):
        p.grad = torch.zeros(3, dtype=torch.float64)
        optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * 0.95**4, dtype=torch.float64))
    assert torch.equal(optimizer.state[p]["momentum_buffer"], torch.zeros(3, dtype=torch.float64))


def test_sgd_l2_decay_goes_through_the_momentum_buffer():
    p = torch.nn.Parameter(torch.full((1,), 2.0, dtype=torch.float64))
    optimizer = sgdlab.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = torch.zeros(1, dtype=torch.float64)
    optimizer.step()
    assert optimizer.state[p]["momentum_buffer"].item() == pytest.approx(1.0)  # 0.5 * 2.0


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("flags", [{}, {"foreach": False}, {"fused": True}], ids=["default", "for-loop", "fused"])
def test_one_element_lr_of_any_shape_acts_as_a_scalar_like_torch(ours, theirs, flags):
    results = []
    for cls in (ours, theirs):
        param = torch.nn.Parameter(torch.linspace(-1, 1, 10))
        optimizer = cls([param], lr=torch.tensor([[1e-2]]), **flags)
        for step in range(3):
            param.grad = torch.full_like(param, 0.5 + step)
            optimizer.step()
        assert optimizer.param_groups[0]["lr"].shape == (1, 1)  # kept as given, as torch keeps it
        results.append(param.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-7)
    assert not torch.equal(results[0], torch.linspace(-1, 1, 10))


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("param", [torch.ones(3, dtype=torch.int64), torch.ones(3, device="meta")],
                         ids=["int64", "meta"])
def test_fused_refuses_parameters_torch_fused_refuses(ours, theirs, param):
    for cls in (ours, theirs):
        p = param.clone()
        p.grad = torch.ones_like(p)
        optimizer = cls([p], fused=True)
        with pytest.raises(RuntimeError, match=r"^`fused=True` requires all the params to be floating "
                                               r"point Tensors of supported devices: \[.*'cpu'.*\] but "):
            optimizer.step()
        assert not any(optimizer.state.values())  # no state for the refused parameter
