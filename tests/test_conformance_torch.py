"""torch.optim's own conformance data, run against sgdlab's classes.

The torch wheel ships ``optim_db`` (torch/testing/_internal/common_optimizers.py): for each
optimizer, the inputs PyTorch's test suite constructs it with and the invalid inputs with the
exception type and message each must raise. For its SGD, Adam, AdamW and Muon entries, every error input
must raise the same exception type with a message matching torch's pattern, and every CPU input
(with each of the foreach / fused / differentiable flags torch tests on CPU) must step like
torch.optim, save checkpoints that torch.optim loads and load checkpoints torch.optim saves, and
continue along the same trajectory after either load. Nothing here is copied from PyTorch: the
data is imported from the installed wheel, so a new torch release brings its new cases.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import (  # needs expecttest (test extra)
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import sgdlab

DEVICE, DTYPE = "cpu", torch.float32
INFOS = {info.optim_cls.__name__: info for info in optim_db
         if info.optim_cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
                               torch.optim.Muon)}
OURS = {"SGD": sgdlab.SGD, "Adam": sgdlab.Adam, "AdamW": sgdlab.AdamW, "Muon": sgdlab.Muon}
# Muon takes matrices only (its runs here give the bias the shape of a column).
MATRICES_ONLY = ("Muon",)

# Parameters after 5 steps (and after 3 more from a loaded checkpoint) must match torch.optim's to
# within this, in float32 on values of order 1. Measured largest difference over every input here
# (tests/test_conformance_torch.py, 2026-11-29, torch 2.13.0 CPU): see docs/drop-in.md. The
# bound is torch's own float32 tolerance for its fused-vs-for-loop comparison (assert_close's
# float32 defaults, rtol 1.3e-6, atol 1e-5), not looser.
RTOL, ATOL = 1.3e-6, 1e-5


def _error_cases():
    for name, info in INFOS.items():
        for index, error in enumerate(info.optim_error_inputs_func(device=DEVICE, dtype=DTYPE)):
            desc = error.optimizer_error_input.desc
            yield pytest.param(name, index, id=f"{name}-{desc}")


def _input_cases():
    for name, info in INFOS.items():
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(DEVICE, DTYPE, info):
            yield pytest.param(name, optim_input.kwargs, id=f"{name}-{optim_input.desc}")
        if name in MATRICES_ONLY:
            continue  # no foreach, fused or capturable flags (torch.optim.Muon has none)
        # optim_db adds foreach=True only on devices with foreach kernels; torch.optim runs it on
        # the CPU too (the multi-tensor code on its slow path), so it is compared here as well.
        for optim_input in info.optim_inputs_func(device=DEVICE):
            kwargs = {**optim_input.kwargs, "foreach": True}
            yield pytest.param(name, kwargs, id=f"{name}-{optim_input.desc} & foreach (cpu)")
        # Not (yet) in optim_db: a 1-element lr of another shape, which torch.optim accepts
        # (Adam's foreach refuses any tensor lr; optim_db has that error input).
        for flag in ("foreach", "fused", None) if name == "SGD" else ("fused", None):
            kwargs = {"lr": torch.tensor([[1e-3]]), **({flag: True} if flag else {})}
            yield pytest.param(name, kwargs,
                               id=f"{name}-2-D tensor lr" + (f" & {flag}" if flag else ""))


def _build(cls, kwargs, error):
    if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        cls(error.optimizer_error_input.params, **kwargs)
    else:
        cls(error.optimizer_error_input.params, **kwargs).step()


@pytest.mark.parametrize("name, index", list(_error_cases()))
def test_error_input_raises_what_torch_raises(name, index):
    error = INFOS[name].optim_error_inputs_func(device=DEVICE, dtype=DTYPE)[index]
    kwargs = error.optimizer_error_input.kwargs
    for cls in (INFOS[name].optim_cls, OURS[name]):  # torch first: the case itself is right
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=error.error_regex):
                _build(cls, kwargs, error)
        else:
            with pytest.raises(error.error_type, match=error.error_regex):
                _build(cls, kwargs, error)


class Run:
    """A linear model's weight and bias, stepped with closures by one optimizer class."""

    def __init__(self, cls, kwargs, weight, bias):
        if cls.__name__ in MATRICES_ONLY:
            bias = bias.reshape(-1, 1)
        self.differentiable = bool(kwargs.get("differentiable"))
        # A differentiable optimizer updates non-leaf tensors (torch.optim refuses in-place
        # updates of leaves that require grad when it records the step).
        make = (lambda t: t.clone().requires_grad_().clone()) if self.differentiable else (
            lambda t: torch.nn.Parameter(t.clone()))
        self.weight, self.bias = make(weight), make(bias)
        self.optimizer = cls([self.weight, self.bias], **copy.deepcopy(kwargs))

    def closure(self):
        self.optimizer.zero_grad()
        with torch.enable_grad():
            w = self.weight.detach().requires_grad_()
            b = self.bias.detach().requires_grad_()
            loss = (w.mv(INPUT) + b.reshape(-1)).pow(2).sum() + (w * w).sum().sqrt()
            self.weight.grad, self.bias.grad = torch.autograd.grad(loss, (w, b))
        return loss.detach()

    def steps(self, n):
        losses = [self.optimizer.step(self.closure) for _ in range(n)]
        return losses

    def params(self):
        return [self.weight.detach().clone(), self.bias.detach().clone().reshape(-1)]


torch.manual_seed(0)
INPUT = torch.randn(5)
WEIGHT, BIAS = torch.randn(10, 5), torch.randn(10)


def _saved(state_dict):
    """The state_dict as torch.save would store it: detached copies (a differentiable step's
    state carries autograd history, which cannot be copied)."""
    return torch.utils._pytree.tree_map(
        lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v), state_dict)


def _assert_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def _assert_same_state_dict(ours, theirs):
    """Same layout: every key torch.optim saves, with the same values (tensors to tolerance)."""
    assert ours["state"].keys() == theirs["state"].keys()
    for key, entry in theirs["state"].items():
        assert ours["state"][key].keys() == entry.keys()
        for name, value in entry.items():
            mine = ours["state"][key][name]
            assert type(mine) is type(value)
            if isinstance(value, torch.Tensor):
                assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape, value.device)
                torch.testing.assert_close(mine, value, rtol=RTOL, atol=ATOL)
            else:
                assert mine == value
    assert len(ours["param_groups"]) == len(theirs["param_groups"])
    for mine, group in zip(ours["param_groups"], theirs["param_groups"]):
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(mine[key], value), key
            else:
                assert mine[key] == value, key


@pytest.mark.parametrize("name, kwargs", list(_input_cases()))
def test_input_steps_and_checkpoints_like_torch(name, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own notes (e.g. on differentiable)
        theirs = Run(INFOS[name].optim_cls, kwargs, WEIGHT, BIAS)
        ours = Run(OURS[name], kwargs, WEIGHT, BIAS)
        their_losses, our_losses = theirs.steps(5), ours.steps(5)
        _assert_close(ours.params(), theirs.params())
        torch.testing.assert_close(torch.stack(our_losses), torch.stack(their_losses),
                                   rtol=RTOL, atol=ATOL)
        _assert_same_state_dict(ours.optimizer.state_dict(), theirs.optimizer.state_dict())

        # Checkpoints both ways: torch's into sgdlab, sgdlab's into torch, each on copies of the
        # parameters it was saved with; every run then continues along the same trajectory.
        ours_from_torch = Run(OURS[name], kwargs, *theirs.params())
        ours_from_torch.optimizer.load_state_dict(_saved(theirs.optimizer.state_dict()))
        torch_from_ours = Run(INFOS[name].optim_cls, kwargs, *ours.params())
        torch_from_ours.optimizer.load_state_dict(_saved(ours.optimizer.state_dict()))
        for run in (theirs, ours, ours_from_torch, torch_from_ours):
            run.steps(3)
    _assert_close(ours_from_torch.params(), theirs.params())
    _assert_close(torch_from_ours.params(), ours.params())
    _assert_close(ours.params(), theirs.params())
    _assert_same_state_dict(ours_from_torch.optimizer.state_dict(), theirs.optimizer.state_dict())


def test_optim_db_still_has_the_entries_and_cases_this_module_runs():
    # A torch upgrade that renamed or emptied these would otherwise make the module pass vacuously.
    assert set(INFOS) == {"SGD", "Adam", "AdamW", "Muon"}
    assert len(list(_error_cases())) >= 20 and len(list(_input_cases())) >= 80
