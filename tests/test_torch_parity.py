"""sgdlab.SGD / Adam / AdamW compute torch.optim's numbers, for every option torch has.

Both optimizers see identical gradients (drawn from a seeded generator, independent of the
parameters), so any difference comes from the update rule alone. The guarantee, exactly
(docs/drop-in.md, measured by benchmarks/torch_bit_parity.py):

* SGD, float32 and float64, every path: bit-identical to torch.optim's for-loop (and foreach).
* Adam/AdamW, ``foreach=False`` (one eager rule call per tensor): bit-identical, also bfloat16.
* Adam/AdamW, the default path (the C loop on CPU): bit-identical to torch.optim's for-loop run
  with a correctly rounded sqrt, since eager PyTorch's CPU sqrt is not correctly rounded; against
  the real for-loop, within ``BOUND_ULPS`` ulps of each tensor's largest element after ten steps,
  where torch.optim's own fused path differs from its for-loop by more.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import sgdlab

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
EXACT_DTYPES = [torch.float64, torch.float32]
STEPS = 25
# Adam's default path against torch.optim's for-loop: measured at most 1 ulp of a tensor's
# largest element (params and state, every step of ten, over ADAM_GRID in both dtypes); torch's
# fused path differs from its for-loop by up to 152 (float32) and 16 (float64) of them.
BOUND_ULPS = 1.0


def make_params(dtype: torch.dtype) -> list[torch.Tensor]:
    """A 0-d, a vector, a matrix and a 4-d tensor: shapes where broadcasting bugs would show."""
    g = torch.Generator().manual_seed(1234)
    shapes = [(), (7,), (5, 3), (2, 3, 2, 2)]
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def run(optimizer_cls, options: dict, dtype: torch.dtype, steps: int = STEPS) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(p) for p in make_params(dtype)]
    optimizer = optimizer_cls(params, **options)
    g = torch.Generator().manual_seed(99)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
        optimizer.step()
    return [p.detach() for p in params]


def assert_identical(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), (a - b).abs().max()


def assert_same_trajectory(ours, theirs, dtype):
    """Bit for bit in float32 and float64 (an Adam run on the default path needs the torch side
    run with a correctly rounded sqrt: :func:`with_correct_sqrt`)."""
    assert dtype in EXACT_DTYPES
    assert_identical(ours, theirs)


_eager_sqrt = torch.Tensor.sqrt


def _correct_sqrt(self):
    if self.dtype == torch.float32:  # through float64: rounds float32 square roots exactly
        return _eager_sqrt(self.double()).float()
    return torch.from_numpy(np.asarray(np.sqrt(self.detach().numpy()))).reshape(self.shape)


def with_correct_sqrt(function, *args, **kwargs):
    """``function(...)`` with torch.optim's for-loop Adam (``exp_avg_sq.sqrt()``) taking correctly
    rounded square roots: the arithmetic of sgdlab's C loop and Inductor programs (no effect on
    SGD, which takes none)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "sqrt", _correct_sqrt)
        return function(*args, **kwargs)


def sgd_grid():
    for lr, momentum, dampening, nesterov, weight_decay, maximize in itertools.product(
        [0.05], [0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.1], [False, True]
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        yield dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            maximize=maximize,
        )


def adam_grid():
    for betas, eps, weight_decay, amsgrad, maximize in itertools.product(
        [(0.9, 0.999), (0.5, 0.9)], [1e-8, 1e-3], [0.0, 0.1], [False, True], [False, True]
    ):
        yield dict(lr=0.01, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                   maximize=maximize)


ADAMS = [(sgdlab.Adam, torch.optim.Adam), (sgdlab.AdamW, torch.optim.AdamW)]


def _id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("path", [{}, {"foreach": False}], ids=["default", "foreach=False"])
@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("options", list(sgd_grid()), ids=_id)
def test_sgd_is_bit_identical_to_torch(options, dtype, path):
    expected = run(torch.optim.SGD, {**options, "foreach": False}, dtype)
    assert_identical(run(sgdlab.SGD, {**options, **path}, dtype), expected)
    assert_identical(run(torch.optim.SGD, {**options, "foreach": True}, dtype), expected)


@pytest.mark.parametrize("options", list(sgd_grid()), ids=_id)
def test_bfloat16_sgd_per_tensor_is_bit_identical_to_torch(options):
    dtype = torch.bfloat16
    assert_identical(run(sgdlab.SGD, {**options, "foreach": False}, dtype),
                     run(torch.optim.SGD, {**options, "foreach": False}, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", list(adam_grid()), ids=_id)
@pytest.mark.parametrize("ours, theirs", ADAMS, ids=["adam", "adamw"])
def test_adam_per_tensor_is_bit_identical_to_torch(ours, theirs, options, dtype):
    assert_identical(run(ours, {**options, "foreach": False}, dtype),
                     run(theirs, {**options, "foreach": False}, dtype))


@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("options", list(adam_grid()), ids=_id)
@pytest.mark.parametrize("ours, theirs", ADAMS, ids=["adam", "adamw"])
def test_default_adam_is_torch_with_a_correctly_rounded_sqrt(ours, theirs, options, dtype):
    assert_identical(run(ours, options, dtype),
                     with_correct_sqrt(run, theirs, {**options, "foreach": False}, dtype))


def _trajectory(cls, options, dtype, steps=10):
    """Parameters and state tensors after each of ``steps`` steps."""
    params = [torch.nn.Parameter(p) for p in make_params(dtype)]
    optimizer = cls(params, **options)
    g = torch.Generator().manual_seed(7)
    snapshots = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
        optimizer.step()
        for p in params:
            state = optimizer.state[p]
            snapshots += [p.detach().clone()] + [state[k].clone() for k in sorted(state)
                                                 if k != "step"]
    return snapshots


def _ulps_of_largest(ours, theirs) -> float:
    """The largest difference, in ulps of the largest element of the tensor it is in."""
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        scale = b.abs().max().item()
        if scale > 0:
            ulp = torch.finfo(b.dtype).eps * 2.0 ** np.floor(np.log2(scale))
            worst = max(worst, (a - b).abs().max().item() / ulp)
    return worst


@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("ours, theirs", ADAMS, ids=["adam", "adamw"])
def test_default_adam_is_within_the_stated_bound_of_torch(ours, theirs, dtype):
    worst_ours = worst_fused = 0.0
    for options in adam_grid():
        reference = _trajectory(theirs, {**options, "foreach": False}, dtype)
        worst_ours = max(worst_ours, _ulps_of_largest(_trajectory(ours, options, dtype),
                                                      reference))
        worst_fused = max(worst_fused, _ulps_of_largest(
            _trajectory(theirs, {**options, "fused": True}, dtype), reference))
    assert worst_ours <= BOUND_ULPS < worst_fused


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_with_decoupled_weight_decay_matches_torch(weight_decay):
    options = dict(lr=0.01, weight_decay=weight_decay, decoupled_weight_decay=True)
    assert_same_trajectory(
        run(sgdlab.Adam, options, torch.float64),
        with_correct_sqrt(run, torch.optim.Adam, options, torch.float64),
        torch.float64,
    )


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
        (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
        (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    ],
    ids=["sgd", "adam", "adamw"],
)
@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_matches_every_torch_execution_path(ours, theirs, options, path):
    """sgdlab's foreach and fused flags choose how it runs, never what it computes: torch's
    for-loop numbers. torch's own foreach and fused paths are within round-off of them."""
    expected = with_correct_sqrt(run, theirs, {**options, "foreach": False}, torch.float64)
    assert_same_trajectory(run(ours, {**options, path: True}, torch.float64), expected,
                           torch.float64)
    for a, b in zip(run(theirs, {**options, path: True}, torch.float64), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
        (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
        (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True)),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_tensor_lr_matches_torch(ours, theirs, options):
    options = {**options, "lr": torch.tensor(options["lr"])}
    assert_same_trajectory(
        run(ours, options, torch.float64),
        with_correct_sqrt(run, theirs, options, torch.float64),
        torch.float64,
    )


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
        (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_complex_parameters_match_torch(ours, theirs, options):
    def run_complex(cls):
        g = torch.Generator().manual_seed(5)
        p = torch.nn.Parameter(torch.randn(6, generator=g, dtype=torch.complex128))
        optimizer = cls([p], **options)
        for _ in range(STEPS):
            p.grad = torch.randn(6, generator=g, dtype=torch.complex128)
            optimizer.step()
        return [p.detach()]

    # sgdlab updates a complex tensor as pairs of reals (torch.optim's Adam convention); torch's
    # SGD multiplies by the learning rate in complex arithmetic: the two round differently.
    for a, b in zip(run_complex(ours), run_complex(theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _train(optimizer_cls, options, groups_of, steps=30, scheduler=None):
    """Train a small MLP on fixed data; returns the final parameters and the loss curve."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randn(32, 1, dtype=torch.float64)
    optimizer = optimizer_cls(groups_of(model), **options)
    lr_scheduler = scheduler(optimizer) if scheduler else None
    losses = []
    for _ in range(steps):

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(optimizer.step(closure).item())
        if lr_scheduler:
            lr_scheduler.step()
    return [p.detach() for p in model.parameters()], losses


def _two_groups(model):
    return [
        {"params": model[0].parameters(), "lr": 0.02, "weight_decay": 0.05},
        {"params": model[2].parameters()},
    ]


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (sgdlab.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
        (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01)),
        (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_param_groups_with_different_hyperparameters_match_torch(ours, theirs, options):
    params_ours, losses_ours = _train(ours, options, _two_groups)
    params_theirs, losses_theirs = with_correct_sqrt(_train, theirs, options, _two_groups)
    assert_same_trajectory(params_ours, params_theirs, torch.float64)
    assert losses_ours == losses_theirs
    assert losses_ours[-1] < losses_ours[0]


@pytest.mark.parametrize(
    "ours, theirs",
    [(sgdlab.SGD, torch.optim.SGD), (sgdlab.AdamW, torch.optim.AdamW)],
    ids=["sgd", "adamw"],
)
def test_learning_rate_scheduler_drives_both_the_same_way(ours, theirs):
    def schedule(optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=30)

    def params(model):
        return model.parameters()

    ours_params, _ = _train(ours, {"lr": 0.01}, params, scheduler=schedule)
    theirs_params, _ = with_correct_sqrt(_train, theirs, {"lr": 0.01}, params,
                                         scheduler=schedule)
    assert_same_trajectory(ours_params, theirs_params, torch.float64)


def _unrolled_sgd(cls, lr, start, momentum):
    """Three differentiable SGD steps from ``start``; returns the final parameter."""
    param = start.clone()  # a non-leaf, so the optimizer may update it in place
    optimizer = cls([param], lr=lr, momentum=momentum, weight_decay=0.1, differentiable=True)
    for step in range(3):
        param.grad = torch.full((5,), float(step + 1), dtype=torch.float64)
        optimizer.step()
    return param


def _leaves():
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    start = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    return lr, start


def test_differentiable_step_gives_torch_hypergradients():
    """With differentiable=True the update is part of the autograd graph (meta-learning)."""
    grads = []
    for cls in (sgdlab.SGD, torch.optim.SGD):
        lr, start = _leaves()
        param = _unrolled_sgd(cls, lr, start, momentum=0.0)
        grads.append(torch.autograd.grad(param.square().sum(), [lr, start]))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_differentiable_momentum_hypergradient_matches_finite_differences():
    """torch.optim.SGD raises here (its in-place buffer update breaks the graph); sgdlab's
    pure rule keeps the graph intact, and the hypergradient is the true derivative."""
    lr, start = _leaves()
    param = _unrolled_sgd(sgdlab.SGD, lr, start, momentum=0.9)
    (dlr,) = torch.autograd.grad(param.square().sum(), [lr])

    def final_loss(lr_value):
        with torch.no_grad():
            end = _unrolled_sgd(sgdlab.SGD, lr_value, start.detach(), momentum=0.9)
        return end.square().sum().item()

    h = 1e-6
    finite_difference = (final_loss(0.1 + h) - final_loss(0.1 - h)) / (2 * h)
    assert dlr.item() == pytest.approx(finite_difference, rel=1e-7)


def test_sparse_gradient_sgd_matches_torch():
    def run_sparse(cls):
        weight = torch.nn.Parameter(torch.linspace(0, 1, 12, dtype=torch.float64).reshape(6, 2))
        optimizer = cls([weight], lr=0.1)
        for rows in ([0, 2], [2, 5]):
            index = torch.tensor([rows])
            values = torch.ones(2, 2, dtype=torch.float64)
            weight.grad = torch.sparse_coo_tensor(index, values, (6, 2))
            optimizer.step()
        return [weight.detach()]

    assert_same_trajectory(run_sparse(sgdlab.SGD), run_sparse(torch.optim.SGD), torch.float64)
