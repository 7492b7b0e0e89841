"""SWATS over several configurations, step by step across the switch, against Algorithm 1.

Keskar & Socher 2017, "Improving Generalization Performance by Switching from Adam to SGD",
Algorithm 1, written here in plain torch (no sgdlab code), per param group (sgdlab's reading:
the dot products run over a group's parameters; one group is the paper's whole-vector form):

    Adam phase, step k:  m_k = b1 m + (1 - b1) g,  a_k = b2 a + (1 - b2) g^2
                         p_k = -lr m_k / (1 - b1^k) / (sqrt(a_k / (1 - b2^k)) + eps)
                         w_k = w_{k-1} + p_k
                         if p_k.g_k != 0:  gamma_k = p_k.p_k / -(p_k.g_k)
                                           lambda_k = b2 lambda + (1 - b2) gamma_k
                         switch when k > 1 and |lambda_k / (1 - b2^k) - gamma_k| < tol
    SGD phase:           v = b1 v + g (v = 0 at the switch),  w = w - (1 - b1) Lambda v

with eps placed as in PyTorch's Adam and the two documented departures of sgdlab.SWATS: the
switch also needs Lambda_k > 0, and ``switch_at`` replaces the criterion by a fixed number of
Adam steps. With L2 weight decay, g is the gradient including the decay term, in both phases
and in the projection.
"""

from __future__ import annotations

import pytest
import torch

import sgdlab

DTYPE = torch.float64


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=DTYPE)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=DTYPE) + 0.7 + 0.1 * torch.randn(
        32, generator=g, dtype=DTYPE)
    return x, y


def _initial():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(3, generator=g, dtype=DTYPE) * 0.1,
            torch.randn(2, generator=g, dtype=DTYPE) * 0.1,
            torch.zeros(1, dtype=DTYPE)]


def _loss(params, data):
    w_a, w_b, b = params
    x, y = data
    return 0.5 * ((x[:, :3] @ w_a + x[:, 3:] @ w_b + b - y) ** 2).mean()


def _constant_loss(params, data):
    """A linear loss: every gradient is the same, so Lambda_2 = gamma_2 and the criterion
    fires at the first step it may, k = 2."""
    c = torch.tensor([1.0, -2.0, 0.5, 0.3, -0.7, 1.5], dtype=DTYPE)
    return (torch.cat(params) * c).sum()


def _gradients(params, loss):
    leaves = [p.detach().requires_grad_() for p in params]
    return [g.detach() for g in torch.autograd.grad(loss(leaves), leaves)]


def _reference(groups, steps, loss):
    """Parameters after each step, and each group's (switch step, Lambda)."""
    params = _initial()
    trajectory = []
    phase = [dict(k=0, lam=0.0, switch=None, big_lambda=None, m={}, a={}, v={}) for _ in groups]
    for _ in range(steps):
        grads = _gradients(params, loss)
        for (indices, o), s in zip(groups, phase):
            b1, b2 = o["betas"]
            g = {i: grads[i] + o["weight_decay"] * params[i] for i in indices}
            if s["switch"] is not None:
                for i in indices:
                    s["v"][i] = b1 * s["v"].get(i, torch.zeros_like(g[i])) + g[i]
                    params[i] = params[i] - (1 - b1) * s["big_lambda"] * s["v"][i]
                continue
            k = s["k"] = s["k"] + 1
            p_dot_p = p_dot_g = 0.0
            for i in indices:
                s["m"][i] = b1 * s["m"].get(i, 0.0) + (1 - b1) * g[i]
                s["a"][i] = b2 * s["a"].get(i, 0.0) + (1 - b2) * g[i] * g[i]
                p = (-o["lr"] * s["m"][i] / (1 - b1**k)
                     / ((s["a"][i] / (1 - b2**k)).sqrt() + o["eps"]))
                params[i] = params[i] + p
                p_dot_p += (p * p).sum().item()
                p_dot_g += (p * g[i]).sum().item()
            gamma = None
            if p_dot_g != 0:
                gamma = p_dot_p / -p_dot_g
                s["lam"] = b2 * s["lam"] + (1 - b2) * gamma
            big_lambda = s["lam"] / (1 - b2**k)
            if o.get("switch_at") is not None:
                switch = k >= o["switch_at"]
            else:
                switch = (gamma is not None and k > 1 and big_lambda > 0
                          and abs(big_lambda - gamma) < o["switch_tol"])
            if switch:
                s["switch"], s["big_lambda"] = k, big_lambda
        trajectory.append([p.clone() for p in params])
    return trajectory, [(s["switch"], s["big_lambda"]) for s in phase]


def options(lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, switch_tol=1e-9,
            switch_at=None):
    return dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, switch_tol=switch_tol,
                switch_at=switch_at)


ALL = [0, 1, 2]
# name: (groups as (parameter indices, options), steps, loss)
CASES = {
    "criterion": ([(ALL, options(lr=0.1, switch_tol=3e-4))], 12, _loss),
    "criterion-betas-eps": ([(ALL, options(lr=0.1, betas=(0.8, 0.99), eps=1e-6,
                                           switch_tol=2e-3))], 12, _loss),
    "criterion-weight-decay": ([(ALL, options(weight_decay=0.05, switch_tol=3e-4))], 14, _loss),
    "criterion-at-step-two": ([(ALL, options(lr=0.01, eps=1e-9))], 6, _constant_loss),
    "switch-at": ([(ALL, options(switch_at=4))], 12, _loss),
    "switch-at-weight-decay-betas": ([(ALL, options(lr=0.02, betas=(0.8, 0.99),
                                                    weight_decay=0.02, switch_at=7))], 15, _loss),
    "groups-switch-at-and-criterion": ([([0], options(switch_at=5)),
                                        ([1, 2], options(lr=0.08, switch_tol=2e-3))], 12, _loss),
    "groups-two-criteria-weight-decay": ([([0], options(switch_tol=1e-3)),
                                          ([1, 2], options(lr=0.08, weight_decay=0.01,
                                                           switch_tol=1e-3))], 14, _loss),
}


def _sgdlab(groups, steps, loss):
    params = [torch.nn.Parameter(p.clone()) for p in _initial()]
    optimizer = sgdlab.SWATS([{"params": [params[i] for i in indices], **o}
                              for indices, o in groups])
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss(params).backward()
        optimizer.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, optimizer


@pytest.mark.parametrize("case", CASES)
def test_swats_follows_algorithm_1_across_the_switch(case):
    groups, steps, loss = CASES[case]
    data = _data(seed=3)

    def bound(params):
        return loss(params, data)

    expected, switches = _reference(groups, steps, bound)
    actual, optimizer = _sgdlab(groups, steps, bound)
    for (switch, big_lambda), group, (_, o) in zip(switches, optimizer.param_groups, groups):
        # Every group switches inside the run, with Adam steps before and SGD steps after.
        assert switch is not None and 2 <= switch <= steps - 3, (case, switch)
        assert group["switch_step"] == switch
        assert group["sgd_lr"] == pytest.approx((1 - o["betas"][0]) * big_lambda, rel=1e-10)
    for step, (ours, theirs) in enumerate(zip(actual, expected, strict=True), start=1):
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{case}, step {step}: {m}")
