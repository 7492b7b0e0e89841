"""SAM and ASAM: hand-computed steps, any base optimizer, closures, checkpoints, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import sgdlab


def _quadratic_closure(optimizer, w, curvature):
    calls = []

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * (curvature * w**2).sum()
        loss.backward()
        calls.append(w.detach().clone())
        return loss

    return closure, calls


def test_sam_step_by_hand():
    # f(w) = |w|^2 / 2 at w = (3, 4): g = (3, 4), |g| = 5, e = rho g / |g| = (0.3, 0.4) for rho = 0.5,
    # the gradient at w + e is (3.3, 4.4) and SGD with lr 0.1 lands on w - 0.1 (3.3, 4.4).
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = sgdlab.SAM(sgdlab.SGD([w], lr=0.1), rho=0.5)
    closure, calls = _quadratic_closure(optimizer, w, torch.ones(2, dtype=torch.float64))
    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(12.5)  # the loss at w, not at the perturbed point
    torch.testing.assert_close(calls[1], torch.tensor([3.3, 4.4], dtype=torch.float64))
    torch.testing.assert_close(w.detach(), torch.tensor([2.67, 3.56], dtype=torch.float64))


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_asam_step_by_hand(eta):
    # ASAM: T = |w| + eta, e = rho T^2 g / |T g|; f(w) = sum(a w^2) / 2 so g = a w.
    w0, a, rho, lr = [1.0, -2.0], [2.0, 1.0], 0.5, 0.1
    g = [ai * wi for ai, wi in zip(a, w0)]
    t = [abs(wi) + eta for wi in w0]
    norm = math.sqrt(sum((ti * gi) ** 2 for ti, gi in zip(t, g)))
    e = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
    expected = [wi - lr * ai * (wi + ei) for wi, ai, ei in zip(w0, a, e)]

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = sgdlab.SAM([w], sgdlab.SGD, rho=rho, adaptive=True, eta=eta, lr=lr)
    closure, _ = _quadratic_closure(optimizer, w, torch.tensor(a, dtype=torch.float64))
    optimizer.step(closure)
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_the_neighbourhood_is_one_ball_over_all_parameter_groups():
    w1 = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.tensor([4.0], dtype=torch.float64))
    optimizer = sgdlab.SAM(sgdlab.SGD([{"params": [w1]}, {"params": [w2], "lr": 0.2}], lr=0.1), rho=0.5)

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * (w1**2 + w2**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    # Same perturbation as in the one-tensor case (0.3, 0.4); each group then uses its own lr.
    assert w1.item() == pytest.approx(3.0 - 0.1 * 3.3)
    assert w2.item() == pytest.approx(4.0 - 0.2 * 4.4)


def _train(optimizer, model, steps=4):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 3, generator=generator), torch.randn(8, 1, generator=generator)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)


def _models():
    torch.manual_seed(0)
    first = torch.nn.Linear(3, 1)
    second = copy.deepcopy(first)
    return first, second


@pytest.mark.parametrize("adaptive", [False, True])
def test_wrapping_torch_optim_and_sgdlab_gives_the_same_steps(adaptive):
    ours_model, torch_model = _models()
    ours = sgdlab.SAM(sgdlab.SGD(ours_model.parameters(), lr=0.1, momentum=0.9), adaptive=adaptive)
    theirs = sgdlab.SAM(torch_model.parameters(), torch.optim.SGD, adaptive=adaptive, lr=0.1, momentum=0.9)
    _train(ours, ours_model)
    _train(theirs, torch_model)
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(p, q)


def test_rho_zero_is_the_base_optimizer():
    sam_model, plain_model = _models()
    sam = sgdlab.SAM(sgdlab.AdamW(sam_model.parameters(), lr=0.01), rho=0.0)
    plain = sgdlab.AdamW(plain_model.parameters(), lr=0.01)
    _train(sam, sam_model)
    _train(plain, plain_model)
    for p, q in zip(sam_model.parameters(), plain_model.parameters()):
        assert torch.equal(p, q)


def test_manual_two_pass_equals_the_closure_step():
    closure_model, manual_model = _models()
    by_closure = sgdlab.SAM(closure_model.parameters(), sgdlab.SGD, lr=0.1, rho=0.1)
    manual = sgdlab.SAM(manual_model.parameters(), sgdlab.SGD, lr=0.1, rho=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def closure():
        by_closure.zero_grad()
        loss = torch.nn.functional.mse_loss(closure_model(x), y)
        loss.backward()
        return loss

    by_closure.step(closure)
    torch.nn.functional.mse_loss(manual_model(x), y).backward()
    manual.first_step(zero_grad=True)
    torch.nn.functional.mse_loss(manual_model(x), y).backward()
    manual.second_step(zero_grad=True)
    for p, q in zip(closure_model.parameters(), manual_model.parameters()):
        assert torch.equal(p, q)


def test_state_dict_round_trip_and_shared_param_groups():
    model, twin = _models()
    optimizer = sgdlab.SAM(sgdlab.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.2, adaptive=True)
    _train(optimizer, model, steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    assert saved["param_groups"][0]["rho"] == 0.2 and saved["param_groups"][0]["adaptive"] is True
    assert "momentum_buffer" in saved["state"][0]

    twin.load_state_dict(model.state_dict())
    restored = sgdlab.SAM(sgdlab.SGD(twin.parameters(), lr=0.5), rho=0.05)
    restored.load_state_dict(saved)
    assert restored.param_groups is restored.base_optimizer.param_groups
    assert restored.param_groups[0]["lr"] == 0.1 and restored.param_groups[0]["rho"] == 0.2
    _train(optimizer, model, steps=3)
    _train(restored, twin, steps=3)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_learning_rate_schedulers_drive_the_base_optimizer():
    model, _ = _models()
    optimizer = sgdlab.SAM(sgdlab.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train(optimizer, model, steps=1)
    scheduler.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_add_param_group_reaches_the_base_optimizer():
    model, _ = _models()
    extra = torch.nn.Parameter(torch.ones(2))
    optimizer = sgdlab.SAM(sgdlab.SGD([model.weight], lr=0.1), rho=0.1)
    optimizer.add_param_group({"params": [extra], "rho": 0.3})
    assert len(optimizer.base_optimizer.param_groups) == 2
    assert optimizer.base_optimizer.param_groups[1]["rho"] == 0.3


def test_step_without_closure_raises():
    model, _ = _models()
    optimizer = sgdlab.SAM(sgdlab.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step()


def test_a_failing_second_pass_restores_the_weights():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = sgdlab.SAM(sgdlab.SGD([w], lr=0.1), rho=0.5)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("loss is NaN")
        optimizer.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with pytest.raises(FloatingPointError):
        optimizer.step(closure)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize(
    "kwargs,fragment",
    [({"rho": -0.1}, "rho=-0.1"), ({"eta": -1.0}, "eta=-1.0"), ({"rho": float("nan")}, "rho=nan")],
)
def test_invalid_hyperparameters_raise_naming_argument_and_value(kwargs, fragment):
    with pytest.raises(ValueError) as excinfo:
        sgdlab.SAM([torch.nn.Parameter(torch.ones(1))], sgdlab.SGD, lr=0.1, **kwargs)
    assert fragment in str(excinfo.value)


def test_missing_or_misplaced_base_optimizer_is_explained():
    params = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(ValueError, match="base optimizer"):
        sgdlab.SAM(params)
    with pytest.raises(ValueError, match="first argument"):
        sgdlab.SAM(params, sgdlab.SGD(params, lr=0.1))


# --- in the lab: the four optimizers by name, through the real runner -----------------------------


def _tiny_task():
    from sgdlab.lab.tasks import Task

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return Task(
        name="tiny", model=lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)),
        x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:], epochs=2, batch_size=8,
    )


@pytest.mark.parametrize(
    "text",
    ["swats:switch_at=3", "schedulefree_sgd", "schedulefree_adamw:lr=0.01", "sam:base=adamw,lr=0.01", "asam"],
)
def test_lab_specs_train_through_the_runner(text):
    from sgdlab.lab.runner import train_run
    from sgdlab.lab.specs import parse_spec

    task = _tiny_task()
    result = train_run(task, parse_spec(text, task=task), seed=0)
    assert result.status == "finished"
    first, last = result.records[0], result.records[-1]
    assert last["step"] == 8 and last["train_loss"] < first["train_loss"]


def test_lab_sam_wraps_the_named_base_and_refuses_itself():
    from sgdlab.lab.specs import SpecError, parse_spec

    optimizer = parse_spec("sam:base=adamw,lr=1e-3,rho=0.1").build([torch.nn.Parameter(torch.ones(2))])
    assert isinstance(optimizer, sgdlab.SAM) and isinstance(optimizer.base_optimizer, sgdlab.AdamW)
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[0]["rho"] == 0.1
    with pytest.raises(SpecError, match="base='sam'"):
        parse_spec("sam:base=sam")
