"""Schedule-free SGD / AdamW: against the ``schedulefree`` package and the paper's Algorithm 1."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import sgdlab

schedulefree = pytest.importorskip("schedulefree")

PAIRS = {
    "sgd": (sgdlab.ScheduleFreeSGD, schedulefree.SGDScheduleFree, {"lr": 0.05}),
    "adamw": (sgdlab.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree, {"lr": 0.01}),
}
OPTIONS = [
    {},
    {"weight_decay": 0.05},
    {"warmup_steps": 4},
    {"r": 1.0, "weight_lr_power": 0.0},
    {"warmup_steps": 3, "r": 0.5, "weight_decay": 0.01, "weight_lr_power": 1.0},
]
TOLERANCE = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-13}}


def _model(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)


def _groups(model: torch.nn.Module, kind: str) -> list[dict]:
    # Two groups with different learning rates, so per-group schedules are exercised too.
    first, second = model[0], model[2]
    lr = PAIRS[kind][2]["lr"]
    return [{"params": first.parameters()}, {"params": second.parameters(), "lr": lr / 2}]


def _train(model, optimizer, steps: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=generator).to(dtype)
        y = torch.randn(16, 2, generator=generator).to(dtype)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _assert_same_params(a: torch.nn.Module, b: torch.nn.Module, dtype: torch.dtype) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_matches_schedulefree_package_in_train_and_eval_mode(kind, options, dtype):
    ours_cls, ref_cls, base = PAIRS[kind]
    ours_model, ref_model = _model(dtype), _model(dtype)
    ours = ours_cls(_groups(ours_model, kind), **base, **options)
    ref = ref_cls(_groups(ref_model, kind), **base, **options)
    for optimizer in (ours, ref):
        optimizer.train()
    _train(ours_model, ours, 7, dtype)
    _train(ref_model, ref, 7, dtype)
    _assert_same_params(ours_model, ref_model, dtype)  # y, the training point
    ours.eval()
    ref.eval()
    _assert_same_params(ours_model, ref_model, dtype)  # x, the average
    for optimizer in (ours, ref):
        optimizer.train()
    _train(ours_model, ours, 3, dtype)
    _train(ref_model, ref, 3, dtype)
    _assert_same_params(ours_model, ref_model, dtype)
    for ours_group, ref_group in zip(ours.param_groups, ref.param_groups):
        for key in ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode"):
            assert ours_group[key] == pytest.approx(ref_group[key], rel=1e-12), key
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert ours.state[p].keys() == ref.state[q].keys()
        for key in ours.state[p]:
            torch.testing.assert_close(ours.state[p][key], ref.state[q][key], **TOLERANCE[dtype])


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_both_execution_paths_of_the_package(foreach):
    ours_model, ref_model = _model(torch.float64), _model(torch.float64)
    ours = sgdlab.ScheduleFreeAdamW(ours_model.parameters(), lr=0.02, weight_decay=0.1, warmup_steps=2)
    ref = schedulefree.AdamWScheduleFree(
        ref_model.parameters(), lr=0.02, weight_decay=0.1, warmup_steps=2, foreach=foreach
    )
    ours.train()
    ref.train()
    _train(ours_model, ours, 5, torch.float64)
    _train(ref_model, ref, 5, torch.float64)
    _assert_same_params(ours_model, ref_model, torch.float64)


def _paper_algorithm_1(z0: float, grad, *, lr, beta, warmup_steps, r, power, steps):
    """Algorithm 1 of Defazio et al. 2024 with explicit x, y and z, for a scalar parameter."""
    x = z = z0
    lr_max, weight_sum = -1.0, 0.0
    for t in range(steps):
        gamma = lr * (t + 1) / warmup_steps if t < warmup_steps else lr
        y = (1 - beta) * z + beta * x
        z = z - gamma * grad(y)
        lr_max = max(lr_max, gamma)
        weight = (t + 1) ** r * lr_max**power
        weight_sum += weight
        c = weight / weight_sum
        x = (1 - c) * x + c * z
    return x, (1 - beta) * z + beta * x


@pytest.mark.parametrize("warmup_steps,r,power", [(0, 0.0, 2.0), (3, 0.0, 2.0), (2, 1.0, 1.0)])
def test_sgd_follows_the_papers_algorithm_on_a_quadratic(warmup_steps, r, power):
    curvature, lr, beta = 3.0, 0.1, 0.9
    param = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    optimizer = sgdlab.ScheduleFreeSGD(
        [param], lr=lr, momentum=beta, warmup_steps=warmup_steps, r=r, weight_lr_power=power
    )
    optimizer.train()
    for _ in range(6):
        optimizer.zero_grad()
        (0.5 * curvature * param**2).sum().backward()
        optimizer.step()
    x, y = _paper_algorithm_1(
        2.0, lambda v: curvature * v, lr=lr, beta=beta, warmup_steps=warmup_steps, r=r, power=power, steps=6
    )
    assert param.item() == pytest.approx(y, rel=1e-12)
    optimizer.eval()
    assert param.item() == pytest.approx(x, rel=1e-12)


def test_uniform_weights_make_x_the_mean_of_the_z_iterates():
    # r = 0 and weight_lr_power = 0 give every step weight 1: x_T = (z_1 + ... + z_T) / T.
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = sgdlab.ScheduleFreeSGD([param], lr=0.2, momentum=0.5, weight_lr_power=0.0)
    optimizer.train()
    zs = []
    for _ in range(4):
        optimizer.zero_grad()
        (param**2).sum().backward()
        optimizer.step()
        zs.append(optimizer.state[param]["z"].clone())
    optimizer.eval()
    torch.testing.assert_close(param.detach(), torch.stack(zs).mean(0), rtol=1e-12, atol=1e-14)


def test_step_in_eval_mode_raises():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = sgdlab.ScheduleFreeSGD([param])
    param.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match=r"optimizer\.train\(\)"):
        optimizer.step()


def test_eval_then_train_returns_to_the_training_point():
    model = _model(torch.float64)
    optimizer = sgdlab.ScheduleFreeAdamW(model.parameters(), lr=0.05)
    optimizer.train()
    _train(model, optimizer, 4, torch.float64)
    y = [p.detach().clone() for p in model.parameters()]
    optimizer.eval()
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), y))
    assert not optimizer.train_mode
    optimizer.train()
    for p, q in zip(model.parameters(), y):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [sgdlab.ScheduleFreeSGD, sgdlab.ScheduleFreeAdamW])
def test_state_dict_round_trip_continues_identically(cls):
    model = _model(torch.float64)
    optimizer = cls(model.parameters(), lr=0.01, warmup_steps=2)
    optimizer.train()
    _train(model, optimizer, 3, torch.float64)
    optimizer.eval()  # checkpoints are taken at x, like the model weights
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))

    restored_model = _model(torch.float64, seed=5)
    restored = cls(restored_model.parameters(), lr=0.01, warmup_steps=2)
    restored_model.load_state_dict(saved[0])
    restored.load_state_dict(saved[1])
    for m, o in ((model, optimizer), (restored_model, restored)):
        o.train()
        _train(m, o, 3, torch.float64)
    for p, q in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(p, q)
    assert restored.param_groups[0]["k"] == 6


def test_a_schedulefree_checkpoint_loads_and_continues_the_same_trajectory():
    ref_model, ours_model = _model(torch.float64), _model(torch.float64)
    ref = schedulefree.SGDScheduleFree(ref_model.parameters(), lr=0.05, warmup_steps=2)
    ref.train()
    _train(ref_model, ref, 4, torch.float64)
    ref.eval()
    ours = sgdlab.ScheduleFreeSGD(ours_model.parameters(), lr=0.05, warmup_steps=2)
    ours_model.load_state_dict(ref_model.state_dict())
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    for m, o in ((ref_model, ref), (ours_model, ours)):
        o.train()
        _train(m, o, 3, torch.float64)
    _assert_same_params(ours_model, ref_model, torch.float64)


@pytest.mark.parametrize(
    "cls,kwargs,name",
    [
        (sgdlab.ScheduleFreeSGD, {"lr": -0.1}, "lr"),
        (sgdlab.ScheduleFreeSGD, {"momentum": 0.0}, "momentum"),
        (sgdlab.ScheduleFreeSGD, {"momentum": 1.0}, "momentum"),
        (sgdlab.ScheduleFreeSGD, {"warmup_steps": -1}, "warmup_steps"),
        (sgdlab.ScheduleFreeSGD, {"warmup_steps": 2.5}, "warmup_steps"),
        (sgdlab.ScheduleFreeSGD, {"weight_lr_power": -1.0}, "weight_lr_power"),
        (sgdlab.ScheduleFreeSGD, {"r": math.nan}, "r"),
        (sgdlab.ScheduleFreeAdamW, {"betas": (0.0, 0.999)}, "betas[0]"),
        (sgdlab.ScheduleFreeAdamW, {"betas": (0.9, 1.0)}, "betas[1]"),
        (sgdlab.ScheduleFreeAdamW, {"eps": -1e-8}, "eps"),
        (sgdlab.ScheduleFreeAdamW, {"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_invalid_hyperparameters_raise_naming_argument_and_value(cls, kwargs, name):
    (value,) = kwargs.values()
    with pytest.raises(ValueError) as excinfo:
        cls([torch.nn.Parameter(torch.ones(1))], **kwargs)
    message = str(excinfo.value)
    assert name in message
    assert repr(value if not isinstance(value, tuple) else value[int(name.endswith("[1]"))]) in message


def test_invalid_value_in_a_param_group_is_rejected():
    with pytest.raises(ValueError, match="lr=-1"):
        sgdlab.ScheduleFreeAdamW([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": -1}])
