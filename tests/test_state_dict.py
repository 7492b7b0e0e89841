"""Checkpoints are interchangeable with torch.optim: same layout, and training continues
identically after loading in either direction."""

from __future__ import annotations

import io

import pytest
import torch

import sgdlab

PAIRS = [
    (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05)),
    (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
]
IDS = ["sgd-nesterov", "sgd-plain", "adam-amsgrad", "adam-l2", "adamw"]


class Trainer:
    """A model, fixed data and an optimizer; `steps(n)` trains deterministically."""

    def __init__(self, optimizer_cls, options):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
        ).double()
        self.x = torch.randn(16, 3, dtype=torch.float64)
        self.y = torch.randn(16, 2, dtype=torch.float64)
        self.optimizer = optimizer_cls(
            [
                {"params": self.model[0].parameters(), "lr": 0.02},
                {"params": self.model[2].parameters()},
            ],
            **options,
        )

    def steps(self, n):
        for _ in range(n):
            self.optimizer.zero_grad()
            torch.nn.functional.mse_loss(self.model(self.x), self.y).backward()
            self.optimizer.step()
        return [p.detach().clone() for p in self.model.parameters()]


def _through_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _resume(source_cls, target_cls, options):
    """Train 5 steps with source_cls, checkpoint, load into target_cls, train 5 more."""
    first = Trainer(source_cls, options)
    first.steps(5)
    model_state = {k: v.clone() for k, v in first.model.state_dict().items()}
    optimizer_state = _through_bytes(first.optimizer.state_dict())

    second = Trainer(target_cls, options)
    second.model.load_state_dict(model_state)
    second.optimizer.load_state_dict(optimizer_state)
    return second.steps(5), first.steps(5)


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_state_dict_has_torch_layout(ours, theirs, options):
    a, b = Trainer(ours, options), Trainer(theirs, options)
    a.steps(2)
    b.steps(2)
    sd_ours, sd_theirs = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sd_ours["state"].keys() == sd_theirs["state"].keys()
    for index, state in sd_theirs["state"].items():
        assert sd_ours["state"][index].keys() == state.keys()
        for key, value in state.items():
            mine = sd_ours["state"][index][key]
            assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape, value.device)
            torch.testing.assert_close(mine, value, rtol=1e-12, atol=1e-12)
    for group_ours, group_theirs in zip(sd_ours["param_groups"], sd_theirs["param_groups"]):
        # SGD carries one extra key, decoupled_weight_decay (SGDW); torch ignores it on load.
        extra = set(group_ours) - set(group_theirs)
        assert extra <= {"decoupled_weight_decay"}
        for key, value in group_theirs.items():
            assert group_ours[key] == value, key


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_torch_checkpoint_loads_into_sgdlab_and_training_continues_identically(
    ours, theirs, options
):
    resumed, uninterrupted = _resume(theirs, ours, options)
    for a, b in zip(resumed, uninterrupted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_sgdlab_checkpoint_loads_into_torch_and_training_continues_identically(
    ours, theirs, options
):
    resumed, uninterrupted = _resume(ours, theirs, options)
    for a, b in zip(resumed, uninterrupted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours, theirs, options", PAIRS, ids=IDS)
def test_sgdlab_checkpoint_round_trips_through_torch_save(ours, theirs, options):
    resumed, uninterrupted = _resume(ours, ours, options)
    for a, b in zip(resumed, uninterrupted):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sgdw_flag_survives_a_checkpoint():
    trainer = Trainer(sgdlab.SGD, dict(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True))
    trainer.steps(1)
    restored = Trainer(sgdlab.SGD, dict(lr=0.1))
    restored.optimizer.load_state_dict(_through_bytes(trainer.optimizer.state_dict()))
    assert all(g["decoupled_weight_decay"] for g in restored.optimizer.param_groups)


def test_torch_sgd_checkpoint_gets_sgdlab_defaults_for_missing_keys():
    trainer = Trainer(torch.optim.SGD, dict(lr=0.1, momentum=0.9))
    trainer.steps(1)
    restored = Trainer(sgdlab.SGD, dict(lr=0.1, momentum=0.9, decoupled_weight_decay=True))
    restored.optimizer.load_state_dict(trainer.optimizer.state_dict())
    assert not any(g["decoupled_weight_decay"] for g in restored.optimizer.param_groups)


def test_adam_checkpoint_with_a_numeric_step_from_old_pytorch_loads():
    trainer = Trainer(sgdlab.Adam, dict(lr=0.01))
    trainer.steps(3)
    state_dict = trainer.optimizer.state_dict()
    for state in state_dict["state"].values():
        state["step"] = float(state["step"])  # how PyTorch < 1.12 stored it
    restored = Trainer(sgdlab.Adam, dict(lr=0.01))
    restored.optimizer.load_state_dict(state_dict)
    for state in restored.optimizer.state.values():
        assert torch.is_tensor(state["step"]) and state["step"].item() == 3.0
    restored.steps(1)


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam, sgdlab.AdamW])
def test_load_state_dict_post_hook_may_put_any_value_in_state(cls):
    # torch.optim runs load_state_dict's post-hooks last, and lets them store anything there.
    model = torch.nn.Linear(3, 2)
    optimizer = cls(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("flag", True))
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["flag"] is True
    optimizer.load_state_dict(optimizer.state_dict())  # the foreign entry comes back as saved
    assert optimizer.state["flag"] is True


def test_eight_bit_codes_are_integers_again_when_post_hooks_run():
    model = torch.nn.Linear(64, 64)
    optimizer = sgdlab.AdamW(model.parameters())
    sgdlab.optim.compact_state(optimizer, torch.uint8, min_8bit_size=0)
    model(torch.ones(1, 64)).sum().backward()
    optimizer.step()
    seen = []
    optimizer.register_load_state_dict_post_hook(
        lambda o: seen.append(o.state[model.weight]["exp_avg"].dtype))
    optimizer.load_state_dict(optimizer.state_dict())
    assert seen == [torch.uint8]
