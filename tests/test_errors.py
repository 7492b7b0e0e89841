"""Invalid input raises what torch.optim raises, with a message naming the argument and value."""

from __future__ import annotations

import math
import re

import pytest
import torch

import sgdlab


def _param():
    return [torch.nn.Parameter(torch.zeros(2))]


SGD_INVALID = [
    dict(lr=-0.1),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(lr=torch.tensor(-0.1)),
    dict(lr=0.1, momentum=-0.5),
    dict(lr=0.1, weight_decay=-1e-4),
    dict(lr=0.1, nesterov=True),
    dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    dict(lr=-float("inf")),
]

ADAM_INVALID = [
    dict(lr=-1e-3),
    dict(lr=float("nan")),
    dict(eps=-1e-8),
    dict(betas=(1.0, 0.999)),
    dict(betas=(-0.1, 0.999)),
    dict(betas=(0.9, 1.5)),
    dict(weight_decay=-0.01),
    dict(lr=torch.tensor([1e-3, 1e-3])),
    dict(lr=torch.tensor(1e-3), foreach=True),
    dict(betas=(0.9, torch.tensor(0.99))),
    dict(betas=(torch.tensor(0.9), 0.99)),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
]


def _raised(cls, options):
    with pytest.raises(Exception) as info:
        cls(_param(), **options)
    return info.value


def _assert_raises_like(cls, reference, options):
    """Same exception type as torch.optim, and a message that starts with torch.optim's words."""
    ours, theirs = _raised(cls, options), _raised(reference, options)
    assert type(ours) is type(theirs)
    assert str(ours).startswith(str(theirs)), (str(ours), str(theirs))
    assert len(str(ours)) > len(str(theirs)) or "Tensor" in str(ours) or "both" in str(ours)


@pytest.mark.parametrize("options", SGD_INVALID, ids=repr)
def test_sgd_raises_what_torch_raises_in_its_words(options):
    _assert_raises_like(sgdlab.SGD, torch.optim.SGD, options)


@pytest.mark.parametrize("cls, reference", [(sgdlab.Adam, torch.optim.Adam), (sgdlab.AdamW, torch.optim.AdamW)])
@pytest.mark.parametrize("options", ADAM_INVALID, ids=repr)
def test_adam_family_raises_what_torch_raises_in_its_words(cls, reference, options):
    _assert_raises_like(cls, reference, options)


@pytest.mark.parametrize(
    "cls, argument, what",
    [
        (sgdlab.SGD, "lr", "learning rate"),
        (sgdlab.SGD, "momentum", "momentum value"),
        (sgdlab.SGD, "weight_decay", "weight_decay value"),
        (sgdlab.Adam, "lr", "learning rate"),
        (sgdlab.Adam, "eps", "epsilon value"),
        (sgdlab.Adam, "weight_decay", "weight_decay value"),
        (sgdlab.AdamW, "lr", "learning rate"),
    ],
)
def test_nan_hyperparameters_are_rejected_by_name(cls, argument, what):
    # torch.optim.SGD lets a NaN lr through (nan < 0 is false); sgdlab never does.
    options = {"lr": 0.1, argument: math.nan}
    with pytest.raises(ValueError, match=rf"^Invalid {what}: nan \({argument}=nan, NaN is not allowed\)"):
        cls(_param(), **options)


def test_nan_beta_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"^Invalid beta parameter at index 1: nan \(betas\[1\]=nan"):
        sgdlab.Adam(_param(), betas=(0.9, math.nan))


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam),
                                            (sgdlab.AdamW, torch.optim.AdamW)])
@pytest.mark.parametrize("lr", ["1e-3", "fast", None])
def test_lr_that_is_not_a_number_is_a_type_error_at_construction_like_torch(cls, reference, lr):
    with pytest.raises(TypeError):
        reference(_param(), lr=lr)
    pattern = rf"^Invalid learning rate: {re.escape(repr(lr))} \(lr={re.escape(repr(lr))} is a"
    with pytest.raises(TypeError, match=pattern):
        cls(_param(), lr=lr)


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam)])
def test_infinite_lr_is_accepted_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        assert optimizer_cls(_param(), lr=math.inf).param_groups[0]["lr"] == math.inf


def test_invalid_value_in_one_param_group_is_rejected_by_name():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1 \(lr=-1, expected lr >= 0\)"):
        sgdlab.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": -1}], lr=0.1)


def test_add_param_group_checks_the_new_group():
    optimizer = sgdlab.Adam(_param())
    with pytest.raises(ValueError, match=r"^Invalid beta parameter at index 0: 2 "):
        optimizer.add_param_group({"params": _param(), "betas": (2, 0.999)})


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.AdamW, torch.optim.AdamW)])
def test_parameter_in_two_groups_is_rejected_like_torch(cls, reference):
    p = torch.nn.Parameter(torch.zeros(2))
    for optimizer_cls in (cls, reference):
        with pytest.raises(ValueError, match="more than one parameter group"):
            optimizer_cls([{"params": [p]}, {"params": [p]}], lr=0.1)


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam)])
def test_non_iterable_params_raise_type_error_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        with pytest.raises(TypeError, match="iterable"):
            optimizer_cls(torch.zeros(2), lr=0.1)


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam)])
def test_empty_parameter_list_is_rejected_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        with pytest.raises(ValueError, match="empty parameter list"):
            optimizer_cls([], lr=0.1)


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam)])
def test_fused_with_differentiable_or_foreach_is_rejected_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        with pytest.raises(RuntimeError, match="differentiable"):
            optimizer_cls(_param(), lr=0.1, fused=True, differentiable=True)
        with pytest.raises(RuntimeError, match="foreach"):
            optimizer_cls(_param(), lr=0.1, fused=True, foreach=True)


@pytest.mark.parametrize("cls, reference", [(sgdlab.Adam, torch.optim.Adam), (sgdlab.AdamW, torch.optim.AdamW)])
def test_sparse_gradients_are_rejected_by_adam_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
        with pytest.raises(RuntimeError, match="sparse"):
            optimizer_cls([p]).step()


@pytest.mark.parametrize("cls, reference", [(sgdlab.SGD, torch.optim.SGD), (sgdlab.Adam, torch.optim.Adam)])
def test_parameters_are_checked_before_fused_flags_like_torch(cls, reference):
    for optimizer_cls in (cls, reference):
        with pytest.raises(ValueError, match="empty parameter list"):
            optimizer_cls([], fused=True, differentiable=True)
