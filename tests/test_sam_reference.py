"""SAM and ASAM over several steps and options, against a reference written here from the papers.

Foret, Kleiner, Mobahi & Neyshabur 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", Algorithm 1 (p = 2): with g = grad L(w) over all parameters,

    e(w) = rho g / ||g||_2,     then the base optimizer steps at w with grad L(w + e(w)).

Kwon, Kim, Park & Choi 2021, "ASAM", Algorithm 1 with T_w = |w| + eta (elementwise):

    e(w) = rho T_w^2 g / ||T_w g||_2.

The base optimizers are written here too, in plain torch: SGD with (Nesterov) momentum and
dampening as torch.optim defines it, Adam (Kingma & Ba 2015, Algorithm 1, eps outside the
square root as in torch.optim) with L2 weight decay, and AdamW (Loshchilov & Hutter 2019). The
reference uses no sgdlab code: only torch.autograd for the gradients of the loss.

sgdlab adds 1e-12 to the norm (a zero gradient gives no perturbation, not NaN); with norms of
order 0.1-10 here that is far below the 1e-9 relative tolerance.
"""

from __future__ import annotations

import pytest
import torch

import sgdlab

STEPS = 6
DTYPE = torch.float64


def _initial():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 5, generator=g, dtype=DTYPE) * 0.7,
            torch.randn(5, generator=g, dtype=DTYPE) * 0.3,
            torch.randn(5, 2, generator=g, dtype=DTYPE) * 0.7]


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g, dtype=DTYPE),
             torch.randn(16, 2, generator=g, dtype=DTYPE) * 3) for _ in range(STEPS)]


def _loss(params, batch):
    w1, b1, w2 = params
    x, y = batch
    return ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()


# --- the reference ---------------------------------------------------------------------------------
def _grads(params, batch):
    leaves = [p.detach().requires_grad_() for p in params]
    loss = _loss(leaves, batch)
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, leaves)]


def _sgd(w, d, state, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    d = d + weight_decay * w
    if momentum:
        if "buf" not in state:
            state["buf"] = d.clone()
        else:
            state["buf"] = momentum * state["buf"] + (1 - dampening) * d
        d = d + momentum * state["buf"] if nesterov else state["buf"]
    return w - lr * d


def _adam(w, g, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    beta1, beta2 = betas
    t = state["t"] = state.get("t", 0) + 1
    if decoupled:
        w = w * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    m = state["m"] = beta1 * state.get("m", torch.zeros_like(w)) + (1 - beta1) * g
    v = state["v"] = beta2 * state.get("v", torch.zeros_like(w)) + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * m_hat / (v_hat.sqrt() + eps)


BASES = {
    "sgd": (sgdlab.SGD, lambda w, g, s, o: _sgd(w, g, s, **o)),
    "torch-sgd": (torch.optim.SGD, lambda w, g, s, o: _sgd(w, g, s, **o)),
    "adam": (sgdlab.Adam, lambda w, g, s, o: _adam(w, g, s, **o)),
    "adamw": (sgdlab.AdamW, lambda w, g, s, o: _adam(
        w, g, s, decoupled=True, **{"weight_decay": 0.01, **o})),
}


def _reference(base, groups):
    """Parameters and losses after each step. ``groups``: (indices, base options, sam options)."""
    step_fn = BASES[base][1]
    params = _initial()
    states = [{} for _ in params]
    trajectory, losses = [], []
    for batch in _batches():
        loss, g = _grads(params, batch)
        losses.append(loss.item())
        scaled = {}
        for indices, _, sam in groups:
            for i in indices:
                t = params[i].abs() + sam["eta"] if sam["adaptive"] else torch.ones_like(params[i])
                scaled[i] = (t, t * g[i])
        norm = torch.sqrt(sum((tg**2).sum() for _, tg in scaled.values()))  # one ball
        shifted = list(params)
        for indices, _, sam in groups:
            for i in indices:
                t, tg = scaled[i]
                shifted[i] = params[i] + sam["rho"] * t * tg / norm
        _, g_sharp = _grads(shifted, batch)
        for indices, options, _ in groups:
            for i in indices:
                params[i] = step_fn(params[i], g_sharp[i], states[i], options)
        trajectory.append([p.clone() for p in params])
    return trajectory, losses


# --- sgdlab.SAM --------------------------------------------------------------------------------------
def _sgdlab(base, groups):
    cls = BASES[base][0]
    params = [torch.nn.Parameter(p.clone()) for p in _initial()]
    param_groups = [{"params": [params[i] for i in indices], **options, **sam}
                    for indices, options, sam in groups]
    if base == "adamw":
        param_groups = [{"weight_decay": 0.01, **group} for group in param_groups]
    # SAM(params, Base, ...) builds the base itself; its groups carry rho / adaptive / eta.
    optimizer = sgdlab.SAM(param_groups, cls, lr=param_groups[0]["lr"])
    trajectory, losses = [], []
    for batch in _batches():
        def closure():
            optimizer.zero_grad()
            loss = _loss(params, batch)
            loss.backward()
            return loss

        losses.append(optimizer.step(closure).item())
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, losses


ALL = [0, 1, 2]


def sam(rho, adaptive=False, eta=0.01):
    return {"rho": rho, "adaptive": adaptive, "eta": eta}


CASES = {
    "sam-sgd-momentum": ("sgd", [(ALL, dict(lr=0.1, momentum=0.9), sam(0.05))]),
    "sam-sgd-nesterov-wd": ("sgd", [(ALL, dict(lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=5e-3), sam(0.2))]),
    "sam-sgd-dampening-torch-base": ("torch-sgd", [(ALL, dict(lr=0.1, momentum=0.5,
                                                              dampening=0.3), sam(0.5))]),
    "asam-sgd-momentum-wd": ("sgd", [(ALL, dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
                                      sam(0.5, adaptive=True))]),
    "asam-eta-0.1-sgd": ("sgd", [(ALL, dict(lr=0.2), sam(1.0, adaptive=True, eta=0.1))]),
    "sam-adam-l2": ("adam", [(ALL, dict(lr=0.01, weight_decay=0.01), sam(0.05))]),
    "asam-adam": ("adam", [(ALL, dict(lr=0.02, betas=(0.8, 0.99)), sam(0.5, adaptive=True))]),
    "sam-adamw": ("adamw", [(ALL, dict(lr=0.01, weight_decay=0.1), sam(0.1))]),
    "asam-adamw-eta-0": ("adamw", [(ALL, dict(lr=0.01), sam(2.0, adaptive=True, eta=0.0))]),
    # Groups with their own rho, ASAM or not and learning rates: still one ball (one norm).
    "two-groups-sgd": ("sgd", [([0, 1], dict(lr=0.1, momentum=0.9), sam(0.05)),
                               ([2], dict(lr=0.03, momentum=0.9, weight_decay=1e-2),
                                sam(0.3, adaptive=True))]),
    "two-groups-adam": ("adam", [([0], dict(lr=0.01), sam(0.1, adaptive=True)),
                                 ([1, 2], dict(lr=0.03, weight_decay=1e-3), sam(0.02))]),
}


@pytest.mark.parametrize("case", CASES)
def test_sam_follows_the_papers_step_by_step(case):
    base, groups = CASES[case]
    expected, expected_losses = _reference(base, groups)
    actual, losses = _sgdlab(base, groups)
    # The returned loss is the one at w, before the perturbation.
    assert losses == pytest.approx(expected_losses, rel=1e-12)
    for step, (ours, theirs) in enumerate(zip(actual, expected, strict=True), start=1):
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"{case}, step {step}: {m}")
    # The case is not degenerate: the perturbation changed the trajectory.
    plain, _ = _reference(base, [(i, o, {**s, "rho": 0.0}) for i, o, s in groups])
    assert max((p - q).abs().max().item() for p, q in zip(plain[-1], expected[-1])) > 1e-4
