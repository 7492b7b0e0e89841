"""Invalid input raises what torch.optim raises, with a message naming the argument and value."""

from __future__ import annotations

import math

import pytest
import torch

import sgdlab


def _param():
    return [torch.nn.Parameter(torch.zeros(2))]


SGD_INVALID = [
    (dict(lr=-0.1), ValueError, r"lr=-0\.1"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"lr must be 1-element"),
    (dict(lr=0.1, momentum=-0.5), ValueError, r"momentum=-0\.5"),
    (dict(lr=0.1, weight_decay=-1e-4), ValueError, r"weight_decay=-0\.0001"),
    (dict(lr=0.1, nesterov=True), ValueError, r"Nesterov momentum requires a momentum"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"dampening=0\.1"),
]

ADAM_INVALID = [
    (dict(lr=-1e-3), ValueError, r"lr=-0\.001"),
    (dict(eps=-1e-8), ValueError, r"eps=-1e-08"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]=1\.0"),
    (dict(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]=-0\.1"),
    (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\]=1\.5"),
    (dict(weight_decay=-0.01), ValueError, r"weight_decay=-0\.01"),
    (dict(lr=torch.tensor([1e-3, 1e-3])), ValueError, r"lr must be 1-element"),
]


@pytest.mark.parametrize("options, error, message", SGD_INVALID)
def test_sgd_rejects_what_torch_rejects(options, error, message):
    with pytest.raises(error, match=message):
        sgdlab.SGD(_param(), **options)
    with pytest.raises(error):
        torch.optim.SGD(_param(), **options)


@pytest.mark.parametrize("cls, reference", [(sgdlab.Adam, torch.optim.Adam), (sgdlab.AdamW, torch.optim.AdamW)])
@pytest.mark.parametrize("options, error, message", ADAM_INVALID)
def test_adam_family_rejects_what_torch_rejects(cls, reference, options, error, message):
    with pytest.raises(error, match=message):
        cls(_param(), **options)
    with pytest.raises(error):
        reference(_param(), **options)


@pytest.mark.parametrize(
    "cls, argument",
    [
        (sgdlab.SGD, "lr"),
        (sgdlab.SGD, "momentum"),
        (sgdlab.SGD, "weight_decay"),
        (sgdlab.Adam, "lr"),
        (sgdlab.Adam, "eps"),
        (sgdlab.Adam, "weight_decay"),
        (sgdlab.AdamW, "lr"),
    ],
)
def test_nan_hyperparameters_are_rejected_by_name(cls, argument):
    options = {"lr": 0.1, argument: math.nan}
    with pytest.raises(ValueError, match=rf"{argument}=nan"):
        cls(_param(), **options)


def test_nan_beta_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"betas\[1\]=nan"):
        sgdlab.Adam(_param(), betas=(0.9, math.nan))


def test_non_numeric_hyperparameter_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"lr='fast'"):
        sgdlab.SGD(_param(), lr="fast")


def test_invalid_value_in_one_param_group_is_rejected_by_name():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"lr=-1"):
        sgdlab.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": -1}], lr=0.1)


def test_add_param_group_checks_the_new_group():
    optimizer = sgdlab.Adam(_param())
    with pytest.raises(ValueError, match=r"betas\[0\]=2"):
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
