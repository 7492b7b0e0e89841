"""bfloat16 optimizer state against torch.optim, with bounds that rounding alone can explain.

Compact state changes only how the state is *stored*: the rule reads the stored values widened to
float32, computes in float32 and rounds the new state stochastically to bfloat16. So

* one step from the same state is torch.optim's step: the parameter to float32 round-off, each
  new state value within one bfloat16 ulp of torch.optim's float32 value (the two neighbours
  stochastic rounding may choose between);
* a whole run differs from torch.optim's float32 run only by accumulated rounding noise, which
  is measured here as the spread between two bfloat16 runs whose rounding noise is independent
  (``compact_state_step``, the noise's seed, started elsewhere): the run must stay within twice
  that spread of torch.optim.

A wrong bias correction, step count or hyperparameter moves the parameters by a sizeable
fraction of a step at once and fails both (docs/testing.md has the mutations and their results).
"""

from __future__ import annotations

import copy

import pytest
import torch

import sgdlab
from sgdlab.optim import widen_state_dict

SHAPES = [(7,), (20, 10), (3, 4, 5)]

CASES = [
    (sgdlab.Adam, torch.optim.Adam, dict(lr=0.01)),
    (sgdlab.Adam, torch.optim.Adam,
     dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, amsgrad=True)),
    (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (sgdlab.AdamW, torch.optim.AdamW,
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, amsgrad=True, maximize=True)),
    (sgdlab.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, dampening=0.3)),
]
IDS = ["adam", "adam-l2-amsgrad", "adamw", "adamw-amsgrad-maximize", "sgd-nesterov-wd",
       "sgd-dampening"]
# The C loop (default on CPU) and the PyTorch program (CUDA; CPU without a C compiler).
PATHS = {"c-loop": "1", "pytorch": "0"}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _gradients(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(steps)]


def _compact(cls, params, options, first_rounding_step=0):
    group = {"params": params, "state_dtype": torch.bfloat16,
             "compact_state_step": first_rounding_step}
    return cls([group], **options)


def _step(optimizer, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step()


def _bfloat16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at |x| (8 significant bits)."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0**-126)))
    return torch.exp2(exponent - 7)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ours, theirs, options", CASES, ids=IDS)
def test_each_step_from_the_same_state_is_torch_optims_step(ours, theirs, options, path,
                                                             monkeypatch):
    monkeypatch.setenv("SGDLAB_NATIVE", PATHS[path])
    params = _params()
    optimizer = _compact(ours, params, options)
    for k, grads in enumerate(_gradients(12), start=1):
        # torch.optim, float32 state, from our state as it is stored (bfloat16 widens exactly).
        twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
        reference = theirs(twins, **options, foreach=False)
        if k > 1:
            # (a copy: torch.optim would count its steps in our "step" tensors)
            reference.load_state_dict(copy.deepcopy(widen_state_dict(optimizer.state_dict())))
        before = [p.detach().clone() for p in params]
        _step(optimizer, params, grads)
        _step(reference, twins, grads)
        for p, q, p0 in zip(params, twins, before):
            # float32 round-off only (the C loop's sqrt is correctly rounded, eager torch's is
            # not: an ulp of the parameter here and there); a step is ~lr = 1e-2.
            torch.testing.assert_close(p - p0, q - p0, rtol=0, atol=4 * 2**-23 * p0.abs().max()
                                       + 1e-9, msg=lambda m: f"step {k}: {m}")
            state, expected = optimizer.state[p], reference.state[q]
            assert set(state) == set(expected), k
            for key, value in expected.items():
                if key == "step":
                    assert float(state[key]) == float(value) == k
                    continue
                stored = state[key]
                assert stored.dtype == torch.bfloat16, key
                # Stochastic rounding picks one of the two bfloat16 neighbours: under one ulp.
                error = (stored.float() - value).abs()
                assert (error < _bfloat16_ulp(value) * (1 + 2**-10) + 1e-30).all(), (
                    f"step {k}, {key}: {(error / _bfloat16_ulp(value)).max().item()} ulps")


def _run(cls, options, steps, *, state_dtype=None, first_rounding_step=0):
    params = _params()
    if state_dtype is None:
        optimizer = cls(params, **options)
    else:
        optimizer = _compact(cls, params, options, first_rounding_step)
    for grads in _gradients(steps):
        _step(optimizer, params, grads)
    return [p.detach() for p in params]


def _mean_distance(a, b):
    return torch.cat([(x - y).abs().reshape(-1) for x, y in zip(a, b)]).mean().item()


@pytest.mark.parametrize("ours, theirs, options", CASES, ids=IDS)
def test_a_bfloat16_run_stays_within_its_rounding_noise_of_torch_optim(ours, theirs, options):
    steps = 30
    start = [p.detach() for p in _params()]
    torch_run = _run(theirs, {**options, "foreach": False}, steps)
    one = _run(ours, options, steps, state_dtype=torch.bfloat16)
    other = _run(ours, options, steps, state_dtype=torch.bfloat16, first_rounding_step=10_000)
    float32_run = _run(ours, options, steps)
    travelled = _mean_distance(torch_run, start)
    noise = _mean_distance(one, other)  # two draws of the rounding noise
    # Measured (docs/testing.md): noise 0.2-0.5 % of the distance travelled; each bfloat16 run
    # 0.65-0.76 x noise from torch.optim (0.71 if the draws were Gaussian). Required: noise real
    # (the state is rounded) and small, each run within 2 x noise of torch.optim and of float32.
    assert 0 < noise < 0.02 * travelled
    for run in (one, other):
        assert _mean_distance(run, torch_run) < 2 * noise
        assert _mean_distance(run, float32_run) < 2 * noise
    # float32 state is torch.optim's run up to float32 round-off (test_torch_parity: exactly).
    assert _mean_distance(float32_run, torch_run) < 1e-3 * noise
