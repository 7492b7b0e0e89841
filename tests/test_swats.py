"""SWATS (Keskar & Socher 2017): Adam phase, switching criterion, SGD phase, checkpoints, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sgdlab


def _problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.1 * torch.randn(
        32, generator=generator, dtype=torch.float64
    )
    return x, y


def _loss(w, x, y):
    return 0.5 * ((x @ w - y) ** 2).mean()


def _run(optimizer, w, steps, x, y):
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(w, x, y).backward()
        optimizer.step()


def test_constant_gradient_switches_at_step_two_with_the_hand_computed_rate():
    # With a constant gradient c, Adam's bias-corrected moments are exactly c and c^2, so every
    # Adam step is p = -lr c / (|c| + eps), gamma_k is the same at every step and Lambda_2 = gamma_2:
    # the criterion fires at the first step it may (k = 2).
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    lr, eps, beta1 = 0.01, 1e-9, 0.9
    optimizer = sgdlab.SWATS([w], lr=lr, eps=eps)
    for _ in range(3):
        optimizer.zero_grad()
        (c * w).sum().backward()
        optimizer.step()
    p = -lr * c / (c.abs() + eps)
    gamma = float(p @ p / -(p @ c))
    assert optimizer.switch_step == 2
    assert optimizer.sgd_lr == pytest.approx((1 - beta1) * gamma, rel=1e-12)
    # Two Adam steps, then one SGD step whose momentum buffer is the gradient itself.
    expected = 2 * p - optimizer.sgd_lr * c
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-15)


def test_adam_phase_is_exactly_sgdlab_adam():
    x, y = _problem()
    w1 = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    swats = sgdlab.SWATS([w1], lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.01, switch_at=100)
    adam = sgdlab.Adam([w2], lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.01)
    _run(swats, w1, 10, x, y)
    _run(adam, w2, 10, x, y)
    assert torch.equal(w1, w2)
    assert swats.switch_step is None and swats.sgd_lr is None


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_after_the_switch_it_is_exactly_sgdlab_sgd_with_the_chosen_rate(weight_decay):
    x, y = _problem()
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    swats = sgdlab.SWATS([w], lr=0.05, weight_decay=weight_decay, switch_at=5)
    _run(swats, w, 5, x, y)
    assert swats.switch_step == 5 and swats.sgd_lr > 0
    twin = torch.nn.Parameter(w.detach().clone())
    sgd = sgdlab.SGD([twin], lr=swats.sgd_lr, momentum=0.9, weight_decay=weight_decay)
    _run(swats, w, 8, x, y)
    _run(sgd, twin, 8, x, y)
    assert torch.equal(w, twin)
    assert set(swats.state[w]) == {"momentum_buffer"}


def _algorithm_1(x, y, *, lr, beta1, beta2, eps, tol, steps):
    """Keskar & Socher 2017, Algorithm 1, for the whole parameter vector (NumPy, float64).

    Adam's eps is placed as in PyTorch (added to sqrt of the bias-corrected v), like sgdlab.
    """
    x, y = x.numpy(), y.numpy()
    w = np.zeros(x.shape[1])
    m, a, lam, v = np.zeros_like(w), np.zeros_like(w), 0.0, None
    switched, big_lambda = None, None
    trajectory = []
    for k in range(1, steps + 1):
        g = x.T @ (x @ w - y) / len(y)
        if switched is not None:
            v = beta1 * v + g
            w = w - (1 - beta1) * big_lambda * v
        else:
            m = beta1 * m + (1 - beta1) * g
            a = beta2 * a + (1 - beta2) * g * g
            p = -lr / (1 - beta1**k) * m / (np.sqrt(a / (1 - beta2**k)) + eps)
            w = w + p
            if p @ g != 0:
                gamma = (p @ p) / -(p @ g)
                lam = beta2 * lam + (1 - beta2) * gamma
                if k > 1 and abs(lam / (1 - beta2**k) - gamma) < tol:
                    switched, big_lambda, v = k, lam / (1 - beta2**k), np.zeros_like(w)
        trajectory.append(w.copy())
    return switched, big_lambda, np.array(trajectory)


def test_criterion_and_both_phases_follow_algorithm_1():
    x, y = _problem(seed=3)
    kwargs = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "tol": 2e-4}
    switch, big_lambda, expected = _algorithm_1(x, y, steps=60, **kwargs)
    assert switch is not None and 2 < switch < 50  # the case does exercise the criterion

    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = sgdlab.SWATS(
        [w], lr=kwargs["lr"], betas=(0.9, 0.999), eps=kwargs["eps"], switch_tol=kwargs["tol"]
    )
    trajectory = []
    for _ in range(60):
        _run(optimizer, w, 1, x, y)
        trajectory.append(w.detach().numpy().copy())
    assert optimizer.switch_step == switch
    assert optimizer.sgd_lr == pytest.approx((1 - 0.9) * big_lambda, rel=1e-10)
    np.testing.assert_allclose(np.array(trajectory), expected, rtol=1e-10, atol=1e-12)


def test_param_groups_switch_independently():
    x, y = _problem()
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = sgdlab.SWATS([{"params": [w], "switch_at": 3}, {"params": [b]}], lr=0.05)
    for _ in range(4):
        optimizer.zero_grad()
        (0.5 * ((x @ w + b - y) ** 2).mean()).backward()
        optimizer.step()
    first, second = optimizer.param_groups
    assert first["switch_step"] == 3 and first["sgd_lr"] > 0
    assert second["switch_step"] is None and second["adam_step"] == 4
    assert set(optimizer.state[w]) == {"momentum_buffer"}
    assert set(optimizer.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    assert optimizer.lr_estimate(1) > 0


@pytest.mark.parametrize("steps_before_saving", [2, 6])  # in the Adam phase, after the switch
def test_state_dict_round_trip_keeps_phase_and_continues_identically(steps_before_saving):
    x, y = _problem()
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = sgdlab.SWATS([w], lr=0.05, switch_at=4)
    _run(optimizer, w, steps_before_saving, x, y)
    saved = copy.deepcopy(optimizer.state_dict())
    assert saved["param_groups"][0]["switch_step"] == optimizer.switch_step

    twin = torch.nn.Parameter(w.detach().clone())
    restored = sgdlab.SWATS([twin], lr=0.05, switch_at=4)
    restored.load_state_dict(saved)
    assert restored.switch_step == optimizer.switch_step and restored.sgd_lr == optimizer.sgd_lr
    _run(optimizer, w, 5, x, y)
    _run(restored, twin, 5, x, y)
    assert torch.equal(w, twin)
    assert restored.switch_step == 4


def test_forced_switch_without_an_estimate_warns_and_stands_still():
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = sgdlab.SWATS([w], switch_at=1)
    w.grad = torch.zeros(2)  # p^T g = 0: no estimate of the SGD rate
    with pytest.warns(RuntimeWarning, match="non-positive"):
        optimizer.step()
    assert optimizer.sgd_lr == 0.0


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"lr": -1.0}, "lr=-1.0"),
        ({"betas": (1.0, 0.999)}, "betas[0]=1.0"),
        ({"eps": -1.0}, "eps=-1.0"),
        ({"weight_decay": -0.5}, "weight_decay=-0.5"),
        ({"switch_tol": -1e-3}, "switch_tol=-0.001"),
        ({"switch_at": 0}, "switch_at=0"),
        ({"switch_at": 2.5}, "switch_at=2.5"),
    ],
)
def test_invalid_hyperparameters_raise_naming_argument_and_value(kwargs, fragment):
    with pytest.raises(ValueError) as excinfo:
        sgdlab.SWATS([torch.nn.Parameter(torch.ones(1))], **kwargs)
    assert fragment in str(excinfo.value)
