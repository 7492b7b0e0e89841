"""Optimizer in backward: the same updates as step(), applied while backward() runs."""

from __future__ import annotations

import pytest
import torch

import sgdlab
from sgdlab.optim import optimizer_in_backward


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    return model, x, y


@pytest.mark.parametrize(
    "cls, options",
    [(sgdlab.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)), (sgdlab.AdamW, dict(lr=0.01))],
    ids=["sgd", "adamw"],
)
def test_in_backward_training_matches_step_training(cls, options):
    model, x, y = model_and_data()
    optimizer = cls(model.parameters(), **options)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    twin, _, _ = model_and_data()
    twin_optimizer = cls(twin.parameters(), **options)
    handle = optimizer_in_backward(twin_optimizer)
    for _ in range(5):
        torch.nn.functional.mse_loss(twin(x), y).backward()
    handle.remove()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gradients_are_released_during_backward():
    model, x, y = model_and_data()
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    seen = []
    handle = optimizer_in_backward(optimizer)
    # Runs after the optimizer's hook (hooks run in registration order).
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad is None))
    torch.nn.functional.mse_loss(model(x), y).backward()
    handle.remove()
    assert seen and all(seen)
    assert all(p.grad is None for p in model.parameters())


def test_removing_the_hooks_restores_ordinary_gradients():
    model, x, y = model_and_data()
    handle = optimizer_in_backward(sgdlab.SGD(model.parameters(), lr=0.1))
    handle.remove()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_only_sgdlab_optimizers_are_accepted():
    model, _, _ = model_and_data()
    with pytest.raises(TypeError, match="sgdlab optimizer"):
        optimizer_in_backward(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.uint8], ids=["bf16", "8bit"])
def test_in_backward_with_compact_state_resumes_exactly(state_dtype):
    def run(model, optimizer, x, y, steps):
        handle = optimizer_in_backward(optimizer)
        for _ in range(steps):
            torch.nn.functional.mse_loss(model(x), y).backward()
        handle.remove()

    def fresh():
        model, x, y = model_and_data()
        optimizer = sgdlab.AdamW([{"params": model.parameters(), "state_dtype": state_dtype,
                                   "min_8bit_size": 0}],
                                 lr=0.01)
        return model, optimizer, x, y

    model, optimizer, x, y = fresh()
    run(model, optimizer, x, y, 6)
    first = next(iter(model.parameters()))
    assert optimizer.state[first]["exp_avg"].dtype == state_dtype

    resumed, resumed_optimizer, _, _ = fresh()
    run(resumed, resumed_optimizer, x, y, 3)
    checkpoint = (resumed.state_dict(), resumed_optimizer.state_dict())
    resumed, resumed_optimizer, _, _ = fresh()
    resumed.load_state_dict(checkpoint[0])
    resumed_optimizer.load_state_dict(checkpoint[1])
    run(resumed, resumed_optimizer, x, y, 3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    # The same training as step() with float32 state, up to the compact state's rounding.
    reference, x, y = model_and_data()
    reference_optimizer = sgdlab.AdamW(reference.parameters(), lr=0.01)
    for _ in range(6):
        reference_optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        reference_optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0.01)  # 6 steps move up to 0.06
        assert not torch.equal(a, b)  # compact state did round
