"""The learning-rate range test: sweep, smoothing, divergence stop, suggestion, exact restoration."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import sgdlab
from sgdlab.lab.tune.lr_finder import lr_range_test, suggest_lr


def _regression(n: int = 256, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.3, 2.0, d)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def _assert_state_dicts_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_state_dicts_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_state_dicts_equal(u, v)
    else:
        assert a == b


def _snapshot(model, optimizer):
    import copy

    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: sgdlab.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
        lambda p: sgdlab.AdamW(p, lr=1e-3, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ],
    ids=["sgdlab.SGD", "sgdlab.AdamW", "torch.optim.SGD"],
)
def test_model_optimizer_mode_and_rng_are_restored_exactly(make_optimizer):
    torch.manual_seed(0)
    # BatchNorm (buffers that change in training) and Dropout (consumes the RNG) on purpose.
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 1),
    )
    optimizer = make_optimizer(model.parameters())
    x, y = _regression()
    for _ in range(3):  # non-empty optimizer state (momentum buffers, Adam moments, step counts)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    model.eval()
    model_before, optimizer_before = _snapshot(model, optimizer)
    parameter_ids = [id(p) for p in model.parameters()]
    rng_before = torch.get_rng_state()

    result = lr_range_test(model, optimizer, torch.nn.MSELoss(), list(zip(x.split(32), y.split(32))),
                           start_lr=1e-5, end_lr=1.0, num_steps=30)

    assert len(result.lrs) > 5  # it really trained
    _assert_state_dicts_equal(model.state_dict(), model_before)
    _assert_state_dicts_equal(optimizer.state_dict(), optimizer_before)
    assert [id(p) for p in model.parameters()] == parameter_ids  # restored in place, optimizer still bound
    assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], model.parameters()))
    assert model.training is False
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_state_is_restored_when_the_loss_raises_mid_sweep():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _snapshot(model, optimizer)
    calls = {"n": 0}

    def batch_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("data went bad")
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    with pytest.raises(RuntimeError, match="data went bad"):
        lr_range_test(model, optimizer, None, [_regression()], num_steps=20, batch_loss=batch_loss)
    _assert_state_dicts_equal(model.state_dict(), before[0])
    _assert_state_dicts_equal(optimizer.state_dict(), before[1])


def test_restore_false_leaves_the_trained_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    weight = model.weight.detach().clone()
    lr_range_test(model, optimizer, torch.nn.MSELoss(), [_regression()], num_steps=10, end_lr=0.01,
                  restore=False)
    assert not torch.equal(model.weight, weight)


def test_sweep_is_exponential_from_start_to_end_lr():
    model = torch.nn.Linear(8, 1)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(model, optimizer, torch.nn.MSELoss(), [_regression()],
                           start_lr=1e-6, end_lr=1e-3, num_steps=31)  # too small to diverge
    assert not result.diverged and len(result.lrs) == 31
    assert not result.found_minimum  # the loss was still falling: the suggestion is only a lower bound
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert ratios == pytest.approx([10 ** 0.1] * 30)


def test_smoothing_is_bias_corrected():
    # A constant loss must smooth to itself from the first step: an EMA without bias correction
    # would start at (1 - smoothing) * loss.
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=0.1)
    result = lr_range_test(torch.nn.Module(), optimizer, None, [None], num_steps=10, smoothing=0.9,
                           batch_loss=lambda model, batch: 0.0 * w.sum() + 3.0)
    assert result.smoothed == pytest.approx([3.0] * 10)


def test_divergence_stops_the_sweep_and_is_reported():
    x, y = _regression()
    model = torch.nn.Linear(8, 1, bias=False)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(model, optimizer, torch.nn.MSELoss(), [(x, y)],
                           start_lr=1e-4, end_lr=1e3, num_steps=120)
    assert result.diverged and result.found_minimum
    assert len(result.lrs) < 120
    assert "exceeded" in result.stop_reason or "loss became" in result.stop_reason


def test_suggestion_is_a_stable_fast_lr_on_a_quadratic_with_known_curvature():
    # Full-batch gradient descent on least squares: the loss Hessian is 2/n X^T X with largest
    # eigenvalue L; every lr < 2/L converges and 1/L is the classic good choice. A sane suggestion
    # is stable (< 2/L) and not timid (> 1/(30 L)).
    x, y = _regression(n=512, d=10)
    curvature = torch.linalg.eigvalsh(2.0 / len(x) * x.T @ x).max().item()
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1, bias=False)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(model, optimizer, torch.nn.MSELoss(), [(x, y)],
                           start_lr=1e-5, end_lr=10.0, num_steps=200)
    assert result.rule == "min/10" and result.suggested_lr == pytest.approx(result.min_loss_lr / 10)
    assert 1.0 / (30 * curvature) < result.suggested_lr < 2.0 / curvature
    assert result.steepest_lr is not None and result.steepest_lr < result.min_loss_lr


def test_suggest_lr_finds_steepest_descent_before_the_minimum():
    lrs = [10 ** (k / 10) for k in range(-40, 11)]  # 1e-4 .. 10
    # Loss falls like a logistic in log lr centred at lr=1e-2, then blows up past lr=1.
    smoothed = [1.0 / (1.0 + math.exp(2.0 * (math.log10(lr) + 2.0))) + (lr > 1) * 10 * (lr - 1) for lr in lrs]
    suggested, steepest, min_lr = suggest_lr(lrs, smoothed, rule="steepest")
    assert steepest == suggested == pytest.approx(1e-2, rel=0.3)
    assert min_lr == pytest.approx(1.0, rel=0.3)
    assert suggest_lr(lrs, smoothed, rule="min/10")[0] == pytest.approx(min_lr / 10)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge_threshold": 1.0}, "diverge_threshold"),
        ({"rule": "valley"}, "rule"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    model = torch.nn.Linear(8, 1)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=name):
        lr_range_test(model, optimizer, torch.nn.MSELoss(), [_regression()], **kwargs)


def test_plot_writes_a_png_with_the_suggestion(tmp_path):
    x, y = _regression()
    model = torch.nn.Linear(8, 1)
    optimizer = sgdlab.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = lr_range_test(model, optimizer, torch.nn.MSELoss(), list(zip(x.split(64), y.split(64))),
                           start_lr=1e-5, end_lr=10.0, num_steps=80)
    path = tmp_path / "lr.png"
    figure = result.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any(label.startswith("suggested lr") for label in labels)
    assert result.to_dict()["rule_description"]
