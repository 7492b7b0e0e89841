"""Group-level hooks: step() and optimizer-in-backward run the same group-level work (SWATS's
switch, schedule-free's schedule), so both train to the same parameters and state."""

from __future__ import annotations

import copy

import pytest
import torch

import sgdlab
from sgdlab.optim import optimizer_in_backward

STEPS = 6

CASES = {
    "sgd": (sgdlab.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": (sgdlab.Adam, dict(lr=0.01, amsgrad=True)),
    "adamw": (sgdlab.AdamW, dict(lr=0.01, weight_decay=0.1)),
    "swats": (sgdlab.SWATS, dict(lr=0.01, weight_decay=0.01)),
    "swats-switch_at": (sgdlab.SWATS, dict(lr=0.01, switch_at=2)),
    "swats-criterion": (sgdlab.SWATS, dict(lr=0.03, switch_tol=0.05)),
    "schedule-free-sgd": (sgdlab.ScheduleFreeSGD, dict(lr=0.5, warmup_steps=2, weight_decay=0.01)),
    "schedule-free-adamw": (sgdlab.ScheduleFreeAdamW, dict(lr=0.01, warmup_steps=2, r=1.0)),
}


def model_and_groups():
    """Three layers in two groups, with a parameter the loss never reaches (no gradient) in the
    first and a group of only such parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    alone = torch.nn.Parameter(torch.ones(2))
    groups = [
        {"params": [*model[0].parameters(), unused]},
        {"params": [*model[2].parameters(), *model[4].parameters()]},
        {"params": [alone]},
    ]
    return model, groups


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=generator), torch.randn(16, 2, generator=generator))
            for _ in range(STEPS)]


def loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def make(name):
    cls, options = CASES[name]
    model, groups = model_and_groups()
    optimizer = cls(groups, **options)
    if hasattr(optimizer, "train"):
        optimizer.train()  # schedule-free trains at y
    return model, optimizer


def train_with_step(name, record=None):
    model, optimizer = make(name)
    for batch in batches():
        optimizer.zero_grad()
        loss(model, batch).backward()
        optimizer.step()
        if record is not None:
            record.append([group.get("switch_step") for group in optimizer.param_groups])
    return model, optimizer


def train_in_backward(name, record=None):
    model, optimizer = make(name)
    handle = optimizer_in_backward(optimizer)
    for batch in batches():
        loss(model, batch).backward()
        if record is not None:
            record.append([group.get("switch_step") for group in optimizer.param_groups])
    handle.remove()
    return model, optimizer


def assert_same(a, b):
    """Bit-identical nested state (tensors with torch.equal, everything else with ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("name", CASES)
def test_in_backward_training_is_bit_identical_to_step_training(name):
    model, optimizer = train_with_step(name)
    twin, twin_optimizer = train_in_backward(name)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    # Parameters moved (a broken hook that skipped every update would pass the comparison).
    assert not torch.equal(model[0].weight, model_and_groups()[0][0].weight)
    assert_same(optimizer.state_dict(), twin_optimizer.state_dict())


@pytest.mark.parametrize("name", ["swats-switch_at", "swats-criterion"])
def test_swats_in_backward_switches_at_the_same_step_as_with_step(name):
    by_step, in_backward = [], []
    train_with_step(name, by_step)
    train_in_backward(name, in_backward)
    assert by_step == in_backward
    # The first two groups switched during the run; the group without gradients never did.
    assert by_step[-1][0] is not None and by_step[-1][1] is not None
    assert by_step[-1][2] is None
    if name == "swats-switch_at":
        assert [switches[0] for switches in by_step] == [None] + [2] * (STEPS - 1)


@pytest.mark.parametrize("name", ["schedule-free-sgd", "schedule-free-adamw"])
def test_schedule_free_in_backward_advances_every_group_once_per_backward(name):
    _, optimizer = train_in_backward(name)
    # The group whose parameter never has a gradient advances too, as with step().
    assert [group["k"] for group in optimizer.param_groups] == [STEPS] * 3


@pytest.mark.parametrize("name", ["swats-switch_at", "schedule-free-adamw"])
def test_in_backward_then_step_continues_as_step_alone(name):
    model, optimizer = train_with_step(name)
    twin, twin_optimizer = make(name)
    handle = optimizer_in_backward(twin_optimizer)
    data = batches()
    for batch in data[:3]:
        loss(twin, batch).backward()
    handle.remove()
    for batch in data[3:]:
        twin_optimizer.zero_grad()
        loss(twin, batch).backward()
        twin_optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert_same(optimizer.state_dict(), twin_optimizer.state_dict())


def test_schedule_free_in_backward_in_eval_mode_raises():
    model, optimizer = make("schedule-free-sgd")
    optimizer.eval()
    optimizer_in_backward(optimizer)
    with pytest.raises(RuntimeError, match=r"optimizer\.train\(\)"):
        loss(model, batches()[0]).backward()


def test_optimizer_in_backward_refuses_sam_saying_why():
    model, groups = model_and_groups()
    sam = sgdlab.SAM(sgdlab.SGD(groups, lr=0.1), rho=0.05)
    with pytest.raises(TypeError, match="does not support SAM: a SAM step needs two gradients"):
        optimizer_in_backward(sam)


class Recording(sgdlab.SGD):
    """SGD that logs its group-level hooks and every update."""

    def __init__(self, *args, **kwargs):
        self.log = []
        super().__init__(*args, **kwargs)

    def before_group(self, group):
        self.log.append(("before_group", self.param_groups.index(group)))

    def before_update(self, group, params, grads):
        self.log.append(("update", self.param_groups.index(group), len(params)))

    def after_group(self, group):
        self.log.append(("after_group", self.param_groups.index(group)))


def test_hooks_run_once_per_group_and_step_around_its_updates_in_both_modes():
    model, groups = model_and_groups()
    optimizer = Recording(groups, lr=0.1)
    loss(model, batches()[0]).backward()
    optimizer.step()
    assert optimizer.log == [
        ("before_group", 0), ("update", 0, 2), ("after_group", 0),
        ("before_group", 1), ("update", 1, 4), ("after_group", 1),
        ("before_group", 2), ("after_group", 2),  # no gradient: the hooks run all the same
    ]

    optimizer.log.clear()
    optimizer_in_backward(optimizer)
    for _ in range(2):
        loss(model, batches()[0]).backward()
        per_group = {index: [entry[0] for entry in optimizer.log if entry[1] == index]
                     for index in range(3)}
        assert per_group == {0: ["before_group", "update", "update", "after_group"],
                             1: ["before_group"] + ["update"] * 4 + ["after_group"],
                             2: ["before_group", "after_group"]}
        optimizer.log.clear()


@pytest.mark.parametrize("name", ["swats-switch_at", "schedule-free-sgd"])
def test_a_deep_copy_trains_like_the_original(name):
    model, optimizer = make(name)
    data = batches()
    loss(model, data[0]).backward()
    optimizer.step()
    twin = copy.deepcopy((model, optimizer))  # torch.optim's __getstate__ keeps only its dicts
    for net, opt in ((model, optimizer), twin):
        for batch in data[1:]:
            opt.zero_grad()
            loss(net, batch).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin[0].parameters()):
        assert torch.equal(a, b)


def test_swats_switch_warning_points_at_the_caller_of_step():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = sgdlab.SWATS([param], lr=0.1, switch_at=1)
    param.grad = torch.zeros(3)  # no move: a non-positive estimate, hence the warning
    with pytest.warns(RuntimeWarning, match="non-positive") as caught:
        optimizer.step()
    assert caught[0].filename == __file__


# --- every optimizer under every execution mode --------------------------------------------------
MODES = ["step", "per-tensor", "in-backward", "bfloat16", "8-bit"]


def train_in_mode(name, mode):
    cls, options = CASES[name]
    model, groups = model_and_groups()
    if mode == "per-tensor":
        groups = [{**group, "foreach": False} for group in groups]
    if mode in ("bfloat16", "8-bit"):
        dtype = torch.bfloat16 if mode == "bfloat16" else torch.uint8
        groups = [{**group, "state_dtype": dtype, "min_8bit_size": 0} for group in groups]
    optimizer = cls(groups, **options)
    if hasattr(optimizer, "train"):
        optimizer.train()
    if mode == "in-backward":
        handle = optimizer_in_backward(optimizer)
    for batch in batches():
        if mode != "in-backward":
            optimizer.zero_grad()
        loss(model, batch).backward()
        if mode != "in-backward":
            optimizer.step()
    if mode == "in-backward":
        handle.remove()
    return model, optimizer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_every_optimizer_trains_alike_in_every_execution_mode(name, mode):
    """Each mode runs the same declared rule: per-tensor and in-backward within rounding of the
    sqrt (the grouped C loop's is correctly rounded, eager CPU's is MKL's) of plain step();
    compact state within its rounding, with its storage dtype; or a clear refusal where the
    declaration says the rule keeps float32 state."""
    cls = CASES[name][0]
    reference, _ = train_in_mode(name, "step")
    compact = mode in ("bfloat16", "8-bit")
    if compact and not cls.compact_state_supported:
        with pytest.raises(ValueError, match="state_dtype"):
            train_in_mode(name, mode)
        return
    model, optimizer = train_in_mode(name, mode)
    tolerance = dict(rtol=0, atol=0.05) if compact else dict(rtol=1e-5, atol=1e-6)
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(),
                                                             reference.parameters()))
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, **tolerance)
    if compact:
        stored = {value.dtype for state in optimizer.state.values() for value in state.values()
                  if isinstance(value, torch.Tensor) and value.dim()}
        assert stored and stored <= {torch.bfloat16, torch.uint8, torch.float32}
        assert (torch.bfloat16 if mode == "bfloat16" else torch.uint8) in stored
        assert moved > 0  # the compact run is a run of its own, not the reference's numbers
